"""The one data-preparation runner: stream records, convert and write them in workers, account for every one.

Records are cut into windows of ``rows_per_shard`` input records. A worker converts a window and writes its rows
as shard files itself (at most ``rows_per_shard`` rows, a new file past ``max_shard_bytes``); this process only
reads records, renames finished files to ``part-NNNNN.parquet`` in input order, appends rejects and rewrites the
manifest. Every record read is either written to a shard or listed in ``rejects.jsonl`` with its reason, so
``read == written + rejected`` always holds. The manifest is rewritten after each window, so an interrupted job
resumes (``resume=True``) at the last window it finished and produces the same bytes as an uninterrupted one,
whatever the number of workers. A resumed job first checks the shards it has (rows, size, SHA-256) and converts
the window of a damaged one again.
"""

from __future__ import annotations

import argparse
import collections
import ctypes
import ctypes.util
import dataclasses
import hashlib
import importlib
import itertools
import json
import logging
import multiprocessing
import os
import pickle
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from multiprocessing.sharedctypes import Synchronized
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from medverl.arguments import positive_int, print_job
from medverl.data.contamination import cached_evaluation_keys
from medverl.data.converters import CONVERTERS, PrepOptions
from medverl.data.files import add_image_arguments
from medverl.data.images import CHECK_LEVELS, image_digest
from medverl.data.job import Job, JobError, Reject, file_sha256, fingerprint_inputs, windows
from medverl.data.records import Record, count_records, iter_records
from medverl.data.schemas import schema_for
from medverl.prompts import DEFAULT_TEMPLATE, TEMPLATES, load_template, template_record
from medverl.rewards.options import add_plugins

logger = logging.getLogger(__name__)

ENGINES = ("local", "ray")
_PR_SET_PDEATHSIG = 1
# One line per written row: its :func:`row_digest`, so that a resumed job still counts duplicates of earlier rows.
DIGESTS = "digests.txt"
# Rows are handed to Arrow and written as one row group per this many bytes, so a worker's memory stays bounded.
ROW_GROUP_BYTES = 8 << 20


@dataclass(frozen=True)
class PrepJob:
    """One conversion job.

    Attributes:
        kind: the record format, a name in ``CONVERTERS`` (rl, sft, caption, interleaved, a plugin's).
        inputs: input files, read in this order.
        output: the output directory.
        options: what the converters share.
        rows_per_shard: input records per window; a window's rows go to their own shard(s), so a shard holds at
            most this many rows (fewer when records of its window were rejected) ...
        max_shard_bytes: ... and a new shard is started once a shard's rows hold this many bytes.
        records: where the records come from instead of `inputs` (``medverl eval prepare``'s questions); its
            ``repr`` is part of the fingerprint, so it names what it reads.
    """

    kind: str
    inputs: tuple[str, ...]
    output: Path
    options: PrepOptions = field(default_factory=PrepOptions)
    rows_per_shard: int = 1000
    max_shard_bytes: int = 128 << 20
    records: Callable[[], Iterable[Record]] | None = None

    def __post_init__(self) -> None:
        if self.kind not in CONVERTERS:
            raise ValueError(CONVERTERS.unknown_message(self.kind))
        if self.rows_per_shard < 1 or self.max_shard_bytes < 1:
            raise ValueError("rows_per_shard and max_shard_bytes must be positive")

    def fingerprint(self) -> dict:
        """What must not change between a job and its resumption (not the worker count)."""
        options = {k: (str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v)
                   for k, v in dataclasses.asdict(self.options).items()}
        options["plugins"] = list(self.options.plugins)
        options["image_root"] = [str(root) for root in self.options.image_root]
        return {
            "kind": self.kind,
            "inputs": fingerprint_inputs(self.inputs),
            "options": options,
            "rows_per_shard": self.rows_per_shard,
            "max_shard_bytes": self.max_shard_bytes,
            **({"records": repr(self.records)} if self.records is not None else {}),
        }


@dataclass(frozen=True)
class _Window:
    number: int
    first: int  # the job-wide index of its first record
    records: list[Record]


