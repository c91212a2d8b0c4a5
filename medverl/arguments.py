"""What the command groups share: the help format, common options, job summaries and exit statuses."""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import fields
from pathlib import Path

from medverl.errors import ConfigError
from medverl.rewards import RewardOptions

EXIT_OK, EXIT_NOTHING_USABLE, EXIT_USAGE = 0, 1, 2
EXIT_STATUS = """exit status, the same for every command:
  0  complete, with something written or scored
  1  complete, with nothing usable (every record rejected, every judge call failed), or with bad rows where every
     row counts (score, eval score, eval run, rewards check, validate)
  2  a usage or configuration error (a missing input, a directory in use, options that do not fit the data)
an unexpected error prints its traceback"""
_REWARD_DEFAULTS = {f.name: f.default for f in fields(RewardOptions)}


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's default in its help; descriptions keep their line breaks."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return "".join(indent + line for line in text.splitlines(keepends=True))


def _integer(value: str, minimum: int, wanted: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = minimum - 1
    if number < minimum:
        raise argparse.ArgumentTypeError(f"must be {wanted}, got {value!r}")
    return number


def positive_int(value: str) -> int:
    """An argparse type: an integer of at least 1."""
    return _integer(value, 1, "a positive integer")


def non_negative_int(value: str) -> int:
    """An argparse type: an integer of at least 0."""
    return _integer(value, 0, "an integer of 0 or more")


def _finite(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {value!r}")
    return number


def positive_float(value: str) -> float:
    """An argparse type: a finite number above 0 (seconds, sizes)."""
    number = _finite(value)
    if number <= 0:
        raise argparse.ArgumentTypeError(f"must be above 0, got {value}")
    return number


def unit_float(value: str) -> float:
    """An argparse type: a finite number in [0, 1] (thresholds, weights)."""
    number = _finite(value)
    if not 0 <= number <= 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {value}")
    return number


def directory(value: str) -> str:
    """An argparse type: an existing directory."""
    if not Path(value).expanduser().is_dir():
        raise argparse.ArgumentTypeError(f"must be an existing directory, got {value!r}")
    return value


def add_image_arguments(parser: argparse._ActionsContainer) -> None:
    """Where a record's image files may be read from, and how large they may be."""
    from medverl.data.files import DEFAULT_MAX_IMAGE_BYTES

    parser.add_argument("--image-root", action="append", default=[], metavar="DIR", type=directory,
                        help="directory image paths must lie in (after symlinks); relative paths are taken from it; "
                        "repeatable. Without it no image file is read (inline base64 still is)")
    parser.add_argument("--max-image-bytes", type=positive_int, default=DEFAULT_MAX_IMAGE_BYTES,
                        help="image files and inline images larger than this are rejected unread")


def add_plugins(parser: argparse._ActionsContainer) -> None:
    parser.add_argument(
        "--plugins", action="append", default=[], metavar="MODULE_OR_FILE",
        help="module or .py file registering more query types (repeatable)",
    )


def add_reward_options(parser: argparse._ActionsContainer) -> None:
    """The reward_kwargs of training, as options."""
    parser.add_argument("--format-weight", type=unit_float, default=_REWARD_DEFAULTS["format_weight"],
                        help="w in w*format + (1-w)*acc")
    parser.add_argument("--think-prefilled", action="store_true",
                        help="the chat template opened <think> (data prepared with --template think_prefilled)")
    parser.add_argument("--require-think", action="store_true", help="reasoning must be one <think> block")
    parser.add_argument("--max-answer-chars", type=positive_int, default=_REWARD_DEFAULTS["max_answer_chars"],
                        help="longer answers score acc 0")
    add_plugins(parser)


def reward_kwargs(args: argparse.Namespace) -> dict:
    """The reward_kwargs that :func:`add_reward_options` options stand for."""
    return {"format_weight": args.format_weight, "think_prefilled": args.think_prefilled,
            "require_think": args.require_think, "max_answer_chars": args.max_answer_chars,
            "plugins": tuple(args.plugins)}


def reward_options(args: argparse.Namespace) -> RewardOptions:
    """The :class:`RewardOptions` of :func:`add_reward_options` options; a value out of range is a usage error."""
    try:
        return RewardOptions(**reward_kwargs(args))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def print_job(manifest: dict, output: str | Path, written: str = "written") -> int:
    """Print a job's accounting; returns its exit status (1 when nothing was written)."""
    shards = f" in {len(manifest['shards'])} shard(s)" if manifest["shards"] else ""
    counts = "".join(f", {name} {count}" for name, count in manifest.get("counts", {}).items())
    print(f"read {manifest['read']}, {written} {manifest['written']}{shards}{counts}, rejected {manifest['rejected']}"
          f" -> {output}")
    for code, count in manifest["rejected_by_reason"].items():
        print(f"  {count:>8}  {code}")
    if manifest["rejected"]:
        print(f"every rejected record is listed with its reason in {Path(output) / manifest['rejects']}")
    if not manifest["written"]:
        print(f"nothing {written}", file=sys.stderr)
        return EXIT_NOTHING_USABLE
    return EXIT_OK
