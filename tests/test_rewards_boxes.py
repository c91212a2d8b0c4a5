"""bbox_iou: grounding boxes scored by IoU with a one-to-one matching; bad boxes score 0, bad references raise."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import medverl.rewards.boxes  # noqa: F401  (registers bbox_iou)
from medverl.rewards import REGISTRY, InvalidReference, compute_score
from medverl.rewards.boxes import (
    MAX_BOXES,
    bbox_iou,
    box_config,
    find_boxes,
    gold_box_sets,
    max_weight_matching,
    validate_box_reference,
)

QWEN3 = {"box_format": "qwen3"}
RELATIVE = {"box_format": "relative"}
PIXELS_500x1000 = {"box_format": "pixels", "image_size": [500, 1000]}


def meta_json(meta: dict | None) -> str | None:
    return None if meta is None else json.dumps(meta)


@pytest.mark.parametrize(
    ("answer", "gold", "meta", "acc", "reason"),
    [
        # IoU values (pixels without image size: the same units on both sides)
        ("[10, 20, 110, 220]", "[10, 20, 110, 220]", None, 1.0, ""),
        ("[10, 20, 60, 220]", "[10, 20, 110, 220]", None, 0.5, "IoU 0.50"),  # half the gold, inside it
        ("[0, 0, 2, 2]", "[1, 0, 3, 2]", None, 1 / 3, "IoU 0.33"),  # half of each: 2 / (4 + 4 - 2)
        ("[0, 0, 10, 10]", "[20, 20, 30, 30]", None, 0.0, "no overlap"),
        ("[0, 0, 10, 10]", "[10, 0, 20, 10]", None, 0.0, "no overlap"),  # touching edges
        ("[10.5, 20.25, 110.5, 220.25]", "[10.5, 20.25, 110.5, 220.25]", None, 1.0, ""),  # floats
        ("[1e1, 2E1, 1.1e2, 220]", "[10, 20, 110, 220]", None, 1.0, ""),  # exponents
        # renderings
        ("(10, 20, 110, 220)", "[10, 20, 110, 220]", None, 1.0, ""),
        ("[10 20 110 220]", "[10, 20, 110, 220]", None, 1.0, ""),  # spaces only
        ("[ 10 ,20,  110 , 220 ]", "[10, 20, 110, 220]", None, 1.0, ""),
        ("The nodule is at [10, 20, 110, 220].", "[10, 20, 110, 220]", None, 1.0, ""),
        ('[{"bbox_2d": [10, 20, 110, 220], "label": "nodule"}]', "[10, 20, 110, 220]", None, 1.0, ""),  # Qwen2.5-VL
        ('```json\n[\n  {"bbox_2d": [10, 20, 110, 220], "label": "nodule"}\n]\n```', "[10, 20, 110, 220]", None, 1.0,
         ""),
        ('{"bbox_2d": [10, 20, 110, 220]}', '[{"bbox_2d": [10, 20, 110, 220], "label": "x"}]', None, 1.0, ""),
        # conventions
        ("[10, 20, 110, 220]", "[10, 20, 110, 220]", QWEN3, 1.0, ""),
        ("[0.01, 0.02, 0.11, 0.22]", "[0.01, 0.02, 0.11, 0.22]", RELATIVE, 1.0, ""),
        ("[5, 20, 55, 220]", "[10, 20, 110, 220]", {**PIXELS_500x1000, "gold_format": "qwen3"}, 1.0, ""),
        ("[10, 20, 110, 220]", "[5, 20, 55, 220]", {"box_format": "qwen3", "gold_format": "pixels",
                                                   "image_size": [500, 1000]}, 1.0, ""),
        ("[0.01, 0.02, 0.11, 0.22]", "[10, 20, 110, 220]", {**RELATIVE, "gold_format": "qwen3"}, 1.0, ""),
        ("[1000, 1000, 1000.5, 1001]", "[0, 0, 1000, 1000]", {"box_format": "pixels"}, 0.0, "no overlap"),
        ("[0, 0, 500, 1000]", "[0, 0, 500, 1000]", PIXELS_500x1000, 1.0, ""),  # the image's edges are inside it
        # several boxes, matched one to one
        ("[[20, 20, 30, 30], [0, 0, 10, 10]]", '["[[0, 0, 10, 10], [20, 20, 30, 30]]"]', None, 1.0, ""),
        ("[0, 0, 10, 10] [20, 20, 30, 30]", "[0, 0, 10, 10]", None, 0.5, "2 boxes for 1 gold box; matched: IoU 1.00"),
        ("[0, 0, 10, 10]", '["[[0, 0, 10, 10], [20, 20, 30, 30]]"]', None, 0.5, "1 box for 2 gold boxes"),
        ("[0, 0, 10, 10] [0, 0, 10, 10]", "[0, 0, 10, 10]", None, 0.5, "2 boxes for 1 gold box"),  # a duplicate
        ("[[0, 0, 10, 10], [20, 20, 25, 30]]", '["[[0, 0, 10, 10], [20, 20, 30, 30]]"]', None, 0.75, "mean IoU 0.75"),
        # the optimal assignment, where greedy (best IoU first) gives (2/3 + 1/15) / 2
        ("[[2, 0, 12, 10], [0, 0, 6, 10]]", '["[[0, 0, 10, 10], [5, 0, 15, 10]]"]', None, (7 / 13 + 0.6) / 2,
         "mean IoU"),
        # threshold mode: a matched pair counts 1 at IoU >= t
        ("[10, 20, 60, 220]", "[10, 20, 110, 220]", {"iou_threshold": 0.5}, 1.0, ""),
        ("[10, 20, 60, 220]", "[10, 20, 110, 220]", {"iou_threshold": 0.6}, 0.0, "0 of 1 reach IoU 0.6"),
        ("[[0, 0, 10, 10], [20, 20, 22, 30]]", '["[[0, 0, 10, 10], [20, 20, 30, 30]]"]', {"iou_threshold": 0.5},
         0.5, "1 of 2 reach IoU 0.5"),
        ("[0, 0, 10, 10] [20, 20, 30, 30]", "[0, 0, 10, 10]", {"iou_threshold": 0.5}, 0.5, "2 boxes for 1 gold box"),
        # alternatives: the best gold counts
        ("[20, 20, 30, 30]", '["[0, 0, 10, 10]", "[20, 20, 30, 30]"]', {"gold_boxes": "any"}, 1.0, ""),
        ("[20, 20, 30, 30]", "[[0, 0, 10, 10], [20, 20, 30, 30]]", {"gold_boxes": "any"}, 1.0, ""),
        # a ground truth of several boxes is one set to find (read whole, never split as alternatives)
        ("[0, 0, 10, 10] [20, 20, 30, 30]", "[[0, 0, 10, 10], [20, 20, 30, 30]]", None, 1.0, ""),
        ("[0, 0, 10, 10]", "[[0, 0, 10, 10], [20, 20, 30, 30]]", {"gold_boxes": "all"}, 0.5, "1 box for 2 gold"),
    ],
)
def test_scores(answer: str, gold: str, meta: dict | None, acc: float, reason: str) -> None:
    result = compute_score(
        data_source="example_cxr",
        solution_str=f"<think>x</think><answer>{answer}</answer>",
        ground_truth=gold,
        extra_info={"query_type": "bbox_iou", "meta": meta_json(meta)},
    )
    assert result["acc"] == pytest.approx(acc)
    assert result["score"] == pytest.approx(0.1 + 0.9 * acc)
    assert reason in result["reason"]
    assert (result["reason"] == "") == (result["acc"] == 1.0)
    assert result["pred"]


def test_conventions_agree() -> None:
    """The same boxes in pixels of a 500x1000 image, in Qwen3's 0-1000 units and in 0-1 fractions."""
    pixels = bbox_iou("[5, 20, 40, 200]", ("[10, 40, 55, 220]",), meta=json.dumps(PIXELS_500x1000))
    qwen3 = bbox_iou("[10, 20, 80, 200]", ("[20, 40, 110, 220]",), meta=json.dumps(QWEN3))
    relative = bbox_iou("[0.01, 0.02, 0.08, 0.2]", ("[0.02, 0.04, 0.11, 0.22]",), meta=json.dumps(RELATIVE))
    assert 0.0 < pixels.acc < 1.0
    assert pixels.acc == pytest.approx(qwen3.acc) == pytest.approx(relative.acc)
    assert pixels.pred == qwen3.pred == relative.pred == "[10,20,80,200]"


