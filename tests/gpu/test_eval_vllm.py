"""``eval run --backend vllm`` on a GPU: the same prompts as the CPU backend (text from the processor's chat template,
images resized as verl resizes them), through vLLM's offline engine, into predictions ``eval score`` reads.

    python -m pytest tests/gpu -m gpu -s
"""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from medverl.cli import main

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="needs vLLM (pip install -e '.[train]')"),
]


def test_vllm_and_hf_answer_every_question_and_score_alike(tiny_model: Path, eval_data: list[str],
                                                            tmp_path: Path) -> None:
    runs = {}
    for backend in ("vllm", "hf"):
        runs[backend] = tmp_path / f"{backend}.jsonl"
        assert main(["eval", "run", "--model", str(tiny_model), "--data", *eval_data, "--output", str(runs[backend]),
                     "--backend", backend, "--max-tokens", "8"]) == 0
        lines = [json.loads(line) for line in runs[backend].read_text().splitlines()]
        assert len(lines) == 7 and all(isinstance(p["response"], str) for p in lines)
    assert main(["eval", "score", "--data", *eval_data, *(f"--run={b}={p}" for b, p in runs.items()),
                 "--output", str(tmp_path / "report")]) == 0
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert {b: sum(m["n"] for m in metrics[b].values()) for b in runs} == {"vllm": 7, "hf": 7}
    assert all(m["missing"] == 0 for b in runs for m in metrics[b].values())
