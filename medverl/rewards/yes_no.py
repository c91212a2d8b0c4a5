"""`yes_no`: closed questions, read as whole words so that "nodule" is not "no"."""

from __future__ import annotations

import re

from medverl.rewards.registry import InvalidReference, Verdict, register
from medverl.rewards.text import normalize

YES_WORDS = ("yes", "yeah", "yep", "yup", "true", "correct", "affirmative")
NO_WORDS = ("no", "nope", "false", "incorrect", "negative")
# A negator right before a lexicon word flips it: "not correct" is no, "not false" is yes.
NEGATORS = ("not", "never")
# Chinese has no word boundaries: longer entries come first so that 没有 is not read as 有.
YES_CJK = ("是的", "对的", "正确", "是", "对", "有")
NO_CJK = ("不是", "没有", "不对", "错误", "否", "无", "不", "错")

_POLARITY = {w: "yes" for w in YES_WORDS + YES_CJK} | {w: "no" for w in NO_WORDS + NO_CJK}
_FLIP = {"yes": "no", "no": "yes"}
_CJK_ALTERNATION = "|".join(sorted(YES_CJK + NO_CJK, key=len, reverse=True))
_WORDS = re.compile(
    rf"(?<!\w)(?:({'|'.join(NEGATORS)})\s+)?({'|'.join(YES_WORDS + NO_WORDS)})(?!\w)|({_CJK_ALTERNATION})"
)


def yes_no_polarity(text: str) -> str | None:
    """'yes' or 'no' when every yes/no word of `text` agrees, None when it has both or neither.

    >>> yes_no_polarity("No, the nodule is benign.")
    'no'
    >>> yes_no_polarity("Yes, no fracture.") is None
    True
    """
    found = set()
    for negator, word, cjk in _WORDS.findall(normalize(text)):
        polarity = _POLARITY[word or cjk]
        found.add(_FLIP[polarity] if negator else polarity)
        if len(found) > 1:
            return None
    return found.pop() if found else None


def validate_yes_no_reference(golds: tuple[str, ...]) -> None:
    """Raise :class:`InvalidReference` unless every reference reads as exactly yes or no."""
    for gold in golds:
        if yes_no_polarity(gold) is None:
            raise InvalidReference(f"yes_no reference {gold!r} is not a yes or a no; use another query_type")


@register("yes_no", validate=validate_yes_no_reference)
def yes_no(answer: str, golds: tuple[str, ...]) -> Verdict:
    """Yes/no agreement; an answer carrying both or neither scores 0.

    >>> yes_no("Yes.", ("yes",)).acc
    1.0
    """
    pred = yes_no_polarity(answer)
    if pred is None:
        return Verdict(0.0, reason="answer is neither a clear yes nor a clear no")
    if any(yes_no_polarity(gold) == pred for gold in golds):
        return Verdict(1.0, pred=pred)
    return Verdict(0.0, pred=pred, reason="wrong polarity")
