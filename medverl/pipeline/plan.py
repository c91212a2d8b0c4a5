"""A pipeline's stages as commands: the exact command line, environment and composed config of each, and the checks
made before anything runs (data, evaluations, machine)."""

from __future__ import annotations

import difflib
import importlib.util
import logging
import os
import secrets
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from omegaconf import DictConfig

from medverl import recipes_dir
from medverl.data.prepared import Prepared, PreparedError, open_prepared
from medverl.data.references import check_reward_options
from medverl.models import ModelFamily, UnknownModelFamily, family_of, get_family
from medverl.pipeline.file import BASE, EvalStage, PipelineError, Stage, read
from medverl.stages import CPU_ENVIRONMENT, KINDS, StageKind, kind_of_recipe
from medverl.training.mixing import Plan, plan

logger = logging.getLogger(__name__)

DEFAULT_RECIPES = recipes_dir()
LOOPBACK_INTERFACE = "lo"
MIXTURE_CLASS = ("pkg://medverl.training.mixture", "MixtureDataset")
# the dataset a recipe without data.custom_cls reads with, per trainer
VERL_DATASETS = {"ppo": ("pkg://verl.utils.dataset.rl_dataset", "RLHFDataset"),
                 "sft": ("pkg://verl.utils.dataset.multiturn_sft_dataset", "MultiTurnSFTDataset")}


