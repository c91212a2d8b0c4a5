"""The pipeline file: every key it may hold, each with its type, default and meaning, written once.

:func:`read` checks a file against these keys and returns its stages; :func:`keys_table` renders them as the
README's reference table (a test keeps the two equal).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from medverl.stages import KINDS
from medverl.training.mixing import STRATEGIES, UNTIL, check_options, check_weight


class PipelineError(Exception):
    """A pipeline that cannot run or did not finish; the message says what to do."""


@dataclass(frozen=True)
class Source:
    """A train directory of a mixing stage: its name in the mixture and its weight (None: by size)."""

    path: str
    name: str
    weight: float | None = None


@dataclass(frozen=True)
class Mixture:
    """How a stage mixes its train directories (:mod:`medverl.training.mixture`), one :class:`Source` each."""

    sources: tuple[Source, ...]
    strategy: str = "proportions"
    temperature: float | None = None
    samples: int | None = None
    until: str | None = None
    seed: int = 0


@dataclass(frozen=True)
class Stage:
    """One training stage: a recipe, its data and what differs for this run; ``kind`` (cpt, sft, grpo) is the
    recipe's unless the file names it; ``mixture`` when a train directory has a weight or the stage a ``mixture``."""

    name: str
    recipe: str
    train: tuple[str, ...]
    val: tuple[str, ...] = ()
    max_pixels: int | None = None
    overrides: tuple[str, ...] = ()
    kind: str | None = None
    mixture: Mixture | None = None


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


BASE = "base"  # an eval stage's name for the pipeline's starting model
DEVICES = ("cuda", "cpu")
LAUNCHERS = ("sft", "ppo", "eval")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")


def _text(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int | float) or str(value) == "":
        raise ValueError(f"must be a non-empty string, got {value!r}")
    return str(value)


def _positive(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"must be a positive integer, got {value!r}")
    return value


def _flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"must be true or false, got {value!r}")
    return value


def _texts(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise ValueError(f"must be a list, got {value!r}")
    return tuple(_text(v) for v in value)


def _train(value: Any) -> tuple:
    """Directories, each a path or a mapping ``{path, weight, name}`` (:func:`_sources` checks those)."""
    if not isinstance(value, list):
        raise ValueError(f"must be a list, got {value!r}")
    return tuple(v if isinstance(v, dict) else _text(v) for v in value)


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"must be a number, got {value!r}")
    return float(value)


def _seed(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"must be an integer >= 0, got {value!r}")
    return value


def _name(value: Any) -> str:
    name = _text(value)
    if not _NAME.fullmatch(name) or name in (".", ".."):
        raise ValueError(f"must be letters, digits, '_', '.' or '-' (it names a directory of the output), got {name!r}")
    return name


def _choice(*choices: str) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}, got {value!r}")
        return value

    return check


def _launchers(value: Any) -> dict[str, tuple[str, ...]]:
    if not isinstance(value, dict):
        raise ValueError(f"must be a mapping of {', '.join(LAUNCHERS)} to a command (a list), got {value!r}")
    if unknown := set(value) - set(LAUNCHERS):
        raise ValueError(f"has unknown launcher(s) {sorted(map(str, unknown))}; known: {', '.join(LAUNCHERS)}")
    return {key: _texts(command) for key, command in value.items()}


def _labelled(value: Any) -> tuple[tuple[str, str], ...]:
    """A list (each item its own label) or a mapping ``{label: item}``."""
    if isinstance(value, dict):
        pairs = [(_text(k), _text(v)) for k, v in value.items()]
    elif isinstance(value, list):
        pairs = [(_text(v), _text(v)) for v in value]
    else:
        raise ValueError(f"must be a list or a mapping of label: item, got {value!r}")
    labels = [label for label, _ in pairs]
    if len(set(labels)) != len(labels):
        raise ValueError(f"must have distinct labels, got {labels}")
    return tuple(pairs)


def _benchmarks(value: Any) -> tuple[tuple[str, str], ...]:
    pairs = _labelled(value)
    if not pairs:
        raise ValueError("is empty: name at least one prepared benchmark")
    # a list's labels are the directories' names
    return pairs if isinstance(value, dict) else tuple((Path(d).name, d) for _, d in pairs)


