"""The tiny offline models of each model family load through verl's own hf_processor / hf_tokenizer / RLHFDataset."""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image
from verl.utils import hf_processor, hf_tokenizer
from verl.utils.dataset.rl_dataset import RLHFDataset

from medverl.models import family_of
from medverl.training.tiny_model import main

VARIANTS = {"qwen2.5-vl": ("Qwen2_5_VLProcessor", 14), "qwen3-vl": ("Qwen3VLProcessor", 16)}


@pytest.fixture
def tiny_dir(family_processor: tuple[str, Path]) -> tuple[str, str]:
    family, path = family_processor
    assert (path / "config.json").is_file()
    return family, str(path)


def _png(size: tuple[int, int] = (64, 48), color: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def test_hf_processor_and_hf_tokenizer_load(tiny_dir: tuple[str, str]) -> None:
    family, path = tiny_dir
    cls_name, patch_size = VARIANTS[family]
    assert family_of(path).name == family
    processor = hf_processor(path)
    assert processor is not None, "verl's hf_processor fell back to None (text-only)"
    assert type(processor).__name__ == cls_name
    assert processor.image_processor.patch_size == patch_size
    assert processor.image_processor.merge_size == 2
    assert callable(processor.get_rope_index)  # verl bound the model's mRoPE index function
    tokenizer = hf_tokenizer(path)
    assert tokenizer.convert_tokens_to_ids("<|image_pad|>") == processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"
    assert processor.config.image_token_id == tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert processor.config.text_config.vocab_size == len(tokenizer)


def test_processor_expands_image_pad_tokens(tiny_dir: tuple[str, str]) -> None:
    family, path = tiny_dir
    processor = hf_processor(path)
    image = Image.new("RGB", (64, 48), (10, 120, 200))
    messages = [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "What is shown?"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text.count("<|image_pad|>") == 1 and text.endswith("<|im_start|>assistant\n")
    inputs = processor(text=[text], images=[image], return_tensors="pt")

    merge = processor.image_processor.merge_size
    grid = inputs["image_grid_thw"]
    assert grid.shape == (1, 3)
    expected = int(grid[0].prod()) // merge**2
    image_pad = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert int((inputs["input_ids"][0] == image_pad).sum()) == expected > 0
    patch = VARIANTS[family][1]
    assert inputs["pixel_values"].shape == (int(grid[0].prod()), 3 * 2 * patch * patch)

    # The mRoPE function verl bound from the model class works with the tiny config (as the agent loop calls it).
    position_ids, _ = processor.get_rope_index(
        input_ids=inputs["input_ids"],
        attention_mask=inputs["attention_mask"],
        image_grid_thw=grid,
        mm_token_type_ids=inputs["mm_token_type_ids"],
    )
    assert position_ids.shape == (3, 1, inputs["input_ids"].shape[1])


def test_rlhf_dataset_loads_image_and_text_only_rows(tiny_dir: tuple[str, str], tmp_path: Path) -> None:
    _, path = tiny_dir
    rows = [
        {
            "data_source": "vqa_rad",
            "prompt": [{"role": "user", "content": "<image>What is shown?"}],
            "images": [{"bytes": _png(), "path": ""}],
            "ability": "medical_vqa",
            "reward_model": {"style": "rule", "ground_truth": "lung"},
            "extra_info": {"index": 0, "query_type": "open"},
        },
        {
            "data_source": "vqa_rad",
            "prompt": [{"role": "user", "content": "Name the imaging plane of an axial CT."}],
            "images": [],
            "ability": "medical_vqa",
            "reward_model": {"style": "rule", "ground_truth": "axial"},
            "extra_info": {"index": 1, "query_type": "exact_match"},
        },
    ]
    parquet = tmp_path / "train.parquet"
    pd.DataFrame(rows).to_parquet(parquet)

    config = OmegaConf.create(
        {
            "prompt_key": "prompt",
            "image_key": "images",
            "max_prompt_length": 512,
            "filter_overlong_prompts": True,
            "filter_overlong_prompts_workers": 1,
            "truncation": "error",
            "return_raw_chat": True,
            "cache_dir": str(tmp_path / "cache"),
        }
    )
    dataset = RLHFDataset(str(parquet), hf_tokenizer(path), config, processor=hf_processor(path))
    assert len(dataset) == 2  # the filter dropped neither the image row nor the text-only row

    first = dataset[0]
    content = first["raw_prompt"][0]["content"]
    assert [item["type"] for item in content] == ["image", "text"]
    assert isinstance(content[0]["image"], Image.Image) and content[0]["image"].size == (64, 48)
    assert first["index"] == 0 and first["reward_model"]["ground_truth"] == "lung"
    assert isinstance(first["dummy_tensor"], torch.Tensor)

    second = dataset[1]
    assert second["raw_prompt"][0]["content"] == "Name the imaging plane of an axial CT."
    assert second["index"] == 1


def test_the_command_writes_a_model_of_the_family(tmp_path: Path, capsys) -> None:
    main([str(tmp_path / "model"), "--family", "qwen3-vl", "--seed", "1"])
    assert capsys.readouterr().out.strip() == str(tmp_path / "model")
    assert family_of(tmp_path / "model").name == "qwen3-vl"
    assert (tmp_path / "model" / "model.safetensors").is_file()
