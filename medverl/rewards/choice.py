"""`multiple_choice`: exact match of one option letter (seed, Algorithm 1). It never guesses."""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import NamedTuple

from medverl.rewards.registry import InvalidReference, Verdict, register
from medverl.rewards.text import STRIP_CHARS, normalize

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"

# Tried in this order on the normalised answer (case-folded, so letters are lower case here).
# 1. A lead-in the model wrote before the choice: "answer:", "the correct answer is", "option", "choice".
_LEAD_IN = re.compile(
    r"(?:(?:so|thus|therefore|hence)\s*,?\s+)?(?:the\s+)?(?:(?:correct|final|best|right)\s+)?"
    r"(?:answer|option|choice)\b(?:\s+is\b)?\s*[:=]?\s*"
)
# 2. A LaTeX wrapper around the whole answer: \boxed{B}, \text{B}.
_WRAPPER = re.compile(r"\\(?:boxed|text|textbf|mathrm|mathbf)\s*\{(.*)\}", re.DOTALL)
# 3. The letter alone, or a letter, a delimiter and the option text: "b", "b.", "b)", "b: pneumonia".
_LETTER = re.compile(r"([a-z])")
_LETTER_TEXT = re.compile(r"([a-z])(?:\s*[.):]|\s+[-\u2013\u2014])\s*(.+)", re.DOTALL)
_LEADING_LETTER = re.compile(r"([a-z])(?=$|[\s,/&;])")
# A second option joined by a conjunction or separator: "b or c", "b, c", "b/c", "b and (c)". Single spaces
# only: it runs on normalised text, and unbounded "\s*" before a separator would backtrack quadratically.
_HEDGE = re.compile(r"(?:(?:^|[\s(])(?:or|and|vs\.?|versus)\s|\s?[,/&;]\s?)\(?([a-z])\)?(?=$|[\s.,):;/&])")


class Choice(NamedTuple):
    """A parsed multiple-choice answer: `letter` (upper case) or the `reason` there is none."""

    letter: str = ""
    reason: str = ""


def parse_options(options: object) -> tuple[str, ...]:
    """Option texts in letter order from a list, a numpy array or its JSON string; () when absent.

    >>> parse_options('["Edema", "Pneumonia"]')
    ('Edema', 'Pneumonia')
    """
    if options is None:
        return ()
    if isinstance(options, str):
        return _parse_options_json(options)
    if isinstance(options, Mapping) or not isinstance(options, Iterable):
        raise InvalidReference(f"options must be a list of option texts, got {type(options).__name__}")
    return tuple(map(str, options))


@functools.lru_cache(maxsize=4096)
def _parse_options_json(options: str) -> tuple[str, ...]:
    if not options.strip():
        return ()
    try:
        parsed = json.loads(options)
    except (ValueError, RecursionError) as exc:
        raise InvalidReference(f"options {options[:80]!r} is not a JSON list of option texts") from exc
    if not isinstance(parsed, list):
        raise InvalidReference(f"options {options[:80]!r} is not a JSON list of option texts")
    return tuple(str(o) for o in parsed)


