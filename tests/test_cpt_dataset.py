"""The CPT dataset class on parquet written by `medverl prep`, with tiny offline Qwen-VL processors and verl's collator."""

import json
import os
from pathlib import Path

import pytest
import torch
from PIL import Image
from pydicom.data import get_testdata_file

from medverl.cli import main
from medverl.models import get_family
from medverl.training.cpt_dataset import CPTDataset


@pytest.fixture(scope="module")
def model(family_processor: tuple[str, Path]):
    """verl's tokenizer and processor of a tiny model, and its family."""
    from verl.utils import hf_processor, hf_tokenizer

    family, directory = family_processor
    return hf_tokenizer(str(directory)), hf_processor(str(directory)), get_family(family)


@pytest.fixture(scope="module")
def cpt_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cpt")
    images = root / "images"
    images.mkdir()
    Image.new("RGB", (120, 90), (200, 30, 30)).save(images / "cxr.png")
    Image.new("RGB", (200, 160), (20, 90, 200)).save(images / "fundus.jpg")
    (images / "mr.dcm").write_bytes(Path(get_testdata_file("MR_small.dcm", download=False)).read_bytes())
    captions = [
        {"image": "cxr.png", "text": "Frontal chest radiograph: no pleural effusion."},
        {"image": ["fundus.jpg", "mr.dcm"], "text": "A fundus photograph and an axial MR slice."},
    ]
    documents = [
        {"texts": ["Findings.", "The lungs are clear.", "Impression: normal."], "image_info": [None, {"image_path": "cxr.png"}, None]},
        {"texts": ["A text-only page about sepsis.", "Second paragraph."], "image_info": [None, None]},
    ]
    for name, records in (("captions", captions), ("documents", documents)):
        (root / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert main(["prep", "caption", str(root / "captions.jsonl"), "--output", str(root / "cap"), "--image-root",
                 str(images), "--max-pixels", str(128 * 128)]) == 0
    assert main(["prep", "interleaved", str(root / "documents.jsonl"), "--output", str(root / "doc"),
                 "--image-root", str(images), "--max-pixels", str(128 * 128)]) == 0
    return root


def _files(cpt_dir: Path) -> list[str]:
    return sorted(str(p) for p in [*cpt_dir.glob("cap/part-*.parquet"), *cpt_dir.glob("doc/part-*.parquet")])


def _dataset(cpt_dir: Path, model, **config) -> CPTDataset:
    tokenizer, processor, _ = model
    return CPTDataset(_files(cpt_dir), tokenizer, {"max_length": 4096, **config}, processor)


def test_documents_render_in_reading_order(cpt_dir: Path, model) -> None:
    _, _, family = model
    dataset = _dataset(cpt_dir, model)
    assert dataset.family == family and dataset.image_patch_size == family.patch_size  # from the processor's config
    span = family.image_span
    assert len(dataset) == 4
    assert dataset.document_text(0) == span + "Frontal chest radiograph: no pleural effusion.<|endoftext|>"
    assert dataset.document_text(1).startswith(span * 2 + "A fundus")
    assert dataset.document_text(2) == f"Findings.{span}The lungs are clear.\nImpression: normal.<|endoftext|>"
    assert dataset.document_text(3) == "A text-only page about sepsis.\nSecond paragraph.<|endoftext|>"


def test_loss_on_every_text_token_and_nowhere_else(cpt_dir: Path, model) -> None:
    tokenizer, _, family = model
    vision = {tokenizer.convert_tokens_to_ids(t) for t in family.vision_tokens}
    dataset = _dataset(cpt_dir, model)
    for i in range(len(dataset)):
        item = dataset[i]
        ids, mask = item["input_ids"].tolist(), item["loss_mask"].tolist()
        assert mask[0] == 0  # never predicted from the previous document in a packed batch
        assert all(m == (0 if t in vision else 1) for t, m in zip(ids[1:], mask[1:], strict=True))
        assert ids[-1] == tokenizer.convert_tokens_to_ids("<|endoftext|>") and mask[-1] == 1
        text = tokenizer.decode([t for t, m in zip(ids, mask, strict=True) if m])
        assert "<|image_pad|>" not in text and text.endswith("<|endoftext|>")


def test_images_and_positions_match_the_processor(cpt_dir: Path, model) -> None:
    tokenizer, processor, _ = model
    merge = processor.image_processor.merge_size
    dataset = _dataset(cpt_dir, model)
    for i, n_images in enumerate([1, 2, 1, 0]):
        item = dataset[i]
        ids = item["input_ids"]
        assert item["position_ids"].shape == (4, ids.shape[0])  # text positions + mRoPE (t, h, w)
        if not n_images:
            assert item["multi_modal_inputs"] == {}  # present but empty: verl's collator reads the first item's keys
            continue
        grid = item["multi_modal_inputs"]["image_grid_thw"]
        assert grid.shape == (n_images, 3)
        assert item["multi_modal_inputs"]["pixel_values"].shape[0] == int(grid.prod(dim=1).sum())
        pads = int((ids == tokenizer.convert_tokens_to_ids("<|image_pad|>")).sum())
        assert pads == int(grid.prod(dim=1).sum()) // merge**2
        # per-image max_pixels from the parquet reached qwen_vl_utils: no image is over 128 * 128 pixels
        patch = processor.image_processor.patch_size
        assert all(int(h) * int(w) * patch * patch <= 128 * 128 for _, h, w in grid.tolist())


def test_collates_with_verls_no_padding_collator(cpt_dir: Path, model) -> None:
    from verl.utils.dataset.dataset_utils import SFTTensorCollator

    dataset = _dataset(cpt_dir, model)
    batch = SFTTensorCollator("no_padding")([dataset[i] for i in range(len(dataset))])
    lengths = [dataset[i]["input_ids"].shape[0] for i in range(len(dataset))]
    assert batch["input_ids"].is_nested and batch["input_ids"].offsets().diff().tolist() == lengths
    assert batch["loss_mask"].values().shape[0] == sum(lengths)
    # verl rolls the flattened mask left by one: the first token of every document must carry no loss
    rolled = torch.roll(batch["loss_mask"].values(), shifts=-1)
    starts = batch["input_ids"].offsets()[1:].tolist()
    assert all(rolled[s - 1] == 0 for s in starts)


def test_a_batch_whose_first_document_is_text_only_collates(cpt_dir: Path, model) -> None:
    from verl.utils.dataset.dataset_utils import SFTTensorCollator
    from verl.utils.model import extract_multi_modal_inputs

    dataset = _dataset(cpt_dir, model)
    items = [dataset[3], dataset[0], dataset[1]]  # the text-only document first, as verl's sampler may order it
    batch = SFTTensorCollator("no_padding")(items)
    inputs = extract_multi_modal_inputs(batch["multi_modal_inputs"])
    expected = torch.cat([items[1]["multi_modal_inputs"]["image_grid_thw"], items[2]["multi_modal_inputs"]["image_grid_thw"]])
    assert torch.equal(inputs["image_grid_thw"], expected)


def test_right_padding(cpt_dir: Path, model) -> None:
    item = _dataset(cpt_dir, model, pad_mode="right", max_length=512)[3]
    assert item["input_ids"].shape == item["attention_mask"].shape == item["loss_mask"].shape == (512,)
    assert item["position_ids"].shape == (4, 512)
    length = int(item["attention_mask"].sum())
    assert item["loss_mask"][length:].sum() == 0 and item["loss_mask"][1:length].all()


def test_truncation_never_cuts_an_image(cpt_dir: Path, model) -> None:
    tokenizer, _, _ = model
    full = _dataset(cpt_dir, model)[1]  # two images, then the caption
    ids = full["input_ids"]
    ends = (ids == tokenizer.convert_tokens_to_ids("<|vision_end|>")).nonzero().flatten().tolist()
    inside_second = ends[0] + 3
    with pytest.raises(ValueError, match=r"CPT row 1 \(captions.jsonl:2\) is \d+ tokens, over data.max_length"):
        _dataset(cpt_dir, model, max_length=inside_second)[1]
    cut = _dataset(cpt_dir, model, max_length=inside_second, truncation="right")[1]
    assert cut["input_ids"].tolist() == ids[: ends[0] + 1].tolist()  # cut before the second image's span
    grid = cut["multi_modal_inputs"]["image_grid_thw"]
    assert grid.tolist() == full["multi_modal_inputs"]["image_grid_thw"][:1].tolist()
    assert cut["multi_modal_inputs"]["pixel_values"].shape[0] == int(grid.prod())
    assert cut["position_ids"].shape == (4, ends[0] + 1)
    text_cut = _dataset(cpt_dir, model, max_length=ids.shape[0] - 4, truncation="right")[1]
    assert text_cut["input_ids"].shape[0] == ids.shape[0] - 4  # text is cut at max_length itself
    with pytest.raises(ValueError, match="first image alone is over"):
        _dataset(cpt_dir, model, max_length=3, truncation="right")[1]
    with pytest.raises(ValueError, match="'left' would cut the start"):
        _dataset(cpt_dir, model, truncation="left")


def test_max_samples_and_text_only_model(cpt_dir: Path, model) -> None:
    tokenizer, processor, family = model
    assert len(CPTDataset(_files(cpt_dir), tokenizer, {"image_patch_size": family.patch_size}, processor,
                          max_samples=2)) == 2
    text_only = CPTDataset(_files(cpt_dir), tokenizer, {"max_length": 512}, None)
    assert text_only[3]["position_ids"].shape == text_only[3]["input_ids"].shape
    with pytest.raises(ValueError, match="has images but the model has no processor"):
        text_only[0]


def test_verls_sft_trainer_builds_it_from_the_recipe_overrides(cpt_dir: Path, model) -> None:
    from hydra import compose, initialize_config_dir
    from verl.trainer import sft_trainer

    tokenizer, processor, _ = model
    config_dir = os.path.join(os.path.dirname(sft_trainer.__file__), "config")
    overrides = [
        "data.custom_cls.path=pkg://medverl.training.cpt_dataset",
        "data.custom_cls.name=CPTDataset",
        "data.pad_mode=no_padding",
        "data.max_length=2048",
        f"data.train_files=[{','.join(_files(cpt_dir))}]",
    ]
    with initialize_config_dir(config_dir=config_dir, version_base=None):
        config = compose("sft_trainer_engine", overrides=overrides)
    dataset = sft_trainer.create_sft_dataset(config.data.train_files, config.data, tokenizer, processor)
    assert isinstance(dataset, CPTDataset) and len(dataset) == 4
    assert dataset[0]["loss_mask"][0] == 0
