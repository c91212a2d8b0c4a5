"""`medverl pipeline`: CPT -> SFT stages -> GRPO on verl, in order, from one small YAML file; resumable.

Each stage runs one recipe of ``recipes/`` on prepared data (``medverl prep`` output directories) with verl's SFT
trainer (torchrun) or ``main_ppo``; the model a stage saves (``hf_model``) is linked as ``OUTPUT/STAGE/model`` and
is the next stage's starting point. Finished stages are recorded in ``OUTPUT/pipeline_state.json``; rerunning the
same command resumes at the first unfinished stage (verl itself resumes that stage from its last checkpoint). Data is checked before anything runs: every directory must be a
complete ``medverl prep`` job of the kind the recipe trains on, prepared with the stage's ``max_pixels`` (the
low-to-high resolution schedule).

An eval stage (``kind: eval``) generates greedy answers with the starting model and every earlier stage's saved
model (or the ``checkpoints`` it names) on prepared benchmarks and scores them (``medverl eval checkpoints``): one
table, a row per checkpoint and a column per benchmark, written beside ``curves.png`` (``eval_table.md``, ``.png``,
``.json``) and added to ``summary.md``. Its benchmarks and checkpoints are checked before anything runs too.
"""

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
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml
from omegaconf import DictConfig

from medverl.data.prepared import PreparedError, check_reward_options, open_prepared
from medverl.rewards import RewardOptions
from medverl.eval.stage import TABLE_FILES, TABLE_MD
from medverl.training.metrics import StageLog, draw_curves, gather, keep_aside, metric_parts, summary_table

logger = logging.getLogger(__name__)

STATE = "pipeline_state.json"
STOP_GRACE_S = 30.0  # how long a stopped stage's processes get to exit after SIGTERM, and again after SIGKILL
DEVICES = ("cuda", "cpu")
DEFAULT_RECIPES = Path(__file__).resolve().parent.parent / "recipes"


class PipelineError(Exception):
    """A pipeline that cannot run or did not finish; the message says what to do."""


class StageFailed(PipelineError):
    """A stage's trainer exited with an error."""


@dataclass(frozen=True)
class Stage:
    """One training stage: a recipe, its data and what differs for this run."""

    name: str
    recipe: str
    train: tuple[str, ...]
    val: tuple[str, ...] = ()
    max_pixels: int | None = None
    overrides: tuple[str, ...] = ()


BASE = "base"  # an eval stage's name for the pipeline's starting model
EVAL_KEYS = {"name", "kind", "benchmarks", "checkpoints", "max_tokens", "batch_size"}


@dataclass(frozen=True)
class EvalStage:
    """An evaluation stage: checkpoints generated for and scored on prepared benchmarks, one table
    (:mod:`medverl.eval.stage`).

    Attributes:
        benchmarks: ``(label, prepared RL directory)`` pairs, the table's columns.
        checkpoints: ``(label, ref)`` pairs, the table's rows; a ref is ``base`` (the pipeline's model), an earlier
            stage's name (the model it saves) or a model directory. Empty: ``base`` and every earlier training stage.
        max_tokens, batch_size: as ``medverl eval run``'s (batch_size None: the backend's default).
    """

    name: str
    benchmarks: tuple[tuple[str, str], ...]
    checkpoints: tuple[tuple[str, str], ...] = ()
    max_tokens: int = 2048
    batch_size: int | None = None


def _labelled(value: object, what: str, where: str) -> tuple[tuple[str, str], ...]:
    """A YAML list (each item its own label, a directory's name for paths) or mapping ``{label: item}``."""
    if isinstance(value, dict):
        pairs = [(str(k), str(v)) for k, v in value.items()]
    elif isinstance(value, list | tuple):
        pairs = [(Path(str(v)).name if what == "benchmarks" else str(v), str(v)) for v in value]
    else:
        raise PipelineError(f"{where}: '{what}' must be a list or a mapping of label: {what[:-1]}, got {value!r}")
    labels = [label for label, _ in pairs]
    if len(set(labels)) != len(labels):
        raise PipelineError(f"{where}: the labels of '{what}' must be distinct, got {labels}")
    return tuple(pairs)


