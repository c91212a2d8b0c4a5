"""`numeric`: one number with an optional medical unit, within a tolerance; hedges, wrong units and junk score 0."""

import json

import pytest

import medverl.rewards.numeric  # noqa: F401  (registers query_type "numeric")
from medverl.rewards import REGISTRY, InvalidReference, compute_score
from medverl.rewards.numeric import (
    MAX_ANSWER_CHARS,
    MAX_NUMBERS,
    numeric,
    read_quantity,
    validate_numeric_reference,
)

TOL_05 = {"abs_tol": 0.5}


@pytest.mark.parametrize(
    ("answer", "gold", "meta", "acc", "reason"),
    [
        # number forms
        ("12", "12", None, 1.0, ""),
        ("12.5", "12.5", None, 1.0, ""),
        ("12.50", "12.5", None, 1.0, ""),  # numerically equal
        ("-3", "-3", None, 1.0, ""),
        ("\u22123", "-3", None, 1.0, ""),  # Unicode minus sign
        ("+3", "3", None, 1.0, ""),
        ("0.45", "0.45", None, 1.0, ""),
        (".45", "0.45", None, 1.0, ""),  # a leading dot is kept
        ("1,000.5", "1000.5", None, 1.0, ""),  # thousands separators
        ("1,000,000", "1e6", None, 1.0, ""),
        ("1.2e3", "1200", None, 1.0, ""),
        ("1.2E3", "1200", None, 1.0, ""),
        ("１２ｍｍ", "12 mm", None, 1.0, ""),  # fullwidth (NFKC)
        ("≈12", "12", None, 1.0, ""),
        ("~12 mm", "12 mm", None, 1.0, ""),
        ("about 12 mm", "12 mm", None, 1.0, ""),
        ("12 mm.", "12 mm", None, 1.0, ""),
        ("**12 mm**", "12 mm", None, 1.0, ""),
        ("The nodule measures 12 mm.", "12 mm", None, 1.0, ""),
        ("A 12-mm nodule", "12 mm", None, 1.0, ""),
        ("T2 hyperintense lesion of 12 mm", "12 mm", None, 1.0, ""),  # "T2" holds no number
        ("结节大小约12毫米", "12 mm", None, 1.0, ""),
        ("3 nodules", "3", None, 1.0, ""),  # a word that is no unit is text
        # units: conversion within a dimension
        ("12mm", "12 mm", None, 1.0, ""),
        ("1.2 cm", "12 mm", None, 1.0, ""),
        ("12 mm", "1.2 cm", None, 1.0, ""),
        ("12 millimeters", "1.2 cm", None, 1.0, ""),
        ("0.012 m", "12 mm", None, 1.0, ""),
        ("12 µm", "0.012 mm", None, 1.0, ""),  # micro sign
        ("12 mm (1.2 cm)", "12 mm", None, 1.0, ""),  # one quantity written twice
        ("45%", "45%", None, 1.0, ""),
        ("45 %", "45%", None, 1.0, ""),
        ("45 percent", "45%", None, 1.0, ""),
        ("45", "45%", None, 1.0, ""),  # no unit: read in the reference's unit
        ("12", "12 mm", None, 1.0, ""),
        ("120 mmHg", "120 mmHg", None, 1.0, ""),
        ("120 mm Hg", "120 mmHg", None, 1.0, ""),
        ("5 cmH2O", "5 cmH2O", None, 1.0, ""),
        ("25°", "25 degrees", None, 1.0, ""),
        # percent and ratio
        ("52%", "0.52", None, 1.0, ""),  # a reference without a unit: percent also matches as a ratio
        ("45%", "45", None, 1.0, ""),  # ... and as written
        ("0.52", "52%", None, 0.0, "0.52 % is 51.48 from 52 %"),  # 0.52 read in percent
        ("0.52", "52%", {"accept_ratio": True}, 1.0, ""),
        ("52", "52%", {"accept_ratio": True}, 1.0, ""),
        ("52%", "0.52", {"unit": "ratio"}, 1.0, ""),
        ("0.52", "0.52", {"unit": "ratio"}, 1.0, ""),
        ("52", "0.52", {"unit": "ratio"}, 0.0, "52 is 51.48 from 0.52"),
        ("1/2", "0.5", None, 1.0, ""),  # a fraction is a ratio
        ("1/2", "50%", None, 1.0, ""),
        ("The ratio is 1 / 2.", "0.5", None, 1.0, ""),
        ("1/2", "12 mm", None, 0.0, "a ratio where mm was expected"),
        # a unit of another dimension
        ("120 mmHg", "120 mm", None, 0.0, "unit mmHg where mm was expected"),
        ("12 mm", "12 mmHg", None, 0.0, "unit mm where mmHg was expected"),
        ("12 mm", "12%", None, 0.0, "unit mm where % was expected"),
        ("5 cmH2O", "5 mmHg", None, 0.0, "unit cmH2O where mmHg was expected"),  # not converted
        ("12 mmol", "12 mm", None, 0.0, "unit mmol where mm was expected"),
        ("12 cm2", "12 cm", None, 0.0, "unit cm2 where cm was expected"),
        ("45 years", "45%", None, 0.0, "unit years where % was expected"),
        ("12 mm", "12", {"unit": "mmHg"}, 0.0, "unit mm where mmHg was expected"),
        # a reference without a unit: the unit is the question's, the answer is compared as written
        ("12 mm", "12", None, 1.0, ""),
        ("1.2 cm", "12", None, 0.0, "1.2 cm is 10.8 from 12"),
        ("1.2 cm", "12", {"unit": "mm"}, 1.0, ""),  # meta.unit: units are checked and converted
        # tolerance
        ("12.8 mm", "12 mm", TOL_05, 0.0, "12.8 mm is 0.8 from 12 mm (tolerance 0.5)"),
        ("12.5 mm", "12 mm", TOL_05, 1.0, ""),  # the bound is inclusive
        ("11.5", "12 mm", TOL_05, 1.0, ""),
        ("1.25 cm", "12 mm", TOL_05, 1.0, ""),  # converted first, then compared in mm
        ("1.3", "1.2", {"abs_tol": 0.1}, 1.0, ""),  # decimal arithmetic: no 0.10000000000000009
        ("1.3", "1.2", None, 0.0, "1.3 is 0.1 from 1.2 (tolerance 0)"),  # default: equal
        ("12.01", "12", None, 0.0, "tolerance 0"),
        ("12.6", "12", {"rel_tol": 0.05}, 1.0, ""),
        ("13", "12", {"rel_tol": 0.05}, 0.0, "13 is 1 from 12 (tolerance 0.6)"),
        ("13", "12", {"rel_tol": 0.05, "abs_tol": 1}, 1.0, ""),  # the larger tolerance
        ("12.4", "1.2 cm", {"unit": "mm", "abs_tol": 0.5}, 1.0, ""),  # meta.unit converts the reference
        ("55", "55%", {"abs_tol": 5}, 1.0, ""),
        ("61%", "55%", {"abs_tol": 5}, 0.0, "61 % is 6 from 55 % (tolerance 5)"),
        # hedges
        ("5 mm or 6 mm", "5 mm", None, 0.0, "more than one number"),
        ("between 5 and 6 mm", "5 mm", None, 0.0, "more than one number"),
        ("5-6 mm", "5 mm", None, 0.0, "more than one number"),
        ("5 - 6 mm", "5 mm", None, 0.0, "more than one number"),
        ("5, 6", "5", None, 0.0, "more than one number"),
        ("5,6", "5", None, 0.0, "more than one number"),  # a list (or a decimal comma, which is not read)
        ("12 mm or 12 cm", "12 mm", None, 0.0, "more than one number"),
        ("12 mm or 12 mmHg", "12 mm", None, 0.0, "more than one number"),
        ("120/80 mmHg", "120 mmHg", None, 0.0, "more than one number"),
        ("12x10 mm", "12 mm", None, 0.0, "more than one number"),
        ("12 × 10 mm", "12 mm", None, 0.0, "more than one number"),
        ("12±2 mm", "12 mm", None, 0.0, "more than one number"),
        # no number
        ("", "12", None, 0.0, "no number"),
        ("twelve", "12", None, 0.0, "no number"),
        ("HER2", "2", None, 0.0, "no number"),
    ],
)
def test_numeric(answer: str, gold: str, meta: dict | None, acc: float, reason: str) -> None:
    verdict = numeric(answer, (gold,), None if meta is None else json.dumps(meta))
    assert verdict.acc == acc, verdict
    assert reason in verdict.reason
    assert bool(verdict.reason) is (acc < 1.0)