@dataclass(frozen=True)
class _Done:
    """A converted window: its shard files (still under temporary names, with their rows and SHA-256) and its reject
    entries, in input order."""

    number: int
    read: int
    files: list[tuple[str, int, str]]
    rejects: list[Reject]
    digests: list[str] = field(default_factory=list)


def _convert(task: tuple[str, Record, int, PrepOptions]) -> dict | Reject:
    kind, record, index, options = task
    if record.error:
        return Reject(record.code, record.error)
    try:
        return CONVERTERS.get(kind)(record.data, index, record.source, options)
    except Exception as exc:  # a record no check foresaw must cost that record, not the job
        logger.warning("%s: unexpected converter error %r", record.source, exc)
        return Reject("internal_error", f"{type(exc).__name__}: {exc} (a bug: please report it with this record)")


def _convert_item(item: dict) -> dict:
    # Pickled, so that Ray Data's Arrow blocks carry rows and rejects exactly as the converter returned them.
    return {"result": pickle.dumps(_convert(pickle.loads(item["task"])))}


def _ray_data_map(tasks: list[tuple]) -> list[dict | Reject]:
    """Convert one window of records on Ray Data (whatever cluster ``ray.init`` joined), in input order."""
    import ray

    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True
    context.enable_progress_bars = False
    dataset = ray.data.from_items([{"task": pickle.dumps(task)} for task in tasks]).map(_convert_item)
    return [pickle.loads(row["result"]) for row in dataset.take_all()]


def _row_bytes(row: dict) -> int:
    images = sum(len(image["bytes"]) for image in row.get("images", ()))
    return images + len(json.dumps({k: v for k, v in row.items() if k != "images"}, default=str))


def _images_array(rows: list[dict], list_type: pa.ListType) -> pa.Array:
    """The ``images`` column: image bytes copied once into one buffer (``from_pylist`` copies them piecemeal)."""
    per_row = [row["images"] for row in rows]
    images = [image for row_images in per_row for image in row_images]
    sizes = [len(image["bytes"]) for image in images]
    offsets = pa.array([0, *itertools.accumulate(sizes)], pa.int32())
    data = pa.py_buffer(b"".join(image["bytes"] for image in images))
    children = [pa.Array.from_buffers(pa.binary(), len(images), [None, offsets.buffers()[1], data])]
    struct_type = list_type.value_type
    for f in list(struct_type)[1:]:
        children.append(pa.array([image[f.name] for image in images], f.type))
    values = pa.StructArray.from_arrays(children, fields=list(struct_type))
    row_offsets = pa.array([0, *itertools.accumulate(map(len, per_row))], pa.int32())
    return pa.ListArray.from_arrays(row_offsets, values, type=list_type)


def _record_batch(rows: list[dict], schema: pa.Schema) -> pa.RecordBatch:
    columns = []
    for f in schema:
        if f.name == "images":
            columns.append(_images_array(rows, f.type))
        else:
            columns.append(pa.array([row[f.name] for row in rows], f.type))
    return pa.RecordBatch.from_arrays(columns, schema=schema)


class _ShardWriter:
    """Writes one window's rows as parquet files, a row group per ``ROW_GROUP_BYTES``, a file per ``max_bytes``."""

    def __init__(self, directory: Path, window: int, schema: pa.Schema, max_bytes: int) -> None:
        self.directory, self.window, self.schema, self.max_bytes = directory, window, schema, max_bytes
        self.files: list[tuple[str, int, str]] = []
        self.writer: pq.ParquetWriter | None = None
        self.pending: list[dict] = []
        self.pending_bytes = self.file_bytes = self.file_rows = 0

    def add(self, row: dict) -> None:
        size = _row_bytes(row)
        if self.file_rows and self.file_bytes + size > self.max_bytes:
            self._close_file()
        self.pending.append(row)
        self.pending_bytes += size
        self.file_bytes += size
        self.file_rows += 1
        if self.pending_bytes >= ROW_GROUP_BYTES:
            self._write_pending()

    def close(self) -> list[tuple[str, int, str]]:
        if self.file_rows:
            self._close_file()
        return self.files

    def _write_pending(self) -> None:
        if self.writer is None:
            name = f".window-{self.window:06d}-{len(self.files):03d}.parquet.tmp"
            # Image bytes are already compressed (JPEG, PNG): compressing them again costs time and saves nothing.
            # Dictionaries and min/max statistics serve no reader of these files and halve the write speed.
            compression = {n: "NONE" if n == "images" else "snappy" for n in self.schema.names}
            self.writer = pq.ParquetWriter(
                self.directory / name, self.schema, compression=compression, use_dictionary=False,
                write_statistics=False,
            )
            self.files.append((name, 0, ""))
        self.writer.write_batch(_record_batch(self.pending, self.schema))
        self.pending, self.pending_bytes = [], 0

    def _close_file(self) -> None:
        self._write_pending()
        self.writer.close()
        self.writer = None
        name = self.files[-1][0]
        self.files[-1] = (name, self.file_rows, file_sha256(self.directory / name))
        self.file_bytes = self.file_rows = 0


