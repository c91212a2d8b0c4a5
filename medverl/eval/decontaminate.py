"""`medverl eval decontaminate`: training rows whose image or question appears in an evaluation set."""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq

from medverl.data.runner import MANIFEST, REJECTS
from medverl.data.schemas import SCHEMA_VERSION
from medverl.rewards import normalize

_PLACEHOLDER = re.compile(r"<image>")


def question_key(text: str) -> str:
    """A question as compared across sets: placeholders removed, :func:`normalize`-d."""
    return normalize(_PLACEHOLDER.sub(" ", text))


def _row_questions(row: dict) -> list[str]:
    info = row.get("extra_info") or {}
    if info.get("question"):
        return [info["question"]]
    messages = row.get("prompt") or row.get("messages") or []
    return [m["content"] for m in messages if m.get("role") == "user"]


def _row_images(row: dict) -> list[str]:
    return [hashlib.sha256(image["bytes"]).hexdigest() for image in row.get("images") or [] if image.get("bytes")]


@dataclass
class Contamination:
    """What `find` saw: rows read, and per contaminated row (shard, index) its reasons."""

    read: int = 0
    matches: dict[tuple[str, int], list[str]] = field(default_factory=dict)


def _eval_keys(against: list[str | Path]) -> tuple[dict[str, str], dict[str, str]]:
    images, questions = {}, {}
    for directory in against:
        for shard in sorted(Path(directory).glob("part-*.parquet")):
            for row in pq.read_table(shard).to_pylist():
                name = row.get("data_source") or Path(directory).name
                for digest in _row_images(row):
                    images.setdefault(digest, name)
                for question in _row_questions(row):
                    if key := question_key(question):
                        questions.setdefault(key, name)
    if not images and not questions:
        raise FileNotFoundError(f"no evaluation rows found in {', '.join(map(str, against))}")
    return images, questions


def decontaminate(
    train_dir: str | Path, against: list[str | Path], output: str | Path | None = None,
) -> Contamination:
    """Find training rows sharing an image (content hash) or a normalised question with any evaluation set.

    With `output`, the clean rows are written there (one shard per input shard, same schema) and every dropped row
    goes to its ``rejects.jsonl`` with the reason, with a manifest: ``read == written + rejected``.
    """
    images, questions = _eval_keys(against)
    result = Contamination()
    shards = sorted(Path(train_dir).glob("part-*.parquet"))
    if not shards:
        raise FileNotFoundError(f"{train_dir}: no part-*.parquet shards")
    written, rejected, by_reason, out_shards = 0, 0, {}, []
    if output is not None:
        output = Path(output)
        output.mkdir(parents=True, exist_ok=True)
        if (output / MANIFEST).exists():
            raise FileExistsError(f"{output} already holds a job's output; use a new directory")
        rejects = (output / REJECTS).open("w", encoding="utf-8")
    for shard in shards:
        table = pq.read_table(shard)
        keep = []
        for position, row in enumerate(table.to_pylist()):
            result.read += 1
            reasons = [f"contaminated_image: its image is in {images[d]}" for d in _row_images(row) if d in images]
            reasons += [f"contaminated_question: the question is in {questions[k]}"
                        for k in map(question_key, _row_questions(row)) if k in questions]
            index = (row.get("extra_info") or {}).get("index", position)
            if reasons:
                result.matches[(shard.name, index)] = reasons
            keep.append(not reasons)
            if output is not None and reasons:
                code = reasons[0].split(":", 1)[0]
                by_reason[code] = by_reason.get(code, 0) + 1
                rejected += 1
                rejects.write(json.dumps({"index": index, "source": (row.get("extra_info") or {}).get("source", ""),
                                          "code": code, "reason": "; ".join(reasons),
                                          "excerpt": " ".join(_row_questions(row))[:200]}, ensure_ascii=False) + "\n")
        if output is not None:
            kept = table.filter(keep)
            if kept.num_rows:
                tmp = output / (shard.name + ".tmp")
                pq.write_table(kept, tmp)
                os.replace(tmp, output / shard.name)
                out_shards.append({"file": shard.name, "rows": kept.num_rows})
                written += kept.num_rows
    if output is not None:
        rejects.close()
        manifest = {"schema_version": SCHEMA_VERSION, "read": result.read, "written": written, "rejected": rejected,
                    "rejected_by_reason": dict(sorted(by_reason.items())), "shards": out_shards, "rejects": REJECTS,
                    "complete": True, "decontaminated_against": [str(a) for a in against]}
        source_manifest = Path(train_dir) / MANIFEST
        if source_manifest.exists():
            previous = json.loads(source_manifest.read_text(encoding="utf-8"))
            manifest["kind"], manifest["job"] = previous.get("kind"), previous.get("job")
        if result.read != written + rejected:
            raise RuntimeError(f"internal error: read {result.read} != written {written} + rejected {rejected}")
        (output / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return result
