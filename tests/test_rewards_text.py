"""Free-text and yes/no rewards, normalisation and ground-truth parsing."""

import unicodedata

import numpy as np
import pytest

from medverl.rewards import InvalidReference, normalize, parse_ground_truth, tokens, yes_no_polarity
from medverl.rewards.match import exact_match, jaccard, validate_text_reference
from medverl.rewards.text import is_blank
from medverl.rewards.yes_no import validate_yes_no_reference, yes_no


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("  Pleural   Effusion. ", "pleural effusion"),
        ("**Yes**", "yes"),
        ("（左肺）", "左肺"),  # fullwidth brackets
        ("ＣＴ", "ct"),  # fullwidth letters
        ("HER2+", "her2+"),  # a sign that changes the answer stays
        ("HER2-", "her2-"),
        ("5%", "5%"),
        ("Straße", "strasse"),  # case-fold, not lower
        ("\u200bB\ufeff", "b"),  # invisible characters
        ("line\nbreak\ttab", "line break tab"),
    ],
)
def test_normalize(text: str, expected: str) -> None:
    assert normalize(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Left lower-lobe pneumonia.", {"left", "lower", "lobe", "pneumonia"}),
        ("右肺下叶", {"右", "肺", "下", "叶"}),  # each CJK character is a token
        ("CT显示右肺", {"ct", "显", "示", "右", "肺"}),  # mixed scripts
        ("T2-weighted, FLAIR", {"t2", "weighted", "flair"}),
        ("...", set()),
    ],
)
def test_tokens(text: str, expected: set) -> None:
    assert tokens(text) == expected


@pytest.mark.parametrize(
    ("answer", "golds", "acc"),
    [
        ("left lung", ("Left lung",), 1.0),
        ("left lung", ("left lower lobe",), 0.25),
        ("The left lung", ("left lung",), 2 / 3),
        ("left lung", ("right lung", "left lung"), 1.0),  # best over acceptable answers
        ("右肺", ("右肺下叶",), 0.5),
        ("liver", ("spleen",), 0.0),
        ("...", ("liver",), 0.0),  # no words at all
    ],
)
def test_jaccard(answer: str, golds: tuple, acc: float) -> None:
    assert jaccard(answer, golds).acc == pytest.approx(acc)


@pytest.mark.parametrize(
    ("answer", "golds", "acc"),
    [
        ("Pleural effusion.", ("pleural effusion",), 1.0),
        ("pleural  effusion", ("Pleural Effusion",), 1.0),
        ("effusion", ("pleural effusion",), 0.0),
        ("HER2+", ("HER2-",), 0.0),
        ("T1", ("t2", "T1"), 1.0),
        ("肝", ("肝",), 1.0),
    ],
)
def test_exact_match(answer: str, golds: tuple, acc: float) -> None:
    assert exact_match(answer, golds).acc == acc


@pytest.mark.parametrize(
    ("text", "polarity"),
    [
        ("Yes", "yes"),
        ("yes.", "yes"),
        ("No", "no"),
        ("No, the nodule is benign.", "no"),  # "nodule" is not "no"
        ("Nodule", None),
        ("Normal", None),
        ("Yes, there is a nodule.", "yes"),
        ("Yes, no fracture.", None),  # both
        ("Maybe", None),  # neither
        ("I don't know", None),  # "know" is not "no"
        ("Correct", "yes"),
        ("Not correct", "no"),  # negated synonym
        ("not false", "yes"),
        ("True", "yes"),
        ("Negative", "no"),
        ("NO", "no"),
        ("Ｙｅｓ", "yes"),  # fullwidth
        ("是", "yes"),
        ("是的，有骨折", "yes"),
        ("否", "no"),
        ("没有", "no"),  # contains 有, but is one word meaning "no"
        ("不是", "no"),
        ("是否", None),  # both
        ("no no no", "no"),
    ],
)
def test_yes_no_polarity(text: str, polarity: str | None) -> None:
    assert yes_no_polarity(text) == polarity


def test_yes_no_scores() -> None:
    assert yes_no("Yes.", ("yes",)).acc == 1.0
    assert yes_no("No.", ("Yes",)).acc == 0.0
    assert yes_no("Yes or no", ("yes",)).acc == 0.0
    assert yes_no("没有", ("否",)).acc == 1.0


@pytest.mark.parametrize(
    ("validator", "golds"),
    [
        (validate_yes_no_reference, ("maybe",)),
        (validate_yes_no_reference, ("yes and no",)),
        (validate_text_reference, ("...",)),
    ],
)
def test_references_that_no_answer_can_match(validator, golds: tuple) -> None:
    with pytest.raises(InvalidReference):
        validator(golds)


@pytest.mark.parametrize(
    ("ground_truth", "expected"),
    [
        ("B", ("B",)),
        ('["yes", "Yes."]', ("yes", "Yes.")),  # JSON-encoded list
        ("[left lung]", ("[left lung]",)),  # brackets but not JSON: a plain string
        (["a", "b"], ("a", "b")),
        (("a",), ("a",)),
        (np.array(["a", "b"], dtype=object), ("a", "b")),  # what parquet round trips can give
        (["a", "  ", "b"], ("a", "b")),  # blank alternatives dropped
        (3, ("3",)),
        ("[1, 2]", ("1", "2")),
    ],
)
def test_parse_ground_truth(ground_truth: object, expected: tuple) -> None:
    assert parse_ground_truth(ground_truth) == expected


@pytest.mark.parametrize("ground_truth", ["", "   ", [], "[]", None, {"a": 1}, b"B"])
def test_empty_or_untyped_ground_truth_is_a_data_error(ground_truth: object) -> None:
    with pytest.raises(InvalidReference):
        parse_ground_truth(ground_truth)


def test_long_combining_runs_are_cut_to_the_stream_safe_limit() -> None:
    marks = "".join(chr(0x300 + (i % 3) * 0x10) for i in range(5000))  # mixed classes, out of canonical order
    assert normalize("e" + marks) == normalize("e" + marks[:30])
    assert normalize("e\u0301") == "\u00e9"  # real text is untouched


def test_nfkc_expansion_is_bounded() -> None:
    assert normalize("\ufdfa") == unicodedata.normalize("NFKC", "\ufdfa").casefold()  # one ligature: kept whole
    assert len(normalize("\ufdfa" * 1000)) <= 3 * 1000 + 64


@pytest.mark.parametrize(("text", "blank"), [("", True), (" \u200b\n\ufeff", True), ("\u200b a", False), ("x" + " " * 10**6, False)])
def test_is_blank(text: str, blank: bool) -> None:
    assert is_blank(text) is blank
