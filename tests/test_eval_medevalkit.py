"""``--compat medevalkit`` against MedEvalKit's own verdicts.

tests/data/medevalkit_verdicts.jsonl is a table of 1,048 predictions (responses written for these tests, crossed
with answers and choices of every flow) with the verdict MedEvalKit's code gives each one; every row names the
MedEvalKit file and function whose rule decides it. MMMU rows are read in table order from one generator seeded
as MedEvalKit seeds Python's random (42), so its random letters are the harness's too.
"""

import json
import math
import random
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medverl.eval import medevalkit
from medverl.eval.medevalkit import FLOWS, Verdict, boxed, judge_multi_choice, open_metrics, parse_response, verdict

TABLE = Path(__file__).parent / "data" / "medevalkit_verdicts.jsonl"


def _table() -> list[dict]:
    return [json.loads(line) for line in TABLE.read_text(encoding="utf-8").splitlines()]


def test_compat_agrees_with_medevalkit_on_the_table() -> None:
    rows = _table()
    rng = random.Random(medevalkit.MEDEVALKIT_SEED)
    agree = sum(verdict({"flow": r["flow"], **r["view"]}, r["response"], rng).correct == r["expected"] for r in rows)
    assert len(rows) == 1048 and {r["flow"] for r in rows} == set(FLOWS)
    assert all(r["rule"].startswith("utils/") for r in rows)  # each verdict cites MedEvalKit's file::function
    assert agree / len(rows) >= 0.99, f"{agree}/{len(rows)}"
    assert 100 < sum(r["expected"] for r in rows) < len(rows) - 100  # both verdicts are well represented


VQA = {"flow": "vqa"}
SLAKE_CLOSED, SLAKE_OPEN = {"flow": "slake", "answer_type": "CLOSED"}, {"flow": "slake", "answer_type": "OPEN"}
OMNI = {"flow": "multi_choice_tagged", "choices": ["A. Nevus", "B. Melanoma", "C. Psoriasis", "D. Eczema"]}
PMC = {"flow": "multi_choice", "choices": [" A:MRI", " B: Left Anterior Descending ", " C:CT", " D:PET"]}


@pytest.mark.parametrize(("view", "answer", "response", "correct"), [
    # utils/utils.py judge_judgement: substrings, so "nodule" reads as "no"
    (VQA, "no", "There is a nodule", True),
    # judge_judgement: both "yes" and "no" present -> wrong ("not" holds "no")
    (VQA, "yes", "yes, not enlarged", False),
    # utils/VQA_RAD/VQA_RAD.py cal_metrics: the box wins over the <answer> span and the reasoning
    (VQA, "yes", "<think>no idea</think><answer>no</answer> \\boxed{yes}", True),
    # judge_open_end_vqa em: nothing stripped after the parse, so the lead-in's space breaks the match
    (VQA, "liver", "The answer is liver", False),
    (VQA, "liver", "Liver.", False),  # em keeps the full stop
    # utils/SLAKE/SLAKE.py cal_metrics: "Yes" is not in ["yes", "no"], so judge_close_end_vqa decides
    (SLAKE_CLOSED, "Yes", "yes", True),
    (SLAKE_CLOSED, "Yes", "Yes, there is", False),
    (SLAKE_CLOSED, "否", "否", True),  # Chinese answers by exact match
    (SLAKE_CLOSED, "Left", "Liver or spleen", False),  # no credit for token overlap
    (SLAKE_CLOSED, "Left", "left.", True),  # judge_close_end_vqa drops full stops
    (SLAKE_OPEN, "Pneumonia", "pneumonia", True),
    (SLAKE_OPEN, "Pneumonia", "pneumonia\n", False),  # the open rule keeps the newline
    # utils/utils.py judge_multi_choice: cut at the first "." -> the letter
    (OMNI, "B", "B. Nevus", True),
    (OMNI, "B", "", False),  # empty: every similarity is 0 -> A
    (OMNI, "A", "", True),
    (PMC, "B", "B: Left Anterior Descending", True),  # after ":" -> the most similar choice
    (OMNI, "B", "Reasoning first.\n\nB. Melanoma is correct", True),  # the last paragraph
])
def test_rules_and_their_quirks(view: dict, answer: str, response: str, correct: bool) -> None:
    assert verdict({**view, "answer": answer}, response, random.Random(0)).correct is correct


