"""The public medical VQA sets in the layouts their publishers distribute, split by split.

One function per layout turns a publisher's row into a medverl RL record (``question``, ``answer``,
``query_type``, ``options``, ``images``, ``meta``) or raises :class:`Reject` saying why the row does not fit; the
query type follows the question: closed yes/no -> ``yes_no``, lettered options -> ``multiple_choice``, other
closed -> ``exact_match``, open -> ``jaccard``. ``medverl prep slake|vqa_rad|path_vqa|pmc_vqa`` reads the training
splits with them, ``medverl eval prepare`` the test splits.

Layouts (checked against the files on the Hugging Face Hub and the loaders that read them):

- SLAKE, ``BoKelvin/SLAKE``: ``train.json``, ``validation.json`` (``validate.json`` before Feb 2024), ``test.json``:
  JSON arrays of {img_id, img_name, question, answer, q_lang, location, modality, answer_type OPEN|CLOSED,
  base_type, content_type, triple, qid}; ``img_name`` is relative to ``imgs/`` (``imgs.zip``).
- VQA-RAD ``flaviagiammarino/vqa-rad`` and PathVQA ``flaviagiammarino/path-vqa``:
  ``data/{split}-NNNNN-of-NNNNN-*.parquet`` (train, test; PathVQA also validation) with image {bytes, path},
  question, answer.
- PMC-VQA, ``RadGenome/PMC-VQA`` (``xmcmic/PMC-VQA``): ``train_2.csv``/``test_2.csv`` (index, Figure_path, Caption,
  Question, Choice A-D as "A:text", Answer the letter, split) with ``images_2.zip`` unzipped to ``figures/``, or
  the v1 ``train.csv``/``test.csv`` (Figure_path, Question, Answer the text, Choice A-D, Answer_label the letter)
  with ``images.zip`` unzipped to ``images/``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from medverl.data.job import Reject
from medverl.data.records import InputError

YES_NO = frozenset({"yes", "no", "是", "否"})
# "A:", " B: ", "(C)", "D." before an option's text
CHOICE_PREFIX = re.compile(r"^\s*\(?[A-Z]\s*[:.)]\s*")


def split_files(source: Path, patterns: tuple[str, ...], what: str) -> list[Path]:
    """The files of one split under `source` (the first pattern that matches any); raises :class:`InputError`."""
    for pattern in patterns:
        if files := sorted(p for p in source.glob(pattern) if p.is_file()):
            return files
    raise InputError(f"no {what} ({' or '.join(patterns)}) under {source}")


def _string(row: Mapping, key: str, *, required: bool = True) -> str:
    value = row.get(key)
    if value is None or value == "":
        if required:
            raise Reject("missing_field", f"missing or empty field {key!r}; the row has {', '.join(map(str, row))}")
        return ""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise Reject("bad_field", f"field {key!r} must be a string, got {type(value).__name__}")
    return str(value)


def _open_or_closed(answer: str) -> tuple[str, str]:
    """(query_type, answer_type) of a free-form VQA answer: yes/no answers are closed."""
    return ("yes_no", "closed") if answer.strip().lower() in YES_NO else ("jaccard", "open")


def vqa_record(row: Mapping) -> dict:
    """A VQA-RAD or PathVQA row (image {bytes, path}, question, answer) as an RL record; yes/no answers are
    closed, the others open."""
    answer = _string(row, "answer")
    image = row.get("image")
    if not isinstance(image, Mapping) or not image.get("bytes"):
        raise Reject("missing_field", "the row has no image bytes (image must be {bytes, path})")
    query_type, answer_type = _open_or_closed(answer)
    return {"question": _string(row, "question"), "answer": answer, "query_type": query_type,
            "images": [{"bytes": image["bytes"], "path": image.get("path") or ""}],
            "meta": {"answer_type": answer_type, "language": "en"}}


def slake_record(row: Mapping, image_dir: str = "") -> dict:
    """A SLAKE row as an RL record, its image ``image_dir/img_name``; CLOSED answers are ``yes_no`` or
    ``exact_match``, OPEN ones ``jaccard``. English and Chinese questions are both kept."""
    answer = _string(row, "answer")
    kind = _string(row, "answer_type").upper()
    if kind not in ("OPEN", "CLOSED"):
        raise Reject("bad_field", f"answer_type must be OPEN or CLOSED, got {kind[:40]!r}")
    if kind == "CLOSED":
        query_type = "yes_no" if answer.strip().lower() in YES_NO else "exact_match"
    else:
        query_type = "jaccard"
    image = _string(row, "img_name")
    meta = {"answer_type": kind.lower(), "language": _string(row, "q_lang", required=False) or None,
            "modality": _string(row, "modality", required=False) or None,
            "question_type": _string(row, "content_type", required=False) or None}
    return {"question": _string(row, "question"), "answer": answer, "query_type": query_type,
            "images": [f"{image_dir}/{image}" if image_dir else image],
            "meta": {k: v for k, v in meta.items() if v is not None}}


def pmc_vqa_record(row: Mapping, image_dir: str = "") -> dict:
    """A PMC-VQA CSV row (v2 ``*_2.csv`` or v1) as a ``multiple_choice`` RL record with options A-D, the answer a
    letter, its image ``image_dir/Figure_path``."""
    row = {str(k).strip(): v for k, v in row.items() if k is not None}
    raw = [_string(row, f"Choice {letter}") for letter in "ABCD"]
    texts = [CHOICE_PREFIX.sub("", choice).strip() for choice in raw]
    # v1: Answer_label is the letter and Answer the text; v2: Answer is the letter
    answer = _string(row, "Answer_label", required=False).strip() or _string(row, "Answer").strip()
    if len(answer) > 1:
        answer = CHOICE_PREFIX.sub("", answer).strip()
    figure = _string(row, "Figure_path").strip()
    return {"question": _string(row, "Question").strip(), "answer": answer, "query_type": "multiple_choice",
            "options": texts, "images": [f"{image_dir}/{figure}" if image_dir else figure],
            "meta": {"answer_type": "closed", "language": "en"}}
