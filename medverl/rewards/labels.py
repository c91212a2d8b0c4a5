"""`multi_label`: answers that list labels (findings, organs, ...), scored by set F1 against the reference labels.

Rules:

* Labels: the text is cut at commas and semicolons (and their fullwidth and ideographic forms ``，；、﹐﹑﹔``),
  at line breaks, and at the word "and" (any case, standing alone between spaces or separators: "and/or" is not
  cut). List bullets at the start of a line (or of a label) are dropped: ``- ``, ``* ``, ``• ``, ``1. ``, ``2) ``.
  Each label is :func:`medverl.rewards.text.normalize`-d (NFKC, case-fold, whitespace, edge punctuation); labels
  with no letter or digit left are dropped, and repeats collapse: an answer is a set of labels.
* References: each acceptable answer (``golds``) is one label set, cut by the same rule; with several, the best F1
  counts. The reason and prediction are those of the best one.
* Synonyms, from the row's ``extra_info.meta`` JSON: ``{"synonyms": {"pleural effusion": ["effusion", ...]}}``
  maps each alias (normalised) to its canonical label (normalised), on both sides, before comparing. Each name
  must be one label; an alias may name one canonical label only, and may not itself be a canonical label.
* Score: ``acc = F1 = 2PR / (P + R) = 2|pred ∩ gold| / (|pred| + |gold|)``, 0 without overlap. ``pred`` is the
  predicted (canonical) labels sorted and joined by ", ", so that majority voting compares sets. ``reason`` is
  empty at F1 = 1, otherwise precision, recall and up to three missing and extra labels:
  ``"P 0.50 R 1.00; extra: effusion"`` (P and R rounded down to two decimals, so 1.00 means 1).
* Bounds: an answer longer than :data:`MAX_ANSWER_CHARS` characters, with more than :data:`MAX_LABELS` labels, or
  with a label longer than :data:`MAX_LABEL_CHARS` characters scores 0 with a reason; a reference over those label
  bounds is rejected at data preparation. Splitting is one linear regular-expression scan, and normalisation
  reads at most ``MAX_LABELS * MAX_LABEL_CHARS`` characters.
"""

from __future__ import annotations

import functools
import re
import types
from collections.abc import Mapping

from medverl.rewards.meta import parsed_per_meta, row_meta
from medverl.rewards.registry import InvalidReference, Verdict, register
from medverl.rewards.text import normalize

MAX_LABELS = 256  # per answer and per reference
MAX_LABEL_CHARS = 256  # of one label as written
MAX_ANSWER_CHARS = 8192  # longer answers are not read at all (as reward_kwargs.max_answer_chars by default)
MAX_PRED_CHARS = 1024  # of the joined labels returned as the prediction for majority voting
MAX_SHOWN_LABELS = 3  # missing or extra labels named in a reason
MAX_SHOWN_CHARS = 40  # of each label named in a reason

# Line breaks (those of str.splitlines) and the other characters that separate labels.
_LINE_BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
_SEPARATORS = ",;\uff0c\uff1b\u3001\ufe50\ufe51\ufe54"  # , ; ， ； 、 ﹐ ﹑ ﹔
_HORIZONTAL_SPACE = rf"[^\S{_LINE_BREAKS}]"
# A word: characters up to a space or separator, except "and" standing alone (any case).
_WORD = rf"(?!(?i:and)(?![^\s{_SEPARATORS}]))[^\s{_SEPARATORS}]+"
# A label: words joined by spaces on one line, starting where a word starts. The possessive repeats keep the
# scan linear: a space run that no word follows is read once and given back whole.
_LABEL = re.compile(rf"(?<![^\s{_SEPARATORS}]){_WORD}(?:{_HORIZONTAL_SPACE}++{_WORD})*+")
_BULLETS = re.compile(r"(?:(?:[-*\u2022\u2023\u25e6\u2043]|\d{1,3}[.)])(?:\s+|$))+")
_HAS_LETTER_OR_DIGIT = re.compile(r"[^\W_]")


