"""``medverl rewards list`` and ``rewards check``: the registry, and RL references checked against it before a run."""

from __future__ import annotations

import argparse
import logging
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq

from medverl.arguments import EXIT_NOTHING_USABLE, EXIT_OK, add_plugins
from medverl.data.prepared import PreparedError, open_prepared
from medverl.rewards import InvalidReference, RewardOptions, UnknownQueryType, check_reference, registry

logger = logging.getLogger(__name__)

COLUMNS = ("data_source", "reward_model", "extra_info")


@dataclass(frozen=True, slots=True)
class BadRow:
    """A row whose reference no answer could be scored against."""

    file: str
    row: int
    index: object
    data_source: str
    reason: str


@dataclass(slots=True)
class ReferenceReport:
    """Rows checked per query_type and the rows that failed."""

    checked: Counter = field(default_factory=Counter)
    bad: list[BadRow] = field(default_factory=list)


def rl_files(paths: list[str | Path]) -> list[Path]:
    """RL parquet files: prepared RL directories by their manifest's shards, files as they are."""
    files = []
    for path in map(Path, paths):
        files += open_prepared(path, ("rl",)).shards if path.is_dir() else [path]
    return files


def iter_rows(path: str | Path, batch_size: int = 4096) -> Iterator[dict]:
    """Rows of one RL parquet file, reading only the columns the check needs."""
    if not Path(path).is_file():
        raise PreparedError(f"{path}: no such file or directory")
    parquet = pq.ParquetFile(path)
    missing = [c for c in COLUMNS if c not in parquet.schema_arrow.names]
    if missing:
        raise PreparedError(
            f"{path}: not a verl RL parquet, missing column(s) {', '.join(missing)}; "
            f"it has {', '.join(parquet.schema_arrow.names)}"
        )
    for batch in parquet.iter_batches(batch_size=batch_size, columns=list(COLUMNS)):
        yield from batch.to_pylist()


def check_parquet(paths: list[str | Path], options: RewardOptions) -> ReferenceReport:
    """Resolve every row's query_type and validate its ground truth, as compute_score will during training.

    `paths` are RL parquet files or prepared RL directories.
    """
    report = ReferenceReport()
    for path in rl_files(paths):
        for number, row in enumerate(iter_rows(path)):
            extra_info = row.get("extra_info") or {}
            ground_truth = (row.get("reward_model") or {}).get("ground_truth")
            try:
                spec, _, _ = check_reference(ground_truth, extra_info, options)
            except (InvalidReference, UnknownQueryType) as exc:
                report.bad.append(
                    BadRow(str(path), number, extra_info.get("index"), str(row.get("data_source")), str(exc))
                )
                continue
            report.checked[spec.name] += 1
    if report.bad:
        logger.warning("%d row(s) have references no answer could match", len(report.bad))
    return report


def add_list_arguments(parser: argparse.ArgumentParser) -> None:
    add_plugins(parser)


def run_list(args: argparse.Namespace) -> int:
    registry.REGISTRY.load_plugins(args.plugins)
    print("| query_type | source | description |\n|---|---|---|")
    for spec in registry.REGISTRY.specs():
        print(f"| {spec.name} | {spec.source} | {spec.doc} |")
    return EXIT_OK


def add_check_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", nargs="+", metavar="DIR_OR_PARQUET",
                        help="prepared RL directories (medverl prep rl) or verl RL parquet files")
    parser.add_argument("--default-query-type", help="for rows without extra_info.query_type")
    add_plugins(parser)


def run_check(args: argparse.Namespace) -> int:
    options = RewardOptions(default_query_type=args.default_query_type, plugins=tuple(args.plugins))
    report = check_parquet(args.data, options)
    print("| query_type | rows |\n|---|---:|")
    for name, count in sorted(report.checked.items()):
        print(f"| {name} | {count} |")
    if not report.bad:
        print(f"all {sum(report.checked.values())} references can be scored")
        return EXIT_OK
    print(f"\n{len(report.bad)} row(s) cannot be scored:", file=sys.stderr)
    for bad in report.bad[:20]:
        print(f"  {bad.file} row {bad.row} (index={bad.index!r}, {bad.data_source}): {bad.reason}", file=sys.stderr)
    if len(report.bad) > 20:
        print(f"  ... and {len(report.bad) - 20} more", file=sys.stderr)
    return EXIT_NOTHING_USABLE
