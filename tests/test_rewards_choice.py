"""multiple_choice extraction and scoring (seed Algorithm 1): accept every rendering of one option, never guess."""

import pytest

from medverl.rewards import InvalidReference, extract_choice
from medverl.rewards.choice import gold_letters, multiple_choice, parse_options

OPTIONS = ["Pulmonary edema", "Lobar pneumonia", "Pleural effusion", "Pneumothorax"]


@pytest.mark.parametrize(
    ("answer", "letter"),
    [
        ("B", "B"),  # bare letter
        ("b", "B"),  # lower case
        ("(B)", "B"),  # parenthesised
        ("B.", "B"),  # trailing period
        ("B)", "B"),
        ("B:", "B"),
        ("[B]", "B"),
        ("**B**", "B"),  # markdown bold
        ("`B`", "B"),
        ("Answer: B", "B"),
        ("answer:B", "B"),
        ("The answer is B", "B"),
        ("The correct answer is (B).", "B"),
        ("Final answer: **B**", "B"),
        ("Option B", "B"),
        ("Therefore, the answer is B", "B"),
        ("\\boxed{B}", "B"),
        ("$\\boxed{B}$", "B"),
        ("\\boxed{\\text{B}}", "B"),
        ("B. Lobar pneumonia", "B"),  # letter + its option text
        ("(B) Lobar pneumonia", "B"),
        ("B: lobar  PNEUMONIA", "B"),
        ("B - Lobar pneumonia", "B"),
        ("The answer is B. Lobar pneumonia", "B"),
        ("Lobar pneumonia", "B"),  # option text alone, unambiguous
        ("lobar pneumonia.", "B"),
        ("Ｂ", "B"),  # fullwidth letter (NFKC)
        ("（B）", "B"),  # fullwidth parentheses
        ("B\u200b", "B"),  # trailing zero-width space
        ("B\n", "B"),
        ("The answer is\n\n(B)", "B"),  # spread over lines
        ("B.\nLobar\npneumonia", "B"),
    ],
)
def test_renderings_of_one_option(answer: str, letter: str) -> None:
    assert extract_choice(answer, OPTIONS).letter == letter


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        ("B or C", "hedge: names options B and C"),
        ("B, C", "hedge: names options B and C"),
        ("B/C", "hedge: names options B and C"),
        ("B and C", "hedge: names options B and C"),
        ("C or B", "hedge: names options B and C"),
        ("A, B or D", "hedge: names options A, B and D"),
        ("(B) or (C)", "hedge: names options B and C"),
        ("The answer is B or C", "hedge: names options B and C"),
        # letter and text disagree: which one did the model mean?
        ("C. Lobar pneumonia", "letter C contradicts the text of option B"),
        # a letter beyond the options
        ("E", "option E is not among the 4 options"),
        # free text that is not an option, and not a letter
        ("I think it is B because of the air bronchograms", "no single option letter or option text"),
        ("pneumonia", "no single option letter or option text"),
        # an article is not option A
        ("A lobar pneumonia", "no single option letter or option text"),
        # "answered" is not the lead-in "answer"
        ("answered B", "no single option letter or option text"),
        ("**", "no option in answer"),
    ],
)
def test_no_guessing(answer: str, reason: str) -> None:
    choice = extract_choice(answer, OPTIONS)
    assert choice.letter == ""
    assert choice.reason == reason


def test_without_options_letters_still_parse_and_hedges_still_fail() -> None:
    assert extract_choice("The answer is (d)").letter == "D"
    assert extract_choice("D. something").letter == "D"
    assert extract_choice("D. Vitamin B and C deficiency").letter == ""  # could be a hedge: no options to check
    assert extract_choice("Lobar pneumonia").letter == ""


def test_duplicate_option_texts_are_ambiguous() -> None:
    assert extract_choice("Edema", ["Edema", "Edema", "Effusion"]).letter == ""
    assert extract_choice("B", ["Edema", "Edema", "Effusion"]).letter == "B"


def test_option_text_containing_a_letter_is_not_a_hedge() -> None:
    options = ["Hepatitis A", "Hepatitis B", "Hepatitis C"]
    assert extract_choice("C. Hepatitis C", options).letter == "C"
    assert extract_choice("Hepatitis B", options).letter == "B"


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (None, ()),
        ("", ()),
        ('["a", "b"]', ("a", "b")),
        (["a", "b"], ("a", "b")),
        (("a", 2), ("a", "2")),
    ],
)
def test_parse_options(options: object, expected: tuple) -> None:
    assert parse_options(options) == expected


def test_parse_options_rejects_non_list_json() -> None:
    with pytest.raises(InvalidReference):
        parse_options('{"A": "x"}')


@pytest.mark.parametrize(
    ("golds", "letters"),
    [
        (("B",), {"B"}),
        (("(b)",), {"B"}),
        (("Lobar pneumonia",), {"B"}),  # OmniMedVQA-style gold: the option text
        (("B. Lobar pneumonia",), {"B"}),
        (("A", "C"), {"A", "C"}),  # several acceptable options
    ],
)
def test_gold_letters(golds: tuple, letters: set) -> None:
    assert gold_letters(golds, tuple(OPTIONS)) == letters


@pytest.mark.parametrize("gold", ["F", "Tuberculosis", "A or B"])
def test_unreadable_reference_is_a_data_error(gold: str) -> None:
    with pytest.raises(InvalidReference, match="multiple_choice ground truth"):
        gold_letters((gold,), tuple(OPTIONS))


@pytest.mark.parametrize(
    ("answer", "acc", "pred"),
    [
        ("B", 1.0, "B"),
        ("C", 0.0, "C"),
        ("B or C", 0.0, ""),
        ("Lobar pneumonia", 1.0, "B"),
    ],
)
def test_multiple_choice_score(answer: str, acc: float, pred: str) -> None:
    verdict = multiple_choice(answer, ("B",), options=OPTIONS)
    assert (verdict.acc, verdict.pred) == (acc, pred)
    assert bool(verdict.reason) is (acc < 1.0)
