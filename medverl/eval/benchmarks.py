"""The seed's evaluation benchmarks, read from their public distributions into medverl RL records.

Each reader yields one record per question, in the distribution's order: ``question``, ``answer``, ``query_type``
(closed yes/no -> ``yes_no``, multiple choice -> ``multiple_choice``, other closed -> ``exact_match``, open ->
``jaccard``), ``options``, images (paths or base64), ``data_source`` (the benchmark) and ``meta`` (answer type,
language, question type, modality). Bad rows are not dropped here: the RL converter rejects them with a reason.
"""

from __future__ import annotations

import ast
import base64
import csv
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pyarrow.parquet as pq

from medverl.rewards.choice import LETTERS

YES_NO = {"yes", "no", "是", "否"}
# The seed's table: benchmark -> column title, in its order.
BENCHMARKS = {
    "mmmu_hm": "MMMU-H&M",
    "vqa_rad": "VQA-RAD",
    "slake": "SLAKE",
    "path_vqa": "PathVQA",
    "pmc_vqa": "PMC-VQA",
    "omnimedvqa": "OmniMedVQA",
    "medxpertqa_mm": "MedXpertQA",
}
MMMU_SUBJECTS = ("Basic_Medical_Science", "Clinical_Medicine", "Diagnostics_and_Laboratory_Medicine", "Pharmacy",
                 "Public_Health")


def _record(
    benchmark: str, question: str, answer: object, query_type: str, images: list, options: list | None = None,
    **meta: object,
) -> dict:
    return {"question": question, "answer": answer, "query_type": query_type, "images": images, "options": options,
            "data_source": benchmark, "split": "test", "meta": {k: v for k, v in meta.items() if v is not None}}


def _open_or_closed(answer: str) -> tuple[str, str]:
    """(query_type, answer_type) of a free-form VQA answer: yes/no answers are closed."""
    return ("yes_no", "closed") if answer.strip().lower() in YES_NO else ("jaccard", "open")


def _image_bytes(value: object) -> str | None:
    """A Hugging Face image cell ({bytes, path}) as base64, for the RL converter."""
    if isinstance(value, dict) and value.get("bytes"):
        return base64.b64encode(value["bytes"]).decode()
    return None


def _parquet_rows(source: Path, pattern: str) -> Iterator[dict]:
    files = sorted(source.glob(pattern))
    if not files:
        raise FileNotFoundError(f"no {pattern} under {source}")
    for path in files:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=64):
            yield from batch.to_pylist()


def read_vqa_rad(source: Path, benchmark: str = "vqa_rad") -> Iterator[dict]:
    """HF ``flaviagiammarino/vqa-rad``: ``data/test-*.parquet`` with image, question, answer."""
    for row in _parquet_rows(source, "**/test-*.parquet"):
        answer = str(row.get("answer") or "")
        query_type, answer_type = _open_or_closed(answer)
        yield _record(benchmark, str(row.get("question") or ""), answer, query_type,
                      [x for x in [_image_bytes(row.get("image"))] if x], answer_type=answer_type, language="en")


def read_path_vqa(source: Path) -> Iterator[dict]:
    """HF ``flaviagiammarino/path-vqa``: the same layout as VQA-RAD."""
    return read_vqa_rad(source, "path_vqa")


def read_slake(source: Path) -> Iterator[dict]:
    """HF ``BoKelvin/SLAKE``: ``test.json`` (bilingual) and ``imgs/`` (from imgs.zip)."""
    for row in json.loads((source / "test.json").read_text(encoding="utf-8")):
        answer = str(row.get("answer") or "")
        closed = str(row.get("answer_type", "")).upper() == "CLOSED"
        if closed:
            query_type = "yes_no" if answer.strip().lower() in YES_NO else "exact_match"
        else:
            query_type = "jaccard"
        yield _record("slake", str(row.get("question") or ""), answer, query_type,
                      [str(source / "imgs" / row["img_name"])] if row.get("img_name") else [],
                      answer_type="closed" if closed else "open", language=row.get("q_lang"),
                      modality=row.get("modality"), question_type=row.get("content_type"))


_CHOICE_PREFIX = re.compile(r"^\s*\(?[A-J]\s*[:.)]\s*")