def test_pred_is_canonical_for_majority_voting() -> None:
    gold = ("[[0, 0, 100, 100], [200, 200, 300, 300]]",)
    one = bbox_iou("[[200, 200, 300, 300], [0, 0, 100, 100]]", gold, meta=QWEN3)
    two = bbox_iou('[{"bbox_2d": [0, 0, 100.0, 100]}, {"bbox_2d": [200, 200, 300, 300]}]', gold, meta=QWEN3)
    assert one.pred == two.pred == "[[0,0,100,100],[200,200,300,300]]"
    assert bbox_iou("[0, 0, 0.1, 0.1]", ("[0, 0, 0.1, 0.1]",), meta=RELATIVE).pred == "[0,0,100,100]"


def test_meta_as_mapping_and_default_pixels() -> None:
    assert bbox_iou("[10, 20, 60, 220]", ("[10, 20, 110, 220]",), meta=PIXELS_500x1000).acc == pytest.approx(0.5)
    # an IoU of exactly the threshold passes even when the conversion to 0-1 rounds it down
    at_threshold = {**PIXELS_500x1000, "iou_threshold": 0.5}
    assert bbox_iou("[10, 20, 60, 220]", ("[10, 20, 110, 220]",), meta=at_threshold).acc == 1.0
    assert box_config(None).box_format == box_config("").box_format == "pixels"
    assert box_config({"image_size": [640, 480]}).image_size == (640.0, 480.0)


