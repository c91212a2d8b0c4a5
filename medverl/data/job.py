"""The one job model: every command that turns records into output runs on it.

A job writes one directory: ``part-NNNNN.parquet`` shards (or one JSONL output), ``rejects.jsonl`` (one
:class:`Reject` line per record not written, with its reason) and ``manifest.json``. Input is consumed in windows;
after each window the shards it wrote are renamed into place (temporary name, then rename), the appended files are
flushed and the manifest is rewritten atomically, recording each appended file's length. An interrupted job resumes
(``resume=True``) at its last finished window: shards and appended lines written after it are discarded. The
manifest counts every record: ``read == written + rejected``, rejects counted by reason.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, TypeVar

from tqdm import tqdm

from medverl.data.schemas import SCHEMA_VERSION
from medverl.errors import ConfigError

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
REJECTS = "rejects.jsonl"
SHARD_GLOB = "part-*.parquet"
EXCERPT_CHARS = 200
T = TypeVar("T")


def shard_name(number: int) -> str:
    """The file name of a job's `number`-th shard."""
    return f"part-{number:05d}.parquet"


class JobError(ConfigError):
    """A job directory that cannot take this job: another job's output, or changed inputs or options."""


class Reject(Exception):
    """A record that is not written: why (`code` groups rejects in the manifest, `reason` tells the fix) and, once
    the job places it, where (`index` in its input, `source` ``file:line``) with its first characters.

    A converter returns one or raises one; :meth:`Job.reject` records it.
    """

    def __init__(self, code: str, reason: str, index: int | None = None, source: str = "", excerpt: str = "") -> None:
        super().__init__(code, reason, index, source, excerpt)  # every field, so that a Reject pickles
        self.code, self.reason, self.index, self.source, self.excerpt = code, reason, index, source, excerpt

    def __str__(self) -> str:
        return self.reason

    def __repr__(self) -> str:
        return f"Reject({self.code!r}, {self.reason!r})"

    def json_line(self) -> str:
        fields = {"index": self.index, "source": self.source, "code": self.code, "reason": self.reason,
                  "excerpt": self.excerpt}
        return json.dumps(fields, ensure_ascii=False) + "\n"


def excerpt(value: object) -> str:
    """The first characters of a record, for a reject line."""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=repr)
    return text[:EXCERPT_CHARS]


