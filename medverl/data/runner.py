"""The one data-preparation runner: stream records, convert them in workers, write shards, rejects and a manifest.

Every record read is either written to a shard or listed in ``rejects.jsonl`` with its reason, so
``read == written + rejected`` always holds. Shards are written to a temporary file and renamed; the manifest
is rewritten after each shard, so an interrupted job resumes (``resume=True``) at the last shard it finished and
produces the same bytes as an uninterrupted one, whatever the number of workers.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import multiprocessing
import os
import pickle
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from medverl.data.converters import CONVERTERS, PrepOptions, Reject
from medverl.data.records import Record, iter_records
from medverl.data.schemas import SCHEMA_VERSION, schema_for

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
REJECTS = "rejects.jsonl"


@dataclass(frozen=True)
class PrepJob:
    """One conversion job.

    Attributes:
        kind: input kind, one of ``CONVERTERS`` (rl, sft, caption, interleaved).
        inputs: input files, read in this order.
        output: the output directory.
        options: what the converters share.
        rows_per_shard: a shard is closed after this many rows ...
        max_shard_bytes: ... or once its rows hold this many bytes of images and text.
    """

    kind: str
    inputs: tuple[str, ...]
    output: Path
    options: PrepOptions = field(default_factory=PrepOptions)
    rows_per_shard: int = 2000
    max_shard_bytes: int = 128 << 20

    def __post_init__(self) -> None:
        if self.kind not in CONVERTERS:
            raise ValueError(f"unknown kind {self.kind!r}; known: {', '.join(CONVERTERS)}")
        if self.rows_per_shard < 1 or self.max_shard_bytes < 1:
            raise ValueError("rows_per_shard and max_shard_bytes must be positive")

    def fingerprint(self) -> dict:
        """What must not change between a job and its resumption (not the worker count)."""
        options = {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(self.options).items()}
        options["plugins"] = list(self.options.plugins)
        return {
            "kind": self.kind,
            "inputs": list(self.inputs),
            "options": options,
            "rows_per_shard": self.rows_per_shard,
            "max_shard_bytes": self.max_shard_bytes,
        }


@dataclass
class _State:
    read: int = 0
    written: int = 0
    rejected: int = 0
    rejected_by_reason: Counter = field(default_factory=Counter)
    shards: list[dict] = field(default_factory=list)
    rejects_bytes: int = 0


def _convert(task: tuple[str, Record, int, PrepOptions]) -> dict | Reject:
    kind, record, index, options = task
    if record.error:
        return Reject("malformed_json", record.error)
    converter, _ = CONVERTERS[kind]
    return converter(record.data, index, record.source, options)


def _convert_item(item: dict) -> dict:
    # Pickled, so that Ray Data's Arrow blocks carry rows and rejects exactly as the converter returned them.
    return {"result": pickle.dumps(_convert(pickle.loads(item["task"])))}


def _ray_data_map(batch: list[tuple]) -> list[dict | Reject]:
    """Convert one window of records on Ray Data (whatever cluster ``ray.init`` joined), in input order."""
    import ray

    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True
    context.enable_progress_bars = False
    dataset = ray.data.from_items([{"task": pickle.dumps(task)} for task in batch]).map(_convert_item)
    return [pickle.loads(row["result"]) for row in dataset.take_all()]


def _row_bytes(row: dict) -> int:
    images = sum(len(image["bytes"]) for image in row.get("images", ()))
    return images + len(json.dumps({k: v for k, v in row.items() if k != "images"}, default=str))


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _excerpt(record: Record) -> str:
    if record.excerpt:
        return record.excerpt
    return json.dumps(record.data, ensure_ascii=False, default=repr)[:200]


def _records(job: PrepJob) -> Iterator[Record]:
    return itertools.chain.from_iterable(iter_records(path) for path in job.inputs)


def run_prep(
    job: PrepJob, *, workers: int = 1, resume: bool = False, progress: bool = True, engine: str = "local"
) -> dict:
    """Run `job`; returns the manifest (also written to ``OUTPUT/manifest.json``).

    `engine` "local" converts in `workers` processes of this machine; "ray" converts on Ray Data across the
    cluster ``ray.init`` connects to (reading, shards and the manifest stay with this process, so the output
    is the same bytes either way).

    Raises:
        FileExistsError: the output directory holds another job's results and `resume` is not set.
        ValueError: resuming a job whose inputs or options differ.
        InputError: an input file cannot be read at all.
    """
    out = job.output
    out.mkdir(parents=True, exist_ok=True)
    manifest_path, rejects_path = out / MANIFEST, out / REJECTS
    state = _State()
    if manifest_path.exists():
        previous = json.loads(manifest_path.read_text(encoding="utf-8"))
        if not resume:
            raise FileExistsError(f"{out} already holds a job's output ({MANIFEST}); pass --resume or use a new directory")
        if previous.get("job") != job.fingerprint():
            raise ValueError(f"cannot resume {out}: its job had other inputs or options ({manifest_path})")
        if previous.get("complete"):
            logger.info("%s is already complete", out)
            return previous
        state = _State(
            previous["read"], previous["written"], previous["rejected"], Counter(previous["rejected_by_reason"]),
            previous["shards"], previous["rejects_bytes"],
        )
        for stray in out.glob("part-*.parquet"):  # a shard written after the last manifest update
            if stray.name not in {s["file"] for s in state.shards}:
                stray.unlink()
    elif any(out.glob("part-*.parquet")):
        raise FileExistsError(f"{out} holds parquet shards but no {MANIFEST}; use an empty directory")

    _, parquet_kind = CONVERTERS[job.kind]
    schema = schema_for(parquet_kind, job.options.resolution_keys)
    with rejects_path.open("ab") as f:
        f.truncate(state.rejects_bytes)
    rejects = rejects_path.open("a", encoding="utf-8")

    buffer: list[dict] = []
    buffered_bytes = 0

    def write_manifest(complete: bool) -> dict:
        rejects.flush()
        state.rejects_bytes = rejects.tell()
        manifest = {
            "schema_version": SCHEMA_VERSION,
            "kind": parquet_kind,
            "read": state.read,
            "written": state.written,
            "rejected": state.rejected,
            "rejected_by_reason": dict(sorted(state.rejected_by_reason.items())),
            "shards": state.shards,
            "rejects": REJECTS,
            "rejects_bytes": state.rejects_bytes,
            "complete": complete,
            "job": job.fingerprint(),
        }
        _atomic_write(manifest_path, (json.dumps(manifest, indent=2) + "\n").encode())
        return manifest

    def flush_shard() -> None:
        nonlocal buffer, buffered_bytes
        name = f"part-{len(state.shards):05d}.parquet"
        table = pa.Table.from_pylist(buffer, schema=schema)
        tmp = out / (name + ".tmp")
        # Image bytes are already compressed (JPEG, PNG): compressing them again costs time and saves nothing.
        pq.write_table(table, tmp, compression={name: "snappy" for name in table.column_names if name != "images"}
                       | {"images": "NONE"})
        os.replace(tmp, out / name)
        state.written += len(buffer)
        state.shards.append({"file": name, "rows": len(buffer)})
        buffer, buffered_bytes = [], 0

    records = itertools.islice(_records(job), state.read, None)
    tasks = ((job.kind, record, index, job.options) for index, record in enumerate(records, start=state.read))
    bar = tqdm(desc=f"prep {job.kind}", unit=" records", initial=state.read, disable=not progress or None)
    if engine not in ("local", "ray"):
        raise ValueError(f"unknown engine {engine!r}; use local or ray")
    pool = multiprocessing.get_context("spawn").Pool(workers) if workers > 1 and engine == "local" else None
    try:
        # Bounded look-ahead, so memory does not grow with the input; Ray gets larger windows to pay its overhead.
        window = 2048 if engine == "ray" else max(64, 32 * workers)
        while batch := list(itertools.islice(tasks, window)):
            if engine == "ray":
                results = _ray_data_map(batch)
            else:
                results = pool.map(_convert, batch, chunksize=8) if pool else [_convert(t) for t in batch]
            for (_, record, index, _), result in zip(batch, results, strict=True):
                state.read += 1
                if isinstance(result, Reject):
                    state.rejected += 1
                    state.rejected_by_reason[result.code] += 1
                    entry = {"index": record.position, "source": record.source, "code": result.code,
                             "reason": result.reason, "excerpt": _excerpt(record)}
                    rejects.write(json.dumps(entry, ensure_ascii=False) + "\n")
                else:
                    buffer.append(result)
                    buffered_bytes += _row_bytes(result)
                    # A shard closes (and the manifest records progress) only at a row boundary that depends
                    # on the data alone, so a resumed job cuts shards exactly where an uninterrupted one does.
                    if len(buffer) >= job.rows_per_shard or buffered_bytes >= job.max_shard_bytes:
                        flush_shard()
                        write_manifest(complete=False)
            bar.update(len(batch))
        if buffer:
            flush_shard()
        manifest = write_manifest(complete=True)
    finally:
        bar.close()
        rejects.close()
        if pool is not None:
            pool.terminate()
    if state.read != state.written + state.rejected:  # the invariant every consumer relies on
        raise RuntimeError(f"internal error: read {state.read} != written {state.written} + rejected {state.rejected}")
    logger.info("%s: read %d, wrote %d, rejected %d", out, state.read, state.written, state.rejected)
    return manifest
