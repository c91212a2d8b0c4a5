"""The one job model: every command that turns records into output runs on it.

A job writes one directory: ``part-NNNNN.parquet`` shards (or one JSONL output), ``rejects.jsonl`` (one
:class:`Reject` line per record not written, with its reason) and ``manifest.json``. Input is consumed in windows;
after each window the shards it wrote are renamed into place (temporary name, then rename), the appended files are
flushed and the manifest is rewritten atomically, recording each appended file's length and each shard's rows, size
and SHA-256. An interrupted job resumes (``resume=True``) at its last finished window: shards and appended lines
written after it are discarded. The manifest counts every record: ``read == written + rejected``, rejects counted
by reason. One job at a time holds a directory (a lock file in it); a full disk or a file over the size limit ends
the job with its unfinished window discarded, ready to resume.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import itertools
import json
import logging
import os
import shlex
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, TypeVar

from tqdm import tqdm

from medverl.data.schemas import SCHEMA_VERSION
from medverl.errors import ConfigError

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
REJECTS = "rejects.jsonl"
LOCK = ".lock"  # held by the job writing the directory; it names the process
SHARD_GLOB = "part-*.parquet"
EXCERPT_CHARS = 200
T = TypeVar("T")


def shard_name(number: int) -> str:
    """The file name of a job's `number`-th shard."""
    return f"part-{number:05d}.parquet"


class JobError(ConfigError):
    """A job directory that cannot take this job: another job's output, in use, changed inputs or options, or no
    room left to write it."""


