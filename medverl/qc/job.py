"""`medverl qc score`: every input record scored on the five dimensions, as parquet next to a manifest; resumable.

Scores are in [0, 1] (judge scores 1-5 map to (s - 1) / 4); ``mean`` is the mean of the dimensions scored. Records
``medverl prep`` would reject for their fields go to ``rejects.jsonl`` with the same reason; a judge call that fails
is a row with status ``judge_failed`` and no scores, counted apart: ``read == scored + judge_failed + rejected``.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import itertools
import json
import os
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from medverl.arguments import EXIT_NOTHING_USABLE, EXIT_OK, print_job
from medverl.data.converters import CONVERTERS, PrepOptions, read_content
from medverl.data.files import DEFAULT_MAX_IMAGE_BYTES, add_image_arguments
from medverl.data.job import Job, Reject, fingerprint_inputs, windows
from medverl.data.records import Record, count_records, iter_records
from medverl.data.schemas import qc_scores_schema
from medverl.errors import ConfigError
from medverl.http import JudgeConfig, JudgeOutcome, add_judge_arguments, judge_config
from medverl.qc.judge import RUBRIC_VERSION, rubric_judge
from medverl.qc.rules import DIMENSIONS, ImageFacts, image_checks, mark_duplicates, score_rules
from medverl.rewards.options import add_plugins

WINDOW = 500
SCHEMA = qc_scores_schema()
SCORERS = ("rules", "judge")
JUDGE_CACHE, UNSAVED_VERDICTS = "judge_cache.sqlite", "judge_cache.unsaved.sqlite"


@dataclass(frozen=True)
class QCJob:
    """One scoring job (what a resumed run must share with the first)."""

    kind: str
    inputs: tuple[str, ...]
    output: Path
    scorer: str = "rules"
    image_root: tuple[str, ...] = ()
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES
    subset_key: str = "data_source"
    judge: JudgeConfig | None = None
    plugins: tuple[str, ...] = ()

    def fingerprint(self) -> dict:
        return {"inputs": fingerprint_inputs(self.inputs), "input_kind": self.kind, "scorer": self.scorer,
                "image_root": list(self.image_root), "subset_key": self.subset_key, "plugins": list(self.plugins),
                "rubric_version": RUBRIC_VERSION if self.judge else None,
                "judge_model": self.judge.model if self.judge else None}

    @functools.cached_property
    def prep_options(self) -> PrepOptions:
        """The options records are read with: those of ``medverl prep`` by default."""
        return PrepOptions(image_root=tuple(map(Path, self.image_root)), max_image_bytes=self.max_image_bytes,
                           plugins=self.plugins)


def _row(job: QCJob, record: Record, text: str, thumbs: list[bytes], hashes: list[str], checked, verdict,
         error: str) -> dict:
    scores = {d: None for d in DIMENSIONS}
    rationale, failed = "", []
    if checked is not None:
        scores, failed, rationale = checked.scores, checked.failed, checked.rationale
    if verdict is not None:
        scores = {d: (verdict[d] - 1) / 4 for d in DIMENSIONS}
        rationale = verdict["rationale"]
    known = [v for v in scores.values() if v is not None]
    return {
        "index": record.position, "source": record.source, "subset": str(record.data.get(job.subset_key) or "(none)"),
        "scorer": job.scorer, **scores, "mean": sum(known) / len(known) if known else None, "failed_checks": failed,
        "rationale": rationale, "status": "judge_failed" if error else "scored", "error": error,
        "image_hashes": hashes, "thumbnail": thumbs[0] if thumbs else None, "text": text[:2000],
        "record": json.dumps(record.data, ensure_ascii=False, default=str),
    }


def _image_facts(reference: object, image_root: tuple, max_image_bytes: int) -> ImageFacts:
    """:func:`image_checks`, with any failure of an image an unreadable image, never the job's end."""
    try:
        return image_checks(reference, image_root, max_image_bytes)
    except Exception:
        return ImageFacts(["image_unreadable"], None, b"")


def run_qc(job: QCJob, *, resume: bool = False, progress: bool = True) -> dict:
    """Score every record of `job`; returns the manifest (also written to ``OUTPUT/manifest.json``).

    Records are read as ``medverl prep`` reads them (:func:`read_content`): a record prep would reject for its
    fields is rejected here with the same reason; image problems are scored, not rejected. A resumed job first
    scores the window of each damaged shard again.
    """
    with Job(job.output, "qc_scores", job.fingerprint(), resume=resume,
             info={"dimensions": list(DIMENSIONS)}) as out:
        _redo_damaged(job, out)
        if out.complete:
            return out.manifest()
        return _score(job, out, progress)


@contextlib.contextmanager
def _scoring(job: QCJob, out: Job) -> Iterator[tuple[object | None, ThreadPoolExecutor]]:
    """The judge (checked to answer; None for the rules) and the threads records are examined in."""
    judge = None
    if job.scorer == "judge":
        judge = rubric_judge(job.judge, out.directory / JUDGE_CACHE, out.directory / UNSAVED_VERDICTS)
    pool = ThreadPoolExecutor(job.judge.concurrency if judge else os.cpu_count() or 1)
    try:
        if judge is not None:
            judge.preflight()
        yield judge, pool
    finally:
        pool.shutdown()
        if judge is not None:
            judge.close()


def _records(job: QCJob) -> Iterator[Record]:
    return itertools.chain.from_iterable(iter_records(path, job.max_image_bytes) for path in job.inputs)


def _hashes(out: Job, shards: list[dict]) -> set[str]:
    """The image hashes of the rows in `shards` (the images seen before the next window)."""
    seen: set[str] = set()
    for shard in shards:
        column = pq.read_table(out.directory / shard["file"], columns=["image_hashes"]).column("image_hashes")
        for hashes in column.to_pylist():
            seen.update(hashes)
    return seen


