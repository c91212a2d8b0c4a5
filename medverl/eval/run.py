"""`medverl eval run`: generate answers for prepared benchmarks with vLLM's offline engine (GPU, ``.[train]``).

The prompts are the parquet's own (the training template); each ``<image>`` placeholder becomes the row's image, as
a data URI, in OpenAI chat format. Writes the predictions JSONL that ``medverl eval score`` reads.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from tqdm import tqdm

from medverl.arguments import EXIT_NOTHING_USABLE, EXIT_OK, positive_int
from medverl.data.images import data_uri
from medverl.data.prepared import open_prepared
from medverl.errors import ConfigError

logger = logging.getLogger(__name__)


def chat_messages(row: dict) -> list[dict]:
    """The row's prompt as OpenAI chat messages, each ``<image>`` replaced by its image in order."""
    images = iter(row.get("images") or [])
    messages = []
    for message in row["prompt"]:
        parts = []
        for i, text in enumerate(message["content"].split("<image>")):
            if i:
                parts.append({"type": "image_url", "image_url": {"url": data_uri(next(images)["bytes"])}})
            if text:
                parts.append({"type": "text", "text": text})
        messages.append({"role": message["role"], "content": parts})
    if next(images, None) is not None:
        raise ValueError(f"row {row['extra_info']['index']} of {row['data_source']} has more images than placeholders")
    return messages


def generate(
    model: str, data_dirs: list[str | Path], output: str | Path, *, max_tokens: int = 2048,
    tensor_parallel_size: int = 1, batch_size: int = 64,
) -> int:
    """Greedy answers for every row of `data_dirs`; returns the number written to `output`."""
    rows = [row for d in data_dirs for row in open_prepared(d, ("rl",)).rows()]
    if not rows:
        raise ConfigError(f"no rows in {', '.join(map(str, data_dirs))}")
    try:
        from vllm import LLM, SamplingParams
    except ImportError as exc:
        raise ConfigError(f"medverl eval run needs vLLM (pip install -e '.[train]' on a GPU machine): {exc}") from exc
    most_images = max(len(r.get("images") or []) for r in rows)
    llm = LLM(model=model, tensor_parallel_size=tensor_parallel_size, limit_mm_per_prompt={"image": max(most_images, 1)})
    sampling = SamplingParams(temperature=0.0, max_tokens=max_tokens)
    with Path(output).open("w", encoding="utf-8") as f:
        for start in tqdm(range(0, len(rows), batch_size), desc="eval run", unit=" batches"):
            batch = rows[start : start + batch_size]
            outputs = llm.chat([chat_messages(r) for r in batch], sampling, use_tqdm=False)
            for row, out in zip(batch, outputs, strict=True):
                f.write(json.dumps({"data_source": row["data_source"], "index": row["extra_info"]["index"],
                                    "response": out.outputs[0].text}, ensure_ascii=False) + "\n")
    logger.info("wrote %d predictions to %s", len(rows), output)
    return len(rows)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``medverl eval run``'s arguments."""
    parser.add_argument("--model", required=True, help="model directory or hub id to generate with")
    parser.add_argument("--data", nargs="+", required=True, help="prepared benchmark directories (eval prepare)")
    parser.add_argument("--output", required=True, help="predictions JSONL ({data_source, index, response} per line)")
    parser.add_argument("--max-tokens", type=positive_int, default=2048, help="tokens generated per answer at most")
    parser.add_argument("--tensor-parallel-size", type=positive_int, default=1, help="GPUs per model replica")


def run_command(args: argparse.Namespace) -> int:
    """Run ``medverl eval run``."""
    n = generate(args.model, args.data, args.output, max_tokens=args.max_tokens,
                 tensor_parallel_size=args.tensor_parallel_size)
    print(f"{n} predictions -> {args.output}")
    return EXIT_OK if n else EXIT_NOTHING_USABLE
