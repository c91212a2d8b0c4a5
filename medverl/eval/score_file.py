"""``medverl score``: predictions that carry their own ground truth, scored with the rewards GRPO trains on, in
tables per query_type and per data_source.

Bad lines (bad JSON, a missing field, an unknown query_type, an invalid reference) are rejected into
``rejects.jsonl`` with their line number and reason, and make the exit status 1.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

from medverl.arguments import print_rejects
from medverl.data.job import Job, Reject, fingerprint_inputs
from medverl.data.records import iter_jsonl, json_object
from medverl.eval.report import REPORT, SAMPLES, markdown_table
from medverl.eval.scoring import SampleScore, score_answer
from medverl.rewards import InvalidReference, RewardOptions, UnknownQueryType
from medverl.rewards.options import add_reward_options, reward_options

SCORE_FIELDS = ("solution_str", "ground_truth")


@dataclass(slots=True)
class Group:
    """Running totals of one table row."""

    n: int = 0
    score: float = 0.0
    acc: float = 0.0
    formatted: int = 0
    parse_failures: int = 0

    def add(self, sample: SampleScore) -> None:
        self.n += 1
        self.score += sample.score
        self.acc += sample.acc
        self.formatted += sample.format == 1.0
        self.parse_failures += sample.parse_failure

    def cells(self, name: str) -> list[str]:
        if not self.n:
            return [name, "0", "-", "-", "-", "-"]
        return [name, str(self.n), f"{self.score / self.n:.3f}", f"{self.acc / self.n:.3f}",
                f"{100 * self.formatted / self.n:.1f}%", str(self.parse_failures)]


@dataclass(slots=True)
class ScoreSummary:
    """Totals per query_type and per data_source."""

    by_query_type: dict[str, Group] = field(default_factory=lambda: defaultdict(Group))
    by_data_source: dict[str, Group] = field(default_factory=lambda: defaultdict(Group))
    overall: Group = field(default_factory=Group)

    def add(self, sample: SampleScore) -> None:
        self.by_query_type[sample.query_type].add(sample)
        self.by_data_source[sample.data_source].add(sample)
        self.overall.add(sample)

    def markdown(self) -> str:
        """Both tables as markdown."""
        tables = []
        for title, groups in (("query_type", self.by_query_type), ("data_source", self.by_data_source)):
            header = [title, "n", "score", "acc", "format pass", "parse failures"]
            rows = [groups[name].cells(name) for name in sorted(groups)] + [self.overall.cells("**all**")]
            tables.append(markdown_table(header, rows))
        return "\n".join(tables)


def _extra_info(row: Mapping) -> dict:
    """The extra_info verl would pass: the row's own ``extra_info`` plus top-level query_type and options."""
    extra = row.get("extra_info") or {}
    if not isinstance(extra, Mapping):
        raise InvalidReference(f"extra_info must be an object, got {type(extra).__name__}")
    extra = dict(extra)
    for key in ("query_type", "options", "index"):
        if key in row:
            extra[key] = row[key]
    return extra


def score_file(path: str, options: RewardOptions, output: str | Path | None = None) -> tuple[ScoreSummary, dict]:
    """Score every line of a predictions JSONL (``-``: standard input) as training would.

    Each line holds ``solution_str``, ``ground_truth`` and ``query_type`` (or an ``extra_info`` that has it), and
    optionally ``options``, ``data_source``, ``id``. With `output`, ``samples.jsonl`` gets one line per scored row
    and ``rejects.jsonl`` one per bad row (bad JSON, a missing field, an unknown query_type, an invalid reference).

    Returns:
        The tables' totals, and the job's manifest.
    """
    records = iter_jsonl(path)
    spec = {"input": fingerprint_inputs([path]) if path != "-" else "-", "options": asdict(options)}
    summary = ScoreSummary()
    with Job(output, "scores", spec, lines=SAMPLES if output is not None else None, resumable=False) as job:
        for record in records:
            row = json_object(record, SCORE_FIELDS)
            if isinstance(row, Reject):
                job.reject(row)
                continue
            try:
                sample = score_answer(row["solution_str"], row["ground_truth"], _extra_info(row), options,
                                      data_source=str(row.get("data_source") or "unknown"), index=record.position,
                                      id=row.get("id"))
            except (InvalidReference, UnknownQueryType) as exc:
                job.reject(record.rejected("invalid_reference" if isinstance(exc, InvalidReference)
                                           else "unknown_query_type", str(exc)))
                continue
            summary.add(sample)
            line = {"line": record.position, "data_source": sample.data_source, "id": sample.id,
                    "query_type": sample.query_type, "score": sample.score, "acc": sample.acc,
                    "format": sample.format, "pred": sample.pred, "reason": sample.reason}
            job.write_line(json.dumps(line, ensure_ascii=False))
        job.commit(job.written + job.rejected)
        if output is not None:
            (Path(output) / REPORT).write_text(summary.markdown(), encoding="utf-8")
        manifest = job.finish()
    return summary, manifest


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``medverl score``'s arguments."""
    parser.add_argument("--input", required=True, help="predictions JSONL (solution_str, ground_truth, query_type, "
                        "optional options, data_source, id, extra_info), or - for standard input")
    parser.add_argument("--output", help="directory for samples.jsonl (each row's score, prediction and reason), "
                        "report.md (the tables), rejects.jsonl and manifest.json")
    add_reward_options(parser)


def run_command(args: argparse.Namespace) -> int:
    """Run ``medverl score``: exit status 1 when a row cannot be scored."""
    summary, manifest = score_file(args.input, reward_options(args), args.output)
    print(summary.markdown())
    if args.output:
        print(f"per-sample scores, the tables and the manifest -> {args.output}")
    return print_rejects(manifest, args.output)