def _eval_stage(spec: dict, where: str) -> EvalStage:
    if set(spec) - EVAL_KEYS or not {"name", "benchmarks"} <= set(spec):
        raise PipelineError(f"{where}: an eval stage needs name, kind: eval, benchmarks (and may have checkpoints, "
                            f"max_tokens, batch_size); got {spec!r}")
    for key in ("max_tokens", "batch_size"):
        if key in spec and (not isinstance(spec[key], int) or isinstance(spec[key], bool) or spec[key] < 1):
            raise PipelineError(f"{where}: {key} must be a positive integer, got {spec[key]!r}")
    if not spec["benchmarks"]:
        raise PipelineError(f"{where}: 'benchmarks' is empty")
    return EvalStage(str(spec["name"]), _labelled(spec["benchmarks"], "benchmarks", where),
                     _labelled(spec.get("checkpoints") or [], "checkpoints", where),
                     spec.get("max_tokens", 2048), spec.get("batch_size"))


@dataclass(frozen=True)
class Pipeline:
    """A pipeline file: the starting model, the machines, and the stages in order.

    Attributes:
        model: the starting model (hub id or directory).
        output: where checkpoints, logs, stage models and the state file go.
        stages: run in this order: training stages, and eval stages (:class:`EvalStage`).
        nnodes, gpus_per_node: the machines every stage uses.
        image_patch_size: 16 for Qwen3-VL, 14 for Qwen2.5-VL (verl's RL dataset needs it).
        recipes: the recipe directory (default: this repository's ``recipes/``).
        launchers: the command that starts each trainer, ``sft`` and ``ppo`` (default: this Python's torchrun and
            ``python -m verl.trainer.main_ppo``), and ``eval`` (default: ``python -m medverl``, given
            ``eval checkpoints ...``).
        device: "cuda", or "cpu" for verl's trainers on CPU (:mod:`medverl.cpu`; ``gpus_per_node`` then counts
            trainer processes).
    """

    model: str
    output: Path
    stages: tuple[Stage | EvalStage, ...]
    nnodes: int = 1
    gpus_per_node: int = 8
    image_patch_size: int = 14
    recipes: Path = DEFAULT_RECIPES
    launchers: dict[str, tuple[str, ...]] = field(default_factory=dict)
    device: str = "cuda"

    @classmethod
    def load(cls, path: str | Path) -> Pipeline:
        """Read a pipeline YAML file; raises :class:`PipelineError` naming the bad key."""
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        known = {"model", "output", "stages", "nnodes", "gpus_per_node", "image_patch_size", "recipes", "launchers",
                 "device"}
        if unknown := set(raw) - known:
            raise PipelineError(f"{path}: unknown key(s) {sorted(unknown)}; known: {sorted(known)}")
        for key in ("model", "output", "stages"):
            if not raw.get(key):
                raise PipelineError(f"{path}: '{key}' is required")
        stages = []
        for i, spec in enumerate(raw["stages"]):
            if isinstance(spec, dict) and spec.get("kind", "train") != "train":
                if spec["kind"] != "eval":
                    raise PipelineError(f"{path}: stage {i}: kind must be train (the default) or eval, got "
                                        f"{spec['kind']!r}")
                stages.append(_eval_stage(spec, f"{path}: stage {i}"))
                continue
            spec = {k: v for k, v in spec.items() if k != "kind"} if isinstance(spec, dict) else spec
            stage_keys = {"name", "recipe", "train", "val", "max_pixels", "overrides"}
            if not isinstance(spec, dict) or not {"name", "recipe", "train"} <= set(spec) or set(spec) - stage_keys:
                raise PipelineError(f"{path}: stage {i} needs name, recipe, train (and may have val, max_pixels, "
                                    f"overrides); got {spec!r}")
            stages.append(Stage(
                str(spec["name"]), str(spec["recipe"]), tuple(map(str, spec["train"])), tuple(map(str, spec.get("val") or ())),
                spec.get("max_pixels"), tuple(map(str, spec.get("overrides") or ())),
            ))
        device = str(raw.get("device", "cuda"))
        if device not in DEVICES:
            raise PipelineError(f"{path}: device must be one of {', '.join(DEVICES)}, got {device!r}")
        names = [s.name for s in stages]
        if len(set(names)) != len(names):
            raise PipelineError(f"{path}: stage names must be unique, got {names}")
        if BASE in names and any(isinstance(s, EvalStage) for s in stages):
            raise PipelineError(f"{path}: an eval stage calls the starting model '{BASE}': name no stage {BASE}")
        model = str(raw["model"])
        if Path(model).is_dir():  # a local model: absolute, because verl's Ray workers have their own directory
            model = str(Path(model).resolve())
        return cls(
            model=model, output=Path(raw["output"]).resolve(), stages=tuple(stages),
            nnodes=int(raw.get("nnodes", 1)), gpus_per_node=int(raw.get("gpus_per_node", 8)),
            image_patch_size=int(raw.get("image_patch_size", 14)),
            recipes=Path(raw.get("recipes") or DEFAULT_RECIPES),
            launchers={k: tuple(map(str, v)) for k, v in (raw.get("launchers") or {}).items()},
            device=device,
        )

    def trainer(self, stage: Stage | EvalStage) -> str:
        """"ppo" for recipes built on verl's ppo_trainer, "eval" for an eval stage, else "sft"."""
        if isinstance(stage, EvalStage):
            return "eval"
        return "ppo" if "ppo_trainer" in self._recipe(stage).get("defaults", []) else "sft"

    @property
    def training_stages(self) -> tuple[Stage, ...]:
        """The stages that train (every stage but the eval stages), in order."""
        return tuple(s for s in self.stages if isinstance(s, Stage))

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
        """The model stage `index` starts from: the pipeline's, then each previous training stage's ``model`` link."""
        earlier = [s for s in self.stages[:index] if isinstance(s, Stage)]
        return str(self.stage_model(earlier[-1])) if earlier else self.model

    def _eval_refs(self, index: int) -> tuple[tuple[str, str], ...]:
        """Eval stage `index`'s ``(label, ref)`` pairs: its ``checkpoints``, or ``base`` and every earlier training
        stage."""
        earlier = [s.name for s in self.stages[:index] if isinstance(s, Stage)]
        return self.stages[index].checkpoints or tuple((name, name) for name in (BASE, *earlier))

    def eval_checkpoints(self, index: int) -> list[tuple[str, str]]:
        """The ``(label, model)`` pairs eval stage `index` evaluates (see :meth:`_eval_refs`); a ref that is neither
        ``base`` nor an earlier training stage is a model directory (or hub id)."""
        earlier = {s.name: str(self.stage_model(s)) for s in self.stages[:index] if isinstance(s, Stage)}
        return [(label, self.model if ref == BASE else earlier.get(ref, ref)) for label, ref in self._eval_refs(index)]

    def eval_backend(self) -> str:
        """The backend eval stages generate with: hf on CPU; on CUDA vLLM when it is installed, else hf."""
        from medverl.eval.run import resolve_backend

        return "hf" if self.device == "cpu" else resolve_backend("auto")

    def _eval_command(self, index: int) -> list[str]:
        stage = self.stages[index]
        launcher = self.launchers.get("eval") or (sys.executable, "-m", "medverl")
        command = [*launcher, "eval", "checkpoints", *(f"--model={label}={model}"
                                                      for label, model in self.eval_checkpoints(index)),
                   "--data", *(f"{label}={directory}" for label, directory in stage.benchmarks),
                   "--output", str(self.output / stage.name), "--backend", self.eval_backend(),
                   "--max-tokens", str(stage.max_tokens)]
        if stage.batch_size is not None:
            command += ["--batch-size", str(stage.batch_size)]
        if self.device == "cpu":
            command += ["--device", "cpu"]
        return command

    def command(self, index: int, environ: dict[str, str] | None = None) -> list[str]:
        """The exact command line of stage `index`."""
        stage = self.stages[index]
        if isinstance(stage, EvalStage):
            return self._eval_command(index)
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
                        f"data.image_patch_size={self.image_patch_size}",
                        f"trainer.rollout_data_dir={self.rollouts(stage)}"]
        else:
            launcher = self.launchers.get("sft") or self._torchrun(environ if environ is not None else os.environ)
            val = f"data.val_files={_hydra_list(self._parquet(stage.val))}" if stage.val else "data.val_files=null"
            specific = [f"model.path={model}", val]
        return [*launcher, *common, *specific, *self._overrides(stage)]

    def _overrides(self, stage: Stage) -> list[str]:
        """The device's overrides (none on CUDA), then the stage's own, which win."""
        device: tuple[str, ...] = ()
        if self.device == "cpu":
            from medverl.cpu import PPO_OVERRIDES, SFT_OVERRIDES

            device = PPO_OVERRIDES if self.trainer(stage) == "ppo" else SFT_OVERRIDES
        return [*device, *stage.overrides]

    def environment(self, stage: Stage) -> dict[str, str]:
        """The environment a stage's trainer runs in: verl's file logger to the stage's metrics, CPU platform."""
        if isinstance(stage, EvalStage):
            return {}
        env = {"VERL_FILE_LOGGER_PATH": str(self.metrics_log(stage))}
        if self.device == "cpu":
            from medverl.cpu import ENVIRONMENT

            env.update(ENVIRONMENT)
        return env

    def metrics_log(self, stage: Stage) -> Path:
        """Where verl's file logger writes the stage's metrics, one JSON line per step."""
        return self.output / "logs" / f"{stage.name}.metrics.jsonl"

    def rollouts(self, stage: Stage) -> Path:
        """Where a GRPO stage dumps each step's rollouts (``STEP.jsonl``)."""
        return self.output / stage.name / "rollouts"

    def check_environment(self) -> list[str]:
        """What this machine lacks to run the stages with the default launchers (empty when nothing)."""
        trainers = {self.trainer(s) for s in self.stages} - set(self.launchers)
        rollouts = {str(self.stage_config(s).actor_rollout_ref.rollout.name)
                    for s in self.stages if self.trainer(s) == "ppo" and "ppo" in trainers}
        problems = environment_problems(self.device, trainers - {"eval"}, self.gpus_per_node, rollouts)
        if "eval" in trainers:
            import importlib.util

            lacking = [m for m in ("torch", "torchvision") if importlib.util.find_spec(m) is None]
            if lacking and not any(p.startswith(lacking[-1]) for p in problems):
                problems.append(f"an eval stage generates with transformers and reads images with qwen_vl_utils, "
                                f"which need {' and '.join(lacking)}: install the torch and torchvision pair of "
                                "scripts/setup.sh")
        return problems

    def stage_config(self, stage: Stage) -> DictConfig:
        """A stage's recipe composed with verl's configs, the device's overrides and the stage's own."""
        from hydra import compose, initialize_config_dir
        from hydra.core.global_hydra import GlobalHydra
        from hydra.errors import HydraException
        from omegaconf.errors import OmegaConfBaseException

        GlobalHydra.instance().clear()
        try:
            with initialize_config_dir(config_dir=str(self.recipes.resolve()), version_base=None):
                return compose(stage.recipe, overrides=self._overrides(stage))
        except (HydraException, OmegaConfBaseException) as exc:  # they say which override is wrong
            raise PipelineError(f"stage {stage.name}: its recipe and overrides do not compose: {exc}") from None
        finally:
            GlobalHydra.instance().clear()

    def reward_kwargs(self, stage: Stage) -> dict:
        """The reward_kwargs a GRPO stage runs with."""
        from omegaconf import OmegaConf

        kwargs = OmegaConf.select(self.stage_config(stage), "reward.custom_reward_function.reward_kwargs")
        return OmegaConf.to_container(kwargs) if kwargs is not None else {}

    def check_data(self) -> list[str]:
        """Problems with the stages' data (empty when every directory is ready), checked before anything runs:
        each is a complete ``medverl prep`` job of the kind the recipe trains on, prepared at the stage's
        ``max_pixels``; GRPO data's prompt template fits the stage's reward options."""
        problems = []
        previous_pixels = None
        for stage in self.training_stages:
            kind = self.data_kind(stage)
            reward_kwargs = self.reward_kwargs(stage) if kind == "rl" else None
            for directory in (*stage.train, *stage.val):
                try:
                    prepared = open_prepared(directory, (kind,))
                except PreparedError as exc:
                    problems.append(f"stage {stage.name} ({stage.recipe}): {exc}")
                    continue
                pixels = prepared.options.get("max_pixels")
                if stage.max_pixels is not None and pixels != stage.max_pixels:
                    problems.append(f"stage {stage.name}: the schedule says max_pixels={stage.max_pixels}, {directory} "
                                    f"was prepared with --max-pixels {pixels}; prepare it again with "
                                    f"--max-pixels {stage.max_pixels}")
                if reward_kwargs is not None:
                    problems += [f"stage {stage.name}: {p}" for p in check_reward_options(directory, reward_kwargs)]
            if stage.max_pixels is not None and self.trainer(stage) == "sft":  # GRPO may roll out at less
                if previous_pixels is not None and stage.max_pixels < previous_pixels:
                    logger.warning("stage %s lowers max_pixels (%d < %d): the schedule is not low-to-high",
                                   stage.name, stage.max_pixels, previous_pixels)
                previous_pixels = stage.max_pixels
        return problems + self.check_evaluations()

    def check_evaluations(self) -> list[str]:
        """Problems of the eval stages (empty when none), checked before anything runs: every benchmark is a
        complete prepared RL directory; every checkpoint is the starting model, an earlier training stage's model,
        or a model directory that exists."""
        from medverl.errors import ConfigError
        from medverl.eval.run import check_model_directory

        problems = []
        for index, stage in enumerate(self.stages):
            if not isinstance(stage, EvalStage):
                continue
            for label, directory in stage.benchmarks:
                try:
                    open_prepared(directory, ("rl",))
                except PreparedError as exc:
                    problems.append(f"stage {stage.name} (eval): benchmark {label}: {exc}")
            earlier = {s.name for s in self.stages[:index] if isinstance(s, Stage)}  # they make their models
            others = {s.name: i for i, s in enumerate(self.stages)}
            for (label, ref), (_, model) in zip(self._eval_refs(index), self.eval_checkpoints(index), strict=True):
                if ref in earlier:
                    continue
                if ref in others:
                    what = "an eval stage" if isinstance(self.stages[others[ref]], EvalStage) else "a later stage"
                    problems.append(f"stage {stage.name} (eval): checkpoint {label} is {ref}, {what}: only the "
                                    f"starting model ({BASE}) and the stages before it have a model to evaluate")
                    continue
                try:
                    check_model_directory(model)
                except ConfigError as exc:
                    what = "the starting model" if ref == BASE else "no earlier stage makes it and"
                    problems.append(f"stage {stage.name} (eval): checkpoint {label}: {what} "
                                    f"{str(exc).removeprefix('--model ')}")
        return problems

    def _recipe(self, stage: Stage) -> dict:
        path = self.recipes / f"{stage.recipe}.yaml"
        if not path.is_file():
            known = sorted(p.stem for p in self.recipes.glob("*.yaml"))
            raise PipelineError(f"stage {stage.name}: no recipe {path}; known recipes: {', '.join(known)}")
        return yaml.safe_load(path.read_text(encoding="utf-8")) or {}

    def _parquet(self, directories: tuple[str, ...]) -> list[str]:
        try:
            return [str(shard.resolve()) for directory in directories for shard in open_prepared(directory).shards]
        except PreparedError as exc:
            raise PipelineError(str(exc)) from None

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


