"""Model families: what the rest of medverl asks about a model (its tokens, image sizes, box units, mRoPE).

``family_of(model)`` finds a checkpoint's family; ``get_family(name)`` looks one up by name (``qwen2.5-vl``,
``qwen3-vl``); ``@register`` adds one (see :mod:`medverl.models.registry`).
"""

from medverl.models import qwen2_5_vl, qwen3_vl  # noqa: F401  (built-ins register)
from medverl.models.family import BOX_FORMATS, ModelFamily, TinyModel
from medverl.models.registry import (
    ENTRY_POINT_GROUP,
    FAMILIES,
    UnknownModelFamily,
    family_names,
    family_of,
    family_of_config,
    get_family,
    register,
)
from medverl.models.tiny import build_tiny_processor

__all__ = [
    "BOX_FORMATS",
    "ENTRY_POINT_GROUP",
    "FAMILIES",
    "ModelFamily",
    "TinyModel",
    "UnknownModelFamily",
    "build_tiny_processor",
    "family_names",
    "family_of",
    "family_of_config",
    "get_family",
    "register",
]
