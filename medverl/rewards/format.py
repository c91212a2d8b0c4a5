"""The format half of the reward: where the answer is, and whether it is well-formed (seed, Algorithm 1)."""

from __future__ import annotations

from typing import NamedTuple

from medverl.rewards.text import is_blank

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"


class FormatCheck(NamedTuple):
    """Outcome of :func:`check_format`: `answer` is the tag's content when `ok`, else `reason` says why not."""

    ok: bool
    answer: str = ""
    reason: str = ""


def answer_region(output: str) -> str:
    """The text after the last ``</think>``, or the whole output when there is none."""
    close = output.rfind(THINK_CLOSE)
    return output if close < 0 else output[close + len(THINK_CLOSE) :]


def _check_think(output: str, think_prefilled: bool) -> str:
    """Reason why `output` is not exactly one non-empty think block followed by the rest, or ''."""
    n_open, n_close = output.count(THINK_OPEN), output.count(THINK_CLOSE)
    if think_prefilled:
        if n_open or n_close != 1:
            return f"think_prefilled expects no <think> and one </think>, found {n_open} and {n_close}"
        thought = output[: output.find(THINK_CLOSE)]
    else:
        if n_open != 1 or n_close != 1:
            return f"expected one <think> block, found {n_open} <think> and {n_close} </think>"
        start = output.find(THINK_OPEN)
        if not is_blank(output[:start]):
            return "text before <think>"
        end = output.find(THINK_CLOSE)
        if end < start:
            return "</think> before <think>"
        thought = output[start + len(THINK_OPEN) : end]
    return "empty <think> block" if is_blank(thought) else ""


def check_format(output: str, *, think_prefilled: bool = False, require_think: bool = False) -> FormatCheck:
    """Check that the answer region holds exactly one ``<answer>...</answer>`` with non-blank content.

    Every step is a linear scan with ``str`` methods, so a megabyte of adversarial output costs microseconds.

    Args:
        output: the decoded response, untrusted.
        think_prefilled: the chat template already opened ``<think>``; the response must close it.
        require_think: the reasoning must be one non-empty think block before the answer.

    >>> check_format("<think>B or C?</think> <answer>(B)</answer>")
    FormatCheck(ok=True, answer='(B)', reason='')
    >>> check_format("<answer>B</answer><answer>C</answer>").reason
    'answer region has 2 <answer> tags'
    """
    if require_think and (reason := _check_think(output, think_prefilled)):
        return FormatCheck(False, reason=reason)
    if think_prefilled and THINK_CLOSE not in output:
        return FormatCheck(False, reason="no </think>: the prefilled reasoning never closed")
    region = answer_region(output)
    if THINK_OPEN in region:
        return FormatCheck(False, reason="unclosed <think> (truncated reasoning)")
    n_open = region.count(ANSWER_OPEN)
    if n_open != 1:
        return FormatCheck(False, reason=f"answer region has {n_open} <answer> tags" if n_open else "no <answer> tag")
    n_close = region.count(ANSWER_CLOSE)
    if n_close != 1:
        if not n_close:
            return FormatCheck(False, reason="unclosed <answer> (truncated output)")
        return FormatCheck(False, reason=f"answer region has {n_close} </answer> tags")
    start = region.find(ANSWER_OPEN) + len(ANSWER_OPEN)
    end = region.find(ANSWER_CLOSE)
    if end < start:
        return FormatCheck(False, reason="</answer> before <answer>")
    answer = region[start:end].strip()
    if not answer or (not answer.isascii() and is_blank(answer)):
        return FormatCheck(False, reason="empty <answer>")
    return FormatCheck(True, answer)

