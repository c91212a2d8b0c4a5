"""The query_type registry: a :class:`medverl.registry.Registry` of rewards, filled by decorators, entry points
and plugin files."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import logging
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Union

from medverl.registry import PluginError, Snapshot, UnknownName
from medverl.registry import Registry as NamedRegistry

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "medverl.rewards"
ANSWER_TYPES = ("closed", "open")


class Verdict(NamedTuple):
    """What a reward function may return instead of a bare float.

    Attributes:
        acc: accuracy in [0, 1].
        pred: the prediction it read from the answer (used by verl for majority voting).
        reason: why `acc` is below 1, for people reading a rollout; empty when correct.
    """

    acc: float
    pred: str = ""
    reason: str = ""


RewardFn = Callable[..., Union[float, Verdict]]
ReferenceValidator = Callable[..., None]


class InvalidReference(ValueError):
    """A ground truth (or its options) that no answer could match: a data-preparation error.

    A reward's ``validate`` raises it (or a plain ``ValueError``, read the same way) with what is wrong and the fix;
    ``medverl prep`` rejects the row as ``invalid_reference`` with that message and ``medverl rewards check``
    reports it.
    """


class UnknownQueryType(UnknownName):
    """A query_type that no registered reward handles."""


@dataclass(frozen=True, slots=True)
class RewardSpec:
    """A registered reward.

    Attributes:
        name: the query_type it scores.
        fn: ``fn(answer, golds, **params) -> float | Verdict``; `answer` is the stripped ``<answer>`` content,
            `golds` the acceptable answers, `params` the `extra_info` keys named in `extra_info_keys`.
        extra_info_keys: row fields passed to `fn` (and `validate`) as keyword arguments.
        validate: ``validate(golds, **params)`` raises :class:`InvalidReference` (or ``ValueError``) for a
            reference no answer can match; data preparation calls it on every row.
        source: where it came from ("built-in", a module or a file).
        answer_type: "closed" (one right answer among few: a letter, yes/no, a number) or "open" (free text, scored
            by overlap); evaluation reports the two apart unless a row's ``meta.answer_type`` says otherwise.
        whole_ground_truth: `golds` is the ground truth as one string, never split as a JSON list of alternatives
            (a box ``[x1, y1, x2, y2]`` is one answer, not four).
    """

    name: str
    fn: RewardFn
    extra_info_keys: tuple[str, ...] = ()
    validate: ReferenceValidator | None = None
    source: str = ""
    answer_type: str = "closed"
    whole_ground_truth: bool = False

    @property
    def doc(self) -> str:
        """First line of the reward function's docstring."""
        return (inspect.getdoc(self.fn) or "").partition("\n")[0]


class Registry(NamedRegistry[RewardSpec]):
    """Named rewards; built-ins register on import, third-party ones through entry points and plugins."""

    unknown_error = UnknownQueryType

    def __init__(self) -> None:
        super().__init__(
            "query_type", ENTRY_POINT_GROUP, plural="query types", entry_type=RewardSpec,
            how="Register a new one with @medverl.rewards.register(name) in a module listed in the 'plugins' "
                f"reward_kwarg or an entry point of group {ENTRY_POINT_GROUP!r}.",
        )
        self._plugins_loaded: set[str] = set()

    def register(  # type: ignore[override]  # a reward takes its scoring options with its name
        self,
        name: str,
        *,
        extra_info_keys: Sequence[str] = (),
        validate: ReferenceValidator | None = None,
        answer_type: str = "closed",
        whole_ground_truth: bool = False,
    ) -> Callable[[RewardFn], RewardFn]:
        """Decorator registering `fn` as the reward of query_type `name`; a name can be registered once. The
        options are those of the module's :func:`register`."""
        if not name or not isinstance(name, str):
            raise ValueError(f"query_type name must be a non-empty string, got {name!r}")
        if answer_type not in ANSWER_TYPES:
            raise ValueError(f"answer_type of query_type {name!r} must be one of {', '.join(ANSWER_TYPES)}, got "
                             f"{answer_type!r}")

        def decorator(fn: RewardFn) -> RewardFn:
            self.add(name, RewardSpec(name, fn, tuple(extra_info_keys), validate, _source_of(fn), answer_type,
                                      whole_ground_truth))
            return fn

        return decorator

    def specs(self) -> list[RewardSpec]:
        """Every registered reward, sorted by name."""
        return [spec for _, spec in self.items()]

    def load_plugins(self, plugins: Iterable[str]) -> None:
        """Import reward plugins (module names or ``.py`` files), each once per process; their ``@register``
        decorators fill the process-wide registry."""
        for plugin in plugins:
            if plugin in self._plugins_loaded:
                continue
            with self._lock:
                if plugin in self._plugins_loaded:
                    continue
                key = _plugin_key(plugin)
                if key not in self._plugins_loaded:  # the same file under another spelling of its path
                    _import_plugin(plugin)
                    self._plugins_loaded.add(key)
                    logger.info("loaded reward plugin %s", plugin)
                self._plugins_loaded.add(plugin)

    def snapshot(self) -> RegistrySnapshot:  # type: ignore[override]
        """What is registered and loaded now, for :meth:`restore` (tests start each case from the same state)."""
        with self._lock:
            return RegistrySnapshot(super().snapshot(), frozenset(self._plugins_loaded))

    def restore(self, snapshot: RegistrySnapshot) -> list[str]:  # type: ignore[override]
        """Return to `snapshot`; returns the names of the plugin modules loaded since, which Python keeps imported."""
        with self._lock:
            super().restore(snapshot.table)
            loaded = self._plugins_loaded - snapshot.plugins_loaded
            self._plugins_loaded = set(snapshot.plugins_loaded)
        return sorted({plugin_module_name(p) for p in loaded})

    def _from_entry_point(self, name: str, obj: object) -> RewardSpec:
        # `name = pkg.module:function` registers the function unless its decorator already did (same function)
        if not callable(obj):
            raise TypeError(f"query_type {name!r} must be a reward function, got {type(obj).__name__}")
        current = self._entries.get(name)
        if current is not None and current.fn is obj:
            return current
        return RewardSpec(name, obj, source=_source_of(obj))  # type: ignore[arg-type]

    def _same(self, existing: RewardSpec, value: RewardSpec) -> bool:
        return existing.fn is value.fn

    def _describe(self, value: RewardSpec) -> str:
        return f"{value.source} ({value.fn.__module__}.{value.fn.__qualname__})"


