"""Named tables that other packages extend: a ``register(name)`` decorator and an entry-point group per table.

Rewards, record formats (converters), benchmarks, QC checks and prompt templates are each one :class:`Registry`.
A package adds to one with the table's decorator, or without importing medverl first through an entry point of the
table's group in its own packaging metadata::

    [project.entry-points."medverl.converters"]
    my_format = "my_pkg.formats:my_format"   # registers the object under the entry point's name
    my_formats = "my_pkg.formats"            # imports the module, whose decorators register

Entry points are loaded once per table, the first time a name is not found or the names are listed.
"""

from __future__ import annotations

import difflib
import importlib.metadata
import inspect
import threading
import weakref
from collections.abc import Callable
from typing import Generic, NamedTuple, TypeVar

V = TypeVar("V")


class UnknownName(KeyError):
    """A name that no entry of a table has; the message names the closest and the known ones."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


class PluginError(ImportError):
    """A plugin (an entry point, a module or a file) that cannot be loaded."""


class Snapshot(NamedTuple):
    """A table's state, from :meth:`Registry.snapshot`."""

    entries: dict
    entry_points_loaded: bool


_REGISTRIES: weakref.WeakSet[Registry] = weakref.WeakSet()


class Registry(Generic[V]):
    """A table of named entries, filled by :meth:`register` and by the entry points of group `group`.

    Args:
        what: what one name is, for messages ("query_type", "record format").
        group: the entry-point group other packages register through ("medverl.converters").
        plural: `what` in the plural (default: `what` + "s").
        how: the message's last sentence, telling how to add a name (default: the entry-point group).
        entry_type: what every entry must be an instance of (None: anything).

    >>> units = Registry("unit", "example.units")
    >>> @units.register("mm")
    ... def millimetres(x: float) -> float:
    ...     return x / 1000
    >>> units.get("mm")(5)
    0.005
    """

    unknown_error: type[UnknownName] = UnknownName

    def __init__(
        self, what: str, group: str, *, plural: str | None = None, how: str | None = None,
        entry_type: type | None = None,
    ) -> None:
        self.what, self.group, self.entry_type = what, group, entry_type
        self.plural = plural or f"{what}s"
        self.how = how or f"Register a new one with the {what} decorator or an entry point of group {group!r}."
        self._entries: dict[str, V] = {}
        self._lock = threading.RLock()
        self._entry_points_loaded = False
        _REGISTRIES.add(self)

    def register(self, name: str) -> Callable[[V], V]:
        """Decorator adding its object under `name`; a name can be registered once."""

        def decorator(value: V) -> V:
            self.add(name, value)
            return value

        return decorator

    def add(self, name: str, value: V) -> None:
        """Add `value` under `name`; adding the same object again (a re-imported module) changes nothing.

        Raises:
            ValueError: an empty name, or a name another object already has.
            TypeError: `value` is not an :attr:`entry_type`.
        """
        if not name or not isinstance(name, str):
            raise ValueError(f"{self.what} name must be a non-empty string, got {name!r}")
        if self.entry_type is not None and not isinstance(value, self.entry_type):
            raise TypeError(f"{self.what} {name!r} must be a {self.entry_type.__name__}, got {type(value).__name__}")
        with self._lock:
            existing = self._entries.get(name)
            if existing is None:
                self._entries[name] = value
            elif not self._same(existing, value):
                raise ValueError(f"{self.what} {name!r} is already registered by {self._describe(existing)}; "
                                 "pick another name")

    def get(self, name: str) -> V:
        """The entry `name`; raises :attr:`unknown_error` naming the closest and the known names."""
        value = self._entries.get(name)
        if value is not None:
            return value
        self.load_entry_points()
        value = self._entries.get(name)
        if value is None:
            raise self.unknown_error(self.unknown_message(name))
        return value

    def __contains__(self, name: object) -> bool:
        if name not in self._entries:
            self.load_entry_points()
        return name in self._entries

    def names(self) -> list[str]:
        """Sorted names of every entry, entry points included."""
        self.load_entry_points()
        return sorted(self._entries)

    def items(self) -> list[tuple[str, V]]:
        """``(name, entry)`` for every entry, sorted by name."""
        names = self.names()
        return [(name, self._entries[name]) for name in names]

    def unknown_message(self, name: object) -> str:
        """Why `name` is not found: the closest known name (as lm-eval says it), the known names, how to add one."""
        known = sorted(self._entries)
        close = difflib.get_close_matches(str(name), known, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        return f"unknown {self.what} {name!r}.{hint} Known {self.plural}: {', '.join(known)}. {self.how}"

    def load_entry_points(self) -> None:
        """Register the entries of installed packages (entry-point group :attr:`group`), once."""
        if self._entry_points_loaded:
            return
        with self._lock:
            if self._entry_points_loaded:
                return
            for ep in importlib.metadata.entry_points(group=self.group):
                try:
                    obj = ep.load()
                    if not inspect.ismodule(obj):  # a module only had to be imported: its decorators registered
                        self.add(ep.name, self._from_entry_point(ep.name, obj))
                except Exception as exc:
                    raise PluginError(
                        f"entry point {ep.name!r} = {ep.value!r} of group {self.group!r} failed to load: {exc}"
                    ) from exc
            self._entry_points_loaded = True

    def snapshot(self) -> Snapshot:
        """What is registered now, for :meth:`restore` (tests start each case from the same state)."""
        with self._lock:
            return Snapshot(dict(self._entries), self._entry_points_loaded)

    def restore(self, snapshot: Snapshot) -> list[str]:
        """Return to `snapshot`; returns the names of the modules loaded since that a caller may unimport."""
        with self._lock:
            self._entries = dict(snapshot.entries)
            self._entry_points_loaded = snapshot.entry_points_loaded
        return []

    def _from_entry_point(self, name: str, obj: object) -> V:
        """The entry an entry point's object stands for (the object itself unless a table says otherwise)."""
        return obj  # type: ignore[return-value]

    def _same(self, existing: V, value: V) -> bool:
        return existing is value

    def _describe(self, value: V) -> str:
        return f"{getattr(value, '__module__', '?')}.{getattr(value, '__qualname__', type(value).__name__)}"


def snapshot_all() -> dict[Registry, object]:
    """The state of every table that exists now, for :func:`restore_all`."""
    return {registry: registry.snapshot() for registry in list(_REGISTRIES)}


def restore_all(snapshots: dict[Registry, object]) -> list[str]:
    """Return every table in `snapshots` to its state; returns the plugin modules loaded since, to unimport."""
    modules: set[str] = set()
    for registry, snapshot in snapshots.items():
        modules.update(registry.restore(snapshot))
    return sorted(modules)
