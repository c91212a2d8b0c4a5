"""Learning curves of a pipeline run: each stage's metrics from verl's file logger, in one JSONL and one picture.

verl's ``file`` logger (``trainer.logger=[console,file]``) writes one JSON line per step to
``VERL_FILE_LOGGER_PATH``; the pipeline points it at ``OUTPUT/logs/STAGE.metrics.jsonl`` (a resumed stage writes a
new part; earlier parts are kept as ``STAGE.metrics.N.jsonl``). GRPO stages also dump their rollouts per step
(``trainer.rollout_data_dir``), from which the format rate is measured with the reward's own format rule.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

LOSS = "train/loss"  # verl's SFT trainer
REWARD_MEAN = "critic/score/mean"  # main_ppo: the mean training reward of a step
FORMAT_RATE = "medverl/format_rate"  # share of a step's rollouts whose format is right


@dataclass(frozen=True)
class StageLog:
    """Where one stage's metrics are: ``trainer`` is "sft" or "ppo"; ``rollouts`` only for GRPO stages."""

    name: str
    trainer: str
    metrics: Path
    rollouts: Path | None = None
    think_prefilled: bool = False
    require_think: bool = False


def metric_parts(path: Path) -> list[Path]:
    """A stage's metric files, oldest first: ``STAGE.metrics.1.jsonl``, ..., then ``STAGE.metrics.jsonl``."""
    stem = path.name.removesuffix(".jsonl")
    older = sorted(path.parent.glob(f"{stem}.*.jsonl"), key=lambda p: int(p.name[len(stem) + 1 : -6] or 0))
    return [*older, path] if path.is_file() else older


def keep_aside(path: Path) -> None:
    """Rename an existing metrics file to the next free ``.N`` part, because verl's logger truncates its file."""
    if path.is_file():
        stem = path.name.removesuffix(".jsonl")
        path.rename(path.with_name(f"{stem}.{len(metric_parts(path))}.jsonl"))


def read_steps(parts: Iterable[Path]) -> dict[int, dict[str, float]]:
    """Metrics per step from verl's file-logger lines; a step logged again (after a resume) takes the later values."""
    steps: dict[int, dict[str, float]] = {}
    for part in parts:
        for number, line in enumerate(part.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                step, data = int(record["step"]), record["data"]
            except (ValueError, KeyError, TypeError) as exc:
                logger.warning("%s:%d is not a verl metrics line (%s); skipped", part, number, exc)
                continue
            numbers = {k: float(v) for k, v in data.items() if isinstance(v, int | float) and not isinstance(v, bool)}
            steps.setdefault(step, {}).update(numbers)
    return steps


def format_rates(rollouts: Path, *, think_prefilled: bool = False, require_think: bool = False) -> dict[int, float]:
    """Per step, the share of dumped rollouts (``STEP.jsonl``, field ``output``) that pass the format rule."""
    from medverl.rewards.format import check_format

    rates = {}
    for dump in sorted(rollouts.glob("*.jsonl")) if rollouts.is_dir() else ():
        if not dump.stem.isdigit():
            continue
        outputs = [json.loads(line).get("output", "") for line in dump.read_text(encoding="utf-8").splitlines() if line]
        if outputs:
            passed = sum(check_format(str(o), think_prefilled=think_prefilled, require_think=require_think).ok
                         for o in outputs)
            rates[int(dump.stem)] = passed / len(outputs)
    return rates


def gather(stages: Sequence[StageLog], output: Path) -> list[dict]:
    """Write every stage's steps to ``output`` (JSONL: stage, trainer, step, metrics) and return them."""
    rows = []
    for stage in stages:
        steps = read_steps(metric_parts(stage.metrics))
        if stage.rollouts is not None:
            rates = format_rates(stage.rollouts, think_prefilled=stage.think_prefilled,
                                 require_think=stage.require_think)
            for step, rate in rates.items():
                steps.setdefault(step, {})[FORMAT_RATE] = rate
        rows += [{"stage": stage.name, "trainer": stage.trainer, "step": step, **steps[step]} for step in sorted(steps)]
    tmp = output.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    tmp.replace(output)
    return rows


def _series(rows: Sequence[dict], stage: str, key: str) -> tuple[list[int], list[float]]:
    points = [(r["step"], r[key]) for r in rows if r["stage"] == stage and key in r and math.isfinite(r[key])]
    return [p[0] for p in points], [p[1] for p in points]


def draw_curves(rows: Sequence[dict], path: Path) -> Path | None:
    """Loss per step per SFT-trainer stage; reward mean and format rate per GRPO step. None when nothing is logged."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = list(dict.fromkeys(r["stage"] for r in rows))
    sft = [s for s in stages if any(r["stage"] == s and LOSS in r for r in rows)]
    ppo = [s for s in stages if any(r["stage"] == s and (REWARD_MEAN in r or FORMAT_RATE in r) for r in rows)]
    if not sft and not ppo:
        return None
    fig, axes = plt.subplots(1, int(bool(sft)) + int(bool(ppo)), figsize=(6 * (bool(sft) + bool(ppo)), 4),
                             squeeze=False)
    panels = iter(axes[0])
    if sft:
        ax = next(panels)
        offset = 0
        for stage in sft:  # stage after stage, as the model went through them
            steps, losses = _series(rows, stage, LOSS)
            ax.plot([offset + s for s in steps], losses, marker=".", label=stage)
            offset += max(steps, default=0)
        ax.set(title="loss per step (verl's SFT trainer)", xlabel="step, stage after stage", ylabel=LOSS)
        ax.legend()
    if ppo:
        ax = next(panels)
        for stage in ppo:
            ax.plot(*_series(rows, stage, REWARD_MEAN), marker="o", label=f"{stage}: reward mean")
            ax.plot(*_series(rows, stage, FORMAT_RATE), marker="s", linestyle="--", label=f"{stage}: format rate")
        ax.set(title="GRPO per step", xlabel="step", ylim=(-0.05, 1.05))
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def summary_table(rows: Sequence[dict], seconds: dict[str, float]) -> str:
    """A markdown table per stage: wall time, steps, first and last loss, last reward mean and format rate."""
    def value(stage: str, key: str, at: int = -1) -> str:
        _, values = _series(rows, stage, key)
        return f"{values[at]:.4g}" if values else ""

    lines = ["| stage | wall s | steps | first loss | last loss | last reward mean | last format rate |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for stage in dict.fromkeys(r["stage"] for r in rows):
        steps = sum(r["stage"] == stage and r["step"] > 0 for r in rows)  # step 0: validation before training
        wall = f"{seconds[stage]:.0f}" if stage in seconds else ""
        lines.append(f"| {stage} | {wall} | {steps} | {value(stage, LOSS, 0)} | {value(stage, LOSS)} | "
                     f"{value(stage, REWARD_MEAN)} | {value(stage, FORMAT_RATE)} |")
    return "\n".join(lines) + "\n"
