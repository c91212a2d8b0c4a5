"""``--compat medevalkit`` against MedEvalKit's own verdicts.

tests/data/medevalkit_verdicts.jsonl is a table of 1,048 predictions (responses written for these tests, crossed
with answers and choices of every flow) with the verdict MedEvalKit's code gives each one; every row names the
MedEvalKit file and function whose rule decides it. MMMU rows are read in table order from one generator seeded
as MedEvalKit seeds Python's random (42), so its random letters are the harness's too.
"""

import json
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medverl.eval import medevalkit
from medverl.eval.medevalkit import FLOWS, Verdict, boxed, judge_multi_choice, parse_response, verdict

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
    from medverl.eval.score import score_answer
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
