"""multi_label: set F1 between the answer's labels and the reference's, with per-row synonyms from meta."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import medverl.rewards.labels  # noqa: F401  (registers multi_label until medverl.rewards imports it)
from medverl.rewards import REGISTRY, InvalidReference, check_reference, compute_score
from medverl.rewards.labels import (
    MAX_ANSWER_CHARS,
    MAX_LABEL_CHARS,
    MAX_LABELS,
    label_synonyms,
    multi_label,
    split_labels,
    validate_label_reference,
)

SYNONYMS = json.dumps({"synonyms": {"pleural effusion": ["PE", "effusion"], "cardiomegaly": ["enlarged heart"]}})


@pytest.mark.parametrize(
    ("answer", "golds", "meta", "acc", "reason"),
    [
        # separators
        ("effusion, cardiomegaly", "cardiomegaly, effusion", None, 1.0, ""),
        ("effusion; cardiomegaly", "cardiomegaly, effusion", None, 1.0, ""),
        ("effusion\ncardiomegaly", "cardiomegaly; effusion", None, 1.0, ""),
        ("effusion\r\n\r\ncardiomegaly\n", "cardiomegaly, effusion", None, 1.0, ""),
        ("effusion,cardiomegaly;;edema", "edema, cardiomegaly, effusion", None, 1.0, ""),
        ("肺结节、胸腔积液", "胸腔积液，肺结节", None, 1.0, ""),  # ideographic and fullwidth commas
        # the word "and", any case, alone
        ("effusion and cardiomegaly", "cardiomegaly, effusion", None, 1.0, ""),
        ("Effusion AND cardiomegaly", "cardiomegaly, effusion", None, 1.0, ""),
        ("effusion, cardiomegaly, and atelectasis", "atelectasis, cardiomegaly, effusion", None, 1.0, ""),
        ("effusion,and cardiomegaly and", "cardiomegaly, effusion", None, 1.0, ""),
        ("sandy opacity and band", "band, sandy opacity", None, 1.0, ""),  # "and" inside words is not cut
        ("effusion and/or edema", "effusion, edema", None, 0.0, "extra: effusion and/or edema"),
        # bullets at line starts
        ("- effusion\n- cardiomegaly", "cardiomegaly, effusion", None, 1.0, ""),
        ("* effusion\n* cardiomegaly", "cardiomegaly, effusion", None, 1.0, ""),
        ("1. effusion\n2. cardiomegaly", "cardiomegaly, effusion", None, 1.0, ""),
        ("1) effusion\n2) cardiomegaly", "cardiomegaly, effusion", None, 1.0, ""),
        ("Findings:\n  • effusion\n  • cardiomegaly", "findings, cardiomegaly, effusion", None, 1.0, ""),
        ("- **Effusion**\n- *Cardiomegaly*", "cardiomegaly, effusion", None, 1.0, ""),  # markdown emphasis
        ("1.5 cm nodule", "1.5 cm nodule", None, 1.0, ""),  # a decimal is not a bullet
        ("effusion - small", "effusion", None, 0.0, "extra: effusion - small"),  # a dash mid-line is kept
        # case, punctuation, width, whitespace
        ("**Pleural Effusion.**, CARDIOMEGALY!", "pleural effusion, cardiomegaly", None, 1.0, ""),
        ("ＥＦＦＵＳＩＯＮ，Cardiomegaly", "effusion, cardiomegaly", None, 1.0, ""),
        ("pleural    effusion", "Pleural effusion", None, 1.0, ""),
        ("HER2+", "HER2-", None, 0.0, "missing: her2-; extra: her2+"),  # signs change a label
        # duplicates collapse, order does not matter
        ("effusion, effusion, Effusion.", "effusion", None, 1.0, ""),
        ("effusion, effusion, edema", "effusion", None, pytest.approx(2 / 3), "P 0.50 R 1.00; extra: edema"),
        ("c, b, a", "a, b, c", None, 1.0, ""),
        # partial credit: F1 = 2 |pred & gold| / (|pred| + |gold|)
        ("effusion", "effusion, cardiomegaly", None, pytest.approx(2 / 3), "P 1.00 R 0.50; missing: cardiomegaly"),
        ("effusion, cardiomegaly", "cardiomegaly", None, pytest.approx(2 / 3), "P 0.50 R 1.00; extra: effusion"),
        ("effusion, edema", "effusion, cardiomegaly", None, 0.5, "P 0.50 R 0.50; missing: cardiomegaly; extra: edema"),
        ("a, b, c", "a, d", None, pytest.approx(2 / 5), "P 0.33 R 0.50; missing: d; extra: b, c"),
        ("a, b, c, d", "a", None, pytest.approx(2 / 5), "P 0.25 R 1.00; extra: b, c, d"),
        ("a, b, c, d, e", "a", None, pytest.approx(1 / 3), "P 0.20 R 1.00; extra: b, c, d, …"),
        ("a", "a, b, c, d, e", None, pytest.approx(1 / 3), "P 1.00 R 0.20; missing: b, c, d, …"),
        ("edema", "effusion", None, 0.0, "P 0.00 R 0.00; missing: effusion; extra: edema"),
        # several references: the best counts
        ("effusion", '["cardiomegaly", "effusion, edema"]', None, pytest.approx(2 / 3), "missing: edema"),
        ("effusion", '["effusion, edema", "effusion"]', None, 1.0, ""),
        ("edema", '["a", "b"]', None, 0.0, "P 0.00 R 0.00"),
        # synonyms map aliases to their label, on both sides
        ("PE, enlarged heart", "pleural effusion, cardiomegaly", SYNONYMS, 1.0, ""),
        ("Pleural effusion", "effusion", SYNONYMS, 1.0, ""),
        ("effusion, pleural effusion, pe", "pleural effusion", SYNONYMS, 1.0, ""),  # all one label
        ("PE", "pleural effusion, cardiomegaly", SYNONYMS, pytest.approx(2 / 3), "missing: cardiomegaly"),
        ("PE", "pleural effusion", None, 0.0, "extra: pe"),  # no synonyms without meta
        ("p.e.", "pleural effusion", '{"synonyms": {"Pleural  Effusion.": ["P.E."]}}', 1.0, ""),  # names normalised
        ("PE", "pleural effusion", {"synonyms": {"pleural effusion": ["pe"]}}, 1.0, ""),  # meta as a mapping
    ],
)
def test_multi_label(answer: str, golds: str, meta: object, acc: float, reason: str) -> None:
    golds_tuple = tuple(json.loads(golds)) if golds.startswith("[") else (golds,)
    verdict = multi_label(answer, golds_tuple, meta)
    assert verdict.acc == acc
    assert reason in verdict.reason
    assert (verdict.reason == "") == (verdict.acc == 1.0)


def test_pred_is_the_sorted_canonical_labels() -> None:
    assert multi_label("Edema\n- PE", ("effusion",), SYNONYMS).pred == "edema, pleural effusion"
    assert multi_label("b, a", ("a",)).pred == multi_label("A and B", ("a",)).pred == "a, b"  # for majority voting


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        ("", "answer has no labels"),
        ("   \n\t ", "answer has no labels"),
        (", ; ,\n and ;", "answer has no labels"),  # only separators
        ("\n\n- \n* \n1.", "answer has no labels"),  # only bullets
        ("...!?", "answer has no labels"),
        ("," * 8000, "answer has no labels"),
        ("," * 10_000, f"answer longer than {MAX_ANSWER_CHARS} characters"),
        ("effusion, " * 100_000, f"answer longer than {MAX_ANSWER_CHARS} characters"),  # a megabyte of labels
        ("x" * (1 << 20), f"answer longer than {MAX_ANSWER_CHARS} characters"),
        (", ".join(f"l{i}" for i in range(MAX_LABELS + 1)), f"answer has more than {MAX_LABELS} labels"),
        ("effusion, " + "x" * (MAX_LABEL_CHARS + 1), f"answer has a label longer than {MAX_LABEL_CHARS} characters"),
        ("a " * 200, f"answer has a label longer than {MAX_LABEL_CHARS} characters"),
        ("\x00", "answer has no labels"),
        ("\x00\x01\x1b[31m\x7f", "P 0.00 R 0.00; missing: effusion; extra: \\x00\\x01\\x1b[31m\\x7f"),
        ("\x00effusion", "extra: \\x00effusion"),  # escaped in the reason
        ("\ud800", "answer has no labels"),
        ("\ud800effusion\udfff", "extra: \\ud800effusion\\udfff"),
        ("\u202e\u2066\u2069\u200f", "answer has no labels"),  # bidi controls only
        ("\u202eeffusion\u202c, \u2067edema", "extra: \\u202eeffusion\\u202c, \\u2067edema"),
        ("e" + "\u0301" * 5000, f"answer has a label longer than {MAX_LABEL_CHARS} characters"),
        ("\ufdfa" * MAX_LABEL_CHARS, "extra: "),  # each character expands 18-fold under NFKC
    ],
)
def test_bad_answers_score_zero_with_a_reason(answer: str, reason: str) -> None:
    verdict = multi_label(answer, ("effusion",))
    assert verdict.acc == 0.0
    assert reason in verdict.reason
    assert verdict.reason.isprintable() and len(verdict.reason) < 300
    assert len(verdict.pred) <= 1024
    verdict.pred.encode("utf-8")  # storable: no lone surrogate


def test_limits_are_inclusive() -> None:
    answer = ", ".join(f"l{i}" for i in range(MAX_LABELS))
    assert multi_label(answer, ("l0",)).acc == pytest.approx(2 / (MAX_LABELS + 1))
    assert multi_label("x" * MAX_LABEL_CHARS, ("x" * MAX_LABEL_CHARS,)).acc == 1.0


def test_long_labels_are_shortened_in_the_reason() -> None:
    verdict = multi_label("y" * 200, ("x",))
    assert f"extra: {'y' * 39}…" in verdict.reason


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.sampled_from("ab ,;\n-*1.)&\x00\u202e\ud800和、Ａnd"), max_size=40),
       st.text(alphabet=st.sampled_from("abc ,;\nand"), max_size=20))
def test_never_raises_and_f1_is_symmetric(answer: str, gold: str) -> None:
    verdict = multi_label(answer, (gold,))
    assert 0.0 <= verdict.acc <= 1.0
    assert (verdict.reason == "") == (verdict.acc == 1.0)
    if split_labels(answer)[0] and split_labels(gold)[0]:
        assert multi_label(gold, (answer,)).acc == pytest.approx(verdict.acc)


@pytest.mark.parametrize(
    ("text", "labels"),
    [
        ("- Pleural effusion\n- Cardiomegaly, atelectasis AND edema.", {"pleural effusion", "cardiomegaly",
                                                                      "atelectasis", "edema"}),
        ("a and b and c", {"a", "b", "c"}),
        ("android, sand, and, AND, And", {"android", "sand"}),
        ("2) T2 hyperintensity\n10. T1", {"t2 hyperintensity", "t1"}),
        ("- - nested", {"nested"}),
        ("- ", set()),
    ],
)
def test_split_labels(text: str, labels: set) -> None:
    assert split_labels(text) == (labels, "")


@pytest.mark.parametrize(
    ("golds", "meta", "message"),
    [
        ((", ; and",), None, "has no labels left after normalisation"),
        (("",), None, "has no labels"),
        (("...",), None, "has no labels"),
        (("effusion", "-"), None, "has no labels"),  # every reference must have labels
        (("x" * (MAX_LABEL_CHARS + 1),), None, f"a label longer than {MAX_LABEL_CHARS} characters"),
        ((", ".join(f"l{i}" for i in range(MAX_LABELS + 1)),), None, f"more than {MAX_LABELS} labels"),
        (("effusion",), "not json", "not a JSON object"),
        (("effusion",), "[1]", "not a JSON object"),
        (("effusion",), '{"synonyms": ["effusion"]}', "must be an object mapping each canonical label"),
        (("effusion",), '{"synonyms": {"effusion": "pe"}}', "must be an object mapping"),  # a string, not a list
        (("effusion",), '{"synonyms": {"effusion": ["pe", 1]}}', "must be an object mapping"),
        (("effusion",), '{"synonyms": {"effusion": null}}', "must be an object mapping"),
        (("effusion",), '{"synonyms": {"effusion": ["pe, pleural"]}}', "'pe, pleural' is not one label"),
        (("effusion",), '{"synonyms": {"a and b": ["c"]}}', "is not one label"),
        (("effusion",), '{"synonyms": {"...": ["c"]}}', "is not one label"),
        (("effusion",), '{"synonyms": {"a": ["x"], "b": ["X."]}}', "alias 'x' names two labels, 'a' and 'b'"),
        (("effusion",), '{"synonyms": {"a": ["b"], "b": ["c"]}}', "'b' is both a label and an alias of 'a'"),
        (("effusion",), {"synonyms": {"a": "b"}}, "must be an object mapping"),
    ],
)
def test_references_that_no_answer_can_match(golds: tuple, meta: object, message: str) -> None:
    with pytest.raises(InvalidReference) as info:
        validate_label_reference(golds, meta)
    assert message in str(info.value)


@pytest.mark.parametrize(
    "meta",
    [None, "", "{}", '{"other": 1}', '{"synonyms": {}}', '{"synonyms": null}', SYNONYMS,
     '{"synonyms": {"effusion": ["Effusion.", "pleural effusion"]}}',  # an alias equal to its label is harmless
     {"synonyms": {"effusion": ("pe",)}}],
)
def test_valid_references(meta: object) -> None:
    validate_label_reference(("effusion, cardiomegaly", "edema"), meta)


def test_invalid_synonyms_are_a_data_error_when_scoring_too() -> None:
    with pytest.raises(InvalidReference):
        multi_label("effusion", ("effusion",), '{"synonyms": 3}')


def test_synonyms_are_read_only_and_cached() -> None:
    synonyms = label_synonyms(SYNONYMS)
    assert dict(synonyms) == {"pe": "pleural effusion", "effusion": "pleural effusion",
                              "enlarged heart": "cardiomegaly"}
    assert label_synonyms(SYNONYMS) is synonyms
    with pytest.raises(TypeError):
        synonyms["x"] = "y"  # type: ignore[index]


def test_registered_as_an_open_answer_reward() -> None:
    spec = REGISTRY.get("multi_label")
    assert spec.answer_type == "open"
    assert spec.extra_info_keys == ("meta",)
    assert spec.validate is validate_label_reference
    assert spec.source == "built-in"
    assert spec.doc.startswith("Set F1")


def test_scores_through_compute_score() -> None:
    extra_info = {"query_type": "multi_label", "meta": SYNONYMS}
    result = compute_score(data_source="example_cxr",
                           solution_str="<think>x</think><answer>- PE\n- Enlarged heart</answer>",
                           ground_truth="pleural effusion, cardiomegaly", extra_info=extra_info)
    assert result == {"score": 1.0, "acc": 1.0, "format": 1.0, "pred": "cardiomegaly, pleural effusion",
                      "reason": ""}

    result = compute_score(data_source="example_cxr", solution_str="<think>x</think><answer>effusion, edema</answer>",
                           ground_truth='["atelectasis", "pleural effusion, cardiomegaly"]', extra_info=extra_info)
    assert result["acc"] == 0.5
    assert result["score"] == pytest.approx(0.1 + 0.9 * 0.5)
    assert result["reason"] == "P 0.50 R 0.50; missing: cardiomegaly; extra: edema"

    for answer in ["", "\ud800", "\x00" * 100, ", " * 5000, "a, " * 2000]:
        result = compute_score(solution_str=f"<think>x</think><answer>{answer}</answer>", ground_truth="effusion",
                               extra_info={"query_type": "multi_label"})
        assert result["acc"] == 0.0 and result["reason"]


def test_invalid_references_raise_at_data_preparation_and_scoring() -> None:
    with pytest.raises(InvalidReference, match="has no labels"):
        check_reference(", ;", {"query_type": "multi_label"})
    with pytest.raises(InvalidReference, match="data_source='example_cxr'"):
        compute_score(data_source="example_cxr", solution_str="<think>x</think><answer>a</answer>", ground_truth="a",
                      extra_info={"query_type": "multi_label", "meta": '{"synonyms": {"a": "b"}}'})