# The write errors that are the disk's, not the job's: each ends the job with a usage error, ready to resume.
_NO_ROOM = {errno.ENOSPC: "no space left on the device (ENOSPC)",
            errno.EFBIG: "a file would pass the file size limit (EFBIG)",
            errno.EDQUOT: "the disk quota is used up (EDQUOT)"}


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file's content, read a megabyte at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def write_text_atomically(path: str | Path, text: str) -> None:
    """Write a whole file under a temporary name, then rename it: never a partial file under its own name.

    Raises:
        JobError: the disk is full or the file too large (the temporary file removed).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if exc.errno in _NO_ROOM:
            raise JobError(f"cannot write {path}: {_NO_ROOM[exc.errno]}; make room and run it again") from None
        raise


def _lock(directory: Path) -> int:
    """Take the directory's lock file (an exclusive ``flock``, writing this process's id and command in it);
    returns its descriptor. Raises :class:`JobError` naming the holder when another process has it."""
    path = directory / LOCK
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise JobError(f"cannot lock {directory} for this job: {path}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 4096).decode("utf-8", "replace")
            os.close(fd)
            raise JobError(f"{directory} is in use by another job: {_holder(holder)}; wait for it to end, or use "
                           "another directory") from None
        try:  # a holder that ended may have removed the file between its open and this lock: lock the new one
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    command = shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv and sys.argv[0] else "python"
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps({"pid": os.getpid(), "command": command}).encode() + b"\n")
    return fd


def _holder(text: str) -> str:
    try:
        holder = json.loads(text)
        return f"process {int(holder['pid'])} ({str(holder['command'])[:300]!r})"
    except (ValueError, TypeError, KeyError):
        return "a process that has not said which yet"


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
    return [{"path": str(path), "bytes": path.stat().st_size, "sha256": file_sha256(path)} for path in map(Path, paths)]


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


def _read_manifest(path: Path) -> dict:
    """The manifest of a job to resume, its fields checked (a shard is named as this job names it, nothing else)."""
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        missing = [key for key in ("read", "written", "rejected", "rejected_by_reason", "shards", "complete", "files")
                   if key not in manifest]
        if missing:
            raise KeyError(", ".join(missing))
        counts = [manifest[key] for key in ("read", "written", "rejected")]
        if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in counts):
            raise TypeError("read, written and rejected must be counts")
        if not (isinstance(manifest["files"], dict) and isinstance(manifest["rejected_by_reason"], dict)
                and isinstance(manifest["shards"], list)
                and all(isinstance(entry, dict) and entry.get("file") == shard_name(i)
                        and isinstance(entry.get("rows"), int) for i, entry in enumerate(manifest["shards"]))):
            raise TypeError("its files, rejects or shards are not as a job writes them")
        return manifest
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        raise JobError(f"cannot resume {path.parent}: {path.name} is not a readable manifest ({type(exc).__name__}: "
                       f"{str(exc)[:100]}); start again in a new directory") from None


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
        self.kind, self.spec, self.lines_name, self.resumable = kind, spec, lines, resumable
        self.info = dict(info or {})
        self.read = self.written = self.rejected = 0
        self.rejected_by_reason: Counter[str] = Counter()
        self.counts: Counter[str] = Counter()
        self.shards: list[dict] = []
        self.complete = False
        self._files: dict[str, IO[str]] = {}
        self._lock_fd: int | None = None
        self._committed: tuple[int, dict[str, int]] = (0, {})  # shards and file lengths in the manifest on disk
        if self.directory is None:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock_fd = _lock(self.directory)
        try:
            self._open(resume, appended)
        except BaseException:
            self.close()
            raise

    def _open(self, resume: bool, appended: tuple[str, ...]) -> None:
        """Take over the directory: a fresh one, or the job to resume in it."""
        lengths = {}
        manifest_path = self.directory / MANIFEST
        if manifest_path.exists():
            if not resume:
                hint = ("pass --resume to continue it, or use a new directory" if self.resumable
                        else "use a new directory")
                raise JobError(f"{self.directory} already holds a job's output ({MANIFEST}); {hint}")
            previous = _read_manifest(manifest_path)
            changed = _differences({"kind": previous.get("kind"), **(previous.get("job") or {})},
                                   {"kind": self.kind, **self.spec})
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
        for name in filter(None, (REJECTS, self.lines_name, *appended)):
            with (self.directory / name).open("ab") as f:
                f.truncate(lengths.get(name, 0))
            self._files[name] = (self.directory / name).open("a", encoding="utf-8")
        self._committed = (len(self.shards), {name: lengths.get(name, 0) for name in self._files})

    def __enter__(self) -> Job:
        return self

    def __exit__(self, kind: type | None, exc: BaseException | None, traceback: object) -> None:
        if isinstance(exc, OSError) and exc.errno in _NO_ROOM and self.directory is not None:
            self.discard_unfinished()
            self.close()
            where = exc.filename or self.directory
            hint = ("rerun with --resume" if self.resumable
                    else "rerun into a new directory (or remove this one)")
            raise JobError(f"cannot write {where}: {_NO_ROOM[exc.errno]}. The unfinished part of the job was removed "
                           f"and {self.directory} holds what was finished; make room, then {hint}") from None
        self.close()

    def close(self) -> None:
        """Close the job's files and give up its directory's lock."""
        for f in self._files.values():
            try:
                f.close()
            except OSError:  # a buffer the full disk did not take: discard_unfinished cuts the file back
                pass
        self._files.clear()
        if self._lock_fd is not None:
            (self.directory / LOCK).unlink(missing_ok=True)  # under the lock: see _lock for the next taker's check
            os.close(self._lock_fd)
            self._lock_fd = None

    def discard_unfinished(self) -> None:
        """Undo what the unfinished window wrote: its temporary files and shards, and the lines appended after the
        last manifest (the output is then what the manifest on disk says)."""
        shards, lengths = self._committed
        for f in self._files.values():
            try:
                f.close()
            except OSError:
                pass
        self._files.clear()
        for entry in self.shards[shards:]:
            (self.directory / entry["file"]).unlink(missing_ok=True)
        for stray in self.directory.glob(".*.tmp"):
            stray.unlink(missing_ok=True)
        for name, length in lengths.items():
            path = self.directory / name
            if path.is_file() and path.stat().st_size > length:
                os.truncate(path, length)

    def temporary(self, name: str) -> Path:
        """A path in the directory for a file being written (removed on resume unless made a shard)."""
        return self.directory / f".{name}.tmp"

    def add_shard(self, path: Path, rows: int, sha256: str | None = None, **info: object) -> str:
        """Make a finished file (see :meth:`temporary`) the next shard, recording its rows, size, SHA-256 (`sha256`
        when the caller has it) and `info`; returns its name."""
        name = shard_name(len(self.shards))
        entry = {"file": name, "rows": rows, "bytes": path.stat().st_size, "sha256": sha256 or file_sha256(path),
                 **info}
        os.replace(path, self.directory / name)
        self.shards.append(entry)
        self.wrote(rows)
        return name

    def damaged_shards(self) -> dict[str, str]:
        """The shards that are not what the manifest says they are (missing, another size or SHA-256, unreadable,
        another row count), each with what is wrong."""
        import pyarrow.parquet as pq

        damaged = {}
        for entry in self.shards:
            path = self.directory / entry["file"]
            try:
                if not path.is_file():
                    damaged[entry["file"]] = "missing"
                elif "bytes" in entry and path.stat().st_size != entry["bytes"]:
                    damaged[entry["file"]] = f"{path.stat().st_size} bytes, not the {entry['bytes']} written"
                elif "sha256" in entry and file_sha256(path) != entry["sha256"]:
                    damaged[entry["file"]] = "its SHA-256 is not the one written"
                elif (rows := pq.ParquetFile(path).metadata.num_rows) != entry["rows"]:
                    damaged[entry["file"]] = f"{rows} rows, not the {entry['rows']} written"
            except Exception as exc:  # an unreadable footer: pyarrow raises several kinds
                damaged[entry["file"]] = f"unreadable ({type(exc).__name__}: {str(exc)[:100]})"
        return damaged

    def redo_damaged(self, make: Callable[[int], list[Path]], doing: str, changed: str,
                     damaged: dict[str, str] | None = None) -> None:
        """Make again, in place, the shards that are not what the manifest says (`damaged`, else
        :meth:`damaged_shards`; a warning names each): ``make(window)`` writes that window's shards again as
        temporary files, which replace them when their rows and SHA-256 are the recorded ones. Otherwise (`changed`
        says what can make them differ) the files are removed and :class:`JobError` says to start again; `doing`
        names the work ("converting")."""
        import pyarrow.parquet as pq

        damaged = self.damaged_shards() if damaged is None else damaged
        for name, why in damaged.items():
            logger.warning("%s: shard %s is damaged (%s); %s its records again", self.directory, name, why, doing)
        cannot = (f"cannot redo the damaged shard(s) {', '.join(damaged)} of {self.directory}: {doing} their records "
                  f"again does not give the bytes first written ({changed}, or the manifest predates shard windows); "
                  "start again in a new directory")
        hit = [entry for entry in self.shards if entry["file"] in damaged]
        if any("window" not in entry for entry in hit):
            raise JobError(cannot)
        for number in sorted({entry["window"] for entry in hit}):
            entries = [entry for entry in self.shards if entry.get("window") == number]
            made = make(number)
            if [(pq.ParquetFile(path).metadata.num_rows, file_sha256(path)) for path in made] != [
                    (entry["rows"], entry.get("sha256")) for entry in entries]:
                for path in made:
                    path.unlink(missing_ok=True)
                raise JobError(cannot)
            for path, entry in zip(made, entries, strict=True):
                os.replace(path, self.directory / entry["file"])

    def write_table(self, table: object, **info: object) -> str:
        """Write a pyarrow table as the next shard, atomically (without a directory: count its rows); `info` goes
        into its manifest entry."""
        import pyarrow.parquet as pq

        if self.directory is None:
            self.wrote(table.num_rows)
            return ""
        tmp = self.temporary(shard_name(len(self.shards)))
        pq.write_table(table, tmp)
        return self.add_shard(tmp, table.num_rows, **info)

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
            self._committed = (len(self.shards), dict(manifest["files"]))
        return manifest

    def progress(self, desc: str, total: int | None, enabled: bool = True) -> tqdm:
        """A progress bar over the job's records, starting at those already read (with a total: an ETA)."""
        return tqdm(desc=desc, unit=" records", initial=self.read, total=total, disable=not enabled or None,
                    dynamic_ncols=True)


_OWN_KEYS = frozenset(Job(None, "", {}).manifest())
