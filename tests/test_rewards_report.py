"""`open_text`: report-style answers scored by ROUGE-L F1 or BLEU."""

import json
import math
import random

import pytest

import medverl.rewards.report  # noqa: F401  (registers open_text)
from medverl.rewards import REGISTRY, InvalidReference, compute_score, tokens
from medverl.rewards.report import (
    MAX_ANSWER_CHARS,
    MAX_PRED_CHARS,
    MAX_TOKENS,
    bleu,
    lcs_length,
    open_text,
    ordered_tokens,
    report_options,
    rouge_l_f1,
    validate_report_reference,
)

BLEU = json.dumps({"metric": "bleu"})


def _bleu_meta(max_n: int) -> str:
    return json.dumps({"metric": "bleu", "max_n": max_n})


def _dp_lcs(a: list, b: list) -> int:
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The left lung, the LEFT lobe.", ["the", "left", "lung", "the", "left", "lobe"]),  # order and repeats kept
        ("Left lower-lobe pneumonia.", ["left", "lower", "lobe", "pneumonia"]),
        ("右肺下叶", ["右", "肺", "下", "叶"]),  # each CJK character is a token
        ("CT显示右肺", ["ct", "显", "示", "右", "肺"]),
        ("HER2+ 5%", ["her2+", "5"]),  # "+" is a math sign, "%" punctuation (as in text.tokens)
        ("...", []),
    ],
)
def test_ordered_tokens(text: str, expected: list) -> None:
    assert ordered_tokens(text) == expected
    assert frozenset(ordered_tokens(text)) == tokens(text)  # the same rule as text.tokens


def test_bit_parallel_lcs_matches_dynamic_programming() -> None:
    rng = random.Random(0)
    for _ in range(500):
        a = [rng.choice("abc") for _ in range(rng.randint(0, 15))]
        b = [rng.choice("abcd") for _ in range(rng.randint(0, 15))]
        assert lcs_length(a, b) == lcs_length(b, a) == _dp_lcs(a, b)
    a = [rng.choice("ab") for _ in range(200)]
    b = [rng.choice("abc") for _ in range(150)]
    assert lcs_length(a, b) == _dp_lcs(a, b)


@pytest.mark.parametrize(
    ("answer", "golds", "acc"),
    [
        ("No acute cardiopulmonary process.", ("no acute cardiopulmonary process",), 1.0),
        ("no acute process", ("No acute cardiopulmonary process",), 6 / 7),  # LCS 3, 2*3/(3+4)
        ("left lower lobe opacity", ("opacity in the left lower lobe",), 0.6),  # LCS 3, 2*3/(4+6)
        ("lobe lower left", ("left lower lobe",), 1 / 3),  # order matters: LCS 1 (jaccard would give 1.0)
        ("the the the", ("the",), 0.5),  # LCS 1, 2*1/(3+1): repeats are not rewarded
        ("left lung", ("right lung", "left lung"), 1.0),  # best over the references
        ("left lung", ("right lung", "left lower lung"), 0.8),  # 2*1/4 vs 2*2/5
        ("右肺下叶", ("右下肺叶",), 0.75),  # characters: LCS 右下叶 = 3, 2*3/8
        ("右肺 nodule", ("右肺结节",), 2 * 2 / (3 + 4)),
        ("NO ACUTE, process!!", ("no acute process",), 1.0),  # case and punctuation insensitive
        ("Ｎｏ ａｃｕｔｅ process", ("no acute process",), 1.0),  # fullwidth letters
        ("liver", ("spleen",), 0.0),
    ],
)
def test_rouge_l(answer: str, golds: tuple, acc: float) -> None:
    verdict = open_text(answer, golds)
    assert verdict.acc == pytest.approx(acc)
    assert open_text(answer, golds, '{"metric": "rouge_l"}') == verdict  # the default
    assert (verdict.reason == "") == (acc == 1.0)
    if acc < 1.0:
        assert verdict.reason == f"ROUGE-L F1 {math.floor(verdict.acc * 100) / 100:.2f}"


def test_rouge_l_f1_function() -> None:
    assert rouge_l_f1(["a", "b"], [["b", "a"], ["a", "b", "c"]]) == pytest.approx(0.8)
    assert rouge_l_f1([], [["a"]]) == 0.0
    assert rouge_l_f1(["a"], []) == 0.0


