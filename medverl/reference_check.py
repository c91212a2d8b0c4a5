"""Check the references of verl RL parquet files against the reward registry before a run trains on them."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq

from medverl.rewards import InvalidReference, RewardOptions, UnknownQueryType, check_reference

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


def iter_rows(path: str | Path, batch_size: int = 4096) -> Iterator[dict]:
    """Rows of one RL parquet file, reading only the columns the check needs."""
    parquet = pq.ParquetFile(path)
    missing = [c for c in COLUMNS if c not in parquet.schema_arrow.names]
    if missing:
        raise ValueError(
            f"{path}: not a verl RL parquet, missing column(s) {', '.join(missing)}; "
            f"it has {', '.join(parquet.schema_arrow.names)}"
        )
    for batch in parquet.iter_batches(batch_size=batch_size, columns=list(COLUMNS)):
        yield from batch.to_pylist()


def check_parquet(paths: list[str], options: RewardOptions) -> ReferenceReport:
    """Resolve every row's query_type and validate its ground truth, as compute_score will during training."""
    report = ReferenceReport()
    for path in paths:
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
