"""Score a predictions file with the reward registry and summarise it per query_type and data_source."""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import IO

from medverl.rewards import InvalidReference, RewardOptions, RewardResult, UnknownQueryType, score_sample

logger = logging.getLogger(__name__)

REQUIRED_FIELDS = ("solution_str", "ground_truth")


@dataclass(slots=True)
class Rejected:
    """An input row that could not be scored, with the line it came from and why."""

    line: int
    reason: str
    excerpt: str


@dataclass(slots=True)
class Group:
    """Running totals of one table row."""

    n: int = 0
    score: float = 0.0
    acc: float = 0.0
    formatted: int = 0
    parse_failures: int = 0

    def add(self, result: RewardResult) -> None:
        self.n += 1
        self.score += result.score
        self.acc += result.acc
        self.formatted += result.format == 1.0
        self.parse_failures += result.format == 1.0 and not result.parsed


@dataclass(slots=True)
class ScoreSummary:
    """Totals per query_type and per data_source, plus the rejected rows."""

    by_query_type: dict[str, Group] = field(default_factory=lambda: defaultdict(Group))
    by_data_source: dict[str, Group] = field(default_factory=lambda: defaultdict(Group))
    overall: Group = field(default_factory=Group)
    rejected: list[Rejected] = field(default_factory=list)

    def add(self, data_source: str, result: RewardResult) -> None:
        self.by_query_type[result.query_type].add(result)
        self.by_data_source[data_source].add(result)
        self.overall.add(result)

    def markdown(self) -> str:
        """Both tables as markdown."""
        parts = [
            _table("query_type", self.by_query_type, self.overall),
            _table("data_source", self.by_data_source, self.overall),
        ]
        return "\n\n".join(parts) + "\n"


def _table(title: str, groups: Mapping[str, Group], overall: Group) -> str:
    header = f"| {title} | n | score | acc | format pass | parse failures |\n|---|---:|---:|---:|---:|---:|"
    rows = [_row(name, groups[name]) for name in sorted(groups)]
    rows.append(_row("**all**", overall))
    return "\n".join([header, *rows])


def _row(name: str, g: Group) -> str:
    if not g.n:
        return f"| {name} | 0 | - | - | - | - |"
    return (
        f"| {name} | {g.n} | {g.score / g.n:.3f} | {g.acc / g.n:.3f} | "
        f"{100 * g.formatted / g.n:.1f}% | {g.parse_failures} |"
    )


def read_rows(lines: Iterable[str]) -> Iterator[tuple[int, dict | Rejected]]:
    """(line number, row or rejection) for every non-blank line of a JSONL stream."""
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            yield number, Rejected(number, f"invalid JSON: {exc.msg} at column {exc.colno}", line[:200])
            continue
        if not isinstance(row, dict):
            yield number, Rejected(number, f"expected a JSON object, got {type(row).__name__}", line[:200])
            continue
        missing = [f for f in REQUIRED_FIELDS if f not in row]
        if missing:
            yield number, Rejected(
                number, f"missing field(s) {', '.join(missing)}; the row has {', '.join(sorted(row)) or 'no keys'}",
                line[:200],
            )
            continue
        yield number, row


def extra_info_of(row: Mapping) -> dict:
    """The extra_info verl would pass: the row's own ``extra_info`` plus top-level query_type and options."""
    extra = dict(row.get("extra_info") or {})
    for key in ("query_type", "options", "index"):
        if key in row:
            extra[key] = row[key]
    return extra


def score_rows(
    lines: Iterable[str], options: RewardOptions, per_sample: IO[str] | None = None
) -> ScoreSummary:
    """Score every row; bad rows become :class:`Rejected` entries, never silent drops.

    Args:
        lines: JSONL text lines with ``solution_str``, ``ground_truth`` and ``query_type`` (or ``extra_info``).
        options: the reward options a training run would use.
        per_sample: where to write one JSON object per scored row (prediction and reason included).
    """
    summary = ScoreSummary()
    for number, row in read_rows(lines):
        if isinstance(row, Rejected):
            summary.rejected.append(row)
            continue
        data_source = str(row.get("data_source") or "unknown")
        try:
            result = score_sample(row["solution_str"], row["ground_truth"], extra_info_of(row), options)
        except (InvalidReference, UnknownQueryType) as exc:
            summary.rejected.append(Rejected(number, str(exc), json.dumps(row, ensure_ascii=False)[:200]))
            continue
        summary.add(data_source, result)
        if per_sample is not None:
            record = {"line": number, "data_source": data_source, **({"id": row["id"]} if "id" in row else {})}
            record |= {"query_type": result.query_type, **result.to_verl()}
            per_sample.write(json.dumps(record, ensure_ascii=False) + "\n")
    if summary.rejected:
        logger.warning("%d row(s) could not be scored", len(summary.rejected))
    return summary