def environment_problems(device: str, trainers: set[str], processes: int, rollouts: set[str]) -> list[str]:
    """What a machine lacks to run verl's trainers on `device` (empty when nothing), each with its fix."""
    import importlib.util
    from importlib.metadata import entry_points

    def missing(*modules: str) -> list[str]:
        return [m for m in modules if importlib.util.find_spec(m) is None]

    problems: list[str] = []
    if not trainers:  # every stage runs through a launcher of the user's
        return problems
    if missing("torchvision"):
        problems.append("torchvision is not installed (verl reads every image through it): install the torch and "
                        "torchvision pair of scripts/setup.sh")
    if device == "cpu":
        if not any(ep.value == "medverl.cpu.plugin" for ep in entry_points(group="verl.plugins")):
            problems.append("medverl's CPU platform is not registered with verl (entry point medverl_cpu in "
                            "'verl.plugins'): reinstall medverl with pip install -e .")
        if "ppo" in trainers and (lacking := missing("transfer_queue", "zmq", "msgspec")):
            problems.append(f"GRPO on CPU needs {', '.join(lacking)}: pip install -e '.[cpu-train]'")
        return problems
    import torch

    if not torch.cuda.is_available():
        problems.append("no CUDA GPU is visible (torch.cuda.is_available() is False): run on a GPU machine, or try "
                        "the pipeline on this CPU with --cpu and a small model (README: train on a laptop first)")
    elif torch.cuda.device_count() < processes:
        problems.append(f"gpus_per_node is {processes} but {torch.cuda.device_count()} CUDA devices are visible")
    if "vllm" in rollouts and missing("vllm"):
        problems.append("the GRPO stage rolls out with vLLM, which is not installed: pip install -e '.[train]'")
    if missing("flash_attn"):
        problems.append("flash-attn is not installed; the recipes pack sequences with it (model.use_remove_padding): "
                        "pip install -e '.[train]'")
    return problems


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


