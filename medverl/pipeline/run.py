"""Running a pipeline: the stages not finished yet, in order, each in its own process group; state, resume,
learning curves, summary, and the ``medverl pipeline`` command."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

from medverl.eval.stage import TABLE_FILES, TABLE_MD
from medverl.pipeline.file import EvalStage, PipelineError, Stage
from medverl.pipeline.plan import Pipeline
from medverl.rewards import RewardOptions
from medverl.training.metrics import StageLog, draw_curves, gather, keep_aside, metric_parts, summary_table
from medverl.training.mixing import drawn_per_step

logger = logging.getLogger(__name__)

STATE = "pipeline_state.json"
STOP_GRACE_S = 30.0  # how long a stopped stage's processes get to exit after SIGTERM, and again after SIGKILL


class StageFailed(PipelineError):
    """A stage's trainer exited with an error."""


def _state(pipeline: Pipeline) -> dict:
    path = pipeline.output / STATE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {"stages": {}}


def _save_state(pipeline: Pipeline, state: dict) -> None:
    path = pipeline.output / STATE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _report(pipeline: Pipeline, state: dict, out) -> None:
    """Gather every stage's metrics into OUTPUT/metrics.jsonl, draw OUTPUT/curves.png, write OUTPUT/summary.md."""
    logs = []
    for stage in pipeline.training_stages:
        if not any(metric_parts(pipeline.metrics_log(stage))):
            continue
        trainer = pipeline.kind(stage).trainer
        if trainer == "ppo":
            options = RewardOptions.from_kwargs(pipeline.reward_kwargs(stage))
            log = StageLog(stage.name, trainer, pipeline.metrics_log(stage), pipeline.rollouts(stage),
                           options.think_prefilled, options.require_think, options.format_weight)
        else:
            log = StageLog(stage.name, trainer, pipeline.metrics_log(stage))
        if stage.mixture is not None:
            data = pipeline.stage_config(stage).data
            log = dataclasses.replace(log, draws=pipeline.draws(stage),
                                      draws_per_step=int(data.get("gen_batch_size") or data.train_batch_size))
        logs.append(log)
    evaluations = [f"## Evaluation: {stage.name}\n\n" + table.read_text(encoding="utf-8")
                   for stage in pipeline.stages if isinstance(stage, EvalStage) and stage.name in state["stages"]
                   and (table := pipeline.output / stage.name / TABLE_MD).is_file()]
    if not logs and not evaluations:
        return
    table = ""
    if logs:
        rows = gather(logs, pipeline.output / "metrics.jsonl")
        curves = draw_curves(rows, pipeline.output / "curves.png")
        table = summary_table(rows, state.get("seconds", {})) + _realized_mixtures(pipeline, logs)
        print(f"metrics -> {pipeline.output / 'metrics.jsonl'}" + (f", curves -> {curves}" if curves else ""), file=out)
    table = "\n".join([table, *evaluations]).lstrip("\n")
    (pipeline.output / "summary.md").write_text(table, encoding="utf-8")
    print(table, file=out, flush=True)


def _realized_mixtures(pipeline: Pipeline, logs: list[StageLog]) -> str:
    """Markdown: per mixing stage, each source's requested share beside the samples drawn from it."""
    tables = []
    for stage in pipeline.training_stages:
        if stage.mixture is None or not any(log.name == stage.name for log in logs):
            continue
        _, drawn = drawn_per_step(pipeline.draws(stage), [], 1)
        tables.append(f"\n{stage.name}: mixture (requested, and drawn by its processes)\n\n"
                      + pipeline.mixture_plan(stage).realized(drawn) + "\n")
    return "".join(tables)


def _mixture_json(pipeline: Pipeline, stage: Stage | EvalStage) -> dict | None:
    """A mixing stage's mixture for ``--json``: its options and each source's rows, weight, share and samples."""
    if isinstance(stage, EvalStage) or (plan := pipeline.mixture_plan(stage)) is None:
        return None
    options = {k: v for k, v in asdict(stage.mixture).items() if k != "sources"}
    sources = [{"name": name, "path": source.path, "rows": rows, "weight": weight, "share": share, "samples": count}
               for source, name, rows, weight, share, count in zip(stage.mixture.sources, plan.names, plan.rows,
                                                                   plan.weights, plan.shares, plan.samples,
                                                                   strict=True)]
    return {**options, "samples_per_epoch": plan.length, "sources": sources}


def _missing_models(pipeline: Pipeline, state: dict) -> list[str]:
    """Models of finished stages that a stage still to run needs and that are gone from disk."""
    problems = []
    for index, stage in enumerate(pipeline.stages):
        if stage.name in state["stages"]:
            continue
        needed = ({m for _, m in pipeline.eval_checkpoints(index)} if isinstance(stage, EvalStage)
                  else {pipeline.input_model(index)})
        for earlier in pipeline.training_stages:
            model = pipeline.stage_model(earlier)
            if earlier.name in state["stages"] and str(model) in needed and not model.exists():
                problems.append(f"stage {stage.name} needs the model of stage {earlier.name}, finished before, but "
                                f"{model} is gone: rerun it with --from {earlier.name}")
    return problems