def _finish_window(job: PrepJob, window: _Window, results: Iterable[dict | Reject]) -> _Done:
    """Write a window's rows, as `results` yields them, under temporary names and collect its rejects."""
    parquet_kind = CONVERTERS.get(job.kind).writes
    writer = _ShardWriter(job.output, window.number, schema_for(parquet_kind, job.options.resolution_keys),
                          job.max_shard_bytes)
    rejects, digests = [], []
    for record, result in zip(window.records, results, strict=True):
        if isinstance(result, Reject):
            rejects.append(record.rejected(result.code, result.reason))
        else:
            writer.add(result)
            digests.append(row_digest(result))
    return _Done(window.number, len(window.records), writer.close(), rejects, digests)


def row_digest(row: dict) -> str:
    """What makes two rows the same record: their text (every field but images and the record's own place) and the
    SHA-256 of each image, as 16 hex digits."""
    digest = hashlib.sha256()
    extra = {k: v for k, v in (row.get("extra_info") or {}).items() if k not in ("index", "source")}
    text = {k: v for k, v in row.items() if k not in ("images", "extra_info")}
    digest.update(json.dumps([text, extra], sort_keys=True, ensure_ascii=False, default=str).encode())
    for image in row.get("images", ()):
        digest.update(bytes.fromhex(image_digest(image["bytes"])))
    return digest.hexdigest()[:16]


def _process_window(job: PrepJob, window: _Window, tick: Callable[[], None]) -> _Done:
    def results() -> Iterator[dict | Reject]:  # one row at a time: a window's rows never sit in memory together
        for i, record in enumerate(window.records):
            yield _convert((job.kind, record, window.first + i, job.options))
            tick()

    return _finish_window(job, window, results())


# A worker process's job and its count of converted records (which the parent's progress bar reads).
_WORKER: tuple[PrepJob, Synchronized] | None = None


def _init_worker(job: PrepJob, converted: Synchronized, parent: int, converter_module: str) -> None:
    global _WORKER
    importlib.import_module(converter_module)  # its decorator registers the format (entry points load by themselves)
    _WORKER = (job, converted)
    die_with_parent(parent)


