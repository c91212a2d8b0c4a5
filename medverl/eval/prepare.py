"""`medverl eval prepare`: a benchmark's public distribution to medverl RL parquet (a verl validation set too)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from medverl.data.converters import PrepOptions
from medverl.data.runner import PrepJob, run_prep
from medverl.eval.benchmarks import READERS
from medverl.prompts import load_template


def prepare(
    benchmark: str, source: str | Path, output: str | Path, *, max_pixels: int | None = None,
    template: str = "think_answer", workers: int = 1, progress: bool = True,
) -> dict:
    """Convert `benchmark` from `source` into RL shards in `output`; returns the manifest.

    Every question is written or rejected with its reason (``rejects.jsonl``); a reject's ``source`` is
    ``BENCHMARK.jsonl:N``, the N-th question in the distribution's order.
    """
    if benchmark not in READERS:
        raise ValueError(f"unknown benchmark {benchmark!r}; known: {', '.join(READERS)}")
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=output.parent) as tmp:
        records = Path(tmp) / f"{benchmark}.jsonl"
        with records.open("w", encoding="utf-8") as f:
            for record in READERS[benchmark](Path(source)):
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
        options = PrepOptions(max_pixels=max_pixels, data_source=benchmark, split="test",
                              template=load_template(template))
        return run_prep(PrepJob("rl", (str(records),), output, options), workers=workers, progress=progress)