def read_pmc_vqa(source: Path) -> Iterator[dict]:
    """HF ``RadGenome/PMC-VQA``: ``test_2.csv`` (Figure_path, Question, Choice A-D as "A:text", Answer) and
    ``images/``."""
    with (source / "test_2.csv").open(newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            row = {k.strip(): (v or "") for k, v in row.items() if k}
            options = [_CHOICE_PREFIX.sub("", row.get(f"Choice {letter}", "")).strip() for letter in "ABCD"]
            # the letter (Answer_label), else Answer: a letter or the option text ("B:CT" or "CT")
            answer = row.get("Answer_label", "").strip() or row.get("Answer", "").strip()
            if len(answer) > 1:
                answer = _CHOICE_PREFIX.sub("", answer).strip()
            yield _record("pmc_vqa", row.get("Question", "").strip(), answer, "multiple_choice",
                          [str(source / "images" / row["Figure_path"])] if row.get("Figure_path") else [],
                          answer_type="closed", language="en", options=options)


def read_omnimedvqa(source: Path) -> Iterator[dict]:
    """HF ``foreverbeliever/OmniMedVQA``: ``QA_information/**/*.json`` (gt_answer is the option TEXT), images by
    ``image_path`` relative to the root."""
    files = sorted(source.glob("QA_information/**/*.json"))
    if not files:
        raise FileNotFoundError(f"no QA_information/**/*.json under {source}")
    for path in files:
        for row in json.loads(path.read_text(encoding="utf-8")):
            options = [str(row[f"option_{letter}"]) for letter in "ABCD" if row.get(f"option_{letter}")]
            gold = str(row.get("gt_answer") or "")
            letter = next((LETTERS[i] for i, o in enumerate(options) if o.strip() == gold.strip()), gold)
            yield _record("omnimedvqa", str(row.get("question") or ""), letter, "multiple_choice",
                          [str(source / row["image_path"])] if row.get("image_path") else [],
                          answer_type="closed", language="en", options=options,
                          question_type=row.get("question_type"), modality=row.get("modality_type"),
                          dataset=row.get("dataset"))


_MMMU_IMAGE = re.compile(r"<image (\d)>")


def read_mmmu_hm(source: Path) -> Iterator[dict]:
    """HF ``MMMU/MMMU``, the five Health & Medicine subjects: ``SUBJECT/validation-*.parquet`` (options is the
    string of a Python list, images in image_1..image_7, referenced as <image N> in the question)."""
    subjects = [s for s in MMMU_SUBJECTS if (source / s).is_dir()]
    if not subjects:
        raise FileNotFoundError(f"none of the MMMU subject directories {', '.join(MMMU_SUBJECTS)} under {source}")
    for subject in subjects:
        for row in _parquet_rows(source / subject, "validation-*.parquet"):
            question = str(row.get("question") or "")
            options = ast.literal_eval(row["options"]) if row.get("options") else []
            order = [int(n) for n in _MMMU_IMAGE.findall(question)] or [
                n for n in range(1, 8) if row.get(f"image_{n}")]
            images = [_image_bytes(row.get(f"image_{n}")) for n in order]
            question = _MMMU_IMAGE.sub("<image>", question)
            if "<image>" not in question:
                question = "<image>" * len(images) + question
            multiple = str(row.get("question_type")) == "multiple-choice"
            yield _record("mmmu_hm", question, str(row.get("answer") or ""),
                          "multiple_choice" if multiple else "exact_match", [i for i in images if i],
                          answer_type="closed" if multiple else "open", language="en", options=options or None,
                          question_type=row.get("question_type"), subject=subject)


_ANSWER_CHOICES = re.compile(r"\s*Answer Choices:.*\Z", re.DOTALL)


def read_medxpertqa_mm(source: Path) -> Iterator[dict]:
    """HF ``TsinghuaC3I/MedXpertQA`` config MM: ``MM/test.jsonl`` (options {A..E}, label letter) and ``images/``."""
    with (source / "MM" / "test.jsonl").open(encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            row = json.loads(line)
            options = row.get("options") or {}
            yield _record("medxpertqa_mm", _ANSWER_CHOICES.sub("", str(row.get("question") or "")),
                          str(row.get("label") or ""), "multiple_choice",
                          [str(source / "images" / name) for name in row.get("images") or []],
                          answer_type="closed", language="en", options=[options[k] for k in sorted(options)],
                          question_type=row.get("question_type"), medical_task=row.get("medical_task"))


READERS: dict[str, Callable[[Path], Iterator[dict]]] = {
    "mmmu_hm": read_mmmu_hm,
    "vqa_rad": read_vqa_rad,
    "slake": read_slake,
    "path_vqa": read_path_vqa,
    "pmc_vqa": read_pmc_vqa,
    "omnimedvqa": read_omnimedvqa,
    "medxpertqa_mm": read_medxpertqa_mm,
}