def fingerprint_inputs(paths: Iterable[str | Path]) -> list[dict]:
    """Each input file's path, size and SHA-256 of its content: a resumed job must read the same bytes."""
    fingerprints = []
    for path in map(Path, paths):
        digest = hashlib.sha256()
        with path.open("rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
        fingerprints.append({"path": str(path), "bytes": path.stat().st_size, "sha256": digest.hexdigest()})
    return fingerprints


def windows(items: Iterable[T], size: int, start: int = 0) -> Iterator[tuple[int, list[T]]]:
    """``(position of the first item, items)`` for consecutive windows of `size` items, skipping the first `start`."""
    if size < 1:
        raise ValueError(f"window size must be positive, got {size}")
    iterator = itertools.islice(iter(items), start, None)
    first = start
    while batch := list(itertools.islice(iterator, size)):
        yield first, batch
        first += len(batch)


def _differences(previous: object, current: object, path: str = "") -> list[str]:
    if isinstance(previous, dict) and isinstance(current, dict):
        keys = sorted(set(previous) | set(current))
        return [d for k in keys for d in _differences(previous.get(k), current.get(k), f"{path}.{k}" if path else k)]
    if previous != current:
        return [f"{path or 'job'}: {json.dumps(previous, default=str)} then, {json.dumps(current, default=str)} now"]
    return []


class Job:
    """One job's output directory (or, with `output` None, only its accounting).

    Args:
        output: the directory; created if needed.
        kind: what the shards hold ("rl", "sft", "cpt", "qc_scores", ...), recorded in the manifest.
        spec: what must not change between a job and its resumption (inputs with their fingerprints, options).
        resume: continue the job already in `output`; without it a directory holding a manifest is refused.
        lines: the job writes this JSONL file instead of shards (one line per written record).
        info: more manifest fields (template, ...).
        resumable: the command offers ``--resume`` (said in the error when the directory is in use).
        appended: more files the job appends lines to (:meth:`append`), cut back like the others on resume.
    """

    def __init__(
        self, output: str | Path | None, kind: str, spec: dict, *, resume: bool = False, lines: str | None = None,
        info: dict | None = None, resumable: bool = True, appended: tuple[str, ...] = (),
    ) -> None:
        self.directory = Path(output) if output is not None else None
        self.kind, self.spec, self.lines_name = kind, spec, lines
        self.info = dict(info or {})
        self.read = self.written = self.rejected = 0
        self.rejected_by_reason: Counter[str] = Counter()
        self.counts: Counter[str] = Counter()
        self.shards: list[dict] = []
        self.complete = False
        self._files: dict[str, IO[str]] = {}
        if self.directory is None:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        lengths = {}
        manifest_path = self.directory / MANIFEST
        if manifest_path.exists():
            previous = json.loads(manifest_path.read_text(encoding="utf-8"))
            if not resume:
                hint = "pass --resume to continue it, or use a new directory" if resumable else "use a new directory"
                raise JobError(f"{self.directory} already holds a job's output ({MANIFEST}); {hint}")
            changed = _differences({"kind": previous.get("kind"), **(previous.get("job") or {})},
                                   {"kind": kind, **spec})
            if changed:
                raise JobError(f"cannot resume {self.directory}: its job differs: " + "; ".join(changed[:5]))
            self.read, self.written, self.rejected = previous["read"], previous["written"], previous["rejected"]
            self.rejected_by_reason.update(previous["rejected_by_reason"])
            self.counts.update(previous.get("counts", {}))
            self.shards = previous["shards"]
            self.complete = previous["complete"]
            self.info = {**self.info, **{k: v for k, v in previous.items() if k not in _OWN_KEYS}}
            lengths = previous["files"]
            known = {s["file"] for s in self.shards}
            for stray in [*self.directory.glob(SHARD_GLOB), *self.directory.glob(".*.tmp")]:
                if stray.name not in known:  # written after the last manifest
                    stray.unlink()
        elif any(self.directory.glob(SHARD_GLOB)):
            raise JobError(f"{self.directory} holds parquet shards but no {MANIFEST}; use an empty directory")
        for name in filter(None, (REJECTS, lines, *appended)):
            with (self.directory / name).open("ab") as f:
                f.truncate(lengths.get(name, 0))
            self._files[name] = (self.directory / name).open("a", encoding="utf-8")

    def __enter__(self) -> Job:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()

    def temporary(self, name: str) -> Path:
        """A path in the directory for a file being written (removed on resume unless made a shard)."""
        return self.directory / f".{name}.tmp"

    def add_shard(self, path: Path, rows: int) -> str:
        """Make a finished file (see :meth:`temporary`) the next shard; returns its name."""
        name = shard_name(len(self.shards))
        os.replace(path, self.directory / name)
        self.shards.append({"file": name, "rows": rows})
        self.wrote(rows)
        return name

    def write_table(self, table: object) -> str:
        """Write a pyarrow table as the next shard, atomically (without a directory: count its rows)."""
        import pyarrow.parquet as pq

        if self.directory is None:
            self.wrote(table.num_rows)
            return ""
        tmp = self.temporary(shard_name(len(self.shards)))
        pq.write_table(table, tmp)
        return self.add_shard(tmp, table.num_rows)

    def wrote(self, n: int = 1) -> None:
        """Count `n` records written (by :meth:`add_shard` and :meth:`write_line`, or in the caller's own files)."""
        self.written += n

    def write_line(self, line: str) -> None:
        """Write one record to the job's JSONL output."""
        self.wrote()
        if self.directory is not None:
            self._files[self.lines_name].write(line if line.endswith("\n") else line + "\n")

    def append(self, name: str, line: str) -> None:
        """Append one line to an `appended` file (part of the output once the window is committed)."""
        if self.directory is not None:
            self._files[name].write(line + "\n")

    def reject(self, rejected: Reject) -> None:
        """Count and record a reject, placed in its input (``index`` set)."""
        if rejected.index is None:
            raise ValueError(f"a reject needs the record's place in its input: {rejected!r}")
        self.rejected += 1
        self.rejected_by_reason[rejected.code] += 1
        if self.directory is not None:
            self._files[REJECTS].write(rejected.json_line())

    def count(self, name: str, n: int = 1) -> None:
        """Count something more than written and rejected (scored, judge_failed, ...)."""
        self.counts[name] += n

    def commit(self, read: int) -> dict:
        """End a window of `read` records: its shards, lines and rejects become part of the output."""
        self.read += read
        return self._write_manifest(complete=False)

    def finish(self, **info: object) -> dict:
        """Mark the job complete (adding `info` to the manifest); returns the manifest."""
        if self.read != self.written + self.rejected:  # the invariant every reader relies on
            raise RuntimeError(f"internal error: read {self.read} != written {self.written} + rejected {self.rejected}")
        self.info.update(info)
        self.complete = True
        manifest = self._write_manifest(complete=True)
        logger.info("%s: read %d, wrote %d, rejected %d", self.directory, self.read, self.written, self.rejected)
        return manifest

    def manifest(self) -> dict:
        return {
            **self.info,
            "schema_version": SCHEMA_VERSION,
            "kind": self.kind,
            "read": self.read,
            "written": self.written,
            "rejected": self.rejected,
            "rejected_by_reason": dict(sorted(self.rejected_by_reason.items())),
            "counts": dict(sorted(self.counts.items())),
            "shards": self.shards,
            "rejects": REJECTS,
            "lines": self.lines_name,
            "files": {name: f.tell() for name, f in self._files.items()},
            "complete": self.complete,
            "job": self.spec,
        }

    def _write_manifest(self, complete: bool) -> dict:
        for f in self._files.values():
            f.flush()
        self.complete = complete
        manifest = self.manifest()
        if self.directory is not None:
            tmp = self.temporary(MANIFEST)
            tmp.write_text(json.dumps(manifest, indent=2, default=str) + "\n", encoding="utf-8")
            os.replace(tmp, self.directory / MANIFEST)
        return manifest

    def progress(self, desc: str, total: int | None, enabled: bool = True) -> tqdm:
        """A progress bar over the job's records, starting at those already read (with a total: an ETA)."""
        return tqdm(desc=desc, unit=" records", initial=self.read, total=total, disable=not enabled or None,
                    dynamic_ncols=True)


_OWN_KEYS = frozenset(Job(None, "", {}).manifest())
