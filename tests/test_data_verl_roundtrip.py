"""Prepared parquet through verl's own RLHFDataset and MultiTurnSFTDataset, with a tiny offline Qwen2.5-VL processor."""

import json
from pathlib import Path

import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from medverl.cli import main
from medverl.training.validate import validate


@pytest.fixture(scope="module")
def model_dir(tiny_processor: Path) -> str:
    return str(tiny_processor)


@pytest.fixture
def image_root(tmp_path: Path) -> Path:
    root = tmp_path / "images"
    root.mkdir()
    Image.new("RGB", (96, 64), (200, 30, 30)).save(root / "cxr.png")
    Image.new("RGB", (300, 200), (20, 90, 200)).save(root / "fundus.jpg")
    (root / "mr.dcm").write_bytes(Path(get_testdata_file("MR_small.dcm", download=False)).read_bytes())
    return root


def _jsonl(path: Path, records: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


RL_RECORDS = [
    {"question": "Is there a pleural effusion?", "answer": "no", "query_type": "yes_no", "image": "cxr.png",
     "data_source": "vqa_rad"},
    {"question": "Which finding?", "answer": "B", "query_type": "multiple_choice",
     "options": ["Normal fundus", "Diabetic retinopathy"], "images": ["fundus.jpg", "mr.dcm"], "data_source": "omni"},
    {"question": "What organ is shown?", "answer": ["brain", "the brain"], "query_type": "jaccard", "image": "mr.dcm"},
    {"question": "Name the imaging plane of an axial CT.", "answer": "axial", "query_type": "exact_match"},
]


def test_rl_round_trip_keeps_every_row(tmp_path: Path, image_root: Path, model_dir: str, capsys) -> None:
    out = tmp_path / "rl"
    source = _jsonl(tmp_path / "rl.jsonl", RL_RECORDS)
    assert main(["prep", "rl", source, "--output", str(out), "--image-root", str(image_root),
                 "--max-pixels", str(112 * 112)]) == 0
    report = validate(out, model_dir, max_length=1024)
    assert report.ok, report.problems
    assert report.rows == report.kept_by_verl == len(RL_RECORDS)  # verl's filter dropped nothing
    assert len(report.token_lengths) == 4 and min(report.token_lengths) > 10
    assert main(["validate", str(out), "--processor", model_dir]) == 0
    assert "| rows verl's dataset keeps | 4 |" in capsys.readouterr().out


def test_validate_names_the_rows_verl_would_drop(tmp_path: Path, image_root: Path, model_dir: str) -> None:
    out = tmp_path / "rl"
    source = _jsonl(tmp_path / "rl.jsonl", RL_RECORDS)
    assert main(["prep", "rl", source, "--output", str(out), "--image-root", str(image_root)]) == 0
    report = validate(out, model_dir, max_length=120)  # too short for the image rows
    assert not report.ok
    assert report.kept_by_verl < report.rows
    assert any("dropped by verl's RLHFDataset" in p and "rl.jsonl:" in p for p in report.problems)
    assert main(["validate", str(out), "--processor", model_dir, "--max-prompt-length", "120"]) == 1


SFT_RECORDS = [
    {"conversations": [{"from": "human", "value": "What is a pneumothorax?"},
                       {"from": "gpt", "value": "Air in the pleural space."}]},
    {"image": ["cxr.png"], "conversations": [{"from": "human", "value": "<image>\nDescribe the image."},
                                             {"from": "gpt", "value": "A red square."}]},
    {"image": ["cxr.png", "mr.dcm"], "conversations": [
        {"from": "system", "value": "You are a radiologist."},
        {"from": "human", "value": "<image>\n<image>\nCompare."},
        {"from": "gpt", "value": "The second is an MR slice."},
        {"from": "human", "value": "Which modality?"},
        {"from": "gpt", "value": "MR."}]},
]


def test_sft_round_trip(tmp_path: Path, image_root: Path, model_dir: str) -> None:
    out = tmp_path / "sft"
    source = _jsonl(tmp_path / "sft.jsonl", SFT_RECORDS)
    assert main(["prep", "sft", source, "--output", str(out), "--image-root", str(image_root)]) == 0
    report = validate(out, model_dir, max_length=2048)
    assert report.ok, report.problems
    assert report.rows == report.kept_by_verl == 3


def test_validate_catches_a_tampered_directory(tmp_path: Path, image_root: Path) -> None:
    out = tmp_path / "sft"
    source = _jsonl(tmp_path / "sft.jsonl", SFT_RECORDS)
    assert main(["prep", "sft", source, "--output", str(out), "--image-root", str(image_root)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["written"] = 5
    (out / "manifest.json").write_text(json.dumps(manifest))
    report = validate(out)
    assert report.problems == ["manifest says 5 rows were written, shards hold 3"]