@pytest.mark.parametrize(
    ("answer", "golds", "max_n", "acc"),
    [
        ("No acute cardiopulmonary process.", ("no acute cardiopulmonary process",), 4, 1.0),  # identical
        ("liver", ("spleen",), 4, 0.0),  # disjoint
        ("hepatic cyst", ("renal mass seen",), 4, 0.0),
        # p1 5/6, p2 (3+1)/(5+1), p3 (1+1)/(4+1), p4 (0+1)/(3+1), no brevity penalty: (1/18) ** (1/4)
        ("the cat sat on the mat", ("the cat is on the mat",), 4, (1 / 18) ** 0.25),
        ("the cat sat on the mat", ("the cat is on the mat",), 2, (5 / 6 * 4 / 6) ** 0.5),
        ("the cat sat on the mat", ("the cat is on the mat",), 1, 5 / 6),
        # every precision 1 (smoothed 1/1 where the answer has no n-grams), brevity penalty exp(1 - 3/2)
        ("left lung", ("left lung opacity",), 4, math.exp(-0.5)),
        ("lung", ("lung",), 4, 1.0),  # one token: p2..p4 are (0+1)/(0+1)
        ("右肺下叶", ("右肺下叶",), 4, 1.0),
        # 右肺 结节 vs 右肺结节: CJK characters, identical after tokenization
        ("右肺 结节", ("右肺结节。",), 4, 1.0),
        ("NO ACUTE, process!!", ("no acute process",), 4, 1.0),
    ],
)
def test_bleu(answer: str, golds: tuple, max_n: int, acc: float) -> None:
    meta = BLEU if max_n == 4 else _bleu_meta(max_n)
    verdict = open_text(answer, golds, meta)
    assert verdict.acc == pytest.approx(acc)
    assert (verdict.reason == "") == (acc == 1.0)
    label = "BLEU" if max_n == 4 else f"BLEU-{max_n}"
    if acc < 1.0:
        assert verdict.reason == f"{label} {math.floor(verdict.acc * 100) / 100:.2f}"


def test_bleu_identical_is_exactly_one() -> None:
    text = "Heart size is normal. No focal consolidation, pleural effusion or pneumothorax."
    assert open_text(text, (text,), BLEU).acc == 1.0
    assert open_text(text, (text,)).acc == 1.0


@pytest.mark.parametrize(
    ("answer", "golds", "acc"),
    [
        # clipping over the references jointly: "the" counts up to 2 (the 2nd reference), r = 3 (closest)
        ("the the the", ("the cat", "the the dog"), 2 / 3),
        ("the the the", ("the cat",), 1 / 3),  # one reference: clipped to 1, r = 2 < c, no penalty
        # n-grams of different references combine: "a b" from the first, "c d" from the second
        ("a b c d", ("a b x", "y c d"), 1.0),
        # closest reference length: c = 2, r = 3 (not 6), BP = exp(1 - 3/2)
        ("left lung", ("left lung opacity", "opacity in the left lung base"), math.exp(-0.5)),
        # ties go to the shorter reference: c = 2, refs 1 and 3 tokens -> r = 1, no penalty
        ("left lung", ("lung", "left lung opacity"), 1.0),
    ],
)
def test_bleu_with_several_references(answer: str, golds: tuple, acc: float) -> None:
    assert open_text(answer, golds, _bleu_meta(1)).acc == pytest.approx(acc)


def test_bleu_function_and_joint_bigrams() -> None:
    # "a b c d" against two references: unigrams all matched (4/4); bigrams "a b", "c d" matched, "b c" not:
    # (2+1)/(3+1); trigrams none: 1/3; 4-grams none: 1/2
    assert bleu("a b c d".split(), ["a b x".split(), "y c d".split()]) == pytest.approx(
        (1 * 3 / 4 * 1 / 3 * 1 / 2) ** 0.25
    )
    assert bleu([], [["a"]]) == 0.0
    assert bleu(["a"], [[]]) == 0.0
    with pytest.raises(ValueError):
        bleu(["a"], [["a"]], max_n=5)


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        ("", "answer has no words"),
        ("   \n\t", "answer has no words"),
        ("...!?", "answer has no words"),
        ("\u200b\ufeff", "answer has no words"),
        ("。，、", "answer has no words"),
        ("x" * 10**6, f"answer longer than {MAX_ANSWER_CHARS} characters"),  # 1 MB
        ("肺" * 10**6, f"answer longer than {MAX_ANSWER_CHARS} characters"),
        ("a " * (MAX_TOKENS + 1), f"answer longer than {MAX_TOKENS} tokens"),
        ("肺" * (MAX_TOKENS + 1), f"answer longer than {MAX_TOKENS} tokens"),
        ("\ud800", "ROUGE-L F1 0.00"),  # a lone surrogate is a token matching nothing
        ("\x00\x01\x7f", "ROUGE-L F1 0.00"),  # control characters
        ("e" + "\u0301" * 5000, "ROUGE-L F1 0.00"),  # a long run of combining marks
        ("\ufdfa" * 1000, "ROUGE-L F1 0.00"),  # NFKC expansion
    ],
)
def test_bad_answers_score_zero_without_raising(answer: str, reason: str) -> None:
    for meta in (None, BLEU):
        verdict = open_text(answer, ("no acute process",), meta)
        assert verdict.acc == 0.0
        assert verdict.reason == (reason.replace("ROUGE-L F1", "BLEU") if meta else reason)
        assert len(verdict.pred) <= MAX_PRED_CHARS
        verdict.pred.encode("utf-8")  # storable: no lone surrogate