@dataclass(frozen=True)
class Key:
    """One key of the pipeline file: its check (value -> what the pipeline keeps; raises ValueError), whether it must
    be there, its default as the README shows it, and what it means."""

    name: str
    check: Callable[[Any], Any]
    doc: str
    required: bool = False
    default: str = ""


PIPELINE_KEYS = (
    Key("model", _text, "the starting model: a model directory or a hub id", required=True),
    Key("output", _text, "where checkpoints, logs, stage models, curves and the state file go", required=True),
    Key("stages", lambda v: v, "the stages, run in this order (below)", required=True),
    Key("device", _choice(*DEVICES), "`cuda`, or `cpu` for verl's trainers on CPU (`--cpu` does the same)",
        default="cuda"),
    Key("nnodes", _positive, "machines every stage uses", default="1"),
    Key("gpus_per_node", _positive, "GPUs per machine (on CPU: trainer processes)", default="8"),
    Key("model_family", _text, "the model's family (`qwen2.5-vl`, `qwen3-vl` or a registered one): its image patch, "
        "vision tokens and box units", default="the model's, from its `config.json` or hub id"),
    Key("recipes", _text, "the recipe directory", default="the recipes medverl ships"),
    Key("interpolations", _flag, "allow `${...}` in overrides (Hydra resolves it; `${oc.env:...}` reads the "
        "environment)", default="false"),
    Key("launchers", _launchers, "the command that starts each trainer: `sft`, `ppo`, `eval` (a list each)",
        default="torchrun, `python -m verl.trainer.main_ppo`, `python -m medverl`"),
)
TRAIN_STAGE_KEYS = (
    Key("name", _name, "the stage's name, and its directory under `output`", required=True),
    Key("recipe", _text, "a recipe of `recipes` (without `.yaml`)", required=True),
    Key("kind", _choice(*KINDS), "`cpt`, `sft` or `grpo`; checked against the recipe", default="the recipe's"),
    Key("train", _train, "`medverl prep` output directories, concatenated; or mixed: an item `{path, weight, "
        "name}` (weight: a share, missing = by size; name: the directory's)", required=True),
    Key("val", _texts, "validation directories (a `grpo` stage needs them)", default="none"),
    Key("max_pixels", _positive, "the resolution its data must be prepared at (`medverl prep --max-pixels`)",
        default="unchecked"),
    Key("overrides", _texts, "Hydra overrides of the recipe, `key=value` each", default="none"),
    Key("mixture", lambda v: v, "mix the train directories with ratios (keys below; also made by any weight)",
        default="none: concatenated"),
)
SOURCE_KEYS = (
    Key("path", _text, "a `medverl prep` output directory", required=True),
    Key("weight", lambda value: value, "its weight in the stage's mixture (relative, > 0)",
        default="its share of all rows"),
    Key("name", _name, "its name in the mixture, the metrics and the summary", default="the directory's name"),
)
MIXTURE_KEYS = (
    Key("strategy", _choice(*STRATEGIES), "`proportions`: shares from the weights; `temperature`: share ∝ "
        "rows^(1/T)", default="proportions"),
    Key("temperature", _number, "T > 0 of the temperature strategy (1: by size; larger: flatter)", default="none"),
    Key("samples", _positive, "samples per epoch", default="the total rows"),
    Key("until", _choice(*UNTIL), "an epoch ends when the `first` or the `last` source is exhausted",
        default="the total rows"),
    Key("seed", _seed, "seeds the epoch's index (same seed, same order)", default="0"),
)
EVAL_STAGE_KEYS = (
    Key("name", _name, "the stage's name, and its directory under `output`", required=True),
    Key("kind", _choice("eval"), "`eval`", required=True),
    Key("benchmarks", _benchmarks, "prepared benchmarks: a list, or a mapping {label: directory}", required=True),
    Key("checkpoints", _labelled, "`base`, earlier stages' names or model directories: a list, or a mapping "
        "{label: ref}", default="`base` and every earlier training stage"),
    Key("max_tokens", _positive, "tokens per answer at most", default="2048"),
    Key("batch_size", _positive, "prompts per generate call", default="64 with vLLM, 8 with hf"),
)