def test_more_than_ten_options_do_not_crash() -> None:
    choices = [f"{chr(65 + i)}. option {i}" for i in range(14)]
    assert judge_multi_choice(choices, "M", "M").correct
    assert judge_multi_choice(choices, "M", "The answer is m. option 12").correct
    got = verdict({"flow": "mmmu", "question_type": "multiple-choice", "answer": "N",
                   "choices": [f"o{i}" for i in range(14)]}, "(N)", random.Random(0))
    assert got == Verdict(True, "N")


def test_mmmu_random_letter_follows_the_seed_and_open_questions_never_score() -> None:
    view = {"flow": "mmmu", "question_type": "multiple-choice", "answer": "A", "choices": ["x", "y", "z", "w"]}
    first = [verdict(view, "no idea", random.Random(42)).pred for _ in range(3)]
    assert first == [random.Random(42).choice("ABCD")] * 3
    picked = verdict(view, "hmm", random.Random(42))
    assert picked.fallback == "random letter"
    # utils/MMMU/eval_utils.py eval_open walks the response string one character at a time
    assert not verdict({"flow": "mmmu", "question_type": "open", "answer": "12"}, "12", random.Random(0)).correct


def test_parse_and_box_helpers() -> None:
    assert boxed("no box") == "None" and boxed("\\boxed{a{b}c}") == "a{b}c"
    assert parse_response("**Answer**: B") == " b"  # the lead-ins split in order, the remainder kept as is
    assert parse_response("<answer>X</answer><answer>Y</answer>") == "x y"


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(sorted(FLOWS)), st.text(max_size=60), st.sampled_from(["A", "yes", "Left", ""]))
def test_no_response_raises(flow: str, response: str, answer: str) -> None:
    view = {"flow": flow, "answer": answer, "answer_type": "CLOSED", "question_type": "multiple-choice",
            "choices": ["A. x", "B. y"]}
    result = verdict(view, response, random.Random(1))
    assert isinstance(result.correct, bool)


def test_compat_scores_prepared_rows_with_their_harness_view(tmp_path: Path) -> None:
    from medverl.cli import main
    from medverl.eval.samples import write_samples
    from medverl.eval.score import load_rows, score_predictions

    sources = write_samples(tmp_path / "src")
    dirs = []
    for name in ("slake", "mmmu_hm"):
        dirs.append(tmp_path / name)
        assert main(["eval", "prepare", name, "--source", str(sources[name]), "--output", str(dirs[-1])]) == 0
    rows = load_rows(dirs)
    predictions = {("slake", 0): "yes", ("slake", 1): "否", ("slake", 2): "<answer>Left</answer>",
                   ("mmmu_hm", 0): "I cannot tell", ("mmmu_hm", 2): "\\boxed{12}"}
    runs = [{(s.data_source, s.index): s for s in score_predictions(rows, predictions, "m", compat="medevalkit")}
            for _ in range(2)]
    first = runs[0]
    assert first[("slake", 0)].acc == 0.0  # "No" is answered "yes"
    assert first[("slake", 1)].acc == 1.0 and first[("slake", 2)].acc == 1.0
    assert first[("mmmu_hm", 0)].reason == "fallback: random letter"
    assert first[("mmmu_hm", 0)].pred == random.Random(42).choice("ABC")  # the first draw of the seed
    assert first[("mmmu_hm", 2)].acc == 0.0  # open: never scores under MedEvalKit's rule path
    assert [s.pred for s in runs[0].values()] == [s.pred for s in runs[1].values()]  # seeded: the same each run


def test_rows_prepared_without_a_harness_view_get_one_from_their_query_type() -> None:
    from medverl.eval.scoring import score_answer
    from medverl.rewards import RewardOptions

    info = {"query_type": "multiple_choice", "options": ["Nevus", "Melanoma"], "meta": "{}"}
    got = score_answer("<answer>B. Melanoma</answer>", "B", info, RewardOptions(), compat="medevalkit")
    assert got.acc == 1.0 and got.pred == "b"
    info = {"query_type": "yes_no", "meta": "{}"}
    assert score_answer("a nodule", "no", info, RewardOptions(), compat="medevalkit").acc == 1.0