def test_answers_at_the_caps_are_scored() -> None:
    answer = " ".join(["effusion"] * MAX_TOKENS)
    assert open_text(answer, (answer,)).acc == 1.0
    assert open_text(answer, (answer,), BLEU).acc == 1.0
    assert open_text(answer, ("effusion",)).acc == pytest.approx(2 / (MAX_TOKENS + 1))


def test_pred_is_the_bounded_normalized_answer() -> None:
    assert open_text("  No ACUTE process. ", ("no acute process",)).pred == "no acute process"
    assert open_text("word " * 1000, ("word",)).pred == ("word " * 1000)[:MAX_PRED_CHARS]
    assert open_text("left\ud800 lung", ("left lung",)).pred == "left? lung"
    assert open_text("left\ud800 lung", ("left lung",)).acc == pytest.approx(2 * 1 / (2 + 2))


@pytest.mark.parametrize(
    ("golds", "meta", "match"),
    [
        (("...",), None, "no words"),
        (("ok", "。"), None, "no words"),
        (("a " * (MAX_TOKENS + 1),), None, f"at most {MAX_TOKENS}"),
        (("ok",), '{"metric": "meteor"}', "metric"),
        (("ok",), '{"metric": 3}', "metric"),
        (("ok",), '{"metric": "bleu", "max_n": 5}', "max_n"),
        (("ok",), '{"metric": "bleu", "max_n": 0}', "max_n"),
        (("ok",), '{"metric": "bleu", "max_n": "2"}', "max_n"),
        (("ok",), '{"metric": "bleu", "max_n": 2.0}', "max_n"),
        (("ok",), '{"metric": "bleu", "max_n": true}', "max_n"),
        (("ok",), "not json", "JSON object"),
        (("ok",), "[1, 2]", "JSON object"),
    ],
)
def test_validator_rejects(golds: tuple, meta: object, match: str) -> None:
    with pytest.raises(InvalidReference, match=match):
        validate_report_reference(golds, meta)


@pytest.mark.parametrize(
    "meta",
    [None, "", "{}", '{"metric": "rouge_l"}', '{"metric": "ROUGE-L"}', '{"metric": "bleu", "max_n": 1}',
     {"metric": "bleu"}, '{"metric": "rouge_l", "answer_type": "open", "other": 1}'],
)
def test_validator_accepts(meta: object) -> None:
    validate_report_reference(("No acute process.", "右肺结节"), meta)


def test_report_options() -> None:
    assert report_options('{"metric": "Rouge_L"}').metric == "rouge_l"
    assert report_options({"metric": "bleu", "max_n": 3}) == ("bleu", 3)
    assert report_options("{}") == ("rouge_l", 4)


def test_registered_as_open() -> None:
    spec = REGISTRY.get("open_text")
    assert spec.answer_type == "open"
    assert spec.extra_info_keys == ("meta",)
    assert spec.validate is validate_report_reference


def _score(answer: str, ground_truth: str, meta: dict | None = None) -> dict:
    extra_info = {"query_type": "open_text"}
    if meta is not None:
        extra_info["meta"] = json.dumps(meta)
    return compute_score(data_source="example_cxr", solution_str=f"<think>x</think><answer>{answer}</answer>",
                         ground_truth=ground_truth, extra_info=extra_info)


@pytest.mark.parametrize(
    ("answer", "ground_truth", "meta", "acc"),
    [
        ("No acute cardiopulmonary process.", "No acute cardiopulmonary process", None, 1.0),
        ("no acute process", "No acute cardiopulmonary process", None, 6 / 7),
        ("no acute process", "No acute cardiopulmonary process", {"metric": "rouge_l"}, 6 / 7),
        ("left lung", '["right lung", "left lung"]', None, 1.0),  # a JSON list: several references
        ("the cat sat on the mat", "the cat is on the mat", {"metric": "bleu"}, (1 / 18) ** 0.25),
        ("the the the", '["the cat", "the the dog"]', {"metric": "bleu", "max_n": 1}, 2 / 3),
        ("liver", "spleen", {"metric": "bleu"}, 0.0),
        ("右肺下叶", "右下肺叶", None, 0.75),
    ],
)
def test_compute_score(answer: str, ground_truth: str, meta: dict | None, acc: float) -> None:
    result = _score(answer, ground_truth, meta)
    assert result["format"] == 1.0
    assert result["acc"] == pytest.approx(acc)
    assert result["score"] == pytest.approx(0.1 + 0.9 * acc)
    assert (result["reason"] == "") == (acc == 1.0)


def test_compute_score_bad_output_and_bad_rows() -> None:
    result = _score("...", "no acute process")
    assert (result["acc"], result["reason"]) == (0.0, "answer has no words")
    assert _score("x" * 10**6, "no acute process")["acc"] == 0.0  # cut by max_answer_chars first
    with pytest.raises(InvalidReference, match="metric"):
        _score("ok", "ok", {"metric": "cider"})
    with pytest.raises(InvalidReference, match="no words"):
        _score("ok", "!!!")
