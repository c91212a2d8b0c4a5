"""`medverl eval prepare`: a benchmark's public distribution to medverl RL parquet (a verl validation set too)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from medverl.arguments import positive_int, print_job
from medverl.data.converters import PrepOptions
from medverl.data.runner import PrepJob, run_prep
from medverl.errors import ConfigError
from medverl.eval.benchmarks import MMMU_SPLITS, READERS, ReadOptions
from medverl.prompts import DEFAULT_TEMPLATE, TEMPLATES, load_template


def prepare(
    benchmark: str, source: str | Path, output: str | Path, *, max_pixels: int | None = None,
    template: str = DEFAULT_TEMPLATE, workers: int = 1, resume: bool = False, progress: bool = True,
    read: ReadOptions = ReadOptions(),
) -> dict:
    """Convert `benchmark` from `source` into RL shards in `output`; returns the manifest.

    Every question is written or rejected with its reason (``rejects.jsonl``); a reject's ``source`` is
    ``BENCHMARK.jsonl:N``, the N-th question in the distribution's order. The questions are first written to
    ``OUTPUT/BENCHMARK.jsonl`` (removed once the job completes), the job's input.
    """
    if benchmark not in READERS:
        raise ValueError(READERS.unknown_message(benchmark))
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    records = output / f"{benchmark}.jsonl"
    try:
        with records.open("w", encoding="utf-8") as f:
            for record in READERS.get(benchmark)(Path(source), read):
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
    except FileNotFoundError as exc:
        records.unlink()
        raise ConfigError(f"{benchmark}: {exc}; --source is the directory of the downloaded distribution") from None
    # the images are the distribution's own files: the distribution's directory is their only root
    options = PrepOptions(max_pixels=max_pixels, data_source=benchmark, split="test", template=load_template(template),
                          image_root=Path(source))
    manifest = run_prep(PrepJob("rl", (str(records),), output, options), workers=workers, resume=resume,
                        progress=progress, info={"benchmark": benchmark, "benchmark_source": str(source),
                              "read_options": {"include_restricted": read.include_restricted, "split": read.split}})
    records.unlink()
    return manifest


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``medverl eval prepare``'s arguments."""
    parser.add_argument("benchmark", choices=READERS.names(), help="the benchmark to prepare (a plugin's too: "
                        "entry-point group 'medverl.benchmarks')")
    parser.add_argument("--source", required=True, help="the downloaded distribution's directory")
    parser.add_argument("--output", required=True, help="output directory (a prepared RL directory)")
    parser.add_argument("--max-pixels", type=positive_int, help="written into every image dict (as in training)")
    parser.add_argument("--template", default=DEFAULT_TEMPLATE, help=f"the prompt template training used: "
                        f"{', '.join(TEMPLATES.names())} or a file")
    parser.add_argument("--include-restricted", action="store_true", help="omnimedvqa: read the Restricted-access "
                        "part too (its images are not distributed; MedEvalKit reads Open-access only)")
    parser.add_argument("--split", choices=MMMU_SPLITS, default="validation", help="mmmu_hm: the split to read "
                        "(the seed's table used validation; test has no public answers)")
    parser.add_argument("--workers", type=positive_int, default=1, help="worker processes")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted job in the same directory")


def run_command(args: argparse.Namespace) -> int:
    """Run ``medverl eval prepare``."""
    manifest = prepare(args.benchmark, args.source, args.output, max_pixels=args.max_pixels, template=args.template,
                       workers=args.workers, resume=args.resume,
                       read=ReadOptions(include_restricted=args.include_restricted, split=args.split))
    return print_job(manifest, args.output)
