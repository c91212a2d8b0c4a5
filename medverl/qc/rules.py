"""The `rules` quality scorer: named CPU checks of a record's images and text, folded into the five dimensions.

Dimensions are scores in [0, 1] (the seeds' five-dimensional assessment). The rules cannot judge medical
correctness, so they leave it None (the judge scores it); each other dimension starts at 1 and every failed check
named below lowers the dimensions it bears on:

| check | what fails it | lowers |
|---|---|---|
| image_unreadable | the image does not decode | relevance, practicality |
| image_small | shortest side under 64 pixels | practicality |
| image_blank | near-uniform (grey-level spread under 3 on a thumbnail) | relevance, practicality |
| image_aspect | longer side over 8x the shorter | practicality |
| image_duplicate | the same image bytes as an earlier record of the job | practicality |
| text_short | under 4 words (2 CJK characters count as a word) | completeness, fluency |
| text_repetitive | under 50% distinct word 3-grams | fluency |
| text_noisy | over 30% of characters neither letters, digits, spaces nor punctuation | fluency |
| text_truncated | it ends in none of . ! ? …, a closing bracket or quote, a closing tag, an ``Answer: X`` line | fluency, completeness |
| report_no_impression | a report with findings but no impression/conclusion | completeness |
| modality_mismatch | a colour modality named (fundus, H&E, dermoscopy) for a greyscale image, or a greyscale one (CT, MRI, X-ray) for a colour image | relevance |

The checks are the entries of :data:`CHECKS`. A package adds a text check with :func:`register` on a function
``fails(text) -> bool``, in a module named by an entry point of group ``medverl.qc_checks``::

    @register("no_laterality", lowers=("completeness",))
    def no_laterality(text: str) -> bool:
        return "left" not in text.lower() and "right" not in text.lower()
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from medverl.data.files import DEFAULT_MAX_IMAGE_BYTES
from medverl.data.images import ImageError, image_digest, load_image
from medverl.data.schemas import QC_DIMENSIONS
from medverl.registry import Registry

DIMENSIONS = QC_DIMENSIONS
PENALTY = 0.5
_WORD = re.compile(r"[^\W\d_]+|\d+", re.UNICODE)
_CJK = re.compile(r"[\u3400-\u9fff]")
# What medical text uses besides letters and digits; any other character counts as noise.
_PUNCTUATION = frozenset(".,;:!?'\"()[]{}-/%°+<>=±×µ·–—…’‘“”。，、；：！？（）【】《》「」")
# Where a text may end: terminal punctuation, a closing bracket or quote, or a closing tag (</answer>, </think>).
_END = re.compile(r"""(?:[.!?。！？…)\]}）】》」』"'”’»]|</[A-Za-z][\w-]*>)\Z""")
# A last line stating the answer ("Answer: B", "Final answer: left lung"), as RL records read for QC end.
_ANSWER_LINE = re.compile(r"(?:\A|\n)[ \t]*(?:final[ \t]+)?answer[ \t]*[:：][ \t]*\S[^\n]*\Z", re.IGNORECASE)
_COLOUR_MODALITIES = re.compile(r"\b(fundus|h\s*&\s*e|hematoxylin|haematoxylin|dermoscop\w*|endoscop\w*|photograph)", re.I)
_GREY_MODALITIES = re.compile(r"\b(ct|computed tomography|mri|magnetic resonance|x-?ray|radiograph\w*|ultrasound)\b", re.I)


@dataclass(frozen=True)
class Check:
    """A named QC check: the dimensions its failure lowers and, for a text check, ``fails(text)``; image checks
    (``fails`` None) are run by :func:`image_checks` and :func:`score_rules`."""

    lowers: tuple[str, ...]
    fails: Callable[[str], bool] | None = None


CHECKS: Registry[Check] = Registry(
    "QC check", "medverl.qc_checks", entry_type=Check,
    how="Add a text check with @medverl.qc.rules.register(name, lowers=...) in a module named by an entry point of "
        "group 'medverl.qc_checks'.",
)


def register(name: str, *, lowers: tuple[str, ...]) -> Callable[[Callable[[str], bool]], Callable[[str], bool]]:
    """Decorator registering ``fails(text) -> bool`` as text check `name`; each failure halves the dimensions
    in `lowers` (any of DIMENSIONS but medical_correctness, which only the judge scores)."""
    wrong = [d for d in lowers if d not in DIMENSIONS or d == "medical_correctness"]
    if not lowers or wrong:
        raise ValueError(f"QC check {name!r} lowers {list(lowers)}; name some of "
                         f"{', '.join(d for d in DIMENSIONS if d != 'medical_correctness')}")

    def decorator(fails: Callable[[str], bool]) -> Callable[[str], bool]:
        CHECKS.add(name, Check(tuple(lowers), fails))
        return fails

    return decorator


# The image checks, run by image_checks and score_rules.
for _name, _lowers in {
    "image_unreadable": ("relevance", "practicality"),
    "image_small": ("practicality",),
    "image_blank": ("relevance", "practicality"),
    "image_aspect": ("practicality",),
    "image_duplicate": ("practicality",),
    "modality_mismatch": ("relevance",),
}.items():
    CHECKS.add(_name, Check(_lowers))


