"""The `judge` quality scorer: a vision-language model behind any OpenAI-compatible chat endpoint.

The rubric is a prompt file (``medverl/prompts/qc_rubric_v1.txt``); the reply must be one JSON object with an
integer 1-5 per dimension and a rationale, checked against that schema. Calls, retries, timeouts and the verdict
cache are :mod:`medverl.http`'s: a call that still fails is a judge failure, counted apart and never a score.
"""

from __future__ import annotations

from pathlib import Path

from medverl.http import Judge, JudgeConfig, JudgeReplyError, reply_object
from medverl.prompts import read_prompt
from medverl.qc.rules import DIMENSIONS

RUBRIC_VERSION = "qc_rubric_v1"


def parse_verdict(content: object) -> dict:
    """The judge's reply as ``{dimension: 1-5, ..., "rationale": str}``; raises :class:`JudgeReplyError`."""
    verdict = reply_object(content)
    for dimension in DIMENSIONS:
        value = verdict.get(dimension)
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 5:
            raise JudgeReplyError(f"{dimension} must be an integer 1-5, got {value!r}")
    if not isinstance(verdict.get("rationale"), str):
        raise JudgeReplyError("rationale must be a string")
    return {**{d: verdict[d] for d in DIMENSIONS}, "rationale": verdict["rationale"]}


def rubric_judge(config: JudgeConfig, cache_path: str | Path, fallback_path: str | Path | None = None) -> Judge:
    """The judge that scores records on the rubric's five dimensions (`fallback_path`: see :class:`Judge`)."""
    return Judge(config, read_prompt(RUBRIC_VERSION), RUBRIC_VERSION, parse_verdict, cache_path, fallback_path)
