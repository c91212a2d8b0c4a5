"""``eval score --judge-url``: an LLM decides the open answers, through medverl.http's judge, against a loopback
OpenAI-compatible server; failed calls are counted apart from wrong answers and retried on the next run."""

import json
from pathlib import Path

import pytest
from loopback import Endpoint, chat_reply, serve

from medverl.cli import main
from medverl.eval.judge import judge_open_answers, parse_answer_verdict
from medverl.eval.samples import LAYOUTS, write_samples
from medverl.eval.scoring import SampleScore
from medverl.http import JudgeOutcome, JudgeReplyError
from medverl.rewards import RewardOptions, register, score_sample


class _Grader(Endpoint):
    models = ("grader",)
    fail = True

    def answer(self, text: str) -> tuple[int, bytes]:
        answer = text.split("Model's answer: ")[-1].split("\n")[0]
        reference = text.split("Reference answer: ")[-1].split("\n")[0]
        if "BROKEN" in answer and type(self).fail:
            return 503, b""
        if "RAMBLE" in answer:
            return 200, chat_reply("I think it is right")  # not the JSON asked for: a failed call after retries
        return 200, chat_reply(json.dumps({"correct": reference.lower() in answer.lower(), "rationale": "compared"}))


@pytest.fixture
def grader_url():
    _Grader.fail = True
    with serve(_Grader) as url:
        yield url


def _answer(text: str) -> str:
    return f"<think>looking</think><answer>{text}</answer>"


def test_open_answers_are_judged_and_failures_counted_apart(tmp_path: Path, grader_url: str, capsys) -> None:
    sources = write_samples(tmp_path / "src")
    dirs = []
    for name in ("vqa_rad", "slake"):
        dirs.append(str(tmp_path / name))
        assert main(["eval", "prepare", name, "--source", str(sources[name]), "--output", dirs[-1]]) == 0
    preds = tmp_path / "p.jsonl"
    lines = [("vqa_rad", 0, _answer("no")), ("vqa_rad", 2, _answer("the right upper lobe of the lung")),
             ("slake", 3, _answer("BROKEN pneumonia")), ("slake", 4, _answer("RAMBLE")), ("slake", 2, _answer("x"))]
    preds.write_text("".join(json.dumps({"data_source": s, "index": i, "response": r}) + "\n" for s, i, r in lines))
    args = ["eval", "score", "--data", *dirs, "--run", f"m={preds}", "--judge-url", grader_url, "--judge-model",
            "grader", "--judge-retries", "1", "--judge-timeout", "5"]
    assert main([*args, "--output", str(tmp_path / "r")]) == 1  # two judge calls failed
    assert "2 judge call(s) failed" in capsys.readouterr().err
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())["m"]
    assert metrics["vqa_rad"]["open_acc"] == 1.0  # judged right: the reference is in the answer
    assert (metrics["vqa_rad"]["judged"], metrics["vqa_rad"]["judge_failures"]) == (1, 0)
    assert (metrics["slake"]["judged"], metrics["slake"]["judge_failures"]) == (0, 2)
    samples = {(s["data_source"], s["index"]): s for s in map(json.loads, (tmp_path / "r" / "samples.jsonl").open())}
    assert samples[("slake", 3)]["judge"] == "failed" and samples[("slake", 3)]["reason"].startswith("judge failed")
    assert samples[("slake", 2)]["judge"] is None  # closed answers keep their rule
    assert samples[("vqa_rad", 1)]["judge"] is None and samples[("vqa_rad", 1)]["reason"] == "no prediction"
    assert "judge failures" in (tmp_path / "r" / "report.md").read_text()
    assert len(_Grader.calls) == 1 + 2 + 2  # the decided one once, each failure tried twice
    _Grader.calls, _Grader.fail = [], False  # the endpoint recovers: a rerun asks only what was not decided
    assert main([*args, "--output", str(tmp_path / "r2"), "--judge-cache", str(tmp_path / "r" / "judge_cache.sqlite")
                 ]) == 1  # RAMBLE still fails
    asked = sorted(c.split("Model's answer: ")[-1].split("\n")[0] for c in _Grader.calls)
    assert asked == ["BROKEN pneumonia", "RAMBLE", "RAMBLE"]
    again = json.loads((tmp_path / "r2" / "metrics.json").read_text())["m"]["slake"]
    assert (again["judged"], again["judge_failures"]) == (1, 1)