@dataclass(frozen=True)
class Pipeline:
    """A pipeline file: the starting model, the machines, and the stages in order.

    Attributes:
        model: the starting model (hub id or directory).
        output: where checkpoints, logs, stage models and the state file go.
        stages: run in this order: training stages, and eval stages (:class:`EvalStage`).
        nnodes, gpus_per_node: the machines every stage uses.
        model_family: the model's family by name (:mod:`medverl.models`); None: found from the model.
        recipes: the recipe directory (default: the recipes medverl ships, :func:`medverl.recipes_dir`).
        launchers: the command that starts each trainer, ``sft`` and ``ppo`` (default: this Python's torchrun and
            ``python -m verl.trainer.main_ppo``), and ``eval`` (default: ``python -m medverl``, given
            ``eval checkpoints ...``).
        device: "cuda", or "cpu" for verl's trainers on CPU (:mod:`medverl.cpu`; ``gpus_per_node`` then counts
            trainer processes).
        interpolations: whether the stages' overrides may hold ``${...}`` (which Hydra resolves).
    """

    model: str
    output: Path
    stages: tuple[Stage | EvalStage, ...]
    nnodes: int = 1
    gpus_per_node: int = 8
    model_family: str | None = None
    recipes: Path = DEFAULT_RECIPES
    launchers: dict[str, tuple[str, ...]] = field(default_factory=dict)
    device: str = "cuda"
    interpolations: bool = False

    @classmethod
    def load(cls, path: str | Path) -> Pipeline:
        """Read a pipeline YAML file (:mod:`medverl.pipeline.file`); raises :class:`PipelineError` naming the bad
        key."""
        values, stages = read(path)
        model = values.pop("model")
        if Path(model).is_dir():  # a local model: absolute, because verl's Ray workers have their own directory
            model = str(Path(model).resolve())
        return cls(model=model, output=Path(values.pop("output")).resolve(), stages=stages,
                   **{k: Path(v) if k == "recipes" else v for k, v in values.items()})

    @property
    def family(self) -> ModelFamily:
        """The model's family: the one the file names, else the one its config (or hub id) says."""
        try:
            return get_family(self.model_family) if self.model_family else family_of(self.model)
        except UnknownModelFamily as exc:
            raise PipelineError(f"{exc}; name it with model_family: in the pipeline file") from None

    def kind(self, stage: Stage | EvalStage) -> StageKind:
        """A stage's kind: eval, or the kind its recipe makes (which a ``kind`` the file names must match)."""
        if isinstance(stage, EvalStage):
            return KINDS["eval"]
        kind = kind_of_recipe(self._recipe(stage))
        if stage.kind is not None and stage.kind != kind.name:
            raise PipelineError(f"stage {stage.name}: kind {stage.kind}, but recipe {stage.recipe} is a {kind.name} "
                                f"recipe: use a {stage.kind} recipe, or drop the stage's kind")
        return kind

    @property
    def training_stages(self) -> tuple[Stage, ...]:
        """The stages that train (every stage but the eval stages), in order."""
        return tuple(s for s in self.stages if isinstance(s, Stage))

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
        kind = self.kind(stage)
        if kind.trainer == "ppo":
            launcher = self.launchers.get("ppo") or (sys.executable, "-m", kind.module)
        else:
            launcher = self.launchers.get("sft") or self._torchrun(kind, environ if environ is not None else os.environ)
        return [*launcher, "--config-path", str(self.recipes.resolve()), "--config-name", stage.recipe,
                *self.overrides(index)]

    def overrides(self, index: int) -> list[str]:
        """Every Hydra override training stage `index`'s trainer gets: where its model, data and outputs are, the
        machines, the device's overrides, then the stage's own (which win). Paths are quoted for Hydra."""
        stage = self.stages[index]
        kind = self.kind(stage)
        val = _hydra_list(self._parquet(stage.val)) if stage.val else "null"
        arguments = [
            f"{kind.model_key}={_quoted(self.input_model(index))}",
            f"data.train_files={_hydra_list(self._parquet(stage.train))}", f"data.val_files={val}",
            f"trainer.default_local_dir={_quoted(str(self.checkpoints(stage)))}",
            f"trainer.experiment_name={stage.name}",
            f"trainer.nnodes={self.nnodes}",
            f"trainer.n_gpus_per_node={self.gpus_per_node}",
        ]
        if kind.trainer == "ppo":
            arguments += [f"data.image_patch_size={self.family.patch_size}",
                          f"trainer.rollout_data_dir={_quoted(str(self.rollouts(stage)))}"]
        arguments += self._overrides(stage)
        # after the stage's own: an override of data.custom_cls names the class each source is read with
        return [*arguments, *self._mixture_overrides(stage, arguments)] if stage.mixture else arguments

    def _mixture_overrides(self, stage: Stage, arguments: list[str]) -> list[str]:
        """The overrides that load a mixing stage's data through :mod:`medverl.training.mixture`: the class the
        recipe reads with (composed with `arguments`) wraps each source."""
        custom = _compose(self.recipes, stage.recipe, arguments).data.get("custom_cls") or {}
        path, name = ((custom.get("path"), custom.get("name")) if custom.get("path")
                      else VERL_DATASETS[self.kind(stage).trainer])
        mixture = stage.mixture
        sources = ",".join(
            f"{{name:{_quoted(s.name)},files:{_hydra_list(self._parquet((s.path,)))}"
            + (f",weight:{s.weight!r}}}" if s.weight is not None else "}") for s in mixture.sources)
        options = {"strategy": mixture.strategy, "temperature": mixture.temperature, "samples": mixture.samples,
                   "until": mixture.until, "seed": mixture.seed}
        return [f"data.custom_cls.path={MIXTURE_CLASS[0]}", f"data.custom_cls.name={MIXTURE_CLASS[1]}",
                f"+data.mixture.dataset.path={path}", f"+data.mixture.dataset.name={name}",
                f"+data.mixture.sources=[{sources}]",
                *(f"+data.mixture.{key}={value}" for key, value in options.items() if value is not None),
                f"+data.mixture.draws={_quoted(str(self.draws(stage)))}"]

    def mixture_plan(self, stage: Stage) -> Plan | None:
        """A mixing stage's epoch per source, from the rows of the prepared manifests (None when it does not mix)."""
        if stage.mixture is None:
            return None
        mixture = stage.mixture
        rows = [_rows(open_prepared(s.path)) for s in mixture.sources]
        try:
            return plan([s.name for s in mixture.sources], rows, [s.weight for s in mixture.sources],
                        strategy=mixture.strategy, temperature=mixture.temperature, samples=mixture.samples,
                        until=mixture.until)
        except ValueError as exc:
            raise PipelineError(f"stage {stage.name}: {exc}") from None

    def draws(self, stage: Stage) -> Path:
        """Where a mixing stage's processes log the sources they drew (:class:`medverl.training.mixing.DrawLog`)."""
        return self.output / "logs" / f"{stage.name}.draws"

    def _overrides(self, stage: Stage) -> list[str]:
        """The device's overrides (none on CUDA), then the stage's own, which win."""
        device = self.kind(stage).cpu_arguments() if self.device == "cpu" else ()
        return [*device, *stage.overrides]

    def environment(self, stage: Stage | EvalStage) -> dict[str, str]:
        """The environment a stage's trainer runs in: verl's file logger to the stage's metrics, the CPU platform,
        and on one machine what keeps its listeners to itself: gloo on the loopback interface, and a Ray cluster
        (which listens on every interface) that only holders of a fresh token can join."""
        if isinstance(stage, EvalStage):
            return {}
        env = {"VERL_FILE_LOGGER_PATH": str(self.metrics_log(stage)), **(CPU_ENVIRONMENT if self.device == "cpu" else {})}
        if self.nnodes == 1 and self.device == "cpu":
            env["GLOO_SOCKET_IFNAME"] = LOOPBACK_INTERFACE
        ray_given = any(key in os.environ for key in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN"))
        if self.nnodes == 1 and self.kind(stage).trainer == "ppo" and not ray_given:
            env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
        return env

    def checkpoints(self, stage: Stage) -> Path:
        """The stage's ``trainer.default_local_dir``, where verl saves its checkpoints."""
        return self.output / stage.name / "checkpoints"

    def saved_model(self, stage: Stage) -> Path:
        """The HF model directory of the stage's last checkpoint; :class:`PipelineError` when there is none."""
        model = self.kind(stage).latest_model(self.checkpoints(stage))
        if model is None:
            raise PipelineError(f"stage {stage.name} exited 0 but saved no checkpoint under {self.checkpoints(stage)}")
        if not (model / "config.json").is_file() or not any(model.glob("*.safetensors")):
            raise PipelineError(f"stage {stage.name}: no HF model in {model}; keep hf_model in the recipe's "
                                "checkpoint.save_contents")
        return model

    def metrics_log(self, stage: Stage) -> Path:
        """Where verl's file logger writes the stage's metrics, one JSON line per step."""
        return self.output / "logs" / f"{stage.name}.metrics.jsonl"

    def rollouts(self, stage: Stage) -> Path:
        """Where a GRPO stage dumps each step's rollouts (``STEP.jsonl``)."""
        return self.output / stage.name / "rollouts"

    def check_environment(self) -> list[str]:
        """What this machine lacks to run the stages with the default launchers (empty when nothing)."""
        trainers = {self.kind(s).trainer for s in self.stages} - set(self.launchers)
        rollouts = {str(self.stage_config(s).actor_rollout_ref.rollout.name)
                    for s in self.stages if self.kind(s).trainer == "ppo" and "ppo" in trainers}
        problems = environment_problems(self.device, trainers - {"eval"}, self.gpus_per_node, rollouts)
        if "eval" in trainers:
            lacking = [m for m in ("torch", "torchvision") if importlib.util.find_spec(m) is None]
            if lacking and not any(p.startswith(lacking[-1]) for p in problems):
                problems.append(f"an eval stage generates with transformers and reads images with qwen_vl_utils, "
                                f"which need {' and '.join(lacking)}: install the torch and torchvision pair of "
                                "scripts/setup.sh")
        return problems

    def stage_config(self, stage: Stage) -> DictConfig:
        """The config stage `stage`'s trainer composes: its recipe with verl's configs and every override of its
        command (:meth:`overrides`); :class:`PipelineError` naming the override when they do not compose."""
        overrides = self.overrides(self.stages.index(stage))
        try:
            return _compose(self.recipes, stage.recipe, overrides)
        except PipelineError as exc:
            mine = [o for o in stage.overrides if o.split("=", 1)[0][:1] not in ("+", "~")]
            base = _compose(self.recipes, stage.recipe, overrides[: len(overrides) - len(stage.overrides)])
            unknown = [f"override {o!r}: {problem}; a new key takes a leading + (+{o})"
                       for o in mine if (problem := _unknown_key(base, o.split("=", 1)[0]))]
            raise PipelineError(f"stage {stage.name}: " + (unknown[0] if unknown else str(exc))) from None

    def check_configs(self) -> list[str]:
        """Training stages whose trainer could not compose its config (empty when none): an override that is not
        Hydra syntax, a key the recipe does not have (the closest one is named), an interpolation not allowed."""
        problems = []
        for stage in self.training_stages:
            if not self.interpolations and (bad := [o for o in stage.overrides if "${" in o.split("=", 1)[-1]]):
                problems.append(f"stage {stage.name}: override {bad[0]!r} interpolates (${{...}} is resolved by "
                                "Hydra, ${oc.env:...} reads the environment): write the value, or set "
                                "interpolations: true in the pipeline file")
                continue
            try:
                self.stage_config(stage)
            except PipelineError as exc:
                problems.append(str(exc))
        return problems

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
            kind = self.kind(stage)
            if kind.name == "grpo" and not stage.val:
                problems.append(f"stage {stage.name}: GRPO needs validation data ('val'), prepared like its 'train'")
            reward_kwargs = self.reward_kwargs(stage) if kind.name == "grpo" else None
            names = {s.path: s.name for s in stage.mixture.sources} if stage.mixture else {}
            for directory in (*stage.train, *stage.val):
                source = f"source {names[directory]}: " if directory in names else ""
                try:
                    prepared = open_prepared(directory, (kind.data_kind,))
                except PreparedError as exc:
                    problems.append(f"stage {stage.name} ({stage.recipe}): {source}{exc}")
                    continue
                if source and not _rows(prepared):
                    problems.append(f"stage {stage.name}: {source}{directory} has no rows: remove it from the "
                                    "stage's train list, or prepare data into it")
                pixels = prepared.options.get("max_pixels")
                if stage.max_pixels is not None and pixels != stage.max_pixels:
                    problems.append(f"stage {stage.name}: the schedule says max_pixels={stage.max_pixels}, {directory} "
                                    f"was prepared with --max-pixels {pixels}; prepare it again with "
                                    f"--max-pixels {stage.max_pixels}")
                if reward_kwargs is not None:
                    problems += [f"stage {stage.name}: {p}" for p in check_reward_options(directory, reward_kwargs)]
            if stage.max_pixels is not None and kind.trainer == "sft":  # GRPO may roll out at less
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

    def _torchrun(self, kind: StageKind, environ: dict[str, str]) -> tuple[str, ...]:
        # torchrun of this interpreter, whether or not its environment is activated; on one machine with its
        # rendezvous on the loopback interface only
        runner = "medverl.training.launch" if self.nnodes == 1 else "torch.distributed.run"
        args = [sys.executable, "-m", runner, f"--nnodes={self.nnodes}", f"--nproc_per_node={self.gpus_per_node}"]
        if self.nnodes == 1:
            args.append("--standalone")
        else:
            missing = [k for k in ("NODE_RANK", "MASTER_ADDR", "MASTER_PORT") if k not in environ]
            if missing:
                raise PipelineError(f"nnodes={self.nnodes}: set {', '.join(missing)} and run the pipeline on every node")
            args += [f"--node_rank={environ['NODE_RANK']}", f"--master_addr={environ['MASTER_ADDR']}",
                     f"--master_port={environ['MASTER_PORT']}"]
        return (*args, "-m", kind.module)


def environment_problems(device: str, trainers: set[str], processes: int, rollouts: set[str]) -> list[str]:
    """What a machine lacks to run verl's trainers on `device` (empty when nothing), each with its fix."""
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


def _searchpath(recipes: Path, recipe: str) -> list[str]:
    """The override that points the recipe's ``pkg://`` search path entries at their folders, found without
    importing the packages (importing verl imports torch, which a small machine or a memory limit cannot load)."""
    raw = yaml.safe_load((recipes / f"{recipe}.yaml").read_text(encoding="utf-8")) or {}
    entries = ((raw.get("hydra") or {}).get("searchpath")) or []
    if not any(str(e).startswith("pkg://") for e in entries):
        return []
    paths = []
    for entry in map(str, entries):
        if entry.startswith("pkg://"):
            package, *rest = entry.removeprefix("pkg://").split(".")
            spec = importlib.util.find_spec(package)
            if spec is None or not spec.submodule_search_locations:
                return []  # Hydra will say what is missing
            entry = f"file://{Path(next(iter(spec.submodule_search_locations)), *rest)}"
        paths.append(entry)
    return [f"hydra.searchpath=[{','.join(paths)}]"]


def _compose(recipes: Path, recipe: str, overrides: list[str]) -> DictConfig:
    """`recipe` of `recipes` composed with `overrides`, as the trainer's Hydra composes it."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(recipes.resolve()), version_base=None):
            return compose(recipe, overrides=[*_searchpath(recipes, recipe), *overrides])
    except (HydraException, OmegaConfBaseException) as exc:
        raise PipelineError(f"its recipe and overrides do not compose: {_unparsable(overrides) or exc}") from None
    finally:
        GlobalHydra.instance().clear()


def _quoted(value: str) -> str:
    """`value` as one quoted Hydra string; a value Hydra cannot take as plain text (a quote, a backslash, ``${``) is
    a :class:`PipelineError`."""
    if any(c in value for c in "'\"\\") or "${" in value or not value.isprintable():
        raise PipelineError(f"a path or model with a quote, a backslash, '${{' or a control character cannot be "
                            f"passed to Hydra: {value!r}")
    return f"'{value}'"


def _unparsable(overrides: list[str]) -> str | None:
    """The first override Hydra's grammar rejects, with the reason (None when every one parses)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    parser = OverridesParser.create()
    for override in overrides:
        try:
            parser.parse_overrides([override])
        except OverrideParseException as exc:
            return f"override {override!r} is not Hydra syntax ({exc.message.splitlines()[0]})"
    return None


def _unknown_key(config: DictConfig, key: str) -> str | None:
    """What is wrong with dotted `key` in `config` (None when it is there), naming the closest key at that level."""
    node = config
    for depth, part in enumerate(parts := key.split(".")):
        if not isinstance(node, DictConfig):  # inside a list or a value: Hydra itself judges it
            return None
        known = [str(k) for k in node.keys()]
        if part not in known:
            where = ".".join(parts[:depth]) or "the top level"
            close = difflib.get_close_matches(part, known, n=1)
            hint = f"did you mean {'.'.join([*parts[:depth], close[0]])}?" if close else f"known: {', '.join(known)}"
            return f"{where} has no key {part!r}; {hint}"
        node = node._get_node(part)
    return None


def _rows(prepared: Prepared) -> int:
    """Rows of a prepared directory, as its manifest counts them."""
    return sum(int(shard.get("rows", 0)) for shard in prepared.manifest["shards"])


def _hydra_list(paths: list[str]) -> str:
    return "[" + ",".join(map(_quoted, paths)) + "]"


