"""An LLM judge for open-ended benchmark answers: ``medverl eval score --judge-url URL --judge-model NAME``.

MedEvalKit's judge mode asks an LLM whether an open answer means the reference answer; this asks any
OpenAI-compatible endpoint the same question with the prompt in ``medverl/prompts/answer_judge_v1.txt``, through
:mod:`medverl.http`'s judge (bounded concurrency, retries with backoff, a cache keyed by content, prompt version and
model). The judge is shown the answer the reward reads (:func:`medverl.rewards.extract_answer`); an answer the
reward cannot read keeps its score 0 and is not asked about. A call that still fails is a judge failure, reported
apart from wrong answers and never a verdict.
"""

from __future__ import annotations

from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

from medverl.http import Judge, JudgeConfig, JudgeReplyError, reply_object
from medverl.prompts import read_prompt
from medverl.rewards import RewardOptions, extract_answer

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


def answer_judge(config: JudgeConfig, cache_path: str | Path, fallback_path: str | Path | None = None) -> Judge:
    """The judge that decides whether an open answer means the reference answer (`fallback_path`: see
    :class:`Judge`)."""
    return Judge(config, read_prompt(ANSWER_PROMPT), ANSWER_PROMPT, parse_answer_verdict, cache_path, fallback_path)


def judged_answer(response: str, options: RewardOptions) -> str | None:
    """What the judge is shown of a response: the answer the reward reads with `options`, or None."""
    return extract_answer(response, options).answer


def question_text(question: str, reference: str, answer: str) -> str:
    """The block the prompt's ``{text}`` stands for."""
    return f"Question: {question}\nReference answer: {reference}\nModel's answer: {answer}"


def judge_open_answers(judge: Judge, samples: list, rows: dict, responses: dict, options: RewardOptions) -> list:
    """`samples` with every open answer the reward reads under `options` decided by the judge: ``acc`` 1 or 0 and
    ``judge`` "correct"/"wrong", or ``judge`` "failed" (``acc`` 0, the error in ``reason``) when the call failed."""
    answers = {i: judged_answer(responses[(s.data_source, s.index)], options) for i, s in enumerate(samples)
               if s.answer_type in JUDGED_TYPES and (s.data_source, s.index) in responses}
    todo = [i for i, answer in answers.items() if answer is not None]

    def ask(i: int) -> tuple[int, object]:
        s = samples[i]
        info = rows[(s.data_source, s.index)]["extra_info"]
        reference = rows[(s.data_source, s.index)]["reward_model"]["ground_truth"]
        return i, judge.score(question_text(str(info.get("question") or ""), str(reference), answers[i]))

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
