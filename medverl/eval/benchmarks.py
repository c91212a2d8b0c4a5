"""The seed's evaluation benchmarks, read from their public distributions into medverl RL records.

Each reader yields one item per question, in the distribution's order: a record (``question``, ``answer``,
``query_type`` (closed yes/no -> ``yes_no``, multiple choice -> ``multiple_choice``, other closed ->
``exact_match``, open -> ``jaccard``), ``options``, images (paths relative to the distribution's directory, or
{bytes, path}), ``data_source`` (the benchmark) and ``meta`` (answer type, language, question type, modality, and
MedEvalKit's own view of the question under ``medevalkit``, which ``eval score --compat medevalkit`` scores by)),
or a :class:`~medverl.data.job.Reject` for a row that does not fit its layout, with the reason and the row's place
in its file. The RL converter rejects what is left to reject (missing images, empty answers). Each reader reads the
files MedEvalKit's loader for that benchmark reads (cited per reader); VQA-RAD, PathVQA, SLAKE and PMC-VQA share
their layouts with ``medverl prep`` (:mod:`medverl.data.public`).

Readers are the entries of :data:`READERS`; a package adds a benchmark (a private test set, say) with
``@READERS.register(name)`` on a reader ``read(source: Path, options: ReadOptions) -> Iterator[dict | Reject]``, in
a module named by an entry point of group ``medverl.benchmarks`` (or naming the reader itself), and
``medverl eval prepare NAME`` reads it.
"""

from __future__ import annotations

import ast
import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from medverl.data.files import DEFAULT_MAX_IMAGE_BYTES
from medverl.data.job import Reject
from medverl.data.public import pmc_vqa_record, slake_record, split_files, vqa_record
from medverl.data.records import InputError, iter_records
from medverl.data.schemas import IMAGE_PLACEHOLDER
from medverl.registry import Registry
from medverl.rewards.choice import LETTERS

logger = logging.getLogger(__name__)

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

# Questions each published number was measured on (the test sets as distributed; OmniMedVQA's is not recorded):
# a run scored on fewer is a sample, and its difference from the published number means nothing.
PUBLISHED_SIZES = {"mmmu_hm": 150, "vqa_rad": 451, "slake": 2094, "path_vqa": 6719, "pmc_vqa": 2000,
                   "medxpertqa_mm": 2000}


@dataclass(frozen=True)
class ReadOptions:
    """What to read of a distribution: OmniMedVQA's restricted part (its images are not distributed), the
    MMMU split (``validation`` as the seed's table; ``dev``; ``test`` has no public answers), and the largest
    image cell read out of a parquet file (larger ones are rejected ``image_too_large`` unread)."""

    include_restricted: bool = False
    split: str = "validation"
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES


Reader = Callable[[Path, ReadOptions], Iterator[dict | Reject]]
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


def _for_eval(record: dict, benchmark: str, medevalkit: dict) -> dict:
    """A record of :mod:`medverl.data.public` as this benchmark's question, with MedEvalKit's view of it."""
    return {**record, "data_source": benchmark, "split": "test", "meta": {**record["meta"], "medevalkit": medevalkit}}


def _rows(path: Path, options: ReadOptions, make: Callable[[dict], dict]) -> Iterator[dict | Reject]:
    """`make` of each row of one distribution file; a row that cannot be read, is not an object or does not fit
    (`make` raises :class:`Reject`) is a reject naming its place in the file."""
    for row in iter_records(path, options.max_image_bytes):
        try:
            if row.error:
                raise Reject(row.code, row.error)
            if not isinstance(row.data, dict):
                raise Reject("not_an_object", f"a row must be an object, got {type(row.data).__name__}")
            yield make(row.data)
        except Reject as exc:
            yield row.rejected(exc.code, f"{row.source}: {exc.reason}")
        except Exception as exc:  # a row no check foresaw costs that row, not the benchmark
            logger.warning("%s: unexpected error reading the row: %r", row.source, exc)
            yield row.rejected("internal_error", f"{row.source}: {type(exc).__name__}: {exc} (a bug: please "
                               "report it with this row)")


def _image_cell(value: object) -> dict | None:
    """A Hugging Face image cell ({bytes, path}) as an image reference, None when it holds no bytes."""
    if isinstance(value, dict) and value.get("bytes"):
        return {"bytes": value["bytes"], "path": value.get("path") or ""}
    return None