def test_omnimedvqa_harness_answer_is_the_last_matching_option(tmp_path: Path) -> None:
    from medverl.eval.benchmarks import read_omnimedvqa

    qa = tmp_path / "QA_information" / "Open-access"
    qa.mkdir(parents=True)
    (qa / "x.json").write_text(json.dumps([
        {"question": "q", "gt_answer": "CT", "option_A": "CT", "option_B": "CT", "image_path": "i.png",
         "modality": "CT"},
        {"question": "q", "gt_answer": "PET", "option_A": "CT", "option_B": "MRI", "image_path": "i.png"}]))
    first, second = read_omnimedvqa(tmp_path)
    assert first["answer"] == "A" and first["meta"]["medevalkit"]["answer"] == "B"
    assert second["meta"]["medevalkit"]["answer"] == "PET"  # no option matches: MedEvalKit keeps the text


# --- open-question metrics: utils/utils.py judge_open_end_vqa (nltk==3.9.1 sentence_bleu, rouge==1.0.1 Rouge) ------

TINY = sys.float_info.min  # NLTK's method0 puts this in place of a zero n-gram precision: never exactly 0
ROUGE_ONE = 2.0 * (1.0 / (2.0 + 1e-8))  # rouge's F of p = r = 1: 2pr / (p + r + 1e-8), a hair under 1


def _bleu(precisions: list[float], bp: float = 1.0) -> float:
    """NLTK's arithmetic, written out: bp * exp(fsum(1/n * log p_k))."""
    n = len(precisions)
    return bp * math.exp(math.fsum((1 / n) * math.log(p) for p in precisions))


def _rouge_f(p: float, r: float) -> float:
    return 2.0 * ((p * r) / (p + r + 1e-8))


def test_open_metrics_identical_answer_scores_the_maximum_each_metric_allows() -> None:
    got = open_metrics({"flow": "vqa", "answer": "Right upper lobe"}, "<answer>right upper lobe</answer>")
    assert got["em"] is True
    assert got["bleu1"] == got["bleu2"] == got["bleu3"] == 1.0
    assert got["bleu4"] == _bleu([1, 1, 1, TINY]) and 0 < got["bleu4"] < 1e-44  # three words have no 4-gram
    assert got["rouge1"] == got["rouge2"] == got["rougel"] == ROUGE_ONE < 1.0
    assert (got["precision"], got["recall"], got["f1"]) == (1.0, 1.0, 1.0)


def test_open_metrics_disjoint_answer_scores_zero() -> None:
    got = medevalkit.judge_open_end_vqa("spleen", "liver")
    assert got == {"em": False, "bleu1": 0, "bleu2": 0, "bleu3": 0, "bleu4": 0, "rouge1": 0.0, "rouge2": 0.0,
                   "rougel": 0.0, "precision": 0, "recall": 0, "f1": 0}
    assert type(got["bleu1"]) is int  # NLTK returns the int 0 when no unigram matches


def test_open_metrics_partial_answer_by_medevalkits_formulas() -> None:
    # answer "right upper lobe" (3 tokens), response "the right lower lobe" (4): "right" and "lobe" shared
    got = open_metrics({"flow": "vqa", "answer": "right upper lobe"}, "<answer>The right lower lobe</answer>")
    assert got["em"] is False
    assert got["bleu1"] == _bleu([2 / 4]) == pytest.approx(0.5)  # hypothesis longer: brevity penalty 1
    assert got["bleu2"] == _bleu([2 / 4, TINY]) == pytest.approx(1.0547686614863434e-154, rel=1e-12)
    assert got["bleu4"] == _bleu([2 / 4, TINY, TINY, TINY])  # no shared bigram: tiny, not 0
    assert got["rouge1"] == _rouge_f(2 / 4, 2 / 3) == pytest.approx(4 / 7, abs=1e-8)
    assert got["rouge2"] == 0.0
    assert got["rougel"] == _rouge_f(2 / 4, 2 / 3)  # LCS {right, lobe}
    # calculate_f1 returns (f1, precision, recall); judge_open_end_vqa unpacks it as (precision, recall, f1)
    assert (got["precision"], got["recall"], got["f1"]) == (2 * (1 / 2 * 2 / 3) / (1 / 2 + 2 / 3), 1 / 2, 2 / 3)
    assert medevalkit.calculate_f1("the right lower lobe", "right upper lobe") == (got["precision"], 0.5, 2 / 3)


