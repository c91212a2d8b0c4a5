"""Model families: recognising a checkpoint, the resize rule against the real processors, plugins, and the RL
converter completing box rows from a family."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from medverl.data.converters import PrepOptions, convert_rl
from medverl.data.job import Reject
from medverl.models import (
    BOX_FORMATS,
    ModelFamily,
    UnknownModelFamily,
    family_names,
    family_of,
    family_of_config,
    get_family,
    register,
)
from medverl.rewards import boxes


def test_the_built_in_families() -> None:
    assert {"qwen2.5-vl", "qwen3-vl"} <= set(family_names())
    qwen25, qwen3 = get_family("qwen2.5-vl"), get_family("qwen3-vl")
    assert (qwen25.patch_size, qwen25.box_format, qwen3.patch_size, qwen3.box_format) == (14, "pixels", 16, "qwen3")
    assert qwen25.image_span == qwen3.image_span == "<|vision_start|><|image_pad|><|vision_end|>"
    assert set(qwen25.vision_tokens) <= set(qwen25.never_sample)
    assert BOX_FORMATS == boxes.BOX_FORMATS  # the rewards read every unit a family may name


def test_family_of_a_tiny_model_directory(family_processor: tuple[str, Path]) -> None:
    family, directory = family_processor
    assert family_of(directory).name == family
    assert family_of(str(directory)).name == family
    assert family_of_config(json.loads((directory / "config.json").read_text())).name == family


@pytest.mark.parametrize(("hub_id", "family"), [
    ("Qwen/Qwen2.5-VL-3B-Instruct", "qwen2.5-vl"),
    ("Qwen/Qwen2.5-VL-72B-Instruct-AWQ", "qwen2.5-vl"),
    ("Qwen/Qwen3-VL-4B-Instruct", "qwen3-vl"),
    ("someone/medical-qwen3-vl-8b", "qwen3-vl"),  # case-insensitive, anywhere in the name
])
def test_family_of_a_hub_id_reads_its_name(hub_id: str, family: str) -> None:
    assert family_of(hub_id).name == family


@pytest.mark.parametrize(("model", "message"), [
    # a hub id no family's name pattern matches
    ("meta-llama/Llama-3.2-11B-Vision", "meta-llama/Llama-3.2-11B-Vision: no model family matches its name"),
    # a path that is not there
    ("./no/such/model", "no such model directory"),
    # the owner's name does not count
    ("Qwen2.5-VL-fans/llava-med", "no model family matches its name"),
])
def test_an_unknown_model_names_itself_and_the_known_families(model: str, message: str) -> None:
    with pytest.raises(UnknownModelFamily, match=message) as error:
        family_of(model)
    if "matches" in message:
        assert "Known model families: qwen2.5-vl, qwen3-vl" in str(error.value)


def test_a_directory_without_a_known_config(tmp_path: Path) -> None:
    with pytest.raises(UnknownModelFamily, match="no config.json"):
        family_of(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llava", "architectures": ["LlavaForCausal"]}))
    with pytest.raises(UnknownModelFamily, match=r"no model family matches model_type 'llava'.*Known model families"):
        family_of(tmp_path)


def test_an_unknown_family_name_says_the_closest() -> None:
    with pytest.raises(UnknownModelFamily, match=r"unknown model family 'qwen3vl'. Did you mean 'qwen3-vl'\?"):
        get_family("qwen3vl")


SIZES = [(640, 480), (56, 56), (1000, 30), (3000, 2000), (123, 457), (28, 900)]


@pytest.mark.parametrize("family", ["qwen2.5-vl", "qwen3-vl"])
@pytest.mark.parametrize("size", SIZES, ids=[f"{w}x{h}" for w, h in SIZES])
def test_the_resize_rule_is_the_image_processors(family: str, size: tuple[int, int]) -> None:
    """Each image's grid from transformers' Qwen2VLImageProcessor, in pixels, is the size the family computes."""
    from transformers import Qwen2VLImageProcessor

    model_family = get_family(family)
    patch, merge = model_family.patch_size, model_family.merge_size
    bounds = {"min_pixels": 8 * (patch * merge) ** 2, "max_pixels": 256 * (patch * merge) ** 2}
    processor = Qwen2VLImageProcessor(patch_size=patch, merge_size=merge, temporal_patch_size=2, **bounds)
    _, rows, columns = processor(images=[Image.new("RGB", size)], return_tensors="pt")["image_grid_thw"][0].tolist()
    assert model_family.resized_size(*size, **bounds) == (columns * patch, rows * patch)


@pytest.mark.parametrize("family", ["qwen2.5-vl", "qwen3-vl"])
@pytest.mark.parametrize("size", SIZES, ids=[f"{w}x{h}" for w, h in SIZES])
def test_the_default_resize_is_qwen_vl_utils(family: str, size: tuple[int, int]) -> None:
    """Without min/max pixels, the size verl's image loader (qwen_vl_utils) resizes to."""
    from qwen_vl_utils import fetch_image

    model_family = get_family(family)
    image = fetch_image({"image": Image.new("RGB", size)}, image_patch_size=model_family.patch_size)
    assert model_family.resized_size(*size) == image.size


