"""`open_text`: report-style free-text answers scored by ROUGE-L F1 (default) or sentence BLEU against references.

Rules:

* Tokens: :func:`medverl.rewards.text.normalize` (NFKC, case-fold, whitespace, edge punctuation), then the same
  token rule as :func:`medverl.rewards.text.tokens` but as an ordered list with repeats: punctuation separates and
  is dropped, each CJK character is one token.
* Metric, from the row's ``extra_info.meta`` JSON: ``{"metric": "rouge_l"}`` (the default) is ROUGE-L F1
  (longest common subsequence, F with beta = 1, i.e. ``2 * LCS / (len(answer) + len(reference))``), best over
  the references; ``{"metric": "bleu", "max_n": 4}`` is sentence BLEU-``max_n`` (1 to 4, default 4) with uniform
  weights against all references jointly (n-gram counts clipped by their largest count in any reference, brevity
  penalty from the reference length closest to the answer's, the shorter on ties). Precisions for n > 1 are
  smoothed add-one (Lin & Och 2004, "ORANGE": 1 added to both the matched and the total n-gram counts), so a short
  answer is not scored 0 for lacking 4-grams; an answer with no unigram in common with any reference scores 0.
* Bounds: an answer longer than :data:`MAX_ANSWER_CHARS` characters or :data:`MAX_TOKENS` tokens scores 0 (like
  ``reward_kwargs.max_answer_chars``: nothing rewards rambling, and the work per answer stays bounded); a
  reference over :data:`MAX_TOKENS` tokens is rejected at data preparation. LCS is bit-parallel (Allison-Dix /
  Hyyrö) on Python integers: ``MAX_TOKENS`` x ``MAX_TOKENS`` takes a few milliseconds.
"""

from __future__ import annotations

import functools
import math
from collections import Counter
from collections.abc import Sequence
from typing import NamedTuple

from medverl.rewards.meta import parsed_per_meta, row_meta
from medverl.rewards.registry import InvalidReference, Verdict, register
from medverl.rewards.text import normalize, token_sequence

METRICS = ("rouge_l", "bleu")
DEFAULT_METRIC = "rouge_l"
DEFAULT_MAX_N = 4
MAX_TOKENS = 2048  # per answer and per reference
MAX_ANSWER_CHARS = 16 * MAX_TOKENS  # longer answers are not read at all
MAX_PRED_CHARS = 512  # of the normalised answer, returned as the prediction for majority voting


class ReportOptions(NamedTuple):
    """A row's scoring parameters, from its meta."""

    metric: str = DEFAULT_METRIC
    max_n: int = DEFAULT_MAX_N