def test_open_metrics_brevity_penalty_and_clipping() -> None:
    short = medevalkit.judge_open_end_vqa("right upper lobe", "upper lobe")  # 2 of 3 words: bp = exp(1 - 3/2)
    assert short["bleu1"] == _bleu([1.0], bp=math.exp(1 - 3 / 2)) and short["bleu2"] == _bleu([1, 1], math.exp(-0.5))
    repeated = medevalkit.judge_open_end_vqa("lung", "lung lung")
    assert repeated["bleu1"] == 0.5  # BLEU clips the repeat
    assert repeated["rouge1"] == ROUGE_ONE and repeated["f1"] == 1.0  # ROUGE's n-grams and the F1 are sets
    assert medevalkit.judge_open_end_vqa("lung", "lung")["rouge2"] == 0.0  # one word: no bigram, even when equal


def test_open_metrics_tokenization_quirks() -> None:
    assert medevalkit.tokenize("Left  Lung.") == ["left", "", "lung", "."]
    assert medevalkit.tokenize("") == [""]
    upper = medevalkit.judge_open_end_vqa("Right Upper Lobe", "RIGHT UPPER LOBE")  # everything lower-cased
    assert upper["em"] is True and upper["bleu3"] == 1.0
    stop = medevalkit.judge_open_end_vqa("right upper lobe", "right upper lobe.")
    assert stop["em"] is False
    assert stop["bleu3"] == _bleu([3 / 4, 2 / 3, 1 / 2])  # "." is its own BLEU token
    assert stop["rouge1"] == ROUGE_ONE  # ROUGE splits sentences on "." and drops the empty piece
    assert (stop["recall"], stop["f1"]) == (2 / 3, 2 / 3)  # F1's whitespace tokens keep "lobe."
    comma = medevalkit.judge_open_end_vqa("right upper lobe", "right, upper lobe")
    assert comma["bleu1"] == _bleu([2 / 3], bp=1.0) and comma["recall"] == 2 / 3  # "right," is not "right"
    # the lead-in's space survives parse_response: an empty BLEU token, invisible to ROUGE and F1
    lead = medevalkit.judge_open_end_vqa("right upper lobe", "the answer is right upper lobe")
    assert lead["em"] is False and lead["bleu1"] == _bleu([3 / 4])
    assert lead["rouge1"] == ROUGE_ONE and lead["precision"] == 1.0


def test_open_metrics_raise_where_medevalkit_raises() -> None:
    for response in ("", ".", "The answer is", "<answer>.</answer>"):  # no ROUGE sentence left
        assert open_metrics({"flow": "vqa", "answer": "liver"}, response) == {
            "error": "ValueError: Hypothesis is empty."}, response
    with pytest.raises(ValueError, match="Hypothesis is empty"):
        medevalkit.rouge("...", "liver")
    with pytest.raises(ValueError, match="Reference is empty"):
        medevalkit.rouge("liver", "")
    # SLAKE strips nothing: whitespace passes ROUGE (the sentence ""), then calculate_f1's bare 0 cannot be unpacked
    slake = {"flow": "slake", "answer_type": "OPEN", "answer": "Liver"}
    assert medevalkit.calculate_f1("   ", "liver") == 0
    assert open_metrics(slake, "   ") == {"error": "TypeError: cannot unpack non-iterable int object"}
    assert open_metrics({"flow": "vqa", "answer": "liver"}, "   ") == {"error": "ValueError: Hypothesis is empty."}


def test_open_metrics_only_where_medevalkit_scores_open_questions() -> None:
    assert open_metrics({"flow": "vqa", "answer": "Yes"}, "yes") is None  # yes/no: judge_judgement
    assert open_metrics({"flow": "slake", "answer_type": "CLOSED", "answer": "Left"}, "left") is None
    assert open_metrics({"flow": "slake", "answer_type": "OPEN", "answer": "Left"}, "left")["em"] is True
    assert open_metrics({"flow": "mmmu", "question_type": "open", "answer": "12"}, "12") is None
    assert open_metrics(OMNI | {"answer": "B"}, "B") is None


