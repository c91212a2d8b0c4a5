"""`jaccard` and `exact_match`: free-text answers against one or more references (seed, String-based Tasks)."""

from __future__ import annotations

from medverl.rewards.registry import InvalidReference, Verdict, register
from medverl.rewards.text import normalize, normalized_tokens, tokens


def jaccard_similarity(a: frozenset[str], b: frozenset[str]) -> float:
    """|a ∩ b| / |a ∪ b|, and 0.0 when both are empty.

    >>> jaccard_similarity(frozenset("ab"), frozenset("bc"))
    0.3333333333333333
    """
    union = len(a | b)
    return len(a & b) / union if union else 0.0


def validate_text_reference(golds: tuple[str, ...]) -> None:
    """Raise :class:`InvalidReference` for a reference with no token left after normalisation."""
    for gold in golds:
        if not tokens(gold):
            raise InvalidReference(f"reference {gold!r} has no words or characters left after normalisation")


@register("jaccard", validate=validate_text_reference, answer_type="open")
def jaccard(answer: str, golds: tuple[str, ...]) -> Verdict:
    """Jaccard similarity of token sets, best over the acceptable answers.

    >>> jaccard("Left lower lobe", ("left lobe",)).acc
    0.6666666666666666
    """
    normalized = normalize(answer)
    pred = normalized_tokens(normalized)
    if not pred:
        return Verdict(0.0, reason="answer has no words")
    acc = max(jaccard_similarity(pred, tokens(gold)) for gold in golds)
    return Verdict(acc, pred=normalized, reason="" if acc == 1.0 else "partial overlap" if acc else "no overlap")


@register("exact_match", validate=validate_text_reference)
def exact_match(answer: str, golds: tuple[str, ...]) -> Verdict:
    """Normalised string equality with any acceptable answer.

    >>> exact_match("  Pleural   effusion. ", ("pleural effusion",)).acc
    1.0
    """
    pred = normalize(answer)
    if any(pred == normalize(gold) for gold in golds):
        return Verdict(1.0, pred=pred)
    return Verdict(0.0, pred=pred, reason="no reference matches")