@pytest.mark.parametrize(
    ("answer", "meta", "reason"),
    [
        ("", None, "no box in answer"),
        ("the nodule in the left upper lobe", None, "no box in answer"),
        ("[10, 20]", None, "no box in answer"),  # a point
        ("[10, 20, 110]", None, "no box in answer"),
        ("[10, 20, 110, 220, 5]", None, "no box in answer"),
        ("(10, 20, 110, 220]", None, "no box in answer"),  # mismatched brackets
        ("[10; 20; 110; 220]", None, "no box in answer"),
        ("[1234567890123, 20, 110, 220]", None, "no box in answer"),  # too many digits
        ("[" * 5000 + "1, 2, 3" + "]" * 5000, None, "no box in answer"),
        ("\ud800\udfff\udc00", None, "no box in answer"),  # lone surrogates
        ("[nan, 20, 110, 220]", None, "non-finite coordinate"),
        ("[10, 20, inf, 220]", None, "non-finite coordinate"),
        ("[10, 20, 1e999, 220]", None, "non-finite coordinate"),
        ("[110, 20, 10, 220]", None, "inverted box"),
        ("[10, 220, 110, 20]", None, "inverted box"),
        ("[10, 20, 10, 220]", None, "degenerate box"),
        ("[10, 20, 110, 20]", None, "degenerate box"),
        ("[-5, 20, 110, 220]", None, "coordinate -5 outside [0, 1e+06]"),
        ("[0, 0, 2e6, 220]", None, "outside [0, 1e+06]"),
        ("[10, 20, 1100, 220]", QWEN3, "coordinate 1100 outside [0, 1000] (qwen3)"),
        ("[10, 20, 110, 220]", {**RELATIVE, "gold_format": "qwen3"}, "coordinate 10 outside [0, 1] (relative)"),
        ("[10, 20, 510, 220]", PIXELS_500x1000, "coordinate 510 outside [0, 500] (pixels)"),
        ("[0, 0, 10, 10] [110, 20, 10, 220]", None, "inverted box"),  # one bad box spoils the answer
        (" ".join(["[0, 0, 10, 10]"] * (MAX_BOXES + 1)), None, f"more than {MAX_BOXES} boxes"),
        ("[0, 0, 1, 1]," * 10_000, None, "answer longer than"),  # 10,000 boxes
        ("[1, 2, 3, " * 110_000, None, "answer longer than"),  # about 1 MB
        (" " * 1_000_000 + "[10, 20, 110, 220]", None, "answer longer than"),
    ],
)
def test_bad_answers_score_zero(answer: str, meta: dict | None, reason: str) -> None:
    verdict = bbox_iou(answer, ("[10, 20, 110, 220]",), meta=meta_json(meta))
    assert verdict.acc == 0.0
    assert reason in verdict.reason
    assert verdict.pred == ""


