"""The seed's evaluation benchmarks, read from their public distributions into medverl RL records.

Each reader yields one record per question, in the distribution's order: ``question``, ``answer``, ``query_type``
(closed yes/no -> ``yes_no``, multiple choice -> ``multiple_choice``, other closed -> ``exact_match``, open ->
``jaccard``), ``options``, images (paths or base64), ``data_source`` (the benchmark) and ``meta`` (answer type,
language, question type, modality, and MedEvalKit's own view of the question under ``medevalkit``, which
``eval score --compat medevalkit`` scores by). Bad rows are not dropped here: the RL converter rejects them with
a reason. Each reader reads the files MedEvalKit's loader for that benchmark reads (cited per reader).

Readers are the entries of :data:`READERS`; a package adds a benchmark (a private test set, say) with
``@READERS.register(name)`` on a reader ``read(source: Path, options: ReadOptions) -> Iterator[dict]``, in a
module named by an entry point of group ``medverl.benchmarks`` (or naming the reader itself), and
``medverl eval prepare NAME`` reads it.
"""

from __future__ import annotations

import ast
import base64
import csv
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

from medverl.data.schemas import IMAGE_PLACEHOLDER
from medverl.registry import Registry
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
MMMU_SPLITS = ("validation", "dev", "test")
# The seed's table as published (accuracy %, measured with MedEvalKit), shown beside a user's runs in the report.
PUBLISHED = {
    "Qwen3-VL-4B": {"mmmu_hm": 50.7, "vqa_rad": 59.2, "slake": 71.9, "path_vqa": 42.3, "pmc_vqa": 50.7,
                    "omnimedvqa": 78.0, "medxpertqa_mm": 22.8},
    "InfiMed2-4B": {"mmmu_hm": 52.3, "vqa_rad": 62.1, "slake": 82.8, "path_vqa": 62.1, "pmc_vqa": 59.4,
                    "omnimedvqa": 83.0, "medxpertqa_mm": 23.1},
}


@dataclass(frozen=True)
class ReadOptions:
    """What to read of a distribution: OmniMedVQA's restricted part (its images are not distributed) and the
    MMMU split (``validation`` as the seed's table; ``dev``; ``test`` has no public answers)."""

    include_restricted: bool = False
    split: str = "validation"


Reader = Callable[[Path, ReadOptions], Iterator[dict]]
READERS: Registry[Reader] = Registry(
    "benchmark", "medverl.benchmarks",
    how="Add one with @medverl.eval.benchmarks.READERS.register(name) on a reader, or an entry point of group "
        "'medverl.benchmarks'.",
)


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


@READERS.register("vqa_rad")
def read_vqa_rad(source: Path, options: ReadOptions = ReadOptions(), benchmark: str = "vqa_rad") -> Iterator[dict]:
    """HF ``flaviagiammarino/vqa-rad``: ``data/test-*.parquet`` with image {bytes, path}, question, answer
    (MedEvalKit utils/VQA_RAD/VQA_RAD.py ``load_data``: ``load_dataset(path, split="test")``)."""
    for row in _parquet_rows(source, "**/test-*.parquet"):
        answer = str(row.get("answer") or "")
        query_type, answer_type = _open_or_closed(answer)
        yield _record(benchmark, str(row.get("question") or ""), answer, query_type,
                      [x for x in [_image_bytes(row.get("image"))] if x], answer_type=answer_type, language="en",
                      medevalkit={"flow": "vqa", "answer": answer})


@READERS.register("path_vqa")
def read_path_vqa(source: Path, options: ReadOptions = ReadOptions()) -> Iterator[dict]:
    """HF ``flaviagiammarino/path-vqa``: the same layout as VQA-RAD (utils/PATH_VQA/PATH_VQA.py)."""
    return read_vqa_rad(source, options, "path_vqa")


@READERS.register("slake")
def read_slake(source: Path, options: ReadOptions = ReadOptions()) -> Iterator[dict]:
    """HF ``BoKelvin/SLAKE``: ``test.json`` (English and Chinese, both kept as MedEvalKit keeps them) and
    ``imgs/`` from imgs.zip (utils/SLAKE/SLAKE.py ``load_data``)."""
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
                      modality=row.get("modality"), question_type=row.get("content_type"),
                      medevalkit={"flow": "slake", "answer": answer, "answer_type": row.get("answer_type")})