def _publish_eval_table(pipeline: Pipeline, stage: EvalStage) -> Path:
    """Copy an eval stage's table beside curves.png (OUTPUT/eval_table.md, .png, .json); returns the markdown's path."""
    for name in TABLE_FILES:
        shutil.copyfile(pipeline.output / stage.name / name, pipeline.output / name)
    return pipeline.output / TABLE_MD


def run_pipeline(pipeline: Pipeline, *, dry_run: bool = False, restart_from: str | None = None, out=None,
                 as_json: bool = False) -> int:
    """Run the stages not finished yet, in order, printing to `out` (stdout); returns 0, or raises
    :class:`PipelineError` naming the stage. `as_json`: a dry run that prints its plan as one JSON object."""
    out = out or sys.stdout
    dry_run = dry_run or as_json
    planned = []
    if problems := pipeline.check_data():
        raise PipelineError("the data is not ready:\n" + "\n".join(f"  - {p}" for p in problems))
    if problems := pipeline.check_configs():
        raise PipelineError("a stage's config does not compose:\n" + "\n".join(f"  - {p}" for p in problems))
    if problems := pipeline.check_environment():
        message = f"this machine cannot run the pipeline on {pipeline.device}:\n" + "\n".join(f"  - {p}" for p in problems)
        if not dry_run:
            raise PipelineError(message)
        print(f"warning: {message}", file=sys.stderr)
    names = [s.name for s in pipeline.stages]
    if restart_from is not None and restart_from not in names:
        raise PipelineError(f"--from {restart_from}: no such stage; stages: {', '.join(names)}")
    if not dry_run:
        pipeline.output.mkdir(parents=True, exist_ok=True)
    state = _state(pipeline)
    if restart_from is not None:
        _restart(pipeline, state, names[names.index(restart_from):], dry_run, out)
    if problems := _missing_models(pipeline, state):
        raise PipelineError("a model a stage needs is missing:\n" + "\n".join(f"  - {p}" for p in problems))
    for index, stage in enumerate(pipeline.stages):
        command = pipeline.command(index)
        # what makes a finished stage the same stage (not the interpreter or launcher that ran it)
        if isinstance(stage, EvalStage):
            spec = json.loads(json.dumps({**asdict(stage), "models": pipeline.eval_checkpoints(index)}))
        else:
            # its kind is its recipe's (checked), so naming it or not is the same stage
            # and a stage that does not mix is recorded as before mixtures existed
            spec = {k: v for k, v in asdict(stage).items() if k != "kind" and not (k == "mixture" and v is None)}
            spec = json.loads(json.dumps({**spec, "model": pipeline.input_model(index)}))
        done = state["stages"].get(stage.name)
        if as_json:
            planned.append({"name": stage.name, "kind": pipeline.kind(stage).name, "finished": done is not None,
                            "command": command, "environment": pipeline.environment(stage),
                            "mixture": _mixture_json(pipeline, stage)})
            continue
        if done is not None:
            if done["spec"] != spec:
                raise PipelineError(
                    f"stage {stage.name} was finished with another configuration ({pipeline.output / STATE}); "
                    f"rerun it and the stages after it with --from {stage.name}, or use a new output directory"
                )
            print(f"[{stage.name}] finished before, " + (f"table {done['table']}" if "table" in done
                                                         else f"model {done['model']}"), file=out)
            continue
        if isinstance(stage, EvalStage):
            print(f"[{stage.name}] evaluates {', '.join(f'{c} ({m})' for c, m in pipeline.eval_checkpoints(index))} "
                  f"on {', '.join(f'{b} ({d})' for b, d in stage.benchmarks)}", file=out)
        if isinstance(stage, Stage) and (mixture := pipeline.mixture_plan(stage)) is not None:
            print(f"[{stage.name}] mixes {len(mixture.names)} sources ({stage.mixture.strategy}), {mixture.length} "
                  f"samples per epoch:\n{mixture.table()}", file=out)
        print(f"[{stage.name}] {shlex.join(command)}", file=out, flush=True)
        if not dry_run:
            _run_stage(pipeline, stage, command, state, out)
            _finish(pipeline, stage, spec, state, out)
    if as_json:
        print(json.dumps({"model": pipeline.model, "output": str(pipeline.output), "device": pipeline.device,
                          "stages": planned}, indent=2), file=out)
    return 0


