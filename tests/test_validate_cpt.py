"""`medverl validate` on CPT data loads CPT shards through CPTDataset, the class verl's SFT trainer uses for CPT."""

import json
from pathlib import Path

import pytest
from PIL import Image

from medverl.cli import main
from medverl.training.validate import validate


@pytest.fixture(scope="module")
def model_dir(tiny_processor: Path) -> str:
    return str(tiny_processor)


@pytest.fixture
def cpt_out(tmp_path: Path) -> Path:
    Image.new("RGB", (120, 90), (200, 30, 30)).save(tmp_path / "cxr.png")
    records = [{"image": "cxr.png", "text": "Chest radiograph. " * n} for n in (1, 3, 40)]
    (tmp_path / "cap.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    out = tmp_path / "cpt"
    assert main(["prep", "caption", str(tmp_path / "cap.jsonl"), "--output", str(out), "--image-root", str(tmp_path),
                 "--max-pixels", str(112 * 112)]) == 0
    return out


def test_cpt_rows_load_through_the_cpt_dataset(cpt_out: Path, model_dir: str, capsys) -> None:
    report = validate(cpt_out, model_dir, max_length=2048)
    assert report.ok, report.problems
    assert report.rows == report.kept_by_verl == 3 and len(report.token_lengths) == 3
    assert main(["validate", str(cpt_out), "--processor", model_dir]) == 0
    assert "| rows verl's dataset keeps | 3 |" in capsys.readouterr().out


def test_cpt_rows_over_max_length_are_named(cpt_out: Path, model_dir: str) -> None:
    report = validate(cpt_out, model_dir, max_length=64)
    assert not report.ok and report.kept_by_verl == 2
    assert any("CPTDataset fails" in p and "cap.jsonl:3" in p and "over data.max_length=64" in p for p in report.problems)