class RegistrySnapshot(NamedTuple):
    """A reward registry's state, from :meth:`Registry.snapshot`."""

    table: Snapshot
    plugins_loaded: frozenset[str]


def _source_of(fn: Callable) -> str:
    module = sys.modules.get(getattr(fn, "__module__", "") or "")
    if module is not None and module.__name__.startswith("medverl.rewards."):
        return "built-in"
    return getattr(module, "__file__", None) or getattr(fn, "__module__", "?")


def _is_file(plugin: str) -> bool:
    return plugin.endswith(".py") or "/" in plugin or "\\" in plugin


def _plugin_key(plugin: str) -> str:
    return str(Path(plugin).expanduser().resolve()) if _is_file(plugin) else plugin


def plugin_module_name(plugin: str) -> str:
    """The name a plugin is imported under: its module name, or a name made from a ``.py`` file's real path."""
    if not _is_file(plugin):
        return plugin
    path = Path(plugin).expanduser()
    return f"medverl_plugin_{path.stem}_{hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:10]}"


def _import_plugin(plugin: str) -> None:
    if not _is_file(plugin):
        try:
            importlib.import_module(plugin)
        except Exception as exc:
            raise PluginError(
                f"reward plugin module {plugin!r} failed to import: {exc}. Install it on every node "
                "or pass the path of a .py file."
            ) from exc
        return
    path = Path(plugin).expanduser()
    if not path.is_file():
        raise PluginError(
            f"reward plugin file {plugin!r} not found (resolved to {path.resolve()}); reward workers resolve "
            "relative paths from their own working directory: pass an absolute path on a filesystem every "
            "node sees, or install the plugin as a module"
        )
    module_name = plugin_module_name(plugin)
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise PluginError(f"reward plugin {plugin!r} is not a loadable Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # so its functions pickle by reference within this process
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[module_name]
        raise PluginError(f"reward plugin file {plugin!r} failed to load: {exc}") from exc


REGISTRY = Registry()


def register(
    name: str, *, extra_info_keys: Sequence[str] = (), validate: ReferenceValidator | None = None,
    answer_type: str = "closed", whole_ground_truth: bool = False,
) -> Callable[[RewardFn], RewardFn]:
    """Decorator registering a reward for query_type `name` in the process-wide registry.

    Args:
        extra_info_keys: row fields passed to the reward (and `validate`) as keyword arguments.
        validate: ``validate(golds, **params)`` checks a row's reference at data-preparation time and raises
            :class:`InvalidReference` (``from medverl.rewards import InvalidReference``; a plain ``ValueError`` is
            read the same way) saying what is wrong and how to fix it: ``medverl prep`` rejects the row as
            ``invalid_reference`` with that message and ``medverl rewards check`` reports it. Any other exception
            is a bug in `validate`.
        answer_type: "closed" or "open" (see :class:`RewardSpec`).
        whole_ground_truth: the ground truth is one answer, never a JSON list of alternatives.
    """
    return REGISTRY.register(name, extra_info_keys=extra_info_keys, validate=validate, answer_type=answer_type,
                             whole_ground_truth=whole_ground_truth)
