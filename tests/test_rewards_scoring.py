"""compute_score, the adapter verl calls: weighting, dispatch, options, the trust boundary."""

import pickle
from functools import partial

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medverl.rewards import (
    REGISTRY,
    RESULT_KEYS,
    InvalidReference,
    RewardOptions,
    UnknownQueryType,
    compute_score,
    tokens,
)
from medverl.rewards.match import jaccard_similarity

MC = {"query_type": "multiple_choice", "options": ["Edema", "Pneumonia", "Effusion"]}


def score(output: str, gold: object = "B", extra: dict | None = None, **kwargs) -> dict:
    return compute_score(
        data_source="test", solution_str=output, ground_truth=gold, extra_info=extra or MC, **kwargs
    )


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        # seed: score = 0.1 * format + 0.9 * acc
        ("<think>r</think><answer>B</answer>", (1.0, 1.0, 1.0)),
        ("<think>r</think><answer>C</answer>", (0.1, 0.0, 1.0)),
        # acc is 0 whenever format is 0, even for the right letter
        ("<think>r</think>B", (0.0, 0.0, 0.0)),
        ("<answer>B</answer><answer>B</answer>", (0.0, 0.0, 0.0)),
        # a hedge is well-formed but earns nothing
        ("<answer>B or C</answer>", (0.1, 0.0, 1.0)),
    ],
)
def test_seed_weighting(output: str, expected: tuple) -> None:
    result = score(output)
    assert (result["score"], result["acc"], result["format"]) == pytest.approx(expected)


def test_format_weight_kwarg() -> None:
    assert score("<answer>C</answer>", format_weight=0.3)["score"] == pytest.approx(0.3)
    assert score("<answer>B</answer>", format_weight=0.0)["score"] == 1.0
    assert score("<answer>C</answer>", format_weight=1)["score"] == 1.0


def test_jaccard_score_is_weighted_partial_credit() -> None:
    result = score("<answer>left lung</answer>", "left lower lobe", {"query_type": "jaccard"})
    assert result["acc"] == pytest.approx(0.25)
    assert result["score"] == pytest.approx(0.1 + 0.9 * 0.25)


@pytest.mark.parametrize(
    ("gold", "extra"),
    [
        ('["B", "Pneumonia"]', MC),  # JSON list ground truth
        (["B"], MC),
        ("Pneumonia", MC),  # gold given as the option text
        ("B", {"query_type": "multiple_choice", "options": '["Edema", "Pneumonia"]'}),  # JSON options
        ("B", {"query_type": "multiple_choice", "options": np.array(["Edema", "Pneumonia"], dtype=object)}),
        ("B", {"query_type": "multiple_choice", "options": None}),  # parquet rows without options
        ("B", {"query_type": "multiple_choice"}),
    ],
)
def test_reference_shapes(gold: object, extra: dict) -> None:
    assert score("<answer>(B)</answer>", gold, extra)["acc"] == 1.0


def test_same_keys_for_every_sample_and_query_type() -> None:
    cases = [
        ("<answer>B</answer>", "B", MC),
        ("garbage", "B", MC),
        ("<answer>yes</answer>", "yes", {"query_type": "yes_no"}),
        ("<answer>x</answer>", "y", {"query_type": "exact_match"}),
        ("<answer>x</answer>", "y", {"query_type": "jaccard"}),
    ]
    for output, gold, extra in cases:
        result = score(output, gold, extra)
        assert tuple(result) == RESULT_KEYS
        assert all(isinstance(result[k], float) for k in ("score", "acc", "format"))
        assert all(isinstance(result[k], str) for k in ("pred", "reason"))


def test_echoed_answer_in_reasoning_does_not_count() -> None:
    assert score("<think>Is it <answer>B</answer>? No.</think><answer>C</answer>")["acc"] == 0.0
    assert score("<think>Is it <answer>C</answer>? No.</think><answer>B</answer>")["acc"] == 1.0


def test_think_options() -> None:
    assert score("r</think><answer>B</answer>", think_prefilled=True)["score"] == 1.0
    assert score("<answer>B</answer>", think_prefilled=True)["format"] == 0.0
    assert score("<answer>B</answer>", require_think=True)["format"] == 0.0
    assert score("<think>r</think><answer>B</answer>", require_think=True)["score"] == 1.0


