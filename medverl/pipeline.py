"""`medverl pipeline`: CPT -> SFT stages -> GRPO on verl, in order, from one small YAML file; resumable.

Each stage runs one recipe of ``recipes/`` on prepared data (``medverl prep`` output directories) with verl's SFT
trainer (torchrun) or ``main_ppo``; the model a stage saves (``hf_model``) is linked as ``OUTPUT/STAGE/model`` and
is the next stage's starting point. Finished stages are recorded in ``OUTPUT/pipeline_state.json``; rerunning the
same command resumes at the first unfinished stage (verl itself resumes that stage from its last checkpoint). Data is checked before anything runs: every directory must be a
complete ``medverl prep`` job of the kind the recipe trains on, prepared with the stage's ``max_pixels`` (the
low-to-high resolution schedule).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

logger = logging.getLogger(__name__)

STATE = "pipeline_state.json"
DEFAULT_RECIPES = Path(__file__).resolve().parent.parent / "recipes"


class PipelineError(Exception):
    """A pipeline that cannot run or did not finish; the message says what to do."""


@dataclass(frozen=True)
class Stage:
    """One training stage: a recipe, its data and what differs for this run."""

    name: str
    recipe: str
    train: tuple[str, ...]
    val: tuple[str, ...] = ()
    max_pixels: int | None = None
    overrides: tuple[str, ...] = ()


@dataclass(frozen=True)
class Pipeline:
    """A pipeline file: the starting model, the machines, and the stages in order.

    Attributes:
        model: the starting model (hub id or directory).
        output: where checkpoints, logs, stage models and the state file go.
        stages: run in this order.
        nnodes, gpus_per_node: the machines every stage uses.
        image_patch_size: 16 for Qwen3-VL, 14 for Qwen2.5-VL (verl's RL dataset needs it).
        recipes: the recipe directory (default: this repository's ``recipes/``).
        launchers: the command that starts each trainer, ``sft`` and ``ppo`` (default: this Python's torchrun and
            ``python -m verl.trainer.main_ppo``).
    """

    model: str
    output: Path
    stages: tuple[Stage, ...]
    nnodes: int = 1
    gpus_per_node: int = 8
    image_patch_size: int = 14
    recipes: Path = DEFAULT_RECIPES
    launchers: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @classmethod
    def load(cls, path: str | Path) -> Pipeline:
        """Read a pipeline YAML file; raises :class:`PipelineError` naming the bad key."""
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        known = {"model", "output", "stages", "nnodes", "gpus_per_node", "image_patch_size", "recipes", "launchers"}
        if unknown := set(raw) - known:
            raise PipelineError(f"{path}: unknown key(s) {sorted(unknown)}; known: {sorted(known)}")
        for key in ("model", "output", "stages"):
            if not raw.get(key):
                raise PipelineError(f"{path}: '{key}' is required")
        stages = []
        for i, spec in enumerate(raw["stages"]):
            stage_keys = {"name", "recipe", "train", "val", "max_pixels", "overrides"}
            if not isinstance(spec, dict) or not {"name", "recipe", "train"} <= set(spec) or set(spec) - stage_keys:
                raise PipelineError(f"{path}: stage {i} needs name, recipe, train (and may have val, max_pixels, "
                                    f"overrides); got {spec!r}")
            stages.append(Stage(
                str(spec["name"]), str(spec["recipe"]), tuple(map(str, spec["train"])), tuple(map(str, spec.get("val") or ())),
                spec.get("max_pixels"), tuple(map(str, spec.get("overrides") or ())),
            ))
        names = [s.name for s in stages]
        if len(set(names)) != len(names):
            raise PipelineError(f"{path}: stage names must be unique, got {names}")
        return cls(
            model=str(raw["model"]), output=Path(raw["output"]).resolve(), stages=tuple(stages),
            nnodes=int(raw.get("nnodes", 1)), gpus_per_node=int(raw.get("gpus_per_node", 8)),
            image_patch_size=int(raw.get("image_patch_size", 14)),
            recipes=Path(raw.get("recipes") or DEFAULT_RECIPES),
            launchers={k: tuple(map(str, v)) for k, v in (raw.get("launchers") or {}).items()},
        )

    def trainer(self, stage: Stage) -> str:
        """"ppo" for recipes built on verl's ppo_trainer, else "sft"."""
        return "ppo" if "ppo_trainer" in self._recipe(stage).get("defaults", []) else "sft"

    def data_kind(self, stage: Stage) -> str:
        """The ``medverl prep`` output kind a stage trains on: rl, cpt or sft."""
        if self.trainer(stage) == "ppo":
            return "rl"
        custom = (self._recipe(stage).get("data") or {}).get("custom_cls") or {}
        return "cpt" if custom.get("name") == "CPTDataset" else "sft"

    def stage_model(self, stage: Stage) -> Path:
        """Where the model a stage saves is linked once it finishes."""
        return self.output / stage.name / "model"

    def input_model(self, index: int) -> str:
        """The model stage `index` starts from: the pipeline's, then each previous stage's ``model`` link."""
        return self.model if index == 0 else str(self.stage_model(self.stages[index - 1]))

    def command(self, index: int, environ: dict[str, str] | None = None) -> list[str]:
        """The exact command line of stage `index`."""
        stage = self.stages[index]
        model = self.input_model(index)
        trainer = self.trainer(stage)
        common = [
            "--config-path", str(self.recipes.resolve()), "--config-name", stage.recipe,
            f"data.train_files={_hydra_list(self._parquet(stage.train))}",
            f"trainer.default_local_dir={self.output / stage.name / 'checkpoints'}",
            f"trainer.experiment_name={stage.name}",
            f"trainer.nnodes={self.nnodes}",
            f"trainer.n_gpus_per_node={self.gpus_per_node}",
        ]
        if trainer == "ppo":
            if not stage.val:
                raise PipelineError(f"stage {stage.name}: GRPO needs validation data ('val')")
            launcher = self.launchers.get("ppo") or (sys.executable, "-m", "verl.trainer.main_ppo")
            specific = [f"actor_rollout_ref.model.path={model}", f"data.val_files={_hydra_list(self._parquet(stage.val))}",
                        f"data.image_patch_size={self.image_patch_size}"]
        else:
            launcher = self.launchers.get("sft") or self._torchrun(environ if environ is not None else os.environ)
            val = f"data.val_files={_hydra_list(self._parquet(stage.val))}" if stage.val else "data.val_files=null"
            specific = [f"model.path={model}", val]
        return [*launcher, *common, *specific, *stage.overrides]

    def check_data(self) -> list[str]:
        """Problems with the stages' data (empty when every directory is ready), checked before anything runs."""
        problems = []
        previous_pixels = None
        for stage in self.stages:
            kind = self.data_kind(stage)
            for directory in (*stage.train, *stage.val):
                manifest_path = Path(directory) / "manifest.json"
                if not manifest_path.is_file():
                    problems.append(f"stage {stage.name}: {directory} is not a medverl prep output (no manifest.json); "
                                    f"run `medverl prep {'caption|interleaved' if kind == 'cpt' else kind} ... "
                                    f"--output {directory}`")
                    continue
                manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
                if not manifest.get("complete"):
                    problems.append(f"stage {stage.name}: {directory} is an unfinished prep job; rerun it with --resume")
                if manifest.get("kind") != kind:
                    problems.append(f"stage {stage.name} ({stage.recipe}) trains on {kind} data, {directory} holds "
                                    f"{manifest.get('kind')} data")
                pixels = manifest.get("job", {}).get("options", {}).get("max_pixels")
                if stage.max_pixels is not None and pixels != stage.max_pixels:
                    problems.append(f"stage {stage.name}: the schedule says max_pixels={stage.max_pixels}, {directory} "
                                    f"was prepared with --max-pixels {pixels}; prepare it again with "
                                    f"--max-pixels {stage.max_pixels}")
            if stage.max_pixels is not None and self.trainer(stage) == "sft":  # GRPO may roll out at less
                if previous_pixels is not None and stage.max_pixels < previous_pixels:
                    logger.warning("stage %s lowers max_pixels (%d < %d): the schedule is not low-to-high",
                                   stage.name, stage.max_pixels, previous_pixels)
                previous_pixels = stage.max_pixels
        return problems

    def _recipe(self, stage: Stage) -> dict:
        path = self.recipes / f"{stage.recipe}.yaml"
        if not path.is_file():
            known = sorted(p.stem for p in self.recipes.glob("*.yaml"))
            raise PipelineError(f"stage {stage.name}: no recipe {path}; known recipes: {', '.join(known)}")
        return yaml.safe_load(path.read_text(encoding="utf-8")) or {}

    def _parquet(self, directories: tuple[str, ...]) -> list[str]:
        files = []
        for directory in directories:
            found = sorted(Path(directory).resolve().glob("part-*.parquet"))
            if not found:
                raise PipelineError(f"{directory} holds no part-*.parquet shards; run medverl prep first")
            files += map(str, found)
        return files

    def _torchrun(self, environ: dict[str, str]) -> tuple[str, ...]:
        # torchrun of this interpreter, whether or not its environment is activated
        args = [sys.executable, "-m", "torch.distributed.run", f"--nnodes={self.nnodes}",
                f"--nproc_per_node={self.gpus_per_node}"]
        if self.nnodes == 1:
            args.append("--standalone")
        else:
            missing = [k for k in ("NODE_RANK", "MASTER_ADDR", "MASTER_PORT") if k not in environ]
            if missing:
                raise PipelineError(f"nnodes={self.nnodes}: set {', '.join(missing)} and run the pipeline on every node")
            args += [f"--node_rank={environ['NODE_RANK']}", f"--master_addr={environ['MASTER_ADDR']}",
                     f"--master_port={environ['MASTER_PORT']}"]
        return (*args, "-m", "verl.trainer.sft_trainer")


def _hydra_list(paths: list[str]) -> str:
    for path in paths:
        if '"' in path or "\\" in path:
            raise PipelineError(f"a data path with a quote or backslash cannot be passed to Hydra: {path}")
    return "[" + ",".join(f'"{p}"' for p in paths) + "]"


def _saved_model(pipeline: Pipeline, stage: Stage) -> Path:
    """The HF model directory the stage's last checkpoint holds."""
    checkpoints = pipeline.output / stage.name / "checkpoints"
    tracker = checkpoints / "latest_checkpointed_iteration.txt"
    if not tracker.is_file():
        raise PipelineError(f"stage {stage.name} exited 0 but saved no checkpoint under {checkpoints}")
    step_dir = checkpoints / f"global_step_{tracker.read_text().strip()}"
    model = step_dir / "actor" / "huggingface" if pipeline.trainer(stage) == "ppo" else step_dir / "huggingface"
    if not (model / "config.json").is_file() or not any(model.glob("*.safetensors")):
        raise PipelineError(f"stage {stage.name}: no HF model in {model}; keep hf_model in the recipe's "
                            "checkpoint.save_contents")
    return model


def _state(pipeline: Pipeline) -> dict:
    path = pipeline.output / STATE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {"stages": {}}


def _save_state(pipeline: Pipeline, state: dict) -> None:
    path = pipeline.output / STATE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def run_pipeline(pipeline: Pipeline, *, dry_run: bool = False, restart_from: str | None = None, out=None) -> int:
    """Run the stages not finished yet, in order, printing to `out` (stdout); returns 0, or raises
    :class:`PipelineError` naming the stage."""
    out = out or sys.stdout
    if problems := pipeline.check_data():
        raise PipelineError("the data is not ready:\n" + "\n".join(f"  - {p}" for p in problems))
    names = [s.name for s in pipeline.stages]
    if restart_from is not None and restart_from not in names:
        raise PipelineError(f"--from {restart_from}: no such stage; stages: {', '.join(names)}")
    if not dry_run:
        pipeline.output.mkdir(parents=True, exist_ok=True)
    state = _state(pipeline)
    if restart_from is not None:
        for name in names[names.index(restart_from):]:
            state["stages"].pop(name, None)
            stage_dir = pipeline.output / name
            if stage_dir.exists() and not dry_run:
                # verl resumes from the checkpoints it finds; a rerun starts clean, the old run is kept aside
                kept = stage_dir.with_name(f"{name}.before-{time.strftime('%Y%m%d-%H%M%S')}")
                stage_dir.rename(kept)
                print(f"[{name}] previous run moved to {kept}", file=out)
    for index, stage in enumerate(pipeline.stages):
        command = pipeline.command(index)
        # what makes a finished stage the same stage (not the interpreter or launcher that ran it)
        spec = json.loads(json.dumps({**asdict(stage), "model": pipeline.input_model(index)}))
        done = state["stages"].get(stage.name)
        if done is not None:
            if done["spec"] != spec:
                raise PipelineError(
                    f"stage {stage.name} was finished with another configuration ({pipeline.output / STATE}); "
                    f"rerun it and the stages after it with --from {stage.name}, or use a new output directory"
                )
            print(f"[{stage.name}] finished before, model {done['model']}", file=out)
            continue
        print(f"[{stage.name}] {shlex.join(command)}", file=out, flush=True)
        if dry_run:
            continue
        log = pipeline.output / "logs" / f"{stage.name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("w", encoding="utf-8") as sink:
            process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
            for line in process.stdout:
                sink.write(line)
                out.write(line)
            code = process.wait()
        if code != 0:
            raise PipelineError(f"stage {stage.name} failed (exit code {code}); its log: {log}. Fix the cause and "
                                "run the same command again: finished stages are kept")
        model = _saved_model(pipeline, stage)
        link = pipeline.stage_model(stage)
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(model.resolve(), target_is_directory=True)
        state["stages"][stage.name] = {"spec": spec, "model": str(model)}
        _save_state(pipeline, state)
        print(f"[{stage.name}] done, model {model}", file=out, flush=True)
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``medverl pipeline`` arguments."""
    parser.add_argument("config", help="pipeline YAML (see recipes/pipelines/)")
    parser.add_argument("--dry-run", action="store_true", help="check the data and print the commands, run nothing")
    parser.add_argument("--from", dest="restart_from", metavar="STAGE",
                        help="run this stage and the ones after it again, even if they finished")


def run_command(args: argparse.Namespace) -> int:
    """``medverl pipeline``: exit 0 when every stage finished, else 1 with the reason on stderr."""
    try:
        return run_pipeline(Pipeline.load(args.config), dry_run=args.dry_run, restart_from=args.restart_from)
    except PipelineError as exc:
        print(f"medverl pipeline: {exc}", file=sys.stderr)
        return 1