@pytest.mark.parametrize(
    ("answer", "golds", "acc"),
    [
        ("6 mm", ("5 mm", "6 mm"), 1.0),
        ("0.6 cm", ("5 mm", "6 mm"), 1.0),
        ("7 mm", ("5 mm", "6 mm"), 0.0),
        ("45%", ("45%", "0.45"), 1.0),
        ("0.45", ("45%", "0.45"), 1.0),  # several golds in place of accept_ratio
    ],
)
def test_several_references(answer: str, golds: tuple, acc: float) -> None:
    assert numeric(answer, golds).acc == acc


def test_reason_names_the_closest_reference() -> None:
    assert numeric("7 mm", ("5 mm", "6 mm")).reason == "7 mm is 1 from 6 mm (tolerance 0)"
    assert numeric("7 mmHg", ("5 mm", "6 mm")).reason == "unit mmHg where mm was expected"


@pytest.mark.parametrize(
    ("answers", "gold", "pred"),
    [
        (("12 mm", "1.2 cm", "12", "12.0 mm", "The nodule measures 12 millimeters."), "12 mm", "12 mm"),
        (("45%", "45", "45.0 %"), "45%", "45 %"),
        (("0.52", "52%", "0.520"), "0.52", "0.52"),  # a matching percent reads as the ratio
        (("12.8 mm", "1.28 cm"), "12 mm", "12.8 mm"),  # wrong answers vote too
    ],
)
def test_pred_is_canonical_in_the_references_unit(answers: tuple, gold: str, pred: str) -> None:
    assert {numeric(answer, (gold,)).pred for answer in answers} == {pred}