def test_the_resize_rule_refuses_what_qwen_vl_utils_refuses() -> None:
    with pytest.raises(ValueError, match="over 200 times"):
        get_family("qwen2.5-vl").resized_size(10, 3000)


def _toy_vl() -> ModelFamily:
    return ModelFamily(
        name="toy-vl", model_types=("toy_vl",), architectures=("ToyVLForConditionalGeneration",),
        hub_pattern=r"toy-?vl", vision_start="<img>", image_token="<IMG_CONTEXT>", vision_end="</img>",
        video_token="<VID_CONTEXT>", never_sample=("<img>", "</img>", "<IMG_CONTEXT>"), patch_size=14,
        merge_size=2, box_format="relative", rope_index="toy.rope:get_rope_index",
    )


def test_a_plugin_family_is_found_by_family_of(tmp_path: Path) -> None:
    register(_toy_vl)
    assert get_family("toy-vl") == _toy_vl()
    assert family_of("lab/ToyVL-2B").name == "toy-vl"
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["ToyVLForConditionalGeneration"]}))
    assert family_of(tmp_path).image_span == "<img><IMG_CONTEXT></img>"
    register(_toy_vl)  # the same family again (a re-imported module) changes nothing
    with pytest.raises(ValueError, match="'qwen3-vl' is already registered"):
        register(lambda: ModelFamily(**{**vars(_toy_vl()), "name": "qwen3-vl"}))


def test_a_family_from_an_entry_point_is_found(monkeypatch) -> None:
    import importlib.metadata

    from medverl.models import ENTRY_POINT_GROUP, FAMILIES

    point = importlib.metadata.EntryPoint("toy-vl", f"{__name__}:_toy_vl", ENTRY_POINT_GROUP)
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: [point] if group == ENTRY_POINT_GROUP else [])
    monkeypatch.setattr(FAMILIES, "_entry_points_loaded", False)
    assert family_of("lab/toy-vl-7b") == _toy_vl()
    assert "toy-vl" in family_names()


def test_a_family_with_unknown_box_units_is_refused() -> None:
    with pytest.raises(ValueError, match="box_format must be one of pixels, qwen3, relative"):
        ModelFamily(**{**vars(_toy_vl()), "box_format": "normalized"})


# medverl prep rl --model-family: bbox_iou rows completed from the family

def _box_row(tmp_path: Path, meta: dict, images: int = 1, size: tuple[int, int] = (640, 480)) -> dict:
    for i in range(images):
        Image.new("RGB", size, (90, 90, 90)).save(tmp_path / f"scan{i}.png")
    relative = meta.get("gold_format", meta.get("box_format")) == "relative"
    return {"question": "<image>" * images + "Where is the nodule?",
            "answer": "[0.1, 0.2, 0.5, 0.6]" if relative else "[10, 20, 110, 220]", "query_type": "bbox_iou",
            "meta": meta, "images": [f"scan{i}.png" for i in range(images)]}