def _report(pipeline: Pipeline, state: dict, out) -> None:
    """Gather every stage's metrics into OUTPUT/metrics.jsonl, draw OUTPUT/curves.png, write OUTPUT/summary.md."""
    logs = []
    for stage in pipeline.training_stages:
        if not any(metric_parts(pipeline.metrics_log(stage))):
            continue
        if pipeline.trainer(stage) == "ppo":
            options = RewardOptions.from_kwargs(pipeline.reward_kwargs(stage))
            logs.append(StageLog(stage.name, "ppo", pipeline.metrics_log(stage), pipeline.rollouts(stage),
                                 options.think_prefilled, options.require_think, options.format_weight))
        else:
            logs.append(StageLog(stage.name, "sft", pipeline.metrics_log(stage)))
    evaluations = [f"## Evaluation: {stage.name}\n\n" + table.read_text(encoding="utf-8")
                   for stage in pipeline.stages if isinstance(stage, EvalStage) and stage.name in state["stages"]
                   and (table := pipeline.output / stage.name / TABLE_MD).is_file()]
    if not logs and not evaluations:
        return
    table = ""
    if logs:
        rows = gather(logs, pipeline.output / "metrics.jsonl")
        curves = draw_curves(rows, pipeline.output / "curves.png")
        table = summary_table(rows, state.get("seconds", {}))
        print(f"metrics -> {pipeline.output / 'metrics.jsonl'}" + (f", curves -> {curves}" if curves else ""), file=out)
    table = "\n".join([table, *evaluations]).lstrip("\n")
    (pipeline.output / "summary.md").write_text(table, encoding="utf-8")
    print(table, file=out, flush=True)


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


