"""`medverl qc score`: every input record scored on the five dimensions, as parquet next to a manifest; resumable.

Scores are in [0, 1] (judge scores 1-5 map to (s - 1) / 4); ``mean`` is the mean of the dimensions scored. Records
that cannot be read (malformed JSON, no text) go to ``rejects.jsonl``; a judge call that fails is a row with status
``judge_failed`` and no scores, counted apart: ``read == scored + judge_failed + rejected``.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from medverl.data.records import Record, iter_records
from medverl.data.schemas import qc_scores_schema
from medverl.qc.judge import Judge, JudgeConfig, VerdictCache
from medverl.qc.rules import DIMENSIONS, image_checks, mark_duplicates, score_rules

MANIFEST, REJECTS = "manifest.json", "rejects.jsonl"
WINDOW = 500
SCHEMA = qc_scores_schema()


def record_content(kind: str, record: dict) -> tuple[str, list]:
    """(text, image references) of an input record of `medverl prep` kind `kind`."""
    def as_list(value: object) -> list:
        return [] if value is None else list(value) if isinstance(value, list | tuple) else [value]

    if kind == "caption":
        return str(record.get("text") or ""), as_list(record.get("image", record.get("images")))
    if kind == "interleaved":
        texts = [t for t in record.get("texts") or [] if isinstance(t, str) and t.strip()]
        return "\n".join(texts), [i for i in record.get("image_info") or [] if i is not None]
    if kind == "sft":
        turns = [f"{t.get('from')}: {t.get('value')}" for t in record.get("conversations") or [] if isinstance(t, dict)]
        return "\n".join(turns).replace("<image>", "").strip(), as_list(record.get("image", record.get("images")))
    if kind == "rl":
        answer = record.get("answer")
        answer = " / ".join(answer) if isinstance(answer, list) else answer
        return f"{record.get('question') or ''}\nAnswer: {answer or ''}".strip(), as_list(
            record.get("images", record.get("image")))
    raise ValueError(f"unknown kind {kind!r}; use caption, interleaved, sft or rl")


@dataclass(frozen=True)
class QCJob:
    """One scoring job (what a resumed run must share with the first)."""

    kind: str
    inputs: tuple[str, ...]
    output: Path
    scorer: str = "rules"
    image_root: str | None = None
    subset_key: str = "data_source"
    judge: JudgeConfig | None = None

    def fingerprint(self) -> dict:
        return {"kind": self.kind, "inputs": list(self.inputs), "scorer": self.scorer, "image_root": self.image_root,
                "subset_key": self.subset_key,
                "rubric_version": self.judge.rubric_version if self.judge else None,
                "judge_model": self.judge.model if self.judge else None}


def _records(job: QCJob, start: int) -> Iterator[Record]:
    records = (r for path in job.inputs for r in iter_records(path))
    for position, record in enumerate(records):
        if position >= start:
            yield record


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
    data = record.data if isinstance(record.data, dict) else {}
    return {
        "index": record.position, "source": record.source, "subset": str(data.get(job.subset_key) or "(none)"),
        "scorer": job.scorer, **scores, "mean": sum(known) / len(known) if known else None, "failed_checks": failed,
        "rationale": rationale, "status": "judge_failed" if error else "scored", "error": error,
        "image_hashes": hashes, "thumbnail": thumbs[0] if thumbs else None, "text": text[:2000],
        "record": json.dumps(record.data, ensure_ascii=False, default=str),
    }


def run_qc(job: QCJob, *, resume: bool = False, progress: bool = True) -> dict:
    """Score every record of `job`; returns the manifest (also written to ``OUTPUT/manifest.json``)."""
    out = job.output
    out.mkdir(parents=True, exist_ok=True)
    manifest_path = out / MANIFEST
    state = {"read": 0, "scored": 0, "judge_failed": 0, "rejected": 0, "rejected_by_reason": {}, "shards": [],
             "rejects_bytes": 0}
    if manifest_path.exists():
        previous = json.loads(manifest_path.read_text(encoding="utf-8"))
        if not resume:
            raise FileExistsError(f"{out} already holds a qc job ({MANIFEST}); pass --resume or use a new directory")
        if previous["job"] != job.fingerprint():
            raise ValueError(f"cannot resume {out}: its job had other inputs or options")
        if previous["complete"]:
            return previous
        state = {k: previous[k] for k in state}
    seen: set[str] = set()
    for shard in state["shards"]:
        for hashes in pq.read_table(out / shard["file"], columns=["image_hashes"]).column("image_hashes").to_pylist():
            seen.update(hashes)
    with (out / REJECTS).open("ab") as f:
        f.truncate(state["rejects_bytes"])
    rejects = (out / REJECTS).open("a", encoding="utf-8")
    reasons = Counter(state["rejected_by_reason"])
    judge = Judge(job.judge, VerdictCache(out / "judge_cache.sqlite")) if job.scorer == "judge" else None
    pool = ThreadPoolExecutor(job.judge.concurrency if judge else os.cpu_count() or 1)
    bar = tqdm(desc=f"qc {job.scorer}", unit=" records", initial=state["read"], disable=not progress or None)

    def write_manifest(complete: bool) -> dict:
        rejects.flush()
        state["rejects_bytes"] = rejects.tell()
        manifest = {**state, "rejected_by_reason": dict(sorted(reasons.items())), "complete": complete,
                    "job": job.fingerprint(), "dimensions": list(DIMENSIONS)}
        tmp = manifest_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, manifest_path)
        return manifest

    def readable(record: Record) -> tuple | None:
        if record.error or not isinstance(record.data, dict):
            reject(record, "unreadable", record.error or "a record must be a JSON object")
            return None
        text, references = record_content(job.kind, record.data)
        if not text.strip():
            reject(record, "no_text", "the record has no text to judge")
            return None
        return record, text, references

    image_root = Path(job.image_root) if job.image_root else None

    def examine(item: tuple) -> tuple:
        """Image checks (and the judge's verdict): the slow part, run in threads (PIL and HTTP release the GIL)."""
        record, text, references = item
        facts = [image_checks(reference, image_root) for reference in references]
        outcome = judge.score(text, [f.data for f in facts if f.data]) if judge is not None else None
        return record, text, facts, outcome

    def reject(record: Record, code: str, reason: str) -> None:
        state["rejected"] += 1
        reasons[code] += 1
        rejects.write(json.dumps({"index": record.position, "source": record.source, "code": code, "reason": reason,
                                  "excerpt": record.excerpt or json.dumps(record.data, default=str)[:200]},
                                 ensure_ascii=False) + "\n")

    try:
        records = _records(job, state["read"])
        while window := [r for _, r in zip(range(WINDOW), records)]:
            items = [item for item in map(readable, window) if item is not None]
            rows = []
            for record, text, facts, outcome in pool.map(examine, items):  # in input order
                mark_duplicates(facts, seen)
                thumbs = [f.thumbnail for f in facts if f.thumbnail]
                hashes = [f.digest for f in facts if f.digest]
                if outcome is None:
                    rows.append(_row(job, record, text, thumbs, hashes, score_rules(text, facts), None, ""))
                else:
                    rows.append(_row(job, record, text, thumbs, hashes, None, outcome.verdict, outcome.error))
            for row in rows:
                state["judge_failed" if row["status"] == "judge_failed" else "scored"] += 1
            if rows:
                name = f"scores-{len(state['shards']):05d}.parquet"
                pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), out / (name + ".tmp"))
                os.replace(out / (name + ".tmp"), out / name)
                state["shards"].append({"file": name, "rows": len(rows)})
            state["read"] += len(window)
            write_manifest(complete=False)
            bar.update(len(window))
        manifest = write_manifest(complete=True)
    finally:
        bar.close()
        rejects.close()
        pool.shutdown()
        if judge is not None:
            judge.close()
    if state["read"] != state["scored"] + state["judge_failed"] + state["rejected"]:
        raise RuntimeError("internal error: qc accounting does not add up")
    return manifest