def _meta(record: dict, tmp_path: Path, **options) -> dict | Reject:
    row = convert_rl(record, 0, "boxes.jsonl:1", PrepOptions(image_root=tmp_path, **options))
    return row if isinstance(row, Reject) else json.loads(row["extra_info"]["meta"])


@pytest.mark.parametrize(("meta", "options", "expected"), [
    # Qwen2.5-VL: pixel boxes get the resized image's size
    ({}, {"model_family": "qwen2.5-vl"}, {"box_format": "pixels", "gold_format": "pixels", "image_size": [644, 476]}),
    # the job's max_pixels (written into the image dicts) is the resize's budget too
    ({}, {"model_family": "qwen2.5-vl", "max_pixels": 256 * 28 * 28},
     {"box_format": "pixels", "gold_format": "pixels", "image_size": [504, 364]}),
    # Qwen3-VL answers in 0-1000; the gold stays in pixels of the resized image (factor 32)
    ({}, {"model_family": "qwen3-vl"}, {"box_format": "qwen3", "gold_format": "pixels", "image_size": [640, 480]}),
    # relative gold, Qwen3-VL answers: no pixels, no size
    ({"gold_format": "relative"}, {"model_family": "qwen3-vl"}, {"box_format": "qwen3", "gold_format": "relative"}),
    # the row's own box_format and image_size are kept
    ({"box_format": "relative"}, {"model_family": "qwen2.5-vl"}, {"box_format": "relative"}),
    ({"image_size": [300, 300]}, {"model_family": "qwen2.5-vl"},
     {"box_format": "pixels", "gold_format": "pixels", "image_size": [300, 300]}),
    # no family named: the meta is the record's
    ({}, {}, {}),
])
def test_prep_completes_box_rows_from_the_model_family(tmp_path: Path, meta: dict, options: dict,
                                                        expected: dict) -> None:
    assert _meta(_box_row(tmp_path, {"gold_boxes": "all", **meta}), tmp_path, **options) == {"gold_boxes": "all",
                                                                                               **expected}


def test_prep_checks_the_completed_box_row(tmp_path: Path) -> None:
    # relative gold and pixel answers: without a family the size is missing, with one the row is whole
    record = _box_row(tmp_path, {"gold_format": "relative", "box_format": "pixels"})
    record["answer"] = "[0.1, 0.2, 0.5, 0.6]"
    assert _meta(record, tmp_path).code == "invalid_reference"
    assert _meta(record, tmp_path, model_family="qwen2.5-vl")["image_size"] == [644, 476]
    # a gold box outside the resized image
    outside = {**_box_row(tmp_path, {}), "answer": "[10, 20, 700, 220]"}
    reject = _meta(outside, tmp_path, model_family="qwen2.5-vl")
    assert reject.code == "invalid_reference" and "outside [0, 644]" in reject.reason
    # two images: which one the boxes are on is not known
    reject = _meta(_box_row(tmp_path, {}, images=2), tmp_path, model_family="qwen2.5-vl")
    assert reject.code == "invalid_reference" and "set meta.image_size" in reject.reason


def test_an_unknown_model_family_option_is_refused() -> None:
    with pytest.raises(UnknownModelFamily, match="Did you mean 'qwen2.5-vl'"):
        PrepOptions(model_family="qwen25-vl")


def test_the_prep_command_takes_the_model_family(tmp_path: Path, capsys) -> None:
    import pyarrow.parquet as pq

    from medverl.cli import main

    (tmp_path / "boxes.jsonl").write_text(json.dumps(_box_row(tmp_path, {})) + "\n")
    common = ["prep", "rl", str(tmp_path / "boxes.jsonl"), "--image-root", str(tmp_path)]
    assert main([*common, "--output", str(tmp_path / "out"), "--model-family", "qwen2.5-vl"]) == 0
    row = pq.read_table(tmp_path / "out" / "part-00000.parquet").to_pylist()[0]
    assert json.loads(row["extra_info"]["meta"])["image_size"] == [644, 476]
    assert main([*common, "--output", str(tmp_path / "bad"), "--model-family", "qwen-vl"]) == 2
    assert "unknown model family 'qwen-vl'" in capsys.readouterr().err