MAX_FILE_BYTES = 1 << 20
MAX_VALUES = 100_000  # values of the file once its aliases are expanded (an alias bomb has billions)


class _Where:
    """Error locations in a pipeline file: the file, the line of a key, the stage."""

    def __init__(self, path: Path, lines: dict[tuple, int]) -> None:
        self.path, self.lines = path, lines

    def __call__(self, at: tuple, stage: str = "") -> str:
        for depth in range(len(at), -1, -1):
            if (line := self.lines.get(at[:depth])) is not None:
                return f"{self.path}:{line}" + (f": {stage}" if stage else "")
        return str(self.path) + (f": {stage}" if stage else "")


def _checked(spec: Any, keys: tuple[Key, ...], where: _Where, at: tuple, stage: str = "") -> dict[str, Any]:
    """`spec`'s values, each through its key's check; a missing, unknown or bad key is a :class:`PipelineError`."""
    if not isinstance(spec, dict):
        raise PipelineError(f"{where(at, stage)}: must be a mapping of keys ({', '.join(k.name for k in keys)}), got "
                            f"{spec!r:.200}")
    known = {key.name: key for key in keys}
    for name in spec:
        if name not in known:
            close = difflib.get_close_matches(str(name), known, n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise PipelineError(f"{where((*at, name), stage)}: unknown key '{name}'; {hint}known: {', '.join(known)}")
    values = {}
    for key in keys:
        if key.name not in spec or spec[key.name] is None:
            if key.required:
                raise PipelineError(f"{where(at, stage)}: '{key.name}' is required ({key.doc})")
            continue
        try:
            values[key.name] = key.check(spec[key.name])
        except ValueError as exc:
            raise PipelineError(f"{where((*at, key.name), stage)}: '{key.name}' {str(exc):.300}") from None
    return values


def _stage(spec: Any, where: _Where, index: int) -> Stage | EvalStage:
    at, stage = ("stages", index), f"stage {index}"
    if isinstance(spec, dict) and spec.get("kind") not in (None, *KINDS):
        raise PipelineError(f"{where((*at, 'kind'), stage)}: 'kind' must be one of {', '.join(KINDS)}, got "
                            f"{spec['kind']!r:.100}")
    if isinstance(spec, dict) and spec.get("kind") == "eval":
        values = _checked(spec, EVAL_STAGE_KEYS, where, at, stage)
        del values["kind"]
        return EvalStage(**values)
    values = _checked(spec, TRAIN_STAGE_KEYS, where, at, stage)
    named = f"stage {values['name']}"
    sources = _sources(values["train"], where, (*at, "train"), named)
    values["train"] = tuple(source.path for source in sources)
    if "mixture" in values or any(source.weight is not None for source in sources):
        values["mixture"] = _mixture(values.get("mixture", {}), sources, where, (*at, "mixture"), named)
    return Stage(**values)


def _sources(items: tuple, where: _Where, at: tuple, stage: str) -> tuple[Source, ...]:
    """The train items as sources; a bad weight or name is a :class:`PipelineError` naming the stage and the source."""
    sources = []
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            sources.append(Source(item, Path(item).name))
            continue
        label = f"{stage}: train item {index}"
        values = _checked(item, SOURCE_KEYS, where, (*at, index), label)
        path, name = values["path"], values.get("name", Path(values["path"]).name)
        try:
            weight = check_weight(values["weight"]) if "weight" in values else None
        except ValueError as exc:
            raise PipelineError(f"{where((*at, index), label)}: source {name} ({path}): {exc}") from None
        sources.append(Source(path, name, weight))
    names = [source.name for source in sources]
    if len(set(names)) != len(names):
        twice = next(n for n in names if names.count(n) > 1)
        raise PipelineError(f"{where(at, stage)}: two train sources are named {twice}: tell them apart with "
                            "{path: DIR, name: NAME}")
    return tuple(sources)


def _mixture(spec: Any, sources: tuple[Source, ...], where: _Where, at: tuple, stage: str) -> Mixture:
    """A stage's mixture from its ``mixture`` mapping; contradicting keys are a :class:`PipelineError`."""
    values = _checked(spec, MIXTURE_KEYS, where, at, stage)
    try:
        check_options(values.get("strategy", "proportions"), values.get("temperature"), values.get("samples"),
                      values.get("until"), any(source.weight is not None for source in sources))
    except ValueError as exc:
        raise PipelineError(f"{where(at, stage)}: mixture: {exc}") from None
    return Mixture(sources, **values)


def _size(node: yaml.Node, sizes: dict[int, int]) -> int:
    """How many values `node` holds once every alias in it is expanded (each node counted once per use)."""
    if id(node) not in sizes:
        children = node.value if isinstance(node, yaml.SequenceNode) else (
            [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else [])
        sizes[id(node)] = 1 + sum(_size(child, sizes) for child in children)
    return sizes[id(node)]


def _lines(node: yaml.Node, at: tuple, lines: dict[tuple, int]) -> None:
    """The 1-based line of every mapping key and list item under `node`, by its path."""
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode):
                lines[(*at, key.value)] = key.start_mark.line + 1
                _lines(value, (*at, key.value), lines)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            lines[(*at, index)] = item.start_mark.line + 1
            _lines(item, (*at, index), lines)


def _load(path: Path) -> tuple[Any, dict[tuple, int]]:
    """The file's YAML and its lines, bounded: at most :data:`MAX_FILE_BYTES`, :data:`MAX_VALUES` once expanded."""
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise PipelineError(f"{path}: a pipeline file is at most {MAX_FILE_BYTES} bytes")
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PipelineError(f"{path}: cannot read the pipeline file: {exc}") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        if node is None:
            return {}, {}
        if _size(node, {}) > MAX_VALUES:
            raise PipelineError(f"{path}: its anchors and aliases (&, *) expand to more than {MAX_VALUES} values")
        lines: dict[tuple, int] = {}
        _lines(node, (), lines)
        return yaml.SafeLoader("").construct_document(node), lines
    except yaml.YAMLError as exc:
        raise PipelineError(f"{path}: not valid YAML: {exc}") from None
    except RecursionError:
        raise PipelineError(f"{path}: nested too deeply") from None


def read(path: str | Path) -> tuple[dict[str, Any], tuple[Stage | EvalStage, ...]]:
    """A pipeline file's top-level values and its stages, checked; raises :class:`PipelineError` naming the file,
    the line, the stage and the key."""
    raw, lines = _load(Path(path))
    where = _Where(Path(path), lines)
    values = _checked(raw if raw is not None else {}, PIPELINE_KEYS, where, ())
    if not isinstance(values["stages"], list) or not values["stages"]:
        raise PipelineError(f"{where(('stages',))}: 'stages' must be a non-empty list of stages, got "
                            f"{values['stages']!r:.200}")
    stages = tuple(_stage(spec, where, i) for i, spec in enumerate(values.pop("stages")))
    names = [s.name for s in stages]
    if len(set(names)) != len(names):
        raise PipelineError(f"{path}: stage names must be unique, got {names}")
    if BASE in names and any(isinstance(s, EvalStage) for s in stages):
        raise PipelineError(f"{path}: an eval stage calls the starting model '{BASE}': name no stage {BASE}")
    return values, stages


def keys_table() -> str:
    """Markdown: every key of the pipeline file, of its two kinds of stage, of a weighted train item and of a
    mixture, with default and meaning."""
    lines = []
    for title, keys in (("the file", PIPELINE_KEYS), ("a training stage", TRAIN_STAGE_KEYS),
                        ("a `train` item `{path, weight, name}`", SOURCE_KEYS), ("a stage's `mixture`", MIXTURE_KEYS),
                        ("an eval stage", EVAL_STAGE_KEYS)):
        lines += [f"| key of {title} | default | meaning |", "|---|---|---|"]
        lines += [f"| `{k.name}` | {'required' if k.required else k.default} | {k.doc} |" for k in keys]
        lines.append("")
    return "\n".join(lines)