def test_answer_longer_than_the_limit_keeps_format_but_not_acc() -> None:
    result = score("<answer>" + "B " * 100 + "</answer>", max_answer_chars=50)
    assert (result["format"], result["acc"]) == (1.0, 0.0)
    assert "longer than 50" in result["reason"]


def test_default_query_type_for_rows_without_one() -> None:
    assert score("<answer>yes</answer>", "yes", {"index": 1}, default_query_type="yes_no")["acc"] == 1.0
    with pytest.raises(UnknownQueryType, match="no 'query_type'"):
        score("<answer>yes</answer>", "yes", {"index": 1})
    with pytest.raises(UnknownQueryType, match="no 'query_type'"):
        compute_score(data_source="d", solution_str="x", ground_truth="yes", extra_info=None)


def test_unknown_query_type_names_known_ones_closest_match_and_row() -> None:
    with pytest.raises(UnknownQueryType) as err:
        score("<answer>B</answer>", extra={"query_type": "multiple_choise", "index": 7})
    message = str(err.value)
    assert "Did you mean 'multiple_choice'?" in message
    assert "bbox_iou, exact_match, jaccard, multi_label, multiple_choice, numeric, open_text, yes_no" in message
    assert "index=7" in message and "data_source='test'" in message


def test_invalid_reference_raises_with_the_row() -> None:
    with pytest.raises(InvalidReference, match=r"index=3"):
        score("<answer>B</answer>", "Z", {**MC, "index": 3})
    with pytest.raises(InvalidReference):
        score("<answer>B</answer>", "", MC)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"format_weigth": 0.2}, TypeError, "Did you mean 'format_weight'"),
        ({"format_weight": 1.5}, ValueError, r"\[0, 1\]"),
        ({"think_prefilled": "yes"}, TypeError, "true or false"),
        ({"max_answer_chars": 0}, ValueError, "positive"),
    ],
)
def test_bad_reward_kwargs_fail_loudly(kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        score("<answer>B</answer>", **kwargs)


def test_kwargs_verl_adds_itself_are_ignored() -> None:
    assert score("<answer>B</answer>", reward_router_address=None, reward_model_tokenizer=None)["acc"] == 1.0


def test_options_from_kwargs_accepts_lists_and_comma_strings() -> None:
    assert RewardOptions.from_kwargs({"plugins": "a, b"}).plugins == ("a", "b")
    assert RewardOptions.from_kwargs({"plugins": ["a"]}).plugins == ("a",)
    assert RewardOptions.from_kwargs({}) == RewardOptions()


@pytest.mark.parametrize("solution", [None, b"<answer>B</answer>", 42, "\ud800<answer>B</answer>"])
def test_untyped_outputs_never_raise(solution: object) -> None:
    assert set(score(solution)) == set(RESULT_KEYS)  # type: ignore[arg-type]


def test_a_reward_that_crashes_scores_zero_and_logs(monkeypatch, caplog) -> None:
    from medverl.rewards.registry import Registry

    fresh = Registry()

    @fresh.register("boom")
    def boom(answer: str, golds: tuple[str, ...]) -> float:
        raise RuntimeError("bug in user reward")

    @fresh.register("too_much")
    def too_much(answer: str, golds: tuple[str, ...]) -> float:
        return 2.0

    monkeypatch.setattr("medverl.rewards.registry.REGISTRY", fresh)
    result = score("<answer>x</answer>", "x", {"query_type": "boom"})
    assert (result["score"], result["acc"]) == (pytest.approx(0.1), 0.0)
    assert result["reason"] == "reward error: RuntimeError"
    assert "bug in user reward" in caplog.text
    assert score("<answer>x</answer>", "x", {"query_type": "too_much"})["acc"] == 0.0


@pytest.mark.parametrize("spec", REGISTRY.specs(), ids=lambda s: s.name)
def test_every_reward_pickles(spec) -> None:
    """Rewards travel into Ray workers by pickle."""
    assert pickle.loads(pickle.dumps(spec.fn)) is spec.fn
    assert pickle.loads(pickle.dumps(spec)).name == spec.name
    bound = pickle.loads(pickle.dumps(partial(compute_score, format_weight=0.2)))
    assert bound(solution_str="<answer>B</answer>", ground_truth="B", extra_info=MC)["score"] == 1.0


# --- properties ---------------------------------------------------------------------------------------------

_TAGS = st.sampled_from(["<think>", "</think>", "<answer>", "</answer>", "B", "yes", "no", " or ", "\n", "左肺"])
_OUTPUTS = st.one_of(st.text(), st.lists(st.one_of(_TAGS, st.text(max_size=5)), max_size=30).map("".join))
_CASES = st.sampled_from(
    [
        ("B", MC),
        ('["yes", "no"]', {"query_type": "yes_no"}),
        ("left lower lobe", {"query_type": "jaccard"}),
        ("右肺", {"query_type": "exact_match"}),
    ]
)


@settings(max_examples=400, deadline=None)
@given(output=_OUTPUTS, case=_CASES, weight=st.floats(0.0, 1.0), prefilled=st.booleans(), strict=st.booleans())
def test_never_raises_stays_in_range_same_keys(output, case, weight, prefilled, strict) -> None:
    gold, extra = case
    result = compute_score(
        data_source="p",
        solution_str=output,
        ground_truth=gold,
        extra_info=extra,
        format_weight=weight,
        think_prefilled=prefilled,
        require_think=strict,
    )
    assert tuple(result) == RESULT_KEYS
    for key in ("score", "acc", "format"):
        assert 0.0 <= result[key] <= 1.0
    if result["format"] == 0.0:
        assert result["acc"] == 0.0 and result["score"] == 0.0
    assert result["score"] == pytest.approx(weight * result["format"] + (1 - weight) * result["acc"])


@settings(max_examples=300, deadline=None)
@given(a=st.text(), b=st.text())
def test_jaccard_symmetric_and_bounded(a: str, b: str) -> None:
    ta, tb = tokens(a), tokens(b)
    assert jaccard_similarity(ta, tb) == jaccard_similarity(tb, ta)
    assert 0.0 <= jaccard_similarity(ta, tb) <= 1.0
    if ta:
        assert jaccard_similarity(ta, ta) == 1.0


def test_the_bundled_rows_of_every_reward_beyond_the_seed_prepare_and_their_golds_score_1(tmp_path) -> None:
    """examples/data/rl_rewards.jsonl: medverl prep takes every row, rewards check passes, and each row's own ground
    truth, answered back in the <think>/<answer> format, scores acc 1 through verl's entry point."""
    import json
    from pathlib import Path

    import pandas as pd

    from medverl.cli import main

    examples = Path(__file__).resolve().parents[1] / "examples" / "data"
    assert main(["prep", "rl", str(examples / "rl_rewards.jsonl"), "--output", str(tmp_path / "rl"),
                 "--image-root", str(examples / "images"), "--max-pixels", "802816"]) == 0
    assert main(["rewards", "check", str(tmp_path / "rl")]) == 0
    rows = pd.read_parquet(next((tmp_path / "rl").glob("*.parquet"))).to_dict("records")
    assert {r["extra_info"]["query_type"] for r in rows} == {"multi_label", "bbox_iou", "numeric", "open_text"}
    for row in rows:
        gold = row["reward_model"]["ground_truth"]
        answer = json.loads(gold)[0] if gold.startswith('["') else gold
        result = compute_score(row["data_source"], f"<think>x</think><answer>{answer}</answer>", gold,
                               row["extra_info"])
        assert result["acc"] == 1.0, (row["extra_info"]["query_type"], gold, result)


def test_prep_rejects_golds_the_new_rewards_could_never_match_with_the_reason(tmp_path) -> None:
    import json
    from pathlib import Path

    from medverl.cli import main

    images = Path(__file__).resolve().parents[1] / "examples" / "data" / "images"
    bad = [("multi_label", " ; , and ", {}, "no labels"), ("bbox_iou", "[30, 40, 10, 20]", {}, "inverted box"),
           ("numeric", "about twelve", {}, "number"), ("open_text", "...", {}, "no words"),
           ("numeric", "12 mm", {"abs_tol": -1}, "abs_tol")]
    records = [{"question": "Q?", "answer": gold, "query_type": qt, "image": "chest_film.png", "meta": meta}
               for qt, gold, meta, _ in bad]
    (tmp_path / "bad.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    main(["prep", "rl", str(tmp_path / "bad.jsonl"), "--output", str(tmp_path / "out"), "--image-root", str(images)])
    rejects = [json.loads(line) for line in next((tmp_path / "out").rglob("rejects*.jsonl")).read_text().splitlines()]
    assert len(rejects) == len(bad)
    for reject, (_, _, _, words) in zip(sorted(rejects, key=lambda r: r["index"]), bad, strict=True):
        assert reject["code"] == "invalid_reference" and words in reject["reason"], reject
