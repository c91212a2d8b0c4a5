"""Compatibility modes of ``medverl eval score --compat NAME``: another harness's verdicts, to compare with numbers
published from it. A mode is one function per answer, registered by name::

    from medverl.eval.compat import register_compat_mode

    @register_compat_mode("my_harness", seed=0)
    def my_harness(response, ground_truth, extra_info, meta, rng) -> CompatVerdict:
        ...

or named in an entry point of group ``medverl.compat_modes``. ``rng`` is seeded with the mode's seed before each
benchmark and advanced in question order. Built in: ``medevalkit`` (:mod:`medverl.eval.medevalkit`).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import NamedTuple

from medverl.eval import medevalkit
from medverl.registry import Registry
from medverl.rewards.choice import parse_options
from medverl.rewards.scoring import parse_ground_truth


class CompatVerdict(NamedTuple):
    """A harness's verdict on one answer: ``parsed`` is False when its rules had to guess (``reason`` says how);
    ``open_metrics`` are the harness's own per-answer metrics, or None."""

    acc: float
    parsed: bool
    pred: str
    reason: str
    open_metrics: dict | None = None


CompatFn = Callable[[str, object, Mapping, Mapping, random.Random], CompatVerdict]


@dataclass(frozen=True)
class CompatMode:
    """A registered compatibility mode: its verdict function and the seed of its random draws."""

    verdict: CompatFn
    seed: int = 0


class _Modes(Registry[CompatMode]):
    def _from_entry_point(self, name: str, obj: object) -> CompatMode:
        # `name = pkg.module:function` names the verdict function itself
        return obj if isinstance(obj, CompatMode) else CompatMode(obj)  # type: ignore[arg-type]

    def _same(self, existing: CompatMode, value: CompatMode) -> bool:
        return existing.verdict is value.verdict


COMPAT_MODES = _Modes("compat mode", "medverl.compat_modes")


def register_compat_mode(name: str, *, seed: int = 0) -> Callable[[CompatFn], CompatFn]:
    """Decorator registering a verdict function as compatibility mode `name`, its draws seeded with `seed`."""

    def decorator(verdict: CompatFn) -> CompatFn:
        COMPAT_MODES.add(name, CompatMode(verdict, seed))
        return verdict

    return decorator


@register_compat_mode("medevalkit", seed=medevalkit.MEDEVALKIT_SEED)
def medevalkit_verdict(response: str, ground_truth: object, info: Mapping, meta: Mapping,
                       rng: random.Random) -> CompatVerdict:
    """MedEvalKit's rule path: yes/no as substrings (so "nodule" reads as "no"), open answers by exact match after
    its parse, an unreadable multiple-choice answer given the most similar choice, MMMU's random letter; its open
    questions also carry its BLEU / ROUGE / F1 (``medevalkit.open_metrics``)."""
    view = meta.get("medevalkit")
    if not isinstance(view, Mapping):
        golds = parse_ground_truth(ground_truth)
        view = medevalkit.view_from_query_type(str(info.get("query_type")), golds[0] if golds else "",
                                               parse_options(info.get("options")))
    result = medevalkit.verdict(view, response, rng)
    reason = f"fallback: {result.fallback}" if result.fallback else ""
    return CompatVerdict(float(result.correct), not result.fallback, result.pred, reason,
                         medevalkit.open_metrics(view, response))