@READERS.register("vqa_rad")
def read_vqa_rad(
    source: Path, options: ReadOptions = ReadOptions(), benchmark: str = "vqa_rad",
) -> Iterator[dict | Reject]:
    """HF ``flaviagiammarino/vqa-rad``: ``data/test-*.parquet`` with image {bytes, path}, question, answer
    (MedEvalKit utils/VQA_RAD/VQA_RAD.py ``load_data``: ``load_dataset(path, split="test")``)."""
    def make(row: dict) -> dict:
        record = vqa_record(row)
        return _for_eval(record, benchmark, {"flow": "vqa", "answer": record["answer"]})

    for path in split_files(source, ("**/test-*.parquet",), f"{benchmark} test split"):
        yield from _rows(path, options, make)


@READERS.register("path_vqa")
def read_path_vqa(source: Path, options: ReadOptions = ReadOptions()) -> Iterator[dict | Reject]:
    """HF ``flaviagiammarino/path-vqa``: the same layout as VQA-RAD (utils/PATH_VQA/PATH_VQA.py)."""
    return read_vqa_rad(source, options, "path_vqa")


@READERS.register("slake")
def read_slake(source: Path, options: ReadOptions = ReadOptions()) -> Iterator[dict | Reject]:
    """HF ``BoKelvin/SLAKE``: ``test.json`` (English and Chinese, both kept as MedEvalKit keeps them) and
    ``imgs/`` from imgs.zip (utils/SLAKE/SLAKE.py ``load_data``)."""
    def make(row: dict) -> dict:
        record = slake_record(row, "imgs")
        return _for_eval(record, "slake", {"flow": "slake", "answer": record["answer"],
                                           "answer_type": row.get("answer_type")})

    for path in split_files(source, ("test.json",), "SLAKE test file"):
        yield from _rows(path, options, make)


@READERS.register("pmc_vqa")
def read_pmc_vqa(source: Path, options: ReadOptions = ReadOptions()) -> Iterator[dict | Reject]:
    """HF ``RadGenome/PMC-VQA``: ``test_2.csv`` (index, Figure_path, Caption, Question, Choice A-D as
    " B: text ", Answer the letter, split), or the v1 ``test.csv`` (Answer the text, Answer_label the letter);
    images in ``figures/``, else ``images/`` (utils/PMC_VQA/PMC_VQA.py ``load_data`` and ``construct_messages``)."""
    def make(row: dict) -> dict:
        row = {str(k).strip(): v for k, v in row.items()}
        figure = str(row.get("Figure_path") or "").strip()
        folder = "figures" if (source / "figures" / figure).is_file() else "images"
        return _for_eval(pmc_vqa_record(row, folder), "pmc_vqa", {
            "flow": "multi_choice", "answer": row.get("Answer_label") or row.get("Answer"),
            "choices": [str(row.get(f"Choice {letter}") or "") for letter in "ABCD"]})

    table = split_files(source, ("test_2.csv", "test.csv"), "PMC-VQA test file")[0]
    yield from _rows(table, options, make)


@READERS.register("omnimedvqa")
def read_omnimedvqa(source: Path, options: ReadOptions = ReadOptions()) -> Iterator[dict | Reject]:
    """HF ``foreverbeliever/OmniMedVQA``: ``QA_information/Open-access/*.json`` (gt_answer is the option TEXT),
    images by ``image_path`` relative to the root (utils/OmniMedVQA/OmniMedVQA.py ``load_data``). The
    ``Restricted-access`` part, whose images are not distributed, is read only with ``include_restricted``. The
    modality is under ``modality_type`` or, in some files, ``modality``."""
    parts = ("Open-access", "Restricted-access") if options.include_restricted else ("Open-access",)
    files = sorted(f for part in parts for f in (source / "QA_information" / part).glob("*.json"))
    if not files:
        raise InputError(f"no QA_information/{{{','.join(parts)}}}/*.json under {source}")
    for path in files:
        yield from _rows(path, options, lambda row, access=path.parent.name: _omnimedvqa(row, access))


def _omnimedvqa(row: dict, access: str) -> dict:
    letters = [letter for letter in "ABCD" if f"option_{letter}" in row]
    texts = [str(row[f"option_{letter}"]) for letter in letters]
    gold = str(row.get("gt_answer") or "")
    # the harness takes the LAST option equal to gt_answer, and keeps the text when none is
    harness_answer = next((letter for letter, text in reversed(list(zip(letters, texts, strict=True)))
                           if text == gold), gold)
    letter = next((LETTERS[i] for i, o in enumerate(texts) if o.strip() == gold.strip()), gold)
    return _record("omnimedvqa", str(row.get("question") or ""), letter, "multiple_choice",
                   [str(row["image_path"])] if row.get("image_path") else [],
                   answer_type="closed", language="en", options=texts,
                   question_type=row.get("question_type"),
                   modality=row.get("modality_type", row.get("modality")), dataset=row.get("dataset"),
                   access=access,
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


def _mmmu_options(value: object) -> list[str]:
    """MMMU's ``options``, the string of a Python list, as a list of strings; raises :class:`Reject`."""
    if value is None or value == "":
        return []
    try:
        parsed = ast.literal_eval(value) if isinstance(value, str) else value
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError) as exc:
        raise Reject("bad_field", f"options do not parse as a Python list: {type(exc).__name__}") from None
    if not isinstance(parsed, list | tuple):
        raise Reject("bad_field", f"options must be a list, got {type(parsed).__name__}")
    return [str(o) for o in parsed]


