"""An LLM judge for open-ended benchmark answers: ``medverl eval score --judge-url URL --judge-model NAME``.

MedEvalKit's judge mode asks an LLM whether an open answer means the reference answer; this asks any
OpenAI-compatible endpoint the same question with the prompt in ``medverl/prompts/answer_judge_v1.txt``, through
the QC judge's client (bounded concurrency, retries with backoff, a cache keyed by content, prompt version and
model). A call that still fails is a judge failure, reported apart from wrong answers and never a verdict.
"""

from __future__ import annotations

from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

from medverl.qc.judge import Judge, JudgeConfig, JudgeReplyError, VerdictCache, reply_object
from medverl.rewards import answer_region

ANSWER_PROMPT = "answer_judge_v1"
JUDGED_TYPES = ("open",)  # the answer types the judge decides; closed answers keep their rule


def parse_answer_verdict(content: object) -> dict:
    """The judge's reply as ``{"correct": bool, "rationale": str}``; raises :class:`JudgeReplyError`.

    >>> parse_answer_verdict('{"correct": true, "rationale": "same organ"}')
    {'correct': True, 'rationale': 'same organ'}
    """
    verdict = reply_object(content)
    if not isinstance(verdict.get("correct"), bool):
        raise JudgeReplyError("the reply must be a JSON object with a boolean 'correct'")
    rationale = verdict.get("rationale", "")
    return {"correct": verdict["correct"], "rationale": rationale if isinstance(rationale, str) else str(rationale)}


class AnswerJudge(Judge):
    """The QC judge's client with the answer prompt and verdicts."""

    parse = staticmethod(parse_answer_verdict)

    def __init__(self, config: JudgeConfig, cache_path: str | Path) -> None:
        super().__init__(replace(config, rubric_version=ANSWER_PROMPT),
                         VerdictCache(cache_path, parse=parse_answer_verdict))


def judged_answer(response: str) -> str:
    """What the judge is shown of a response: the ``<answer>`` content as written (case kept), else the text
    after the reasoning."""
    region = answer_region(response)
    start, end = region.find("<answer>"), region.rfind("</answer>")
    if start != -1 and end > start:
        region = region[start + len("<answer>"):end]
    return region.strip()


def question_text(question: str, reference: str, answer: str) -> str:
    """The block the prompt's ``{text}`` stands for."""
    return f"Question: {question}\nReference answer: {reference}\nModel's answer: {answer}"


def judge_open_answers(judge: AnswerJudge, samples: list, rows: dict, responses: dict) -> list:
    """`samples` with every open answer that has a prediction decided by the judge: ``acc`` 1 or 0 and ``judge``
    "correct"/"wrong", or ``judge`` "failed" (``acc`` 0, the error in ``reason``) when the call failed."""
    todo = [i for i, s in enumerate(samples) if s.answer_type in JUDGED_TYPES and s.reason != "no prediction"]

    def ask(i: int) -> tuple[int, object]:
        s = samples[i]
        info = rows[(s.data_source, s.index)]["extra_info"]
        answer = judged_answer(responses[(s.data_source, s.index)])
        reference = rows[(s.data_source, s.index)]["reward_model"]["ground_truth"]
        return i, judge.score(question_text(str(info.get("question") or ""), str(reference), answer), [])

    out = list(samples)
    with ThreadPoolExecutor(max_workers=judge.config.concurrency) as pool:
        for i, outcome in pool.map(ask, todo):
            if outcome.verdict is None:
                out[i] = replace(out[i], acc=0.0, judge="failed", reason=f"judge failed: {outcome.error}")
            else:
                correct = outcome.verdict["correct"]
                out[i] = replace(out[i], acc=float(correct), judge="correct" if correct else "wrong",
                                 reason=f"judge: {outcome.verdict['rationale']}"[:300])
    return out


def judged_counts(samples: Iterable) -> dict[str, int]:
    """How many answers the judge decided and how many calls failed."""
    samples = list(samples)
    return {"judged": sum(s.judge in ("correct", "wrong") for s in samples),
            "judge_failures": sum(s.judge == "failed" for s in samples)}
