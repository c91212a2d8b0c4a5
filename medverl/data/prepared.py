"""The one reader of job directories: kind, schema version, shards and options, all from the manifest."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from medverl.data.job import MANIFEST, REJECTS
from medverl.data.schemas import SCHEMA_VERSION
from medverl.errors import ConfigError


class PreparedError(ConfigError):
    """A directory that is not the complete job output a command needs; `kinds` are the kinds of data it needs
    (the command line says which commands make them)."""

    def __init__(self, message: str, kinds: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.kinds = tuple(kinds)


@contextmanager
def _readable(shard: Path) -> Iterator[None]:
    """A shard that does not read as parquet is a :class:`PreparedError` naming it."""
    try:
        yield
    except (pa.ArrowException, OSError) as exc:
        raise PreparedError(f"{shard} is damaged ({type(exc).__name__}: {str(exc)[:200]}); rerun its job with "
                            "--resume to redo it") from None


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
            with _readable(shard):
                for batch in pq.ParquetFile(shard).iter_batches(batch_size=batch_size, columns=columns):
                    yield shard, batch.to_pylist()

    def rows(self, columns: Sequence[str] | None = None) -> Iterator[dict]:
        for _, batch in self.batches(columns):
            yield from batch

    def tables(self, columns: Sequence[str] | None = None) -> Iterator[tuple[Path, pa.Table]]:
        """``(shard, table)`` for each shard in order (only `columns`, when given)."""
        for shard in self.shards:
            with _readable(shard):
                table = pq.read_table(shard, columns=columns)
            yield shard, table

    def table(self, columns: Sequence[str] | None = None) -> pa.Table:
        """Every shard as one table."""
        return pa.concat_tables([table for _, table in self.tables(columns)])


def open_prepared(directory: str | Path, kinds: Sequence[str] | None = None, *, complete: bool = True) -> Prepared:
    """Read a job directory's manifest; raises :class:`PreparedError` saying what is wrong and how to fix it.

    Args:
        directory: the output directory of ``medverl prep``, ``eval prepare``, ``eval decontaminate --drop`` or
            ``qc score``.
        kinds: the kinds the caller reads; another kind is an error.
        complete: refuse a job that did not finish.
    """
    directory = Path(directory)
    expected = " or ".join(f"{kind} data" for kind in kinds or ())
    if not directory.is_dir():
        raise PreparedError(f"{directory}: no such directory; expected the output directory of a job"
                            + (f" making {expected}" if expected else ""), kinds or ())
    path = directory / MANIFEST
    if not path.is_file():
        raise PreparedError(f"{directory} has no {MANIFEST}: it is not a medverl job's output"
                            + (f"; expected {expected}" if expected else ""), kinds or ())
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        kind, version, shards = manifest["kind"], manifest["schema_version"], manifest["shards"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise PreparedError(f"{path} is not a medverl manifest ({exc})") from None
    if kinds is not None and kind not in kinds:
        raise PreparedError(f"{directory} holds {kind} data; this command reads {expected}", kinds)
    if version != SCHEMA_VERSION:
        raise PreparedError(f"{directory} was written with schema version {version}; this medverl reads version "
                            f"{SCHEMA_VERSION}: prepare it again")
    if complete and not manifest.get("complete"):
        raise PreparedError(f"{directory}: its job did not finish; rerun it with --resume")
    missing = [s["file"] for s in shards if not (directory / s["file"]).is_file()]
    if missing:
        raise PreparedError(f"{directory}: shard(s) named in its manifest are missing: {', '.join(missing[:5])}")
    resized = [f"{s['file']} ({size} bytes, not the {s['bytes']} written)" for s in shards
               if "bytes" in s and (size := (directory / s["file"]).stat().st_size) != s["bytes"]]
    if resized:
        raise PreparedError(f"{directory}: shard(s) were cut short or changed: {', '.join(resized[:5])}; rerun its "
                            "job with --resume to redo them")
    return Prepared(directory, manifest)