def _mmmu(row: dict, subject: str) -> dict:
    raw_options = _mmmu_options(row.get("options"))
    order, question, shown = _mmmu_images(str(row.get("question") or ""), raw_options)
    if not order:
        order = [n for n in range(1, 8) if row.get(f"image_{n}")]
    images = [_image_cell(row.get(f"image_{n}")) for n in order]
    if IMAGE_PLACEHOLDER not in question:
        question = IMAGE_PLACEHOLDER * len(images) + question
    multiple = str(row.get("question_type")) == "multiple-choice"
    answer = str(row.get("answer") or "")
    return _record("mmmu_hm", question, answer, "multiple_choice" if multiple else "exact_match",
                   [i for i in images if i], answer_type="closed" if multiple else "open", language="en",
                   options=shown or None, question_type=row.get("question_type"), subject=subject,
                   id=row.get("id"), image_options=any(_MMMU_IMAGE.search(o) for o in raw_options) or None,
                   medevalkit={"flow": "mmmu", "answer": answer, "choices": raw_options,
                               "question_type": row.get("question_type")})


@READERS.register("mmmu_hm")
def read_mmmu_hm(source: Path, options: ReadOptions = ReadOptions()) -> Iterator[dict | Reject]:
    """HF ``MMMU/MMMU``, the five Health & Medicine subjects: ``SUBJECT/{split}-*.parquet`` (options is the
    string of a Python list, images in image_1..image_7, referenced as <image N>), subjects in MedEvalKit's order
    (utils/MMMU/eval_val.py ``eval_MMMU_val``, utils/MMMU/data_utils.py ``DOMAIN_CAT2SUB_CAT``)."""
    if options.split not in MMMU_SPLITS:
        raise ValueError(f"unknown MMMU split {options.split!r}; known: {', '.join(MMMU_SPLITS)}")
    subjects = [s for s in MMMU_SUBJECTS if any((source / s).glob(f"{options.split}-*.parquet"))]
    if not subjects:
        raise InputError(f"no {options.split}-*.parquet in any of the MMMU subject directories "
                         f"{', '.join(MMMU_SUBJECTS)} under {source}")
    for subject in subjects:
        for path in split_files(source / subject, (f"{options.split}-*.parquet",), f"MMMU {subject}"):
            yield from _rows(path, options, lambda row, subject=subject: _mmmu(row, subject))


_ANSWER_CHOICES = re.compile(r"\s*Answer Choices:.*\Z", re.DOTALL)


def _medxpertqa(row: dict) -> dict:
    choices = row.get("options") or {}
    if not isinstance(choices, dict) or not all(isinstance(v, str) for v in choices.values()):
        raise Reject("bad_field", "options must be an object of letter -> option text")
    images = row.get("images") or []
    if not isinstance(images, list) or not all(isinstance(name, str) for name in images):
        raise Reject("bad_field", "images must be a list of file names under images/")
    return _record("medxpertqa_mm", _ANSWER_CHOICES.sub("", str(row.get("question") or "")),
                   str(row.get("label") or ""), "multiple_choice", [f"images/{name}" for name in images],
                   answer_type="closed", language="en", options=[choices[k] for k in sorted(choices)],
                   question_type=row.get("question_type"), medical_task=row.get("medical_task"),
                   medevalkit={"flow": "multi_choice_tagged", "answer": row.get("label"),
                               "choices": [f"{k}. {t}" for k, t in choices.items()]})


@READERS.register("medxpertqa_mm")
def read_medxpertqa_mm(source: Path, options: ReadOptions = ReadOptions()) -> Iterator[dict | Reject]:
    """HF ``TsinghuaC3I/MedXpertQA`` config MM: ``MM/test.jsonl`` (options {A..E}, label letter) and
    ``images/`` (utils/MedXpertQA/MedXpertQA.py ``load_data`` and ``construct_messages``)."""
    for path in split_files(source, ("MM/test.jsonl",), "MedXpertQA MM test file"):
        yield from _rows(path, options, _medxpertqa)