_CHOICE_PREFIX = re.compile(r"^\s*\(?[A-Z]\s*[:.)]\s*")


def _first_existing(source: Path, names: tuple[str, ...], what: str) -> Path:
    for name in names:
        if (source / name).exists():
            return source / name
    raise FileNotFoundError(f"no {what} ({' or '.join(names)}) under {source}")


@READERS.register("pmc_vqa")
def read_pmc_vqa(source: Path, options: ReadOptions = ReadOptions()) -> Iterator[dict]:
    """HF ``RadGenome/PMC-VQA``: ``test_2.csv`` (index, Figure_path, Caption, Question, Choice A-D as
    " B: text ", Answer the letter, split), or the v1 ``test.csv`` (Answer the text, Answer_label the letter);
    images in ``figures/``, else ``images/`` (utils/PMC_VQA/PMC_VQA.py ``load_data`` and ``construct_messages``)."""
    table = _first_existing(source, ("test_2.csv", "test.csv"), "PMC-VQA test file")
    with table.open(newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            row = {k.strip(): (v or "") for k, v in row.items() if k}
            raw = [row.get(f"Choice {letter}", "") for letter in "ABCD"]
            texts = [_CHOICE_PREFIX.sub("", choice).strip() for choice in raw]
            # v1: Answer_label is the letter; test_2: Answer is the letter (a text answer is matched to its option)
            answer = row.get("Answer_label", "").strip() or row.get("Answer", "").strip()
            if len(answer) > 1:
                answer = _CHOICE_PREFIX.sub("", answer).strip()
            figure = row.get("Figure_path", "").strip()
            image = source / "figures" / figure
            if not image.exists():
                image = source / "images" / figure
            yield _record("pmc_vqa", row.get("Question", "").strip(), answer, "multiple_choice",
                          [str(image)] if figure else [], answer_type="closed", language="en", options=texts,
                          medevalkit={"flow": "multi_choice", "answer": row.get("Answer_label") or row.get("Answer"),
                                      "choices": raw})


@READERS.register("omnimedvqa")
def read_omnimedvqa(source: Path, options: ReadOptions = ReadOptions()) -> Iterator[dict]:
    """HF ``foreverbeliever/OmniMedVQA``: ``QA_information/Open-access/*.json`` (gt_answer is the option TEXT),
    images by ``image_path`` relative to the root (utils/OmniMedVQA/OmniMedVQA.py ``load_data``). The
    ``Restricted-access`` part, whose images are not distributed, is read only with ``include_restricted``. The
    modality is under ``modality_type`` or, in some files, ``modality``."""
    parts = ("Open-access", "Restricted-access") if options.include_restricted else ("Open-access",)
    files = sorted(f for part in parts for f in (source / "QA_information" / part).glob("*.json"))
    if not files:
        raise FileNotFoundError(f"no QA_information/{{{','.join(parts)}}}/*.json under {source}")
    for path in files:
        for row in json.loads(path.read_text(encoding="utf-8")):
            letters = [letter for letter in "ABCD" if f"option_{letter}" in row]
            texts = [str(row[f"option_{letter}"]) for letter in letters]
            gold = str(row.get("gt_answer") or "")
            # the harness takes the LAST option equal to gt_answer, and keeps the text when none is
            harness_answer = next((letter for letter, text in reversed(list(zip(letters, texts, strict=True)))
                                   if text == gold), gold)
            letter = next((LETTERS[i] for i, o in enumerate(texts) if o.strip() == gold.strip()), gold)
            yield _record("omnimedvqa", str(row.get("question") or ""), letter, "multiple_choice",
                          [str(source / row["image_path"])] if row.get("image_path") else [],
                          answer_type="closed", language="en", options=texts,
                          question_type=row.get("question_type"),
                          modality=row.get("modality_type", row.get("modality")), dataset=row.get("dataset"),
                          access=path.parent.name,
                          medevalkit={"flow": "multi_choice_tagged", "answer": harness_answer,
                                      "choices": [f"{k}. {t}" for k, t in zip(letters, texts, strict=True)]})


_MMMU_IMAGE = re.compile(r"<image (\d)>")


def _mmmu_images(question: str, options: list[str]) -> tuple[list[int], str, list[str]]:
    """(image numbers, question, options) with the images placed for the model.

    Question-only references become ``<image>`` where they stand. When an option is an image (``'<image 2>'``),
    MedEvalKit shows the model only image_1 (utils/MMMU/data_utils.py ``process_single_sample``), so such a
    question cannot be answered; medverl shows every referenced image, each announced as "Image N:" before the
    question, and writes "Image N" in the question and the options.
    """
    if not any(_MMMU_IMAGE.search(o) for o in options):
        order = [int(n) for n in _MMMU_IMAGE.findall(question)]
        return order, _MMMU_IMAGE.sub(IMAGE_PLACEHOLDER, question), options
    order = sorted({int(n) for text in (question, *options) for n in _MMMU_IMAGE.findall(text)})
    def name(text: str) -> str:
        return _MMMU_IMAGE.sub(lambda m: f"Image {m.group(1)}", text)
    header = "".join(f"Image {n}: {IMAGE_PLACEHOLDER}\n" for n in order)
    return order, header + name(question), [name(o) for o in options]


@READERS.register("mmmu_hm")
def read_mmmu_hm(source: Path, options: ReadOptions = ReadOptions()) -> Iterator[dict]:
    """HF ``MMMU/MMMU``, the five Health & Medicine subjects: ``SUBJECT/{split}-*.parquet`` (options is the
    string of a Python list, images in image_1..image_7, referenced as <image N>), subjects in MedEvalKit's order
    (utils/MMMU/eval_val.py ``eval_MMMU_val``, utils/MMMU/data_utils.py ``DOMAIN_CAT2SUB_CAT``)."""
    if options.split not in MMMU_SPLITS:
        raise ValueError(f"unknown MMMU split {options.split!r}; known: {', '.join(MMMU_SPLITS)}")
    subjects = [s for s in MMMU_SUBJECTS if any((source / s).glob(f"{options.split}-*.parquet"))]
    if not subjects:
        raise FileNotFoundError(f"no {options.split}-*.parquet in any of the MMMU subject directories "
                                f"{', '.join(MMMU_SUBJECTS)} under {source}")
    for subject in subjects:
        for row in _parquet_rows(source / subject, f"{options.split}-*.parquet"):
            raw_options = [str(o) for o in ast.literal_eval(row["options"])] if row.get("options") else []
            order, question, shown = _mmmu_images(str(row.get("question") or ""), raw_options)
            if not order:
                order = [n for n in range(1, 8) if row.get(f"image_{n}")]
            images = [_image_bytes(row.get(f"image_{n}")) for n in order]
            if IMAGE_PLACEHOLDER not in question:
                question = IMAGE_PLACEHOLDER * len(images) + question
            multiple = str(row.get("question_type")) == "multiple-choice"
            answer = str(row.get("answer") or "")
            yield _record("mmmu_hm", question, answer, "multiple_choice" if multiple else "exact_match",
                          [i for i in images if i], answer_type="closed" if multiple else "open", language="en",
                          options=shown or None, question_type=row.get("question_type"), subject=subject,
                          id=row.get("id"), image_options=any(_MMMU_IMAGE.search(o) for o in raw_options) or None,
                          medevalkit={"flow": "mmmu", "answer": answer, "choices": raw_options,
                                      "question_type": row.get("question_type")})


_ANSWER_CHOICES = re.compile(r"\s*Answer Choices:.*\Z", re.DOTALL)


@READERS.register("medxpertqa_mm")
def read_medxpertqa_mm(source: Path, options: ReadOptions = ReadOptions()) -> Iterator[dict]:
    """HF ``TsinghuaC3I/MedXpertQA`` config MM: ``MM/test.jsonl`` (options {A..E}, label letter) and
    ``images/`` (utils/MedXpertQA/MedXpertQA.py ``load_data`` and ``construct_messages``)."""
    with _first_existing(source, ("MM/test.jsonl",), "MedXpertQA MM test file").open(encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            row = json.loads(line)
            choices = row.get("options") or {}
            yield _record("medxpertqa_mm", _ANSWER_CHOICES.sub("", str(row.get("question") or "")),
                          str(row.get("label") or ""), "multiple_choice",
                          [str(source / "images" / name) for name in row.get("images") or []],
                          answer_type="closed", language="en", options=[choices[k] for k in sorted(choices)],
                          question_type=row.get("question_type"), medical_task=row.get("medical_task"),
                          medevalkit={"flow": "multi_choice_tagged", "answer": row.get("label"),
                                      "choices": [f"{k}. {t}" for k, t in choices.items()]})

