"""`medverl eval prepare`: a benchmark's public distribution to medverl RL parquet (a verl validation set too)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from medverl.arguments import positive_int, print_job
from medverl.data.converters import PrepOptions
from medverl.data.files import DEFAULT_MAX_IMAGE_BYTES
from medverl.data.job import Reject
from medverl.data.records import InputError, Record, checked
from medverl.data.runner import PrepJob, run_prep
from medverl.errors import ConfigError
from medverl.eval.benchmarks import MMMU_SPLITS, READERS, ReadOptions
from medverl.prompts import DEFAULT_TEMPLATE, TEMPLATES, load_template


@dataclass(frozen=True)
class Questions:
    """A benchmark's questions as job records, the N-th in the distribution's order placed ``BENCHMARK:N``; a row
    its reader rejects is a record that is not one, with the reader's code and reason. Its ``repr`` (the
    benchmark, the directory and what is read of it) is part of the job's fingerprint."""

    benchmark: str
    source: str
    read: ReadOptions

    def __call__(self) -> Iterator[Record]:
        try:
            for number, item in enumerate(READERS.get(self.benchmark)(Path(self.source), self.read), start=1):
                where = f"{self.benchmark}:{number}"
                if isinstance(item, Reject):
                    yield Record(where, number, error=item.reason, code=item.code, excerpt=item.excerpt)
                else:
                    yield checked(Record(where, number, item))
        except FileNotFoundError as exc:
            raise InputError(f"{self.benchmark}: {exc}; --source is the directory of the downloaded "
                             "distribution") from None


def prepare(
    benchmark: str, source: str | Path, output: str | Path, *, max_pixels: int | None = None,
    template: str = DEFAULT_TEMPLATE, workers: int = 1, resume: bool = False, progress: bool = True,
    read: ReadOptions = ReadOptions(),
) -> dict:
    """Convert `benchmark` from `source` into RL shards in `output`; returns the manifest.

    Every question is written or rejected with its reason (``rejects.jsonl``); a reject's ``source`` is
    ``BENCHMARK:N``, the N-th question in the distribution's order, and its reason names the row's file and place.

    Raises:
        ConfigError: `source` is not a directory, or a file the benchmark needs is missing or cannot be read at all
            (the message names it).
    """
    if benchmark not in READERS:
        raise ValueError(READERS.unknown_message(benchmark))
    if not Path(source).is_dir():
        raise ConfigError(f"{benchmark}: --source {source} is not a directory; it is the directory of the "
                          "downloaded distribution")
    questions = Questions(benchmark, os.path.abspath(source), read)
    next(iter(questions()), None)  # a missing or unreadable file is an error before the output directory is made
    # the images are the distribution's own files: the distribution's directory is their only root
    options = PrepOptions(max_pixels=max_pixels, data_source=benchmark, split="test", template=load_template(template),
                          image_root=Path(source), max_image_bytes=read.max_image_bytes)
    job = PrepJob("rl", (), Path(output), options, records=questions)
    return run_prep(job, workers=workers, resume=resume, progress=progress,
                    info={"benchmark": benchmark, "benchmark_source": str(source),
                          "read_options": {"include_restricted": read.include_restricted, "split": read.split}})


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``medverl eval prepare``'s arguments."""
    parser.add_argument("benchmark", choices=READERS.names(), help="the benchmark to prepare (a plugin's too: "
                        "entry-point group 'medverl.benchmarks')")
    parser.add_argument("--source", required=True, help="the downloaded distribution's directory")
    parser.add_argument("--output", required=True, help="output directory (a prepared RL directory)")
    parser.add_argument("--max-pixels", type=positive_int, help="written into every image dict (as in training)")
    parser.add_argument("--max-image-bytes", type=positive_int, default=DEFAULT_MAX_IMAGE_BYTES,
                        help="image files and parquet image cells larger than this are rejected unread")
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
    read = ReadOptions(include_restricted=args.include_restricted, split=args.split,
                       max_image_bytes=args.max_image_bytes)
    manifest = prepare(args.benchmark, args.source, args.output, max_pixels=args.max_pixels, template=args.template,
                       workers=args.workers, resume=args.resume, read=read)
    return print_job(manifest, args.output)