def _restart(pipeline: Pipeline, state: dict, names: list[str], dry_run: bool, out) -> None:
    """Forget stages `names` were finished; their directories are moved aside, eval tables removed."""
    for name in names:
        state["stages"].pop(name, None)
        stage_dir = pipeline.output / name
        if stage_dir.exists() and not dry_run:
            # verl resumes from the checkpoints it finds; a rerun starts clean, the old run is kept aside
            kept = stage_dir.with_name(f"{name}.before-{time.strftime('%Y%m%d-%H%M%S')}")
            stage_dir.rename(kept)
            print(f"[{name}] previous run moved to {kept}", file=out)
        draws = pipeline.output / "logs" / f"{name}.draws"
        if draws.exists() and not dry_run:  # a rerun's draws are counted anew
            draws.rename(draws.with_name(f"{name}.draws.before-{time.strftime('%Y%m%d-%H%M%S')}"))
        if isinstance(pipeline.stages[[s.name for s in pipeline.stages].index(name)], EvalStage) and not dry_run:
            for table in TABLE_FILES:  # the table will be made again; until then it would be stale
                (pipeline.output / table).unlink(missing_ok=True)


def _run_stage(pipeline: Pipeline, stage: Stage | EvalStage, command: list[str], state: dict, out) -> None:
    """Run one stage's command in its own process group, its output to `out` and its log; :class:`StageFailed`
    when it exits with an error."""
    log = pipeline.output / "logs" / f"{stage.name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    if not isinstance(stage, EvalStage):
        keep_aside(pipeline.metrics_log(stage))
    started = time.monotonic()
    with log.open("w", encoding="utf-8") as sink:
        # its own process group, so that stopping the pipeline stops the trainer and every process it started
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                                   env={**os.environ, **pipeline.environment(stage)}, start_new_session=True)
        try:
            for line in process.stdout:
                sink.write(line)
                out.write(line)
            code = process.wait()
        except BaseException:  # Ctrl-C, SIGTERM (raised as SystemExit by the CLI), a broken output
            _stop(process)
            raise
    seconds = state.setdefault("seconds", {})
    seconds[stage.name] = seconds.get(stage.name, 0.0) + time.monotonic() - started
    _save_state(pipeline, state)
    if code != 0:
        _report(pipeline, state, out)
        raise StageFailed(f"stage {stage.name} failed (exit code {code}); its log: {log}. Fix the cause and "
                          "run the same command again: finished stages are kept")


def _finish(pipeline: Pipeline, stage: Stage | EvalStage, spec: dict, state: dict, out) -> None:
    """Record a stage that ran to the end: its table published, or its saved model linked as ``STAGE/model``."""
    if isinstance(stage, EvalStage):
        table = _publish_eval_table(pipeline, stage)
        state["stages"][stage.name] = {"spec": spec, "table": str(pipeline.output / stage.name / TABLE_MD)}
        _save_state(pipeline, state)
        _report(pipeline, state, out)
        print(f"[{stage.name}] done, table {table}", file=out, flush=True)
        return
    model = pipeline.saved_model(stage)
    link = pipeline.stage_model(stage)
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(model.resolve(), target_is_directory=True)
    state["stages"][stage.name] = {"spec": spec, "model": str(model)}
    _save_state(pipeline, state)
    _report(pipeline, state, out)
    print(f"[{stage.name}] done, model {model}", file=out, flush=True)


def _stop(process: subprocess.Popen, grace_s: float = STOP_GRACE_S) -> None:
    """SIGTERM to the stage's process group, SIGKILL to what is left after `grace_s`: no trainer outlives the pipeline
    (one left running would write checkpoints that the next run resumes from)."""
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, grace_s)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                os.killpg(process.pid, 0)
            except ProcessLookupError:
                process.poll()
                return
            process.poll()  # reap the leader, so that only its group's survivors keep the group alive
            time.sleep(0.1)
        logger.warning("stage process group %d still runs %.0f s after %s", process.pid, wait, sig.name)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``medverl pipeline`` arguments."""
    parser.add_argument("config", help="pipeline YAML (see recipes/pipelines/)")
    parser.add_argument("--cpu", action="store_true",
                        help="run verl's trainers on CPU (medverl.cpu; a small model), whatever the file's device")
    parser.add_argument("--dry-run", action="store_true", help="check the data and print the commands, run nothing")
    parser.add_argument("--json", action="store_true",
                        help="a dry run that prints its plan (stages, commands, mixtures) as JSON")
    parser.add_argument("--from", dest="restart_from", metavar="STAGE",
                        help="run this stage and the ones after it again, even if they finished")


def _terminated(signum: int, _frame) -> None:
    raise SystemExit(128 + signum)


def run_command(args: argparse.Namespace) -> int:
    """``medverl pipeline``: exit 0 when every stage finished, 1 when a stage failed, 2 when the pipeline cannot run
    (its file, data or environment)."""
    signal.signal(signal.SIGTERM, _terminated)
    try:
        pipeline = Pipeline.load(args.config)
        if args.cpu:
            pipeline = dataclasses.replace(pipeline, device="cpu")
        return run_pipeline(pipeline, dry_run=args.dry_run, restart_from=args.restart_from, as_json=args.json)
    except PipelineError as exc:
        print(f"medverl pipeline: {exc}", file=sys.stderr)
        return 1 if isinstance(exc, StageFailed) else 2