def test_open_metrics_aggregate_as_cal_metrics_does() -> None:
    records = [medevalkit.judge_open_end_vqa("liver", "liver"), medevalkit.judge_open_end_vqa("spleen", "liver")]
    got = medevalkit.aggregate_open_metrics(records)
    assert got["total"] == 2 and got["errors"] == 0
    assert got["em"] == 0.5 and got["bleu1"] == 0.5 and got["rouge1"] == ROUGE_ONE / 2 and got["recall"] == 0.5
    failed = medevalkit.aggregate_open_metrics([*records, {"error": "ValueError: Hypothesis is empty."}])
    assert failed["total"] == 3 and failed["errors"] == 1  # MedEvalKit's cal_metrics stops: no metrics written
    assert all(failed[k] is None for k in medevalkit.OPEN_METRIC_KEYS)


def test_compat_report_carries_the_open_metrics(tmp_path: Path) -> None:
    from medverl.cli import main
    from medverl.eval.samples import write_samples

    sources = write_samples(tmp_path / "src")
    dirs = []
    for name in ("vqa_rad", "path_vqa", "slake"):
        dirs.append(str(tmp_path / name))
        assert main(["eval", "prepare", name, "--source", str(sources[name]), "--output", dirs[-1]]) == 0
    lines = [("vqa_rad", 0, "<answer>no</answer>"), ("vqa_rad", 2, "<answer>The right lower lobe</answer>"),
             ("path_vqa", 0, "<answer>yes</answer>"),  # path_vqa 1 (open) has no prediction: scored as ""
             ("slake", 3, "<answer>pneumonia</answer>"), ("slake", 4, "<answer>肺</answer>")]
    predictions = tmp_path / "p.jsonl"
    predictions.write_text("".join(json.dumps({"data_source": b, "index": i, "response": r}, ensure_ascii=False)
                                   + "\n" for b, i, r in lines), encoding="utf-8")
    common = ["eval", "score", "--data", *dirs, "--run", f"m={predictions}"]
    assert main([*common, "--output", str(tmp_path / "c"), "--compat", "medevalkit"]) in (0, 1)
    metrics = json.loads((tmp_path / "c" / "metrics.json").read_text())["m"]
    vqa = metrics["vqa_rad"]["medevalkit_open"]
    assert (vqa["total"], vqa["errors"], vqa["em"]) == (1, 0, 0.0)
    assert vqa["bleu1"] == _bleu([2 / 4]) and vqa["rouge1"] == _rouge_f(2 / 4, 2 / 3) and vqa["f1"] == 2 / 3
    slake = metrics["slake"]["medevalkit_open"]  # the two OPEN questions, both answered exactly
    assert (slake["total"], slake["em"], slake["bleu1"], slake["rouge2"]) == (2, 1.0, 1.0, 0.0)
    assert slake["rouge1"] == ROUGE_ONE and slake["bleu2"] == _bleu([1, TINY])
    path = metrics["path_vqa"]["medevalkit_open"]
    assert (path["total"], path["errors"], path["bleu1"]) == (1, 1, None)  # "" fails MedEvalKit's ROUGE
    samples = [json.loads(line) for line in (tmp_path / "c" / "samples.jsonl").read_text().splitlines()]
    by_key = {(s["data_source"], s["index"]): s for s in samples}
    assert by_key[("vqa_rad", 2)]["medevalkit_open"]["bleu1"] == vqa["bleu1"]
    assert "medevalkit_open" not in by_key[("vqa_rad", 0)]  # closed: MedEvalKit has no open metrics for it
    assert by_key[("path_vqa", 1)]["medevalkit_open"] == {"error": "ValueError: Hypothesis is empty."}
    report = (tmp_path / "c" / "report.md").read_text()
    assert "MedEvalKit's open-question metrics" in report
    assert "| vqa_rad | 1 | 0.0000 | 0.5000 |" in report and "| path_vqa | 1 | - |" in report
    # the default scoring is untouched
    assert main([*common, "--output", str(tmp_path / "d")]) in (0, 1)
    assert "medevalkit_open" not in (tmp_path / "d" / "metrics.json").read_text()
    assert "medevalkit_open" not in (tmp_path / "d" / "samples.jsonl").read_text()
    assert "MedEvalKit's open-question metrics" not in (tmp_path / "d" / "report.md").read_text()
