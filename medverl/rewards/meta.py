"""Per-row reward parameters: the row's ``extra_info.meta``, a JSON object that ``medverl prep`` copies from a
record's ``meta`` (synonyms, tolerances, a box convention, ...). A reward reads it by naming ``meta`` in
``register(..., extra_info_keys=("meta",))``."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Mapping
from typing import TypeVar

from medverl.rewards.registry import InvalidReference

T = TypeVar("T")
MAX_META_CHARS = 1 << 20  # prep writes meta as canonical JSON; a larger one is not a row's parameters


def row_meta(meta: object) -> dict:
    """`meta` (a JSON object string, a mapping, or None/"" for none) as a dict.

    Raises:
        InvalidReference: meta that is not a JSON object, or larger than ``MAX_META_CHARS``.

    >>> row_meta('{"tolerance": 0.5}')
    {'tolerance': 0.5}
    >>> row_meta(None)
    {}
    """
    if meta is None or meta == "":
        return {}
    if isinstance(meta, Mapping):
        return dict(meta)
    if not isinstance(meta, str) or len(meta) > MAX_META_CHARS:
        raise InvalidReference(f"extra_info.meta must be a JSON object of at most {MAX_META_CHARS} characters")
    try:
        value = json.loads(meta)
    except (ValueError, RecursionError):
        value = None
    if not isinstance(value, dict):
        raise InvalidReference(f"extra_info.meta is not a JSON object: {meta[:80]!r}")
    return value


def parsed_per_meta(parse: Callable[[object], T]) -> Callable[[object], T]:
    """`parse(meta)`, cached per meta string (or None): the rows of a GRPO group share one, and parsing it once per
    rollout would be waste. A mapping is parsed every time; errors are never cached."""
    cached = functools.lru_cache(maxsize=4096)(parse)

    @functools.wraps(parse)
    def parsed(meta: object = None) -> T:
        return cached(meta) if meta is None or isinstance(meta, str) else parse(meta)

    return parsed
