"""``eval run --backend hf`` on a GPU, the path a machine without vLLM takes: the model in bf16 on CUDA, every
question answered, predictions ``eval score`` reads; the answers beside the CPU's (float32) are printed.

    python -m pytest tests/gpu -m gpu -s
"""

import json
from pathlib import Path

import pytest
import torch

from medverl.cli import main
from medverl.eval import run
from medverl.models import family_names

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


@pytest.mark.parametrize("family", family_names())
def test_hf_backend_answers_every_question_on_cuda(family: str, tiny_models, eval_data: list[str],
                                                   tmp_path: Path) -> None:
    model = tiny_models.model(family)
    generator = run.HFGenerator(str(model), run.ModelFiles(str(model)), max_tokens=8, batch_size=4)
    parameter = next(generator.model.parameters())
    assert (parameter.device.type, parameter.dtype) == ("cuda", torch.bfloat16)
    generator.close()
    lines = {}
    for device in ("cuda", "cpu"):
        path = tmp_path / f"{device}.jsonl"
        assert main(["eval", "run", "--model", str(model), "--data", *eval_data, "--output", str(path),
                     "--backend", "hf", "--device", device, "--max-tokens", "8", "--batch-size", "3"]) == 0
        lines[device] = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(p["data_source"], p["index"]) for p in lines["cuda"]] == [(p["data_source"], p["index"])
                                                                       for p in lines["cpu"]]
    assert len(lines["cuda"]) == 7 and all(isinstance(p["response"], str) for p in lines["cuda"])
    same = sum(a["response"] == b["response"] for a, b in zip(lines["cuda"], lines["cpu"], strict=True))
    print(f"\n{family}: {same}/7 answers identical on CUDA (bf16) and CPU (float32)")
    assert main(["eval", "score", "--data", *eval_data, "--run", f"cuda={tmp_path / 'cuda.jsonl'}",
                 "--output", str(tmp_path / "report")]) == 0
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())["cuda"]
    assert {k: (m["n"], m["missing"]) for k, m in metrics.items()} == {"vqa_rad": (3, 0), "mmmu_hm": (4, 0)}
