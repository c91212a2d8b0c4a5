"""What the command groups share: the help format, common options, job summaries and exit statuses."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

EXIT_OK, EXIT_NOTHING_USABLE, EXIT_USAGE = 0, 1, 2
EXIT_STATUS = """exit status, the same for every command:
  0  complete, with something written or scored
  1  complete, with nothing usable (every record rejected, every judge call failed), or with bad rows where every
     row counts (score, eval score, eval run, rewards check, validate)
  2  a usage or configuration error (a missing input, a directory in use, options that do not fit the data)
an unexpected error prints its traceback"""


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's default in its help; descriptions keep their line breaks."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return "".join(indent + line for line in text.splitlines(keepends=True))


MAX_INT = 2**63 - 1  # what an int64 column or a C long holds


def _integer(value: str, minimum: int, wanted: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = minimum - 1
    if number < minimum:
        raise argparse.ArgumentTypeError(f"must be {wanted}, got {value!r}")
    if number > MAX_INT:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_INT}, got {value}")
    return number


def positive_int(value: str) -> int:
    """An argparse type: an integer of at least 1."""
    return _integer(value, 1, "a positive integer")


def non_negative_int(value: str) -> int:
    """An argparse type: an integer of at least 0."""
    return _integer(value, 0, "an integer of 0 or more")


def finite_float(value: str) -> float:
    """An argparse type: a finite number (no NaN or infinity)."""
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {value!r}")
    return number


def positive_float(value: str) -> float:
    """An argparse type: a finite number above 0 (seconds, sizes)."""
    number = finite_float(value)
    if number <= 0:
        raise argparse.ArgumentTypeError(f"must be above 0, got {value}")
    return number


def unit_float(value: str) -> float:
    """An argparse type: a finite number in [0, 1] (thresholds, weights)."""
    number = finite_float(value)
    if not 0 <= number <= 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {value}")
    return number


def directory(value: str) -> str:
    """An argparse type: an existing directory."""
    if not Path(value).expanduser().is_dir():
        raise argparse.ArgumentTypeError(f"must be an existing directory, got {value!r}")
    return value


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


def print_rejects(manifest: dict, output: str | Path | None) -> int:
    """Say how many rows could not be scored and where they are listed; returns the exit status (1 when any)."""
    if not manifest["rejected"]:
        return EXIT_OK
    print(f"\n{manifest['rejected']} row(s) could not be scored: {manifest['rejected_by_reason']}", file=sys.stderr)
    if output:
        print(f"each is listed with its line and reason in {Path(output) / manifest['rejects']}", file=sys.stderr)
    else:
        print("(--output DIR lists each with its line and reason)", file=sys.stderr)
    return EXIT_NOTHING_USABLE