@pytest.mark.parametrize(
    "answer",
    [
        "[1" + " " * 60_000 + "x",
        "[" + " " * 60_000,
        "[1, 2, 3, 4" + " " * 60_000,
        "[1," * 20_000,
        "(1 " * 20_000,
        "[1.5e" * 12_000,
        "9" * 60_000,
    ],
)
def test_adversarial_answers_under_the_length_cap(answer: str) -> None:
    assert bbox_iou(answer, ("[10, 20, 110, 220]",)).acc == 0.0


def test_non_text_answer() -> None:
    assert bbox_iou(None, ("[10, 20, 110, 220]",)) == (0.0, "", "answer is not text")  # type: ignore[arg-type]


def test_box_with_a_lone_surrogate_still_scores_and_pred_is_encodable() -> None:
    verdict = bbox_iou("\ud800 [10, 20, 110, 220] \udfff", ("[10, 20, 110, 220]",))
    assert verdict.acc == 1.0
    verdict.pred.encode("utf-8")


@settings(max_examples=150, deadline=None)
@given(st.text(alphabet=st.sampled_from("[](){}, .-+e0123456789nafi\n\ud800"), max_size=200))
def test_never_raises_on_model_output(answer: str) -> None:
    verdict = bbox_iou(answer, ("[[10, 20, 110, 220], [300, 40, 380, 90]]",), meta=json.dumps(QWEN3))
    assert 0.0 <= verdict.acc <= 1.0
    assert (verdict.reason == "") == (verdict.acc == 1.0)


@pytest.mark.parametrize(
    ("golds", "meta", "message"),
    [
        (("abc",), None, "holds no box"),
        (("[10, 20, 110]",), None, "holds no box"),
        (("[110, 20, 10, 220]",), None, "inverted box"),
        (("[10, 20, 10, 220]",), None, "degenerate box"),
        (("[10, 20, 110, 220]",), {"box_format": "qwen3", "gold_format": "relative"}, "outside [0, 1] (relative)"),
        (("[10, 20, 1100, 220]",), QWEN3, "outside [0, 1000] (qwen3)"),
        (("[0.1, 0.2, 1.5, 0.5]",), RELATIVE, "outside [0, 1]"),
        (("[10, 20, 510, 220]",), PIXELS_500x1000, "outside [0, 500]"),
        (("[-1, 20, 110, 220]",), None, "outside"),
        (("[nan, 20, 110, 220]",), None, "non-finite"),
        (("[10, 20, 110, 220]",), {"box_format": "qwen3", "gold_format": "pixels"}, "needs meta.image_size"),
        (("[10, 20, 110, 220]",), {"box_format": "pixels", "gold_format": "relative"}, "needs meta.image_size"),
        (("[10, 20, 110, 220]",), {"box_format": "xyxy"}, "box_format must be one of pixels, qwen3, relative"),
        (("[10, 20, 110, 220]",), {"gold_format": "normalized"}, "gold_format must be one of"),
        (("[10, 20, 110, 220]",), {"iou_threshold": 0}, "iou_threshold must be a number in (0, 1]"),
        (("[10, 20, 110, 220]",), {"iou_threshold": 1.5}, "iou_threshold"),
        (("[10, 20, 110, 220]",), {"iou_threshold": True}, "iou_threshold"),
        (("[10, 20, 110, 220]",), {"iou_threshold": "0.5"}, "iou_threshold"),
        (("[10, 20, 110, 220]",), {"image_size": [0, 100]}, "image_size must be [width, height]"),
        (("[10, 20, 110, 220]",), {"image_size": [640]}, "image_size"),
        (("[10, 20, 110, 220]",), {"image_size": "640x480"}, "image_size"),
        (("[10, 20, 110, 220]",), {"gold_boxes": "some"}, "gold_boxes must be"),
        (("[10, 20, 110, 220]",), "not json", "not a JSON object"),
        (("[1, 2, 3]",), None, "no box"),
        ((" ".join(["[0, 0, 10, 10]"] * (MAX_BOXES + 1)),), None, f"more than {MAX_BOXES} boxes"),
    ],
)
def test_validator_rejects(golds: tuple, meta: object, message: str) -> None:
    with pytest.raises(InvalidReference, match=None) as excinfo:
        validate_box_reference(golds, meta=meta if meta is None or isinstance(meta, str) else json.dumps(meta))
    assert message in str(excinfo.value)


