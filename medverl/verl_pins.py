"""sha256 pins of the verl sources medverl relies on beyond verl's public API.

Where medverl patches a verl function, sets or reads a private verl attribute, or implements a verl class whose
contract is written only in its source, it pins that verl object's source by sha256 and calls :func:`check` before
relying on it. A verl that is not the one medverl was written against then stops medverl at once, naming each object
that changed and why medverl depends on it, instead of failing later in some obscure way.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
from collections.abc import Mapping
from typing import NamedTuple

WRITTEN_FOR = "0.9.1"


class Pin(NamedTuple):
    """The sha256 of a verl object's source in verl :data:`WRITTEN_FOR`, and what medverl does with the object."""

    sha256: str
    why: str


class VerlChanged(RuntimeError):
    """The installed verl's source of a pinned object is not the one medverl was written against."""


def source_hash(target: str) -> str:
    """sha256 of the source of a ``module:qualified.name`` object (the original where medverl replaced it)."""
    module_name, qualname = target.split(":")
    obj = importlib.import_module(module_name)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    obj = getattr(obj, "__wrapped_by_medverl__", obj)
    return hashlib.sha256(inspect.getsource(obj).encode()).hexdigest()


def changed(pins: Mapping[str, Pin]) -> dict[str, str]:
    """The pinned objects whose source differs: target -> what is there now (its sha256, or why it is gone)."""
    found = {}
    for target, pin in pins.items():
        try:
            now = f"sha256 {source_hash(target)}"
        except (ImportError, AttributeError, OSError, TypeError) as exc:
            now = f"gone ({type(exc).__name__}: {exc})"
        if now != f"sha256 {pin.sha256}":
            found[target] = now
    return found


def check(pins: Mapping[str, Pin]) -> None:
    """Raise :class:`VerlChanged` naming every pinned verl object whose source changed, and what medverl does with
    it."""
    found = changed(pins)
    if not found:
        return
    import verl

    objects = "\n".join(f"  {target}: {now}, pinned sha256 {pins[target].sha256}; medverl {pins[target].why}"
                        for target, now in found.items())
    raise VerlChanged(
        f"verl {verl.__version__} is installed, and the source of {len(found)} verl object(s) medverl relies on is "
        f"not the one of verl {WRITTEN_FOR}, which medverl was written against:\n{objects}\n"
        f"Install verl=={WRITTEN_FOR}, or read each object's new source, adapt medverl's use of it and update its pin."
    )
