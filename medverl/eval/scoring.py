"""One answer scored with the rewards' rules, as both ``medverl score`` and ``medverl eval score`` score it.

Each answer is scored with the GRPO reward's rules: the ``<answer>`` content; an answer the reward cannot read
scores 0 and is a parse failure (:attr:`SampleScore.parse_failure`); nothing is guessed. A compatibility mode
(:mod:`medverl.eval.compat`) gives another harness's verdicts instead.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping
from dataclasses import dataclass, field

from medverl.eval.compat import COMPAT_MODES
from medverl.rewards import REGISTRY, RewardOptions, score_sample, tokens
from medverl.rewards.scoring import parse_ground_truth

NO_PREDICTION = "no prediction"


@dataclass(frozen=True)
class SampleScore:
    """One answer scored: ``score`` as training sees it, ``acc`` in [0, 1], the prediction read and why points were
    lost; ``recall``/``f1`` of tokens for open questions."""

    model: str
    data_source: str
    index: int
    query_type: str
    answer_type: str
    score: float
    acc: float
    format: float
    parsed: bool
    pred: str
    reason: str
    recall: float | None = None
    f1: float | None = None
    meta: dict = field(default_factory=dict)
    id: object = None
    judge: str | None = None  # with an LLM judge: "correct", "wrong" or "failed" (the call failed: not a verdict)
    medevalkit_open: dict | None = None  # --compat medevalkit, its open questions: MedEvalKit's BLEU/ROUGE/F1 values

    @property
    def parse_failure(self) -> bool:
        """There was an answer, and the rules could not read a prediction from it (no well-formed ``<answer>``, an
        unreadable one, or a compatibility mode's guess); a missing prediction is not one."""
        return not self.parsed and self.reason != NO_PREDICTION


def _token_recall_f1(pred: str, golds: tuple[str, ...]) -> tuple[float, float]:
    best = (0.0, 0.0)
    got = tokens(pred)
    for gold in golds:
        want = tokens(gold)
        common = len(got & want)
        if not common:
            continue
        recall, precision = common / len(want), common / len(got)
        best = max(best, (recall, 2 * recall * precision / (recall + precision)))
    return best


def score_answer(
    response: str, ground_truth: object, extra_info: Mapping, options: RewardOptions, *, model: str = "",
    data_source: str = "unknown", index: int = 0, compat: str | None = None, id: object = None,
    rng: random.Random | None = None,
) -> SampleScore:
    """Score one answer; raises :class:`InvalidReference` or :class:`UnknownQueryType` for a bad reference.

    With `compat`, the registered compatibility mode gives the verdict; `rng` draws its random choices (one per
    benchmark, seeded with the mode's seed, advanced in question order)."""
    meta = json.loads(extra_info.get("meta") or "{}") if isinstance(extra_info.get("meta"), str) else {}
    result = score_sample(response, ground_truth, extra_info, options)
    acc, parsed, pred, reason = result.acc, result.parsed, result.pred, result.reason
    open_metrics = None
    if compat is not None:
        mode = COMPAT_MODES.get(compat)
        acc, parsed, pred, reason, open_metrics = mode.verdict(response, ground_truth, extra_info, meta,
                                                               rng or random.Random(mode.seed))
    answer_type = str(meta.get("answer_type") or REGISTRY.get(result.query_type).answer_type)
    recall = f1 = None
    if answer_type == "open":
        recall, f1 = _token_recall_f1(pred, parse_ground_truth(ground_truth)) if pred else (0.0, 0.0)
    return SampleScore(model, data_source, index, result.query_type, answer_type, result.score, acc, result.format,
                       parsed, pred, reason, recall, f1, meta, id, medevalkit_open=open_metrics)
