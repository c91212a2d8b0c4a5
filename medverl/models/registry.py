"""The model families medverl knows, and which one a checkpoint belongs to.

Add a family with one module::

    from medverl.models import ModelFamily, register

    @register
    def internvl() -> ModelFamily:
        return ModelFamily(name="internvl", ...)

imported before use, or named by an entry point of group ``medverl.model_families`` in the plugin package's metadata
(``internvl = "my_pkg.internvl"`` imports the module; ``internvl = "my_pkg.internvl:internvl"`` calls the function).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path

from medverl.errors import ConfigError
from medverl.models.family import ModelFamily
from medverl.registry import Registry, UnknownName

ENTRY_POINT_GROUP = "medverl.model_families"


class UnknownModelFamily(UnknownName, ConfigError):
    """A family name, or a model, that no registered family matches."""


class FamilyRegistry(Registry[ModelFamily]):
    """Model families by name."""

    unknown_error = UnknownModelFamily

    def _from_entry_point(self, name: str, obj: object) -> ModelFamily:
        family = obj() if callable(obj) else obj  # a family's function, or its record
        if isinstance(family, ModelFamily) and family.name != name:
            raise ValueError(f"entry point {name!r} of group {ENTRY_POINT_GROUP!r} names model family "
                             f"{family.name!r}; name the entry point after its family")
        return family  # type: ignore[return-value]  # add() checks that it is a ModelFamily

    def _same(self, existing: ModelFamily, value: ModelFamily) -> bool:
        return existing == value

    def _describe(self, value: ModelFamily) -> str:
        return f"another family record ({value!r:.100})"


FAMILIES = FamilyRegistry(
    "model family", ENTRY_POINT_GROUP, plural="model families", entry_type=ModelFamily,
    how=f"Add one with @medverl.models.register in a module imported first or named by an entry point of group "
        f"{ENTRY_POINT_GROUP!r}.",
)


def register(factory: Callable[[], ModelFamily]) -> Callable[[], ModelFamily]:
    """Decorator registering the family that `factory` returns under its name; a name can be registered once."""
    family = factory()
    FAMILIES.add(family.name, family)
    return factory


def get_family(name: str) -> ModelFamily:
    """The family registered as `name`; raises :class:`UnknownModelFamily` with the closest and the known names."""
    return FAMILIES.get(name)


def family_names() -> list[str]:
    """Sorted names of every family, entry points included."""
    return FAMILIES.names()


def family_of(model: str | os.PathLike) -> ModelFamily:
    """The family of a local model directory (from its ``config.json``) or of a hub id (from its name); never
    downloads anything.

    Raises:
        UnknownModelFamily: no family matches, or the directory has no ``config.json``.
    """
    path = Path(model).expanduser()
    if path.is_dir():
        config_file = path / "config.json"
        if not config_file.is_file():
            raise UnknownModelFamily(f"{model}: no config.json, so its model family is unknown; pass a Hugging Face "
                                     "model directory or a hub id")
        try:
            config = json.loads(config_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise UnknownModelFamily(f"{config_file}: cannot read it: {exc}") from None
        return family_of_config(config, where=str(model))
    name = os.fspath(model)
    if path.exists() or path.is_absolute() or name.startswith((".", "~")) or name.count("/") != 1:
        raise UnknownModelFamily(f"{model}: no such model directory, and not a hub id (owner/name)")
    found = [family for _, family in FAMILIES.items() if family.matches_hub_id(name)]
    if len(found) != 1:
        raise UnknownModelFamily(_no_family(name, "its name", found))
    return found[0]


def family_of_config(config: Mapping | object, *, where: str = "the model") -> ModelFamily:
    """The family whose ``model_type`` or ``architectures`` a model config (a ``config.json`` dict, or a
    transformers config, as verl binds one to a processor: ``processor.config``) has.

    Raises:
        UnknownModelFamily: no family, or more than one, matches.
    """
    values = config if isinstance(config, Mapping) else vars(config)
    model_type = values.get("model_type") or getattr(config, "model_type", None)
    architectures = set(values.get("architectures") or ())
    found = [family for _, family in FAMILIES.items()
             if model_type in family.model_types or architectures & set(family.architectures)]
    if len(found) != 1:
        raise UnknownModelFamily(_no_family(where, f"model_type {model_type!r}, architectures {sorted(architectures)}",
                                            found))
    return found[0]


def _no_family(model: str, seen: str, found: list[ModelFamily]) -> str:
    if found:
        return f"{model}: {seen} matches several model families: {', '.join(f.name for f in found)}"
    return (f"{model}: no model family matches {seen}. Known model families: {', '.join(family_names())}. "
            f"{FAMILIES.how}")
