"""The one reader of job directories: kind, schema version, shards and options, all from the manifest."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from medverl.data.job import MANIFEST, REJECTS
from medverl.data.schemas import SCHEMA_VERSION
from medverl.errors import ConfigError
from medverl.rewards import RewardOptions

# What makes each kind of directory, for error messages.
MADE_BY = {"rl": "medverl prep rl", "sft": "medverl prep sft", "cpt": "medverl prep caption|interleaved",
           "qc_scores": "medverl qc score"}


class PreparedError(ConfigError):
    """A directory that is not the complete job output a command needs."""


@dataclass(frozen=True)
class Prepared:
    """A job directory as its manifest describes it."""

    directory: Path
    manifest: dict

    @property
    def kind(self) -> str:
        return self.manifest["kind"]

    @property
    def schema_version(self) -> int:
        return self.manifest["schema_version"]

    @property
    def complete(self) -> bool:
        return bool(self.manifest.get("complete"))

    @property
    def options(self) -> dict:
        """The options the job ran with (``max_pixels``, ``data_source``, ...)."""
        return (self.manifest.get("job") or {}).get("options") or {}

    @property
    def template(self) -> dict | None:
        """The RL prompt template: ``{"name", "sha256", "reward_options"}``; None for other kinds."""
        return self.manifest.get("template")

    @property
    def shards(self) -> list[Path]:
        return [self.directory / shard["file"] for shard in self.manifest["shards"]]

    @property
    def rejects(self) -> Path:
        return self.directory / REJECTS

    def batches(self, columns: Sequence[str] | None = None, batch_size: int = 256) -> Iterator[tuple[Path, list[dict]]]:
        """``(shard, rows)`` in order, `batch_size` rows at a time (only `columns`, when given)."""
        for shard in self.shards:
            for batch in pq.ParquetFile(shard).iter_batches(batch_size=batch_size, columns=columns):
                yield shard, batch.to_pylist()

    def rows(self, columns: Sequence[str] | None = None) -> Iterator[dict]:
        for _, batch in self.batches(columns):
            yield from batch

    def table(self, columns: Sequence[str] | None = None) -> pa.Table:
        """Every shard as one table."""
        return pa.concat_tables([pq.read_table(shard, columns=columns) for shard in self.shards])


def open_prepared(directory: str | Path, kinds: Sequence[str] | None = None, *, complete: bool = True) -> Prepared:
    """Read a job directory's manifest; raises :class:`PreparedError` saying what is wrong and how to fix it.

    Args:
        directory: the output directory of ``medverl prep``, ``eval prepare``, ``eval decontaminate --drop`` or
            ``qc score``.
        kinds: the kinds the caller reads; another kind is an error.
        complete: refuse a job that did not finish.
    """
    directory = Path(directory)
    expected = " or ".join(f"{kind} ({MADE_BY.get(kind, kind)})" for kind in kinds or ())
    if not directory.is_dir():
        raise PreparedError(f"{directory}: no such directory; expected the output directory of a job"
                            + (f" making {expected}" if expected else ""))
    path = directory / MANIFEST
    if not path.is_file():
        raise PreparedError(f"{directory} has no {MANIFEST}: it is not a medverl job's output"
                            + (f"; expected {expected}" if expected else ""))
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        kind, version, shards = manifest["kind"], manifest["schema_version"], manifest["shards"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise PreparedError(f"{path} is not a medverl manifest ({exc})") from None
    if kinds is not None and kind not in kinds:
        raise PreparedError(f"{directory} holds {kind} data ({MADE_BY.get(kind, kind)}); this command reads {expected}")
    if version != SCHEMA_VERSION:
        raise PreparedError(f"{directory} was written with schema version {version}; this medverl reads version "
                            f"{SCHEMA_VERSION}: prepare it again")
    if complete and not manifest.get("complete"):
        raise PreparedError(f"{directory}: its job did not finish; rerun it with --resume")
    missing = [s["file"] for s in shards if not (directory / s["file"]).is_file()]
    if missing:
        raise PreparedError(f"{directory}: shard(s) named in its manifest are missing: {', '.join(missing[:5])}")
    return Prepared(directory, manifest)


def _unknown_query_types(directory: str | Path, plugins: Sequence[str]) -> list[str]:
    """Query types of RL data that no reward knows once `plugins` are loaded (what verl's reward workers will load);
    each problem names the type, a row that has it and the fix. The registry is left as it was."""
    from medverl.rewards import registry

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
        manifest, where = open_prepared(directory_or_manifest, ("rl",), complete=False).manifest, str(directory_or_manifest)
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