@dataclass
class Checked:
    """One record's rule outcome: dimension scores, the failed checks and a short rationale."""

    scores: dict[str, float | None]
    failed: list[str] = field(default_factory=list)

    @property
    def rationale(self) -> str:
        return "all checks pass" if not self.failed else "failed: " + ", ".join(self.failed)


def _words(text: str) -> list[str]:
    words = _WORD.findall(text.lower())
    cjk = len(_CJK.findall(text))
    return words + ["#"] * (cjk // 2)


@register("text_short", lowers=("completeness", "fluency"))
def text_short(text: str) -> bool:
    """Under 4 words (2 CJK characters count as a word)."""
    return len(_words(text)) < 4


@register("text_repetitive", lowers=("fluency",))
def text_repetitive(text: str) -> bool:
    """Under 50% distinct word 3-grams."""
    words = _words(text)
    grams = list(zip(words, words[1:], words[2:], strict=False))
    return len(grams) >= 6 and len(set(grams)) / len(grams) < 0.5


@register("text_noisy", lowers=("fluency",))
def text_noisy(text: str) -> bool:
    """Over 30% of characters neither letters, digits, spaces nor punctuation."""
    stripped = [c for c in text if not c.isspace()]
    return bool(stripped) and sum(1 for c in stripped if not (c.isalnum() or c in _PUNCTUATION)) / len(stripped) > 0.3


@register("text_truncated", lowers=("fluency", "completeness"))
def text_truncated(text: str) -> bool:
    """The text stops mid-sentence (see the module's table for the endings that count as complete)."""
    text = text.strip()
    return bool(text) and not (_END.search(text) or _ANSWER_LINE.search(text) or _CJK.search(text[-1:]))


@register("report_no_impression", lowers=("completeness",))
def report_no_impression(text: str) -> bool:
    """A report with findings but no impression/conclusion."""
    low = text.lower()
    return "findings" in low and not any(w in low for w in ("impression", "conclusion", "diagnosis"))


def text_checks(text: str) -> list[str]:
    """The text checks `text` fails, in name order (plugins' included)."""
    return [name for name, check in CHECKS.items() if check.fails is not None and check.fails(text)]


@dataclass
class ImageFacts:
    """What the image checks saw: the failures, whether it is greyscale, a small JPEG thumbnail, the image bytes
    and their SHA-256 (empty when it does not decode)."""

    failed: list[str]
    grey: bool | None
    thumbnail: bytes
    data: bytes = b""
    digest: str = ""


def image_checks(reference: object, image_root, max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES) -> ImageFacts:
    """The image checks one image reference fails (all but ``image_duplicate``: see :func:`mark_duplicates`).

    `image_root` confines image paths as in ``medverl prep`` (see :mod:`medverl.data.files`)."""
    try:
        loaded = load_image(reference, image_root, max_image_bytes=max_image_bytes)
    except ImageError:
        return ImageFacts(["image_unreadable"], None, b"")
    failed = []
    digest = image_digest(loaded.data)
    if min(loaded.width, loaded.height) < 64:
        failed.append("image_small")
    if max(loaded.width, loaded.height) > 8 * min(loaded.width, loaded.height):
        failed.append("image_aspect")
    image = Image.open(io.BytesIO(loaded.data))
    image.draft("RGB", (128, 128))  # JPEG decodes at a fraction of its size
    image.thumbnail((128, 128), Image.Resampling.BILINEAR, reducing_gap=2.0)
    thumb = image.convert("RGB")
    pixels = np.asarray(thumb, dtype=np.float32)
    if float(pixels.mean(axis=2).std()) < 3.0:
        failed.append("image_blank")
    grey = float(np.abs(pixels - pixels.mean(axis=2, keepdims=True)).mean()) < 4.0
    buffer = io.BytesIO()
    thumb.save(buffer, format="JPEG", quality=80)  # for the report: JPEG encodes noisy scans 10x faster than PNG
    return ImageFacts(failed, grey, buffer.getvalue(), loaded.data, digest)


def mark_duplicates(facts: list[ImageFacts], seen: set[str]) -> None:
    """Fail ``image_duplicate`` for images whose content hash is in `seen` (earlier records), then add theirs."""
    for fact in facts:
        if fact.digest and fact.digest in seen:
            fact.failed.append("image_duplicate")
        seen.add(fact.digest)
    seen.discard("")


def score_rules(text: str, image_facts: list[ImageFacts]) -> Checked:
    """Fold the failed checks of a record's text and images into the five dimensions."""
    failed = [c for facts in image_facts for c in facts.failed] + text_checks(text)
    greys = [f.grey for f in image_facts if f.grey is not None]
    if greys and all(greys) and _COLOUR_MODALITIES.search(text):
        failed.append("modality_mismatch")
    elif greys and not any(greys) and _GREY_MODALITIES.search(text):
        failed.append("modality_mismatch")
    failed = list(dict.fromkeys(failed))
    scores: dict[str, float | None] = {d: 1.0 for d in DIMENSIONS}
    scores["medical_correctness"] = None
    for check in failed:
        for dimension in CHECKS.get(check).lowers:
            scores[dimension] = scores[dimension] * PENALTY
    return Checked(scores, failed)