def run_pipeline(pipeline: Pipeline, *, dry_run: bool = False, restart_from: str | None = None, out=None) -> int:
    """Run the stages not finished yet, in order, printing to `out` (stdout); returns 0, or raises
    :class:`PipelineError` naming the stage."""
    out = out or sys.stdout
    if problems := pipeline.check_data():
        raise PipelineError("the data is not ready:\n" + "\n".join(f"  - {p}" for p in problems))
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
        for name in names[names.index(restart_from):]:
            state["stages"].pop(name, None)
            stage_dir = pipeline.output / name
            if stage_dir.exists() and not dry_run:
                # verl resumes from the checkpoints it finds; a rerun starts clean, the old run is kept aside
                kept = stage_dir.with_name(f"{name}.before-{time.strftime('%Y%m%d-%H%M%S')}")
                stage_dir.rename(kept)
                print(f"[{name}] previous run moved to {kept}", file=out)
            if isinstance(pipeline.stages[names.index(name)], EvalStage) and not dry_run:
                for table in TABLE_FILES:  # the table will be made again; until then it would be stale
                    (pipeline.output / table).unlink(missing_ok=True)
    if problems := _missing_models(pipeline, state):
        raise PipelineError("a model a stage needs is missing:\n" + "\n".join(f"  - {p}" for p in problems))
    for index, stage in enumerate(pipeline.stages):
        command = pipeline.command(index)
        # what makes a finished stage the same stage (not the interpreter or launcher that ran it)
        if isinstance(stage, EvalStage):
            spec = json.loads(json.dumps({**asdict(stage), "models": pipeline.eval_checkpoints(index)}))
        else:
            spec = json.loads(json.dumps({**asdict(stage), "model": pipeline.input_model(index)}))
        done = state["stages"].get(stage.name)
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
        print(f"[{stage.name}] {shlex.join(command)}", file=out, flush=True)
        if dry_run:
            continue
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
        if isinstance(stage, EvalStage):
            table = _publish_eval_table(pipeline, stage)
            state["stages"][stage.name] = {"spec": spec, "table": str(pipeline.output / stage.name / TABLE_MD)}
            _save_state(pipeline, state)
            _report(pipeline, state, out)
            print(f"[{stage.name}] done, table {table}", file=out, flush=True)
            continue
        model = _saved_model(pipeline, stage)
        link = pipeline.stage_model(stage)
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(model.resolve(), target_is_directory=True)
        state["stages"][stage.name] = {"spec": spec, "model": str(model)}
        _save_state(pipeline, state)
        _report(pipeline, state, out)
        print(f"[{stage.name}] done, model {model}", file=out, flush=True)
    return 0


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
        return run_pipeline(pipeline, dry_run=args.dry_run, restart_from=args.restart_from)
    except PipelineError as exc:
        print(f"medverl pipeline: {exc}", file=sys.stderr)
        return 1 if isinstance(exc, StageFailed) else 2