def split_labels(text: str) -> tuple[frozenset[str], str]:
    """The normalised label set of `text`, and what makes it unreadable ("" when nothing does).

    >>> labels, problem = split_labels("- Pleural effusion\\n- Cardiomegaly, atelectasis AND edema.")
    >>> sorted(labels), problem
    (['atelectasis', 'cardiomegaly', 'edema', 'pleural effusion'], '')
    >>> split_labels(", ".join(["x"] * 300))
    (frozenset(), 'more than 256 labels')
    """
    labels: set[str] = set()
    for count, match in enumerate(_LABEL.finditer(text)):
        if count == MAX_LABELS:
            return frozenset(), f"more than {MAX_LABELS} labels"
        start, end = match.span()
        if end - start > MAX_LABEL_CHARS:
            return frozenset(), f"a label longer than {MAX_LABEL_CHARS} characters"
        label = match.group()
        bullet = _BULLETS.match(label)
        if bullet:
            label = label[bullet.end():]
        label = normalize(label)
        if _HAS_LETTER_OR_DIGIT.search(label):
            labels.add(label)
    return frozenset(labels), ""


@parsed_per_meta
def label_synonyms(meta: object = None) -> Mapping[str, str]:
    """Alias -> canonical label (both normalised) from a row's ``meta.synonyms``; other meta keys are ignored.

    Raises:
        InvalidReference: meta that is not a JSON object, or synonyms that are not an object mapping each label to
            a list of aliases, a name that is not one label, or an ambiguous alias.

    >>> dict(label_synonyms('{"synonyms": {"Pleural effusion": ["effusion", "PE"]}}'))
    {'effusion': 'pleural effusion', 'pe': 'pleural effusion'}
    >>> dict(label_synonyms(None))
    {}
    """
    synonyms = row_meta(meta).get("synonyms")
    if synonyms is None:
        return _NO_SYNONYMS
    shape = "an object mapping each canonical label to a list of its aliases"
    if not isinstance(synonyms, Mapping):
        raise InvalidReference(f"meta.synonyms of query_type 'multi_label' must be {shape}, got {_short(synonyms)}")
    aliases: dict[str, str] = {}
    canonicals = set()
    for name, names in synonyms.items():
        if not isinstance(name, str) or not isinstance(names, list | tuple) or not all(
            isinstance(alias, str) for alias in names
        ):
            raise InvalidReference(f"meta.synonyms of query_type 'multi_label' must be {shape}, got "
                                   f"{_short(name)}: {_short(names)}")
        canonical = _one_label(name)
        canonicals.add(canonical)
        for alias in map(_one_label, names):
            if aliases.get(alias, canonical) != canonical:
                raise InvalidReference(f"meta.synonyms of query_type 'multi_label': alias {alias!r} names two labels, "
                                       f"{aliases[alias]!r} and {canonical!r}")
            if alias != canonical:
                aliases[alias] = canonical
    both = sorted(canonicals & aliases.keys())
    if both:
        raise InvalidReference(f"meta.synonyms of query_type 'multi_label': {both[0]!r} is both a label and an alias "
                               f"of {aliases[both[0]]!r}")
    return types.MappingProxyType(aliases)  # read-only: cached and shared by every row with this meta


_NO_SYNONYMS: Mapping[str, str] = types.MappingProxyType({})


def _one_label(name: str) -> str:
    labels, problem = split_labels(name)
    if problem or len(labels) != 1:
        raise InvalidReference(f"meta.synonyms of query_type 'multi_label': {_short(name)} is not one label "
                               f"(labels are cut at commas, semicolons, line breaks and the word 'and')")
    return next(iter(labels))


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:79] + "…"


@functools.lru_cache(maxsize=4096)
def _reference_labels(gold: str) -> tuple[frozenset[str], str]:
    return split_labels(gold)


