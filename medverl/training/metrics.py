"""Learning curves of a pipeline run: each stage's metrics from verl's file logger, in one JSONL and one picture.

verl's ``file`` logger (``trainer.logger=[console,file]``) writes one JSON line per step to
``VERL_FILE_LOGGER_PATH``; the pipeline points it at ``OUTPUT/logs/STAGE.metrics.jsonl`` (a resumed stage writes a
new part; earlier parts are kept as ``STAGE.metrics.N.jsonl``). GRPO stages also dump their rollouts per step
(``trainer.rollout_data_dir``), from which the format rate is measured with the reward's own format rule, and the
training accuracy from each rollout's score (verl 0.9.1 logs no reward extras for training steps).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from medverl.stages import ACCURACY, FORMAT_RATE, GENERATION_S, LOSS, REWARD_MEAN, VAL_PREFIX, VAL_SUFFIX
from medverl.training.mixing import drawn_per_step

logger = logging.getLogger(__name__)

MIXTURE_PREFIX = "mixture/"  # mixture/<source>/samples: samples drawn from a source, cumulative by draw order


@dataclass(frozen=True)
class StageLog:
    """Where one stage's metrics are: ``trainer`` is "sft" or "ppo"; ``rollouts`` only for GRPO stages."""

    name: str
    trainer: str
    metrics: Path
    rollouts: Path | None = None
    think_prefilled: bool = False
    require_think: bool = False
    format_weight: float = 0.1
    draws: Path | None = None  # a mixing stage's draw logs (medverl.training.mixing.DrawLog)
    draws_per_step: int = 1


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


def rollout_rates(rollouts: Path, *, think_prefilled: bool = False, require_think: bool = False,
                  format_weight: float = 0.1) -> dict[int, dict[str, float]]:
    """Per step, from the dumped rollouts (``STEP.jsonl``, fields ``output`` and ``score``): the share that pass the
    format rule, and the mean accuracy, ``(score - w * format) / (1 - w)`` as medverl's reward combines them."""
    from medverl.rewards.format import check_format

    rates: dict[int, dict[str, float]] = {}
    for dump in sorted(rollouts.glob("*.jsonl")) if rollouts.is_dir() else ():
        if not dump.stem.isdigit():
            continue
        samples = [json.loads(line) for line in dump.read_text(encoding="utf-8").splitlines() if line]
        if not samples:
            continue
        formats = [float(check_format(str(s.get("output", "")), think_prefilled=think_prefilled,
                                      require_think=require_think).ok) for s in samples]
        step = rates[int(dump.stem)] = {FORMAT_RATE: sum(formats) / len(formats)}
        scores = [s.get("score") for s in samples]
        if format_weight < 1 and all(isinstance(v, int | float) for v in scores):
            accuracies = [min(1.0, max(0.0, (v - format_weight * f) / (1 - format_weight)))
                          for v, f in zip(scores, formats, strict=True)]
            step[ACCURACY] = sum(accuracies) / len(accuracies)
    return rates


def gather(stages: Sequence[StageLog], output: Path) -> list[dict]:
    """Write every stage's steps to ``output`` (JSONL: stage, trainer, step, metrics) and return them."""
    rows = []
    for stage in stages:
        steps = read_steps(metric_parts(stage.metrics))
        if stage.rollouts is not None:
            rates = rollout_rates(stage.rollouts, think_prefilled=stage.think_prefilled,
                                  require_think=stage.require_think, format_weight=stage.format_weight)
            for step, rate in rates.items():
                steps.setdefault(step, {}).update(rate)
        if stage.draws is not None and stage.draws.is_dir():
            drawn, _ = drawn_per_step(stage.draws, list(steps), stage.draws_per_step)
            for step, sources in drawn.items():
                steps[step].update({f"{MIXTURE_PREFIX}{name}/samples": float(n) for name, n in sources.items()})
        rows += [{"stage": stage.name, "trainer": stage.trainer, "step": step, **steps[step]} for step in sorted(steps)]
    tmp = output.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    tmp.replace(output)
    return rows


def _series(rows: Sequence[dict], stage: str, key: str) -> tuple[list[int], list[float]]:
    points = [(r["step"], r[key]) for r in rows if r["stage"] == stage and key in r and math.isfinite(r[key])]
    return [p[0] for p in points], [p[1] for p in points]