def _readable(job: QCJob, record: Record, reject: Callable[[Reject], None]) -> tuple | None:
    """``(record, text, image references)``, or None once `reject` has the reason the record cannot be scored."""
    if record.error:
        content = record.rejected(record.code, record.error)
    else:
        try:
            content = read_content(job.kind, record.data, record.position, record.source, job.prep_options)
        except Exception as exc:  # a record no check foresaw must cost that record, not the job
            content = Reject("internal_error", f"{type(exc).__name__}: {exc} (a bug: please report it with "
                             "this record)")
    if isinstance(content, Reject):
        reject(content if content.index is not None else record.rejected(content.code, content.reason))
        return None
    return record, content.text, content.images


def _examine(job: QCJob, judge: object | None, item: tuple) -> tuple:
    """Image checks (and the judge's verdict): the slow part, run in threads (PIL and HTTP release the GIL)."""
    record, text, references = item
    facts = [_image_facts(reference, job.prep_options.image_root, job.max_image_bytes) for reference in references]
    outcome = None
    if judge is not None:
        try:
            outcome = judge.score(text, [f.data for f in facts if f.data])
        except Exception as exc:  # never the job: the record is a judge failure with the reason
            outcome = JudgeOutcome(None, error=f"{type(exc).__name__}: {exc}")
    return record, text, facts, outcome


def _window_rows(job: QCJob, window: list[Record], seen: set[str], judge: object | None, pool: ThreadPoolExecutor,
                 reject: Callable[[Reject], None]) -> list[dict]:
    """The score rows of a window's records, in input order (`seen`: the image hashes of earlier records, which
    this window's are added to)."""
    items = [item for item in (_readable(job, record, reject) for record in window) if item is not None]
    rows = []
    for record, text, facts, outcome in pool.map(functools.partial(_examine, job, judge), items):
        mark_duplicates(facts, seen)
        thumbs = [f.thumbnail for f in facts if f.thumbnail]
        hashes = [f.digest for f in facts if f.digest]
        if outcome is None:
            rows.append(_row(job, record, text, thumbs, hashes, score_rules(text, facts), None, ""))
        else:
            rows.append(_row(job, record, text, thumbs, hashes, None, outcome.verdict, outcome.error))
    return rows


def _redo_damaged(job: QCJob, out: Job) -> None:
    """Score again, in place, the windows of the shards that are not what the manifest says, with the images seen
    before each and the judge's cached verdicts: the rows must come out as first written (:meth:`Job.redo_damaged`)."""
    damaged = out.damaged_shards()
    if not damaged:
        return
    with _scoring(job, out) as (judge, pool):

        def make(number: int) -> list[Path]:
            # a shard written before shards recorded their window is an earlier one
            seen = _hashes(out, [entry for entry in out.shards if entry.get("window", -1) < number])
            _, window = next(windows(_records(job), WINDOW, number * WINDOW))
            tmp = out.temporary(f"window-{number}.parquet")
            rows = _window_rows(job, window, seen, judge, pool, lambda _: None)
            pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), tmp)
            return [tmp]

        out.redo_damaged(make, "scoring", "an image or a judge's verdict changed", damaged)


def _score(job: QCJob, out: Job, progress: bool) -> dict:
    seen = _hashes(out, out.shards)
    with _scoring(job, out) as (judge, pool):
        bar = out.progress(f"qc {job.scorer}", count_records(job.inputs), progress)
        try:
            for first, window in windows(_records(job), WINDOW, out.read):
                rows = _window_rows(job, window, seen, judge, pool, out.reject)
                for row in rows:
                    out.count(row["status"])
                if rows:
                    out.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), window=first // WINDOW)
                out.commit(len(window))
                bar.update(len(window))
            return out.finish()
        finally:
            bar.close()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``medverl qc score``'s arguments."""
    parser.add_argument("kind", choices=CONVERTERS.names(), help="the input records' format (as for medverl prep)")
    parser.add_argument("inputs", nargs="+", help="the records medverl prep reads (.jsonl, .json, .parquet)")
    parser.add_argument("--output", required=True, help="output directory (part-NNNNN.parquet scores, "
                        "rejects.jsonl, manifest.json)")
    parser.add_argument("--scorer", choices=SCORERS, default=SCORERS[0],
                        help="rules: named CPU checks; judge: a VLM behind an OpenAI-compatible endpoint")
    add_image_arguments(parser)
    parser.add_argument("--subset-key", default=QCJob.subset_key, help="record field that names its subset")
    add_judge_arguments(parser)
    parser.add_argument("--resume", action="store_true", help="continue an interrupted job in the same directory")
    add_plugins(parser)


def run_command(args: argparse.Namespace) -> int:
    """Run ``medverl qc score``: exit status 1 when no record was scored."""
    judge = judge_config(args) if args.scorer == "judge" else None
    if args.scorer == "judge" and judge is None:
        raise ConfigError("--scorer judge needs --judge-url and --judge-model")
    for path in args.inputs:
        iter_records(path)  # a missing or unknown input is a usage error before anything runs
    job = QCJob(args.kind, tuple(args.inputs), Path(args.output), args.scorer, tuple(args.image_root),
                args.max_image_bytes, args.subset_key, judge, tuple(args.plugins))
    manifest = run_qc(job, resume=args.resume)
    print_job(manifest, args.output)
    if not manifest["counts"].get("scored"):
        print("no record was scored", file=sys.stderr)
        return EXIT_NOTHING_USABLE
    return EXIT_OK