def test_pred_is_empty_without_a_number() -> None:
    assert numeric("5 or 6", ("5",)).pred == ""
    assert numeric("none", ("5",)).pred == ""


def test_meta_may_be_a_mapping() -> None:
    assert numeric("12.4 mm", ("12 mm",), {"abs_tol": 0.5}).acc == 1.0
    assert numeric("12.4 mm", ("12 mm",), {}).acc == 0.0


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        ("1e308", "is 1e+308 from 12"),  # finite, but far off
        ("1e309", "not finite"),
        ("1e999999", "not finite"),
        ("1e99999999999", "not finite"),
        ("-1e400", "not finite"),
        ("1e-400", "number out of range"),
        ("1e-99999999999", "number out of range"),
        ("NaN", "not finite"),
        ("nan mm", "not finite"),
        ("inf", "not finite"),
        ("-Infinity", "not finite"),
        ("∞", "not finite"),
        ("1/0", "not finite"),
        ("1" * 65, "longer than 64 digits"),
        ("0." + "1" * 64, "longer than 64 digits"),
        ("1" * 10**6, f"answer longer than {MAX_ANSWER_CHARS} characters"),  # 1 MB of digits
        ("1" * MAX_ANSWER_CHARS, "longer than 64 digits"),
        ("1," * 1000, "more than one number"),
        ("1e" + "9" * 2000, "not finite"),
        (" ".join(map(str, range(10_000))), "characters"),  # 10,000 numbers
        (" ".join(map(str, range(400))), "more than one number"),
        ("12 " * 400, f"more than {MAX_NUMBERS} numbers"),  # one number, repeated
        ("1.2.3", "malformed number"),
        ("\ud800\udfff\ud800", "no number"),  # lone surrogates
        ("\ud800" * MAX_ANSWER_CHARS, "no number"),
        ("\x00\x01\x1b\x7f\x9f\u202e", "no number"),  # control characters
        ("1\x002", "more than one number"),
        ("-" * MAX_ANSWER_CHARS, "no number"),
        ("." * MAX_ANSWER_CHARS, "no number"),
        ("x1" * (MAX_ANSWER_CHARS // 2), f"more than {MAX_NUMBERS} numbers"),
        ("1/" * (MAX_ANSWER_CHARS // 2), f"more than {MAX_NUMBERS} numbers"),  # 1/1 again and again
        ("1x2" * (MAX_ANSWER_CHARS // 3), "more than one number"),
        ("1" + "a" * (MAX_ANSWER_CHARS - 1), "is 11 from 12"),
        ("\u0301" * MAX_ANSWER_CHARS, "no number"),  # combining marks
        ("\ufdfa" * MAX_ANSWER_CHARS, "no number"),  # NFKC expands it 18-fold
    ],
)
def test_bad_output_scores_zero_and_never_raises(answer: str, reason: str) -> None:
    verdict = numeric(answer, ("12",))
    assert verdict.acc == 0.0
    assert reason in verdict.reason


def test_read_quantity() -> None:
    assert str(read_quantity("about 1.2 cm").quantity) == "1.2 cm"
    assert str(read_quantity("12 mm (1.2 cm)").quantity) == "12 mm"
    assert str(read_quantity("12 (12 mm)").quantity) == "12 mm"  # the unit comes from either
    assert str(read_quantity("45% (0.45)").quantity) == "45 %"
    assert read_quantity("12 mm").reason == ""
    assert read_quantity("5 or 6").reason == "more than one number: 5 and 6"


@pytest.mark.parametrize(
    ("golds", "meta", "message"),
    [
        (("about 12",), None, "does not start with a number"),
        (("twelve",), None, "does not start with a number"),
        (("12 or 13",), None, "not one number"),
        (("12 nodules",), None, "not one number"),
        (("5-6 mm",), None, "not one number"),
        (("5,6",), None, "more than one number"),
        (("12 mg",), None, "unit mg is not supported"),
        (("NaN",), None, "does not start with a number"),
        (("1e999",), None, "not finite"),
        (("1/0",), None, "not finite"),
        (("1" * 100,), None, "longer than 64 digits"),
        (("12 mm", "oops"), None, "'oops'"),  # every gold is checked
        (("12 mm",), {"abs_tol": -1}, "abs_tol"),
        (("12 mm",), {"rel_tol": "5%"}, "rel_tol"),
        (("12 mm",), {"abs_tol": True}, "abs_tol"),
        (("12 mm",), {"abs_tol": float("inf")}, "abs_tol"),
        (("12 mm",), {"abs_tol": float("nan")}, "abs_tol"),
        (("12 mm",), {"abs_tol": 10**400}, "abs_tol"),
        (("12 mm",), {"tolerance": 0.5}, "abs_tol"),  # a likely misspelling is not silently ignored
        (("12 mm",), {"unit": "inch"}, "not a known unit"),
        (("12 mm",), {"unit": 3}, "unit"),
        (("12 mm",), {"unit": "mmHg"}, "does not convert"),
        (("12 mm",), {"accept_ratio": "yes"}, "accept_ratio"),
        (("12 mm",), "[1, 2]", "JSON object"),
        (("12 mm",), "{not json", "JSON object"),
    ],
)
def test_references_no_answer_can_match(golds: tuple, meta: object, message: str) -> None:
    if isinstance(meta, dict):
        meta = json.dumps(meta)
    with pytest.raises(InvalidReference, match=message):
        validate_numeric_reference(golds, meta)


@pytest.mark.parametrize(
    ("golds", "meta"),
    [
        (("12", "12 mm", "1.2 cm", "12mm.", "-3", "+3", ".45", "1,000.5", "1.2e3"), None),
        (("45%", "45 %", "120 mmHg", "5 cmH2O", "25°", "0.012 mm", "1/2", "12毫米"), None),
        (("12",), {"abs_tol": 0.5, "rel_tol": 0.05, "unit": "cm", "accept_ratio": False}),
        (("0.52",), {"unit": "ratio"}),
        (("45%",), {"unit": "ratio"}),  # percent converts to a ratio
        (("12 mm",), {"synonyms": {"a": ["b"]}}),  # other rewards' keys are not ours to check
    ],
)
def test_valid_references(golds: tuple, meta: dict | None) -> None:
    validate_numeric_reference(golds, None if meta is None else json.dumps(meta))


def test_registered_as_a_closed_answer() -> None:
    spec = REGISTRY.get("numeric")
    assert spec.answer_type == "closed"
    assert spec.extra_info_keys == ("meta",)
    assert spec.validate is validate_numeric_reference


def _score(answer: str, ground_truth: str, meta: dict | None = None) -> dict:
    extra_info = {"query_type": "numeric"}
    if meta is not None:
        extra_info["meta"] = json.dumps(meta)
    return compute_score(data_source="example_cxr", solution_str=f"<think>x</think><answer>{answer}</answer>",
                         ground_truth=ground_truth, extra_info=extra_info)


def test_scoring_through_compute_score() -> None:
    right = _score("12 mm", "1.2 cm", {"abs_tol": 0.05})
    assert right == {"score": 1.0, "acc": 1.0, "format": 1.0, "pred": "1.2 cm", "reason": ""}
    close = _score("12.3 mm", "12 mm", {"abs_tol": 0.5})
    assert (close["acc"], close["pred"]) == (1.0, "12.3 mm")
    wrong = _score("13 mm", "12 mm", {"abs_tol": 0.5})
    assert wrong["acc"] == 0.0
    assert wrong["score"] == pytest.approx(0.1)  # the format part only
    assert wrong["reason"] == "13 mm is 1 from 12 mm (tolerance 0.5)"
    assert _score("6 mm", '["5 mm", "6 mm"]')["acc"] == 1.0  # a JSON list: several references
    assert _score("5 or 6 mm", '["5 mm", "6 mm"]')["reason"].startswith("more than one number")
    assert _score("12", "12 mm")["acc"] == 1.0  # no meta at all


@pytest.mark.parametrize(("ground_truth", "meta"), [("about 12", None), ("12 mm", {"abs_tol": -1})])
def test_invalid_reference_raises_through_compute_score(ground_truth: str, meta: dict | None) -> None:
    with pytest.raises(InvalidReference):
        _score("12 mm", ground_truth, meta)