def ordered_tokens(text: str) -> list[str]:
    """Tokens of `text` in order, repeats kept: :func:`~medverl.rewards.text.tokens` as a list.

    >>> ordered_tokens("The left lung, the LEFT lobe.")
    ['the', 'left', 'lung', 'the', 'left', 'lobe']
    >>> ordered_tokens("右肺下叶 CT")
    ['右', '肺', '下', '叶', 'ct']
    """
    return token_sequence(normalize(text))


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence of two token sequences (bit-parallel, O(len(a) * len(b) / 64)).

    >>> lcs_length("abcbdab", "bdcaba")
    4
    >>> lcs_length([], ["x"])
    0
    """
    return _lcs_with_masks(_masks(a), len(a), b)


def _masks(a: Sequence[str]) -> dict[str, int]:
    masks: dict[str, int] = {}
    for i, token in enumerate(a):
        masks[token] = masks.get(token, 0) | (1 << i)
    return masks


def _lcs_with_masks(masks: dict[str, int], m: int, b: Sequence[str]) -> int:
    # Hyyrö's formulation: bit i of v is 0 where row a[i] gained an LCS step; LCS = zeros among the m low bits.
    full = (1 << m) - 1
    v = full
    get = masks.get
    for token in b:
        u = v & get(token, 0)
        if u:
            v = ((v + u) | (v - u)) & full
    return m - v.bit_count()


def rouge_l_f1(candidate: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """ROUGE-L F1 (beta = 1) of a token sequence, best over the references; 0.0 when either side is empty.

    >>> rouge_l_f1("left lower lobe opacity".split(), ["opacity in the left lower lobe".split()])
    0.6
    """
    best = 0.0
    for reference in references:
        if candidate and reference:
            best = max(best, 2 * lcs_length(reference, candidate) / (len(candidate) + len(reference)))
    return min(best, 1.0)


def ngram_counts(tokens: Sequence[str], n: int) -> Counter:
    """How often each n-gram of `tokens` occurs (unigrams keyed by the token, longer ones by a tuple)."""
    return Counter(zip(*(tokens[i:] for i in range(n)))) if n > 1 else Counter(tokens)


def _max_reference_counts(references: Sequence[Sequence[str]], n: int) -> dict:
    counts: dict = {}
    for reference in references:
        for gram, count in ngram_counts(reference, n).items():
            if count > counts.get(gram, 0):
                counts[gram] = count
    return counts


def bleu(candidate: Sequence[str], references: Sequence[Sequence[str]], max_n: int = DEFAULT_MAX_N) -> float:
    """Sentence BLEU-`max_n` (uniform weights, brevity penalty) against all references jointly, with add-one
    smoothing of the n > 1 precisions (Lin & Och 2004); 0.0 without a unigram in common.

    >>> round(bleu("the cat sat on the mat".split(), ["the cat is on the mat".split()]), 4)  # (1/18) ** (1/4)
    0.4855
    >>> bleu("left lung".split(), ["left lung".split()])
    1.0
    """
    if not 1 <= max_n <= 4:
        raise ValueError(f"max_n must be in 1..4, got {max_n!r}")
    references = [r for r in references if r]
    c = len(candidate)
    if not c or not references:
        return 0.0
    return _bleu(candidate, [len(r) for r in references], [_max_reference_counts(references, n)
                                                            for n in range(1, max_n + 1)])


def _bleu(candidate: Sequence[str], lengths: Sequence[int], max_counts: Sequence[dict]) -> float:
    c = len(candidate)
    log_precision = 0.0
    for n, reference_counts in enumerate(max_counts, start=1):
        total = max(c - n + 1, 0)
        matched = sum(min(count, reference_counts.get(gram, 0)) for gram, count in ngram_counts(candidate, n).items())
        if n == 1:
            if not matched:
                return 0.0
            log_precision += math.log(matched / total)
        else:
            log_precision += math.log((matched + 1) / (total + 1))
    r = min(lengths, key=lambda length: (abs(length - c), length))
    log_bp = 0.0 if c > r else 1.0 - r / c
    return min(math.exp(log_bp + log_precision / len(max_counts)), 1.0)


@functools.lru_cache(maxsize=1024)
def _reference_tokens(gold: str) -> tuple[str, ...]:
    return tuple(ordered_tokens(gold))


@functools.lru_cache(maxsize=256)
def _rouge_references(golds: tuple[str, ...]) -> tuple[tuple[dict[str, int], int], ...]:
    refs = (_reference_tokens(g) for g in golds)
    return tuple((_masks(r), len(r)) for r in refs if 0 < len(r) <= MAX_TOKENS)


@functools.lru_cache(maxsize=256)
def _bleu_references(golds: tuple[str, ...], max_n: int) -> tuple[tuple[int, ...], tuple[dict, ...]]:
    refs = [r for r in map(_reference_tokens, golds) if 0 < len(r) <= MAX_TOKENS]
    return tuple(len(r) for r in refs), tuple(_max_reference_counts(refs, n) for n in range(1, max_n + 1))


@parsed_per_meta
def report_options(meta: object = None) -> ReportOptions:
    """The metric and BLEU order of a row's meta; other meta keys are ignored.

    Raises:
        InvalidReference: meta that is not a JSON object, an unknown metric, or max_n not an integer in 1..4.

    >>> report_options('{"metric": "bleu", "max_n": 2}')
    ReportOptions(metric='bleu', max_n=2)
    >>> report_options(None)
    ReportOptions(metric='rouge_l', max_n=4)
    """
    values = row_meta(meta)
    metric = values.get("metric", DEFAULT_METRIC)
    if isinstance(metric, str):
        metric = metric.strip().lower().replace("-", "_")
    if metric not in METRICS:
        raise InvalidReference(f"meta.metric of query_type 'open_text' must be one of {', '.join(METRICS)}, got "
                               f"{values.get('metric')!r}")
    max_n = values.get("max_n", DEFAULT_MAX_N)
    if type(max_n) is not int or not 1 <= max_n <= 4:
        raise InvalidReference(f"meta.max_n of query_type 'open_text' must be an integer from 1 to 4, got {max_n!r}")
    return ReportOptions(metric, max_n)


def validate_report_reference(golds: tuple[str, ...], meta: object = None) -> None:
    """Raise :class:`InvalidReference` for a reference with no token after normalisation or more than
    :data:`MAX_TOKENS`, or for invalid meta (see :func:`report_options`).

    >>> validate_report_reference(("No acute cardiopulmonary process.",), '{"metric": "bleu"}')
    >>> validate_report_reference(("...",))
    Traceback (most recent call last):
    ...
    medverl.rewards.registry.InvalidReference: reference '...' has no words or characters left after normalisation
    """
    report_options(meta)
    for gold in golds:
        n = len(_reference_tokens(gold))
        if not n:
            raise InvalidReference(f"reference {gold[:80]!r} has no words or characters left after normalisation")
        if n > MAX_TOKENS:
            raise InvalidReference(f"reference {gold[:80]!r}... has {n} tokens; query_type 'open_text' scores "
                                   f"references of at most {MAX_TOKENS}")


def _pred(normalized: str) -> str:
    # Bounded, and encodable as UTF-8 (a lone surrogate becomes "?") for whatever logs or stores it.
    pred = normalized[:MAX_PRED_CHARS]
    return pred if pred.isascii() else pred.encode("utf-8", "replace").decode("utf-8")


@register("open_text", extra_info_keys=("meta",), validate=validate_report_reference, answer_type="open")
def open_text(answer: str, golds: tuple[str, ...], meta: object = None) -> Verdict:
    """Report-style free text: ROUGE-L F1 (default) or BLEU (``meta.metric``) against the references.

    >>> open_text("No acute process.", ("no acute cardiopulmonary process",)).acc  # 2 * 3 / (3 + 4)
    0.8571428571428571
    >>> open_text("Left lung", ("left lung opacity",), '{"metric": "bleu"}').reason  # brevity penalty e^(-1/2)
    'BLEU 0.60'
    """
    options = report_options(meta)
    if not isinstance(answer, str):
        answer = str(answer)
    if len(answer) > MAX_ANSWER_CHARS:
        return Verdict(0.0, reason=f"answer longer than {MAX_ANSWER_CHARS} characters")
    normalized = normalize(answer)
    candidate = token_sequence(normalized)
    pred = _pred(normalized)
    if not candidate:
        return Verdict(0.0, pred=pred, reason="answer has no words")
    if len(candidate) > MAX_TOKENS:
        return Verdict(0.0, pred=pred, reason=f"answer longer than {MAX_TOKENS} tokens")
    if options.metric == "bleu":
        lengths, max_counts = _bleu_references(golds, options.max_n)
        acc = _bleu(candidate, lengths, max_counts) if lengths else 0.0
        label = "BLEU" if options.max_n == DEFAULT_MAX_N else f"BLEU-{options.max_n}"
    else:
        m = len(candidate)
        acc = max((2 * _lcs_with_masks(masks, n, candidate) / (m + n) for masks, n in _rouge_references(golds)),
                  default=0.0)
        label = "ROUGE-L F1"
    acc = min(max(float(acc), 0.0), 1.0)
    return Verdict(acc, pred=pred, reason="" if acc == 1.0 else f"{label} {math.floor(acc * 100) / 100:.2f}")