@functools.lru_cache(maxsize=4096)
def _normalized_options(options: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(normalize(o) for o in options)


def _letter_of_text(text: str, options: tuple[str, ...]) -> str | None:
    """The single option whose text equals normalised `text`; None when none or several do."""
    hits = [i for i, o in enumerate(_normalized_options(options)) if o == text]
    return LETTERS[hits[0]] if len(hits) == 1 else None


def _unwrap(text: str) -> str:
    """Strip edge punctuation, LaTeX wrappers and lead-ins until nothing changes (bounded)."""
    for _ in range(4):
        before = text
        text = text.strip(STRIP_CHARS)
        if text.startswith("\\") and (m := _WRAPPER.fullmatch(text)):
            text = m.group(1)
        if m := _LEAD_IN.match(text):
            text = text[m.end() :]
        if text == before:
            break
    return text.strip(STRIP_CHARS)


def extract_choice(answer: str, options: Sequence[str] = ()) -> Choice:
    """Read one option letter from an answer, or say why not.

    Accepts ``B``, ``(B)``, ``B.``, ``B)``, ``B:``, ``**B**``, ``Answer: B``, ``The answer is B``,
    ``\\boxed{B}``, ``B. <option text>`` and, when `options` are given, the option text alone. An answer that
    names two different options (``B or C``, ``B, C``) or whose letter contradicts its text is no answer.

    >>> extract_choice("The answer is **(B)**")
    Choice(letter='B', reason='')
    >>> extract_choice("B or C").reason
    'hedge: names options B and C'
    >>> extract_choice("pneumonia", ["Edema", "Pneumonia"])
    Choice(letter='B', reason='')
    """
    options = tuple(options)
    n_letters = len(options) or len(LETTERS)
    if len(answer) == 1:  # fast path: the bare letter
        letter = answer.upper()
        if letter in LETTERS[:n_letters]:
            return Choice(letter)
    text = _unwrap(normalize(answer))
    if not text:
        return Choice(reason="no option in answer")

    if m := _LETTER.fullmatch(text):
        return _in_range(m.group(1), n_letters)
    if m := _LETTER_TEXT.fullmatch(text):
        letter, rest = m.group(1), _unwrap(m.group(2))
        if options:
            by_text = _letter_of_text(rest, options)
            if by_text is not None and by_text != letter.upper():
                return Choice(reason=f"letter {letter.upper()} contradicts the text of option {by_text}")
            if by_text is None and (hedge := _hedge_letters(rest, letter, n_letters)):
                return Choice(reason=hedge)
        elif hedge := _hedge_letters(rest, letter, n_letters):
            return Choice(reason=hedge)
        return _in_range(letter, n_letters)
    if options and (by_text := _letter_of_text(text, options)) is not None:
        return Choice(by_text)
    if hedge := _hedge_letters(text, "", n_letters):
        return Choice(reason=hedge)
    return Choice(reason="no single option letter or option text")


def _in_range(letter: str, n_letters: int) -> Choice:
    upper = letter.upper()
    if upper in LETTERS[:n_letters]:
        return Choice(upper)
    return Choice(reason=f"option {upper} is not among the {n_letters} options")


def _hedge_letters(text: str, first: str, n_letters: int) -> str:
    """A reason naming the options when `text` (following option `first`) names another one, else ''."""
    named = {first} if first else set()
    if not first and (m := _LETTER_TEXT.match(text) or _LEADING_LETTER.match(text)):
        named.add(m.group(1))
    named.update(m.group(1) for m in _HEDGE.finditer(text))
    named = {n for n in named if n.upper() in LETTERS[:n_letters]}
    if len(named) < 2:
        return ""
    listed = sorted(n.upper() for n in named)
    return f"hedge: names options {', '.join(listed[:-1])} and {listed[-1]}"


@functools.lru_cache(maxsize=65536)
def gold_letters(golds: tuple[str, ...], options: tuple[str, ...] = ()) -> frozenset[str]:
    """The option letters the references accept; raises :class:`InvalidReference` for one it cannot read.

    >>> sorted(gold_letters(("B", "Edema"), ("Edema", "Pneumonia")))
    ['A', 'B']
    """
    letters = set()
    for gold in golds:
        choice = extract_choice(gold, options)
        if not choice.letter:
            raise InvalidReference(
                f"multiple_choice ground truth {gold!r} is neither one option letter "
                f"{'A-' + LETTERS[len(options) - 1] if options else ''}nor the text of one option "
                f"({choice.reason}); fix the record or give its 'options'"
            )
        letters.add(choice.letter)
    return frozenset(letters)


def validate_choice_reference(golds: tuple[str, ...], options: object = None) -> None:
    """Raise :class:`InvalidReference` unless every gold names one option."""
    gold_letters(golds, parse_options(options))


@register("multiple_choice", extra_info_keys=("options",), validate=validate_choice_reference)
def multiple_choice(answer: str, golds: tuple[str, ...], options: object = None) -> Verdict:
    """Exact match of one option letter; hedges and unreadable answers score 0 (seed Algorithm 1).

    >>> multiple_choice("(B) Pneumonia", ("B",), options=["Edema", "Pneumonia"]).acc
    1.0
    """
    if isinstance(options, list):
        options = tuple(options)
    if len(answer) <= _MEMO_CHARS and (options is None or isinstance(options, str | tuple)):
        return _memo_multiple_choice(answer, golds, options)
    return _multiple_choice(answer, golds, options)


def _multiple_choice(answer: str, golds: tuple[str, ...], options: object) -> Verdict:
    opts = parse_options(options)
    choice = extract_choice(answer, opts)
    if not choice.letter:
        return Verdict(0.0, reason=choice.reason)
    if choice.letter in gold_letters(golds, opts):
        return Verdict(1.0, pred=choice.letter)
    return Verdict(0.0, pred=choice.letter, reason="wrong option")


# Short answers repeat across a GRPO group and across prompts ("B", "(C)"): memoise them.
_MEMO_CHARS = 256
_memo_multiple_choice = functools.lru_cache(maxsize=1 << 16)(_multiple_choice)