def validate_label_reference(golds: tuple[str, ...], meta: object = None) -> None:
    """Raise :class:`InvalidReference` for a reference with no label after normalisation or over the label bounds,
    or for invalid synonyms (see :func:`label_synonyms`).

    >>> validate_label_reference(("effusion, cardiomegaly",), '{"synonyms": {"effusion": ["pleural effusion"]}}')
    >>> validate_label_reference((", ; and",))
    Traceback (most recent call last):
    ...
    medverl.rewards.registry.InvalidReference: reference ', ; and' has no labels left after normalisation
    """
    label_synonyms(meta)
    for gold in golds:
        labels, problem = _reference_labels(gold)
        if problem:
            raise InvalidReference(f"reference {_short(gold)} has {problem}; query_type 'multi_label' scores at most "
                                   f"{MAX_LABELS} labels of at most {MAX_LABEL_CHARS} characters")
        if not labels:
            raise InvalidReference(f"reference {gold[:80]!r} has no labels left after normalisation")


def _canonical(labels: frozenset[str], synonyms: Mapping[str, str]) -> frozenset[str]:
    if not synonyms:
        return labels
    return frozenset(synonyms.get(label, label) for label in labels)


def _pred(labels: frozenset[str]) -> str:
    # Bounded, and encodable as UTF-8 (a lone surrogate becomes "?") for whatever logs or stores it.
    pred = ", ".join(sorted(labels))[:MAX_PRED_CHARS]
    return pred if pred.isascii() else pred.encode("utf-8", "replace").decode("utf-8")


def _shown(labels: frozenset[str]) -> str:
    # At most MAX_SHOWN_LABELS names of at most MAX_SHOWN_CHARS characters, invisible characters escaped.
    names = []
    for label in sorted(labels)[:MAX_SHOWN_LABELS]:
        if len(label) > MAX_SHOWN_CHARS:
            label = label[:MAX_SHOWN_CHARS - 1] + "…"
        if not label.isprintable():
            label = "".join(c if c.isprintable() else ascii(c)[1:-1] for c in label)
        names.append(label)
    return ", ".join(names) + (", …" if len(labels) > MAX_SHOWN_LABELS else "")


def _ratio(numerator: int, denominator: int) -> str:
    return f"{100 * numerator // denominator / 100:.2f}"  # rounded down, in integers: 1.00 only when equal


@register("multi_label", extra_info_keys=("meta",), validate=validate_label_reference, answer_type="open")
def multi_label(answer: str, golds: tuple[str, ...], meta: object = None) -> Verdict:
    """Set F1 between the answer's labels and a reference's, best over the references.

    >>> multi_label("Effusion, cardiomegaly", ("cardiomegaly and effusion",)).acc
    1.0
    >>> multi_label("effusion, cardiomegaly", ("cardiomegaly",))
    Verdict(acc=0.6666666666666666, pred='cardiomegaly, effusion', reason='P 0.50 R 1.00; extra: effusion')
    >>> multi_label("PE", ("pleural effusion",), '{"synonyms": {"pleural effusion": ["pe"]}}').acc
    1.0
    """
    synonyms = label_synonyms(meta)  # invalid meta is a data error: raised, as its validation does
    if not isinstance(answer, str):
        answer = str(answer)
    if len(answer) > MAX_ANSWER_CHARS:
        return Verdict(0.0, reason=f"answer longer than {MAX_ANSWER_CHARS} characters")
    labels, problem = split_labels(answer)
    if problem:
        return Verdict(0.0, reason=f"answer has {problem}")
    if not labels:
        return Verdict(0.0, reason="answer has no labels")
    predicted = _canonical(labels, synonyms)
    pred = _pred(predicted)
    best: tuple[float, int, frozenset[str]] | None = None
    for gold in golds:
        reference, problem = _reference_labels(gold)
        if problem or not reference:  # rejected by validate_label_reference at data preparation
            continue
        reference = _canonical(reference, synonyms)
        hits = len(predicted & reference)
        f1 = 2 * hits / (len(predicted) + len(reference))
        if best is None or f1 > best[0]:
            best = (f1, hits, reference)
    if best is None:
        return Verdict(0.0, pred=pred, reason="no reference has labels")
    f1, hits, reference = best
    if f1 == 1.0:
        return Verdict(1.0, pred=pred)
    reason = f"P {_ratio(hits, len(predicted))} R {_ratio(hits, len(reference))}"
    if reference - predicted:
        reason += f"; missing: {_shown(reference - predicted)}"
    if predicted - reference:
        reason += f"; extra: {_shown(predicted - reference)}"
    return Verdict(f1, pred=pred, reason=reason)