def validation_sources(rows: Sequence[dict], stage: str) -> list[str]:
    """The data sources a GRPO stage validated on, in the order verl logged them."""
    keys = (k for r in rows if r["stage"] == stage for k in r)
    return [k[len(VAL_PREFIX) : -len(VAL_SUFFIX)] for k in dict.fromkeys(keys)
            if k.startswith(VAL_PREFIX) and k.endswith(VAL_SUFFIX)]


def draw_curves(rows: Sequence[dict], path: Path) -> Path | None:
    """Loss per step per SFT-trainer stage; reward mean, accuracy and format rate per GRPO step, and its validation
    accuracy per data source. None when nothing is logged."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = list(dict.fromkeys(r["stage"] for r in rows))
    sft = [s for s in stages if any(r["stage"] == s and LOSS in r for r in rows)]
    ppo = [s for s in stages if any(r["stage"] == s and (REWARD_MEAN in r or FORMAT_RATE in r) for r in rows)]
    if not sft and not ppo:
        return None
    fig, axes = plt.subplots(1, int(bool(sft)) + int(bool(ppo)), figsize=(7 * (bool(sft) + bool(ppo)), 5),
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
            ax.plot(*_series(rows, stage, ACCURACY), marker=".", label=f"{stage}: accuracy")
            ax.plot(*_series(rows, stage, FORMAT_RATE), marker="s", linestyle="--", label=f"{stage}: format rate")
            for source in validation_sources(rows, stage):
                ax.plot(*_series(rows, stage, f"{VAL_PREFIX}{source}{VAL_SUFFIX}"), marker="D", linewidth=2.5,
                        label=f"{stage}: validation accuracy, {source}")
        ax.set(title="GRPO per step (validation: greedy, held out)", xlabel="step", ylim=(-0.05, 1.05))
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def summary_table(rows: Sequence[dict], seconds: dict[str, float]) -> str:
    """Markdown: per stage, wall time, steps, first and last loss, last reward mean and format rate; then, per GRPO
    stage, validation accuracy per data source before and after, and its steps."""
    def value(stage: str, key: str, at: int = -1) -> str:
        _, values = _series(rows, stage, key)
        return f"{values[at]:.4g}" if values else ""

    lines = ["| stage | wall s | steps | first loss | last loss | last reward mean | last format rate |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    stages = list(dict.fromkeys(r["stage"] for r in rows))
    for stage in stages:
        steps = sum(r["stage"] == stage and r["step"] > 0 for r in rows)  # step 0: validation before training
        wall = f"{seconds[stage]:.0f}" if stage in seconds else ""
        lines.append(f"| {stage} | {wall} | {steps} | {value(stage, LOSS, 0)} | {value(stage, LOSS)} | "
                     f"{value(stage, REWARD_MEAN)} | {value(stage, FORMAT_RATE)} |")
    for stage in stages:
        if sources := validation_sources(rows, stage):
            lines += ["", f"{stage}: validation accuracy (greedy, held out)", "",
                      "| data source | before | after | gain |", "|---|---:|---:|---:|"]
            for source in sources:
                _, values = _series(rows, stage, f"{VAL_PREFIX}{source}{VAL_SUFFIX}")
                lines.append(f"| {source} | {values[0]:.3f} | {values[-1]:.3f} | {values[-1] - values[0]:+.3f} |")
        if any(r["stage"] == stage and REWARD_MEAN in r for r in rows):
            lines += ["", f"{stage}: per step", "", step_table(rows, stage)]
    return "\n".join(lines) + "\n"


def step_table(rows: Sequence[dict], stage: str) -> str:
    """Markdown: a GRPO stage's reward mean, accuracy, format rate and generation seconds per step."""
    lines = ["| step | reward mean | accuracy | format rate | generation s |", "|---:|---:|---:|---:|---:|"]
    for row in rows:
        if row["stage"] == stage and row["step"] > 0:
            cells = [f"{row[k]:.3f}" if k in row else "" for k in (REWARD_MEAN, ACCURACY, FORMAT_RATE)]
            gen = f"{row[GENERATION_S]:.1f}" if GENERATION_S in row else ""
            lines.append(f"| {row['step']} | {' | '.join(cells)} | {gen} |")
    return "\n".join(lines)
