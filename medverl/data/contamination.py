"""Rows that share an image (SHA-256 of its bytes) or a normalised question with an evaluation set.

``medverl eval decontaminate`` drops them from a prepared directory; ``medverl prep --decontaminate-against``
rejects them as they are converted.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from medverl.data.images import image_digest
from medverl.data.prepared import open_prepared
from medverl.data.schemas import IMAGE_PLACEHOLDER
from medverl.errors import ConfigError
from medverl.rewards import normalize


def question_key(text: str) -> str:
    """A question as compared across sets: placeholders removed, :func:`normalize`-d."""
    return normalize(text.replace(IMAGE_PLACEHOLDER, " "))


def row_questions(row: dict) -> list[str]:
    """A row's question: ``extra_info.question``, else its user turns."""
    info = row.get("extra_info") or {}
    if info.get("question"):
        return [info["question"]]
    messages = row.get("prompt") or row.get("messages") or []
    return [m["content"] for m in messages if m.get("role") == "user"]


def row_images(row: dict) -> list[str]:
    """The SHA-256 of each of a row's images."""
    return [image_digest(image["bytes"]) for image in row.get("images") or [] if image.get("bytes")]


@dataclass(frozen=True)
class EvaluationKeys:
    """What the evaluation sets hold: image digest -> set, question key -> set (the first set that holds it)."""

    images: dict[str, str]
    questions: dict[str, str]

    def matches(self, row: dict) -> list[tuple[str, str]]:
        """``(evaluation set, reason)`` for each of `row`'s images and questions found in a set."""
        found = [(self.images[d], f"contaminated_image: its image is in {self.images[d]}")
                 for d in row_images(row) if d in self.images]
        return found + [(self.questions[k], f"contaminated_question: the question is in {self.questions[k]}")
                        for k in map(question_key, row_questions(row)) if k in self.questions]


def evaluation_keys(against: Sequence[str | Path]) -> EvaluationKeys:
    """The images and questions of prepared RL directories, each named by its rows' ``data_source`` (else the
    directory's name); raises :class:`ConfigError` when they hold no rows."""
    images: dict[str, str] = {}
    questions: dict[str, str] = {}
    for directory in against:
        for row in open_prepared(directory, ("rl",)).rows():
            name = row.get("data_source") or Path(directory).name
            for digest in row_images(row):
                images.setdefault(digest, name)
            for question in row_questions(row):
                if key := question_key(question):
                    questions.setdefault(key, name)
    if not images and not questions:
        raise ConfigError(f"no evaluation rows found in {', '.join(map(str, against))}")
    return EvaluationKeys(images, questions)


@functools.lru_cache(maxsize=4)
def cached_evaluation_keys(against: tuple[str, ...]) -> EvaluationKeys:
    """:func:`evaluation_keys`, read once per process (each worker of a job reads them once)."""
    return evaluation_keys(against)
