"""Text normalisation shared by every reward: NFKC, case-fold, whitespace, surrounding punctuation."""

from __future__ import annotations

import functools
import re
import unicodedata

# Characters that carry no meaning at the edge of an answer. Deliberately excludes signs that change a
# medical answer ("+", "-", "%", "/", "<", ">", "°"): "HER2+" and "HER2-" must stay different.
_EDGE_PUNCTUATION = (
    " \t\n\r\f\v"
    ".,;:!?'\"`()[]*_~$"
    "\u3002\uff0c\u3001\uff1b\uff1a\uff01\uff1f"  # 。，、；：！？
    "\u201c\u201d\u2018\u2019\u300c\u300d\u300e\u300f\u3010\u3011\u300a\u300b\uff08\uff09"  # “”‘’「」『』【】《》（）
    "\u2026\u00b7"  # … ·
)
# Invisible format characters a model can emit around an answer (zero-width space/joiners, BOM, soft hyphen).
_INVISIBLE_CHARS = "\u200b\u200c\u200d\u2060\ufeff\u00ad"
STRIP_CHARS = _EDGE_PUNCTUATION + _INVISIBLE_CHARS
_NOT_BLANK = re.compile("[^\\s\u200b\u200c\u200d\u2060\ufeff\u00ad]")
# Unicode's stream-safe text format: at most 30 combining marks in a row. Longer runs (never seen in real text)
# make NFKC's canonical reordering quadratic.
_MAX_COMBINING_RUN = 30
# NFKC can expand a character 18-fold (U+FDFA); text that grows more than this is cut, bounding the work on it.
_MAX_EXPANSION = 3

# Han ideographs (with extension A and compatibility), kana and Hangul syllables: one token per character.
_CJK_RANGES = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3040-\u309f\u30a0-\u30ff\uac00-\ud7af"


def normalize(text: str) -> str:
    """Return `text` in NFKC, case-folded, with whitespace collapsed and edge punctuation stripped.

    >>> normalize("  **Pleural  Effusion.** ")
    'pleural effusion'
    """
    if not text.isascii():
        text = _combining_runs().sub(lambda m: m.group()[:_MAX_COMBINING_RUN], text)
        limit = _MAX_EXPANSION * len(text) + 64
        text = unicodedata.normalize("NFKC", text)[:limit]
        for char in _INVISIBLE_CHARS:  # str.replace: translate() with a dict is slow on long non-ASCII text
            if char in text:
                text = text.replace(char, "")
    return " ".join(text.casefold().split()).strip(STRIP_CHARS)


def is_blank(text: str) -> bool:
    """True when `text` holds nothing but whitespace and invisible format characters (stops at the first other)."""
    return _NOT_BLANK.search(text) is None


@functools.cache
def _combining_runs() -> re.Pattern[str]:
    # Built on first use: every character with a non-zero canonical combining class.
    marks = "".join(re.escape(chr(cp)) for cp in range(0x110000) if unicodedata.combining(chr(cp)))
    return re.compile(f"[{marks}]{{{_MAX_COMBINING_RUN + 1},}}")


@functools.cache
def _token_pattern() -> re.Pattern[str]:
    # Built on first use (~20 ms): every Unicode punctuation character (categories P*) of the Basic Multilingual
    # Plane, which holds all the punctuation medical text uses.
    punct = "".join(re.escape(chr(cp)) for cp in range(0x10000) if unicodedata.category(chr(cp)).startswith("P"))
    return re.compile(rf"[{_CJK_RANGES}]|[^\s{punct}{_CJK_RANGES}]+")


def tokens(text: str) -> frozenset[str]:
    """Token set of `text` after :func:`normalize` (see :func:`normalized_tokens`).

    >>> sorted(tokens("Left lower-lobe pneumonia."))
    ['left', 'lobe', 'lower', 'pneumonia']
    >>> sorted(tokens("右肺炎"))
    ['右', '炎', '肺']
    """
    return normalized_tokens(normalize(text))


def normalized_tokens(normalized: str) -> frozenset[str]:
    """Token set of text already :func:`normalize`-d: punctuation removed, each CJK character one token."""
    return frozenset(token_sequence(normalized))


def token_sequence(normalized: str) -> list[str]:
    """The tokens of :func:`normalized_tokens` in order, repeats kept (for ROUGE and BLEU).

    >>> token_sequence(normalize("The left lung, the LEFT lobe."))
    ['the', 'left', 'lung', 'the', 'left', 'lobe']
    """
    return _token_pattern().findall(normalized)