def die_with_parent(parent: int) -> None:
    """End this process when `parent` ends, however it ends (kill -9 included): the kernel's parent-death signal
    on Linux, else a thread that watches the parent."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0:
            if os.getppid() != parent:  # it ended before the signal was armed
                os._exit(1)
            return
    except (OSError, AttributeError):
        pass

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _count_in_worker() -> None:
    with _WORKER[1].get_lock():
        _WORKER[1].value += 1


def _process_in_worker(window: _Window) -> _Done:
    return _process_window(_WORKER[0], window, _count_in_worker)


def _windows(job: PrepJob, start: int) -> Iterator[_Window]:
    if job.records is not None:
        records = iter(job.records())
    else:
        records = itertools.chain.from_iterable(iter_records(p, job.options.max_image_bytes) for p in job.inputs)
    for first, batch in windows(records, job.rows_per_shard, start):
        yield _Window(first // job.rows_per_shard, first, batch)


def run_prep(
    job: PrepJob, *, workers: int = 1, resume: bool = False, progress: bool = True, engine: str = "local",
    info: dict | None = None,
) -> dict:
    """Run `job`; returns the manifest (also written to ``OUTPUT/manifest.json``).

    `engine` "local" converts and writes in `workers` processes of this machine; "ray" converts on Ray Data across
    the cluster ``ray.init`` connects to, and this process writes the shards (the output is the same bytes either
    way). `info` adds fields to the manifest.

    Raises:
        JobError: the output directory holds another job's output and `resume` is not set, or resuming a job
            whose inputs (their content) or options differ.
        InputError: an input file cannot be read at all.
    """
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; use one of {', '.join(ENGINES)}")
    parquet_kind = CONVERTERS.get(job.kind).writes
    info = {**(info or {}), **({"template": template_record(job.options.template)} if parquet_kind == "rl" else {})}
    with Job(job.output, parquet_kind, job.fingerprint(), resume=resume, info=info, appended=(DIGESTS,)) as out:
        _redo_damaged(job, out)
        if out.complete:
            logger.info("%s is already complete", job.output)
            return out.manifest()
        if out.read % job.rows_per_shard:
            raise JobError(f"cannot resume {job.output}: its manifest stops inside a window ({out.read} records read)")
        return _run(job, out, workers, engine, progress)


def _redo_damaged(job: PrepJob, out: Job) -> None:
    """Convert again, in place, the windows of the shards that are not what the manifest says: the same records
    give the same bytes (:meth:`Job.redo_damaged`)."""

    def make(number: int) -> list[Path]:
        window = next(_windows(job, number * job.rows_per_shard), _Window(number, 0, []))
        return [job.output / tmp for tmp, _, _ in _process_window(job, window, lambda: None).files]

    out.redo_damaged(make, "converting", "an image changed")


def _run(job: PrepJob, out: Job, workers: int, engine: str, progress: bool) -> dict:
    digests = job.output / DIGESTS
    seen = set(digests.read_text(encoding="ascii").split()) if digests.exists() else set()

    def commit(done: _Done) -> None:
        """Make a finished window part of the output, in input order."""
        for tmp, rows, sha256 in done.files:
            out.add_shard(job.output / tmp, rows, sha256, window=done.number)
        for rejected in done.rejects:
            out.reject(rejected)
        for digest in done.digests:
            out.append(DIGESTS, digest)
            if digest in seen:
                out.count("duplicates")
            seen.add(digest)
        out.commit(done.read)

    windows_ = _windows(job, out.read)
    bar = out.progress(f"prep {job.kind}", count_records(job.inputs) if job.records is None else None, progress)
    pool = None
    try:
        if engine == "ray":
            for window in windows_:
                tasks = [(job.kind, r, window.first + i, job.options) for i, r in enumerate(window.records)]
                commit(_finish_window(job, window, _ray_data_map(tasks)))
                bar.update(len(window.records))
        elif workers <= 1:
            for window in windows_:
                commit(_process_window(job, window, lambda: bar.update(1)))
        else:
            converted = multiprocessing.get_context("spawn").Value("q", 0)
            pool = ProcessPoolExecutor(workers, multiprocessing.get_context("spawn"), _init_worker,
                                       (job, converted, os.getpid(), CONVERTERS.get(job.kind).__module__))
            # At most two windows per worker in flight, so memory does not grow with the input.
            in_flight: collections.deque[Future] = collections.deque()
            reported = 0

            def report() -> None:
                nonlocal reported
                bar.update(converted.value - reported)
                reported = converted.value

            for window in itertools.chain(windows_, [None]):
                if window is not None:
                    in_flight.append(pool.submit(_process_in_worker, window))
                while in_flight and (window is None or len(in_flight) >= 2 * workers):
                    while not wait([in_flight[0]], timeout=0.25).done:
                        report()
                    try:
                        done = in_flight.popleft().result()
                    except BrokenProcessPool:
                        raise RuntimeError(
                            f"a worker process died (killed for memory?) converting records {out.read}+ of {job.output}; "
                            "rerun with --resume, with fewer --workers or a smaller --rows-per-shard"
                        ) from None
                    commit(done)
            report()
            pool.shutdown()  # reaps the workers (their memory then counts in this process's children)
            pool = None
        return out.finish()
    except OSError:  # a full disk: the windows in flight end before their files are removed
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
            pool = None
        raise
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``medverl prep``'s arguments."""
    defaults = {f.name: f.default for f in dataclasses.fields(PrepOptions)}
    parser.add_argument("kind", choices=CONVERTERS.names(), help="the input records' format (a plugin's too: "
                        "entry-point group 'medverl.converters')")
    parser.add_argument("inputs", nargs="+", help=".jsonl, .json (an array) or .parquet files")
    parser.add_argument("--output", required=True, help="output directory (part-NNNNN.parquet, rejects.jsonl, "
                        "manifest.json)")
    add_image_arguments(parser)
    parser.add_argument("--workers", type=positive_int, default=1, help="worker processes")
    parser.add_argument("--rows-per-shard", type=positive_int, default=1000,
                        help="input records per window; each window is written to its own shard(s)")
    parser.add_argument("--max-pixels", type=positive_int, help="written into every image dict; verl resizes to at "
                        "most this")
    parser.add_argument("--min-pixels", type=positive_int, help="written into every image dict; verl resizes to at "
                        "least this")
    parser.add_argument("--pixel-limit", type=positive_int, default=defaults["pixel_limit"],
                        help="reject larger images (decompression bombs)")
    parser.add_argument("--image-check", choices=CHECK_LEVELS, default=defaults["image_check"],
                        help="structure: JPEG markers and PNG chunk CRCs, at disk speed; decode: every pixel decoded")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted job in the same directory")
    parser.add_argument("--engine", choices=ENGINES, default="local",
                        help="local: --workers processes here; ray: Ray Data on the cluster of --ray-address")
    parser.add_argument("--ray-address", help="Ray cluster address (default: start or join a local one)")
    parser.add_argument("--data-source", help="data_source for records without one (default: the first input's name)")
    parser.add_argument("--split", default=defaults["split"], help="extra_info.split for RL records without one")
    parser.add_argument("--query-type", help="query_type for RL records without one")
    parser.add_argument("--model-family", help="the model family the RL data is for (qwen2.5-vl, qwen3-vl, ...): "
                        "completes bbox_iou rows' meta with its box_format and, for pixel boxes, the image_size it "
                        "resizes the image to")
    parser.add_argument("--template", default=DEFAULT_TEMPLATE,
                        help=f"RL prompt template: {', '.join(TEMPLATES.names())}, or a file with {{question}} "
                        "{options} {answer_hint}")
    parser.add_argument("--decontaminate-against", nargs="+", metavar="DIR",
                        help="prepared evaluation directories (medverl eval prepare): rows sharing an image or a "
                        "question with one are rejected contaminated:BENCHMARK")
    add_plugins(parser)


def run_command(args: argparse.Namespace) -> int:
    """Run ``medverl prep``."""
    options = PrepOptions(
        image_root=tuple(args.image_root),
        max_image_bytes=args.max_image_bytes,
        max_pixels=args.max_pixels,
        min_pixels=args.min_pixels,
        pixel_limit=args.pixel_limit,
        image_check=args.image_check,
        data_source=args.data_source or Path(args.inputs[0]).stem,
        split=args.split,
        query_type=args.query_type,
        template=load_template(args.template),
        plugins=tuple(args.plugins),
        model_family=args.model_family,
        decontaminate_against=args.decontaminate_against,
    )
    if options.decontaminate_against:
        cached_evaluation_keys(options.decontaminate_against)  # a directory that is not prepared: a usage error now
    for path in args.inputs:
        iter_records(path)  # a missing or unknown input is a usage error before anything runs
    job = PrepJob(args.kind, tuple(args.inputs), Path(args.output), options, args.rows_per_shard)
    if args.engine == "ray":
        import ray

        ray.init(address=args.ray_address, ignore_reinit_error=True)
    return print_job(run_prep(job, workers=args.workers, resume=args.resume, engine=args.engine), args.output)