def test_a_judge_needs_both_options_and_a_reachable_endpoint(tmp_path: Path, capsys) -> None:
    source = write_samples(tmp_path / "src")["vqa_rad"]
    assert main(["eval", "prepare", "vqa_rad", "--source", str(source), "--output", str(tmp_path / "v")]) == 0
    preds = tmp_path / "p.jsonl"
    preds.write_text(json.dumps({"data_source": "vqa_rad", "index": 0, "response": "no"}) + "\n")
    base = ["eval", "score", "--data", str(tmp_path / "v"), "--run", f"m={preds}", "--output", str(tmp_path / "r")]
    assert main([*base, "--judge-model", "grader"]) == 2
    assert main([*base, "--judge-url", "http://127.0.0.1:9/v1", "--judge-model", "g", "--judge-timeout", "2"]) == 2
    assert "unreachable" in capsys.readouterr().err


@pytest.mark.parametrize(("content", "ok"), [
    ('{"correct": false, "rationale": "other organ"}', True),
    ('```json\n{"correct": true}\n```', True),  # a fenced reply; the rationale is optional
    ('{"correct": "yes"}', False),  # not a boolean
    ("[true]", False),
    ("correct", False),
])
def test_answer_verdicts_are_checked(content: str, ok: bool) -> None:
    if ok:
        assert isinstance(parse_answer_verdict(content)["correct"], bool)
    else:
        with pytest.raises(JudgeReplyError):
            parse_answer_verdict(content)


def test_layouts_cover_every_benchmark() -> None:
    from medverl.eval.benchmarks import READERS

    assert set(LAYOUTS) == set(READERS.names())


class _Asked:
    """A stand-in judge that records the answers it is shown and calls each right."""

    class config:  # noqa: N801  (the attribute judge_open_answers reads)
        concurrency = 2

    def __init__(self) -> None:
        self.answers: list[str] = []

    def score(self, text: str, images=()) -> JudgeOutcome:
        self.answers.append(text.split("Model's answer: ", 1)[1])
        return JudgeOutcome({"correct": True, "rationale": "same"})


PREFILLED = RewardOptions(think_prefilled=True)


@pytest.mark.parametrize(("response", "options"), [
    ("<think>an opacity</think><answer>Right Upper Lobe</answer>", RewardOptions()),  # case kept
    ("<answer>\n  right upper lobe \t\n</answer>", RewardOptions()),  # whitespace around the answer
    ("<answer>left</answer> then <answer>right</answer>", RewardOptions()),  # two answer blocks: none read
    ("<think>was it <answer>left</answer>?</think><answer>right</answer>", RewardOptions()),  # one inside the think
    ("<think>looking</think><answer>right upper", RewardOptions()),  # unclosed <answer> (truncated)
    ("<think>looking at <answer>right</answer>", RewardOptions()),  # unclosed <think>
    ("<answer>  </answer>", RewardOptions()),  # blank
    ("right upper lobe", RewardOptions()),  # no tags at all
    ("the apex</think><answer>right apex</answer>", PREFILLED),  # the template opened <think>
    ("the apex <answer>right apex</answer>", PREFILLED),  # prefilled think never closed
    ("<answer>" + "x" * 20 + "</answer>", RewardOptions(max_answer_chars=10)),  # longer than the reward reads
])
def test_the_judge_is_shown_the_answer_the_reward_reads(response: str, options: RewardOptions) -> None:
    read: list[str] = []
    register("echo_open", answer_type="open")(lambda answer, golds: read.append(answer) or 1.0)
    score_sample(response, "right upper lobe", {"query_type": "echo_open"}, options)
    judge = _Asked()
    sample = SampleScore("m", "bench", 0, "echo_open", "open", 0.0, 0.0, 0.0, False, "", "")
    rows = {("bench", 0): {"extra_info": {"question": "where?"}, "reward_model": {"ground_truth": "right upper lobe"}}}
    judged = judge_open_answers(judge, [sample], rows, {("bench", 0): response}, options)
    assert judge.answers == read  # the same answer, or neither reads one
    assert judged[0].judge == ("correct" if read else None)
