"""The reward options on the command line: one option per :class:`RewardOptions` field, help from its metadata."""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from dataclasses import fields

from medverl.errors import ConfigError
from medverl.rewards.scoring import RewardOptions

SCORING = ("format_weight", "think_prefilled", "require_think", "max_answer_chars", "plugins")
"""The options that change a score (the reward_kwargs of training); the others choose rows' rewards."""


def add_reward_options(parser: argparse._ActionsContainer, names: Iterable[str] = SCORING) -> None:
    """``--format-weight``, ``--think-prefilled``, ...: the :class:`RewardOptions` fields in `names`, as options.

    A bool field is a flag, a tuple field a repeatable option, any other takes one value (of the metadata's
    ``type``); defaults are the dataclass's.
    """
    names = set(names)
    for option in fields(RewardOptions):
        if option.name not in names:
            continue
        flag, meta = "--" + option.name.replace("_", "-"), dict(option.metadata)
        if isinstance(option.default, bool):
            parser.add_argument(flag, action="store_true", help=meta["help"])
        elif isinstance(option.default, tuple):
            parser.add_argument(flag, action="append", default=[], **meta)
        else:
            parser.add_argument(flag, default=option.default, **meta)


def add_plugins(parser: argparse._ActionsContainer) -> None:
    """``--plugins``: modules or files that register more query types."""
    add_reward_options(parser, ("plugins",))


def reward_kwargs(args: argparse.Namespace) -> dict:
    """The reward_kwargs that the :func:`add_reward_options` options in `args` stand for."""
    return {option.name: tuple(value) if isinstance(value, list) else value for option in fields(RewardOptions)
            if (value := getattr(args, option.name, None)) is not None}


def reward_options(args: argparse.Namespace) -> RewardOptions:
    """The :class:`RewardOptions` of the options in `args`; a value out of range is a usage error."""
    try:
        return RewardOptions(**reward_kwargs(args))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