def test_validator_accepts() -> None:
    validate_box_reference(("[[0, 0, 10, 10], [20, 20, 30, 30]]",))
    validate_box_reference(("[0, 0, 10, 10]", "[20, 20, 30, 30]"), meta={"gold_boxes": "any"})
    validate_box_reference(("[0, 0, 500, 1000]",), meta=json.dumps(PIXELS_500x1000))
    validate_box_reference(("[0, 0, 1, 1]",), meta=json.dumps({**RELATIVE, "iou_threshold": 1}))


def test_bad_reference_raises_through_compute_score() -> None:
    with pytest.raises(InvalidReference, match=r"gold '\[110, 20, 10, 220\]': inverted box .*data_source='example_cxr'"):
        compute_score(
            data_source="example_cxr",
            solution_str="<think>x</think><answer>[0, 0, 10, 10]</answer>",
            ground_truth="[110, 20, 10, 220]",
            extra_info={"query_type": "bbox_iou", "meta": "{}"},
        )


def test_public_path() -> None:
    extra_info = {"query_type": "bbox_iou", "meta": json.dumps({"box_format": "qwen3"})}
    result = compute_score(
        data_source="example_cxr",
        solution_str="<think>x</think><answer>[10, 20, 110, 220]</answer>",
        ground_truth="[10, 20, 110, 220]",
        extra_info=extra_info,
    )
    assert result == {"score": 1.0, "acc": 1.0, "format": 1.0, "pred": "[10,20,110,220]", "reason": ""}
    missing = compute_score(
        data_source="example_cxr",
        solution_str="<think>x</think><answer>I cannot localise it.</answer>",
        ground_truth="[10, 20, 110, 220]",
        extra_info=extra_info,
    )
    assert missing == {"score": pytest.approx(0.1), "acc": 0.0, "format": 1.0, "pred": "", "reason": "no box in answer"}


def test_registration() -> None:
    spec = REGISTRY.get("bbox_iou")
    assert spec.answer_type == "closed"
    assert spec.extra_info_keys == ("meta",)
    assert spec.validate is validate_box_reference
    assert spec.source == "built-in"


def test_helpers() -> None:
    assert find_boxes("[1,2,3,4] " * 100, limit=3) == [("1", "2", "3", "4")] * 3
    assert max_weight_matching([[0.9, 0.8], [0.7, 0.0]]) == [(0, 1), (1, 0)]
    assert max_weight_matching([[0.1], [0.9], [0.5]]) == [(1, 0)]  # more rows than columns
    assert max_weight_matching([]) == []
    assert gold_box_sets(("[0, 0, 500, 1000]",), box_config(PIXELS_500x1000)) == (((0.0, 0.0, 1.0, 1.0),),)
