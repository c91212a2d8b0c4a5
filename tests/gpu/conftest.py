"""Fixtures of the GPU tests."""

from pathlib import Path

import pytest

from medverl.cli import main
from medverl.eval.samples import write_samples


@pytest.fixture
def eval_data(tmp_path: Path) -> list[str]:
    """The bundled VQA-RAD (one image per question) and MMMU (one to four) samples, prepared for ``eval run``."""
    sources = write_samples(tmp_path / "sources")
    data = []
    for name in ("vqa_rad", "mmmu_hm"):
        data.append(str(tmp_path / name))
        assert main(["eval", "prepare", name, "--source", str(sources[name]), "--output", data[-1]]) == 0
    return data
