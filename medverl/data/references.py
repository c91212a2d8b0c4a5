"""``medverl rewards list`` and ``rewards check``: the registry, and RL references checked against it before a run."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq

from medverl.arguments import EXIT_NOTHING_USABLE, EXIT_OK
from medverl.data.prepared import PreparedError, open_prepared
from medverl.rewards import InvalidReference, RewardOptions, UnknownQueryType, check_reference, registry
from medverl.rewards.options import add_plugins, add_reward_options

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
    """Rows checked per query_type, the rows that failed, and the rows per query_type no reward is registered for
    (not checked: their reward is unknown here), with the registry's word on the first of each."""

    checked: Counter = field(default_factory=Counter)
    bad: list[BadRow] = field(default_factory=list)
    unregistered: Counter = field(default_factory=Counter)
    unregistered_reason: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.bad and not self.unregistered


def _parquet_rows(path: Path, batch_size: int = 4096) -> Iterator[dict]:
    """Rows of one verl RL parquet file (not a prepared directory), reading only the columns the check needs."""
    if not path.is_file():
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


def rl_rows(paths: Sequence[str | Path]) -> Iterator[tuple[str, int, dict]]:
    """``(file, row number, row)`` of prepared RL directories (through their manifest) and verl RL parquet files."""
    for path in map(Path, paths):
        if path.is_dir():
            numbers: Counter = Counter()
            for shard, batch in open_prepared(path, ("rl",)).batches(COLUMNS):
                for row in batch:
                    yield str(shard), numbers[shard], row
                    numbers[shard] += 1
        else:
            for number, row in enumerate(_parquet_rows(path)):
                yield str(path), number, row


def check_parquet(paths: Sequence[str | Path], options: RewardOptions) -> ReferenceReport:
    """Resolve every row's query_type and validate its ground truth, as compute_score will during training.

    `paths` are RL parquet files or prepared RL directories. A query_type no reward is registered for (with
    `options.plugins` loaded) is counted in ``unregistered``: its rows cannot be checked.
    """
    report = ReferenceReport()
    for file, number, row in rl_rows(paths):
        extra_info = row.get("extra_info") or {}
        ground_truth = (row.get("reward_model") or {}).get("ground_truth")
        try:
            spec, _, _ = check_reference(ground_truth, extra_info, options)
        except UnknownQueryType as exc:  # extra_info is a mapping: check_reference checked it first
            query_type = extra_info.get("query_type") or options.default_query_type
            if not query_type:  # no query_type at all: the row itself is bad
                report.bad.append(BadRow(file, number, extra_info.get("index"), str(row.get("data_source")), str(exc)))
            else:
                report.unregistered[query_type] += 1
                report.unregistered_reason.setdefault(query_type, str(exc))
            continue
        except InvalidReference as exc:
            report.bad.append(BadRow(file, number, extra_info.get("index"), str(row.get("data_source")), str(exc)))
            continue
        report.checked[spec.name] += 1
    if report.bad:
        logger.warning("%d row(s) have references no answer could match", len(report.bad))
    return report


def _unknown_query_types(directory: str | Path, plugins: Sequence[str]) -> list[str]:
    """Query types of RL data that no reward knows once `plugins` are loaded (what verl's reward workers will load);
    each problem names the type, a row that has it and the fix. The registry is left as it was."""
    prepared = open_prepared(directory, ("rl",), complete=False)
    first: dict[str, tuple[int, object, object]] = {}
    for position, row in enumerate(prepared.rows(["data_source", "extra_info"])):
        extra = row.get("extra_info") or {}
        first.setdefault(str(extra.get("query_type")), (position, extra.get("index"), row.get("data_source")))
    snapshot = registry.REGISTRY.snapshot()
    try:
        registry.REGISTRY.load_plugins(plugins)
        problems = []
        for query_type, (position, index, data_source) in sorted(first.items()):
            try:
                registry.REGISTRY.get(query_type)
            except registry.UnknownQueryType as exc:
                problems.append(
                    f"{directory}: row {position} (data_source {data_source}, index {index}) has {exc} The stage's "
                    f"reward plugins are {list(plugins) or 'none'}: add the module that registers "
                    f"{query_type!r} to reward.custom_reward_function.reward_kwargs.plugins in the stage's overrides"
                )
        return problems
    except registry.PluginError as exc:
        return [f"reward_kwargs.plugins: {exc}"]
    finally:
        registry.REGISTRY.restore(snapshot)


def check_reward_options(directory_or_manifest: str | Path | Mapping, reward_kwargs: Mapping) -> list[str]:
    """Why RL data cannot be scored with `reward_kwargs` (verl's ``reward_kwargs``); empty when they fit.

    The data's manifest names its prompt template, and each bundled template needs certain reward options
    (``think_prefilled`` must match); a template of the user's is not checked. Unknown or invalid keys are problems.
    Given a directory, every row's ``query_type`` must have a reward once the options' ``plugins`` are loaded.
    """
    if isinstance(directory_or_manifest, Mapping):
        manifest, where = directory_or_manifest, "the data"
    else:
        prepared = open_prepared(directory_or_manifest, ("rl",), complete=False)
        manifest, where = prepared.manifest, str(directory_or_manifest)
    try:
        options = RewardOptions.from_kwargs(dict(reward_kwargs))
    except (TypeError, ValueError) as exc:
        return [f"reward_kwargs: {exc}"]
    template = manifest.get("template") or {}
    needed = template.get("reward_options") or {}
    problems = [
        f"{where} was prepared with the {template['name']} prompt template, which is scored with "
        f"reward_kwargs.{key}={json.dumps(want)}; the reward options have {key}={json.dumps(getattr(options, key))}"
        for key, want in needed.items()
        if getattr(options, key) != want
    ]
    if not isinstance(directory_or_manifest, Mapping):
        problems += _unknown_query_types(directory_or_manifest, options.plugins)
    return problems


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
    add_reward_options(parser, ("default_query_type", "plugins"))


def run_check(args: argparse.Namespace) -> int:
    """Run ``medverl rewards check``: exit status 1 when a row cannot be scored or could not be checked."""
    options = RewardOptions(default_query_type=args.default_query_type, plugins=tuple(args.plugins))
    report = check_parquet(args.data, options)
    print("| query_type | rows |\n|---|---:|")
    for name, count in sorted(report.checked.items()):
        print(f"| {name} | {count} |")
    if report.ok:
        print(f"all {sum(report.checked.values())} references can be scored")
        return EXIT_OK
    if report.unregistered:
        print(f"\n{sum(report.unregistered.values())} row(s) not checked: no reward is registered for their "
              f"query_type (pass the run's --plugins, the modules of its reward_kwargs.plugins):", file=sys.stderr)
        for name, count in sorted(report.unregistered.items()):
            print(f"  {name}: {count} row(s); {report.unregistered_reason[name]}", file=sys.stderr)
    if report.bad:
        print(f"\n{len(report.bad)} row(s) cannot be scored:", file=sys.stderr)
        for bad in report.bad[:20]:
            print(f"  {bad.file} row {bad.row} (index={bad.index!r}, {bad.data_source}): {bad.reason}",
                  file=sys.stderr)
        if len(report.bad) > 20:
            print(f"  ... and {len(report.bad) - 20} more", file=sys.stderr)
    return EXIT_NOTHING_USABLE
