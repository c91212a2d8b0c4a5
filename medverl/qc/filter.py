"""`medverl qc filter`: drop records below per-dimension thresholds and whole subsets whose mean fails.

Kept records are written back as they came in (``kept.jsonl``, ready for ``medverl prep``); every dropped record is
in ``rejects.jsonl`` with its reason: ``read == written (kept) + rejected (dropped)``.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

from medverl.arguments import print_job, unit_float
from medverl.data.job import Job, Reject, excerpt
from medverl.data.prepared import open_prepared
from medverl.errors import ConfigError
from medverl.qc.rules import DIMENSIONS

KEPT = "kept.jsonl"
THRESHOLD_NAMES = (*DIMENSIONS, "mean")


def parse_thresholds(specs: list[str]) -> dict[str, float]:
    """``["fluency=0.5", ...]`` as ``{dimension: minimum}``; an unknown dimension raises naming the known ones."""
    thresholds = {}
    for spec in specs:
        name, sep, value = spec.partition("=")
        try:
            if not sep or name not in THRESHOLD_NAMES:
                raise ValueError
            thresholds[name] = unit_float(value)
        except (ValueError, argparse.ArgumentTypeError):
            raise ConfigError(f"--min takes DIMENSION=VALUE with one of {', '.join(THRESHOLD_NAMES)} and a VALUE in "
                              f"[0, 1]; got {spec!r}") from None
    return thresholds


def _subset_means(rows: list[dict], subset_min: float | None) -> dict[str, float]:
    """The subsets whose mean score is under `subset_min`, with their means."""
    subset_scores = defaultdict(list)
    for r in rows:
        if r["status"] == "scored" and r["mean"] is not None:
            subset_scores[r["subset"]].append(r["mean"])
    means = {s: sum(v) / len(v) for s, v in subset_scores.items()}
    return {s: m for s, m in sorted(means.items()) if subset_min is not None and m < subset_min}


def filter_scores(
    scores_dir: str | Path, output: str | Path, thresholds: dict[str, float], subset_min: float | None = None,
    subset_key: str | None = None,
) -> dict:
    """Apply `thresholds` per record and `subset_min` to each subset's mean score; returns the manifest.

    Subsets are those of the scoring job, or the values of the records' field `subset_key`.
    """
    scores = open_prepared(scores_dir, ("qc_scores",))
    rows = list(scores.rows())
    if subset_key is not None:
        for r in rows:
            r["subset"] = str(json.loads(r["record"]).get(subset_key) or "(none)")
    scored = [r for r in rows if r["status"] == "scored"]
    for name in thresholds:
        if scored and all(r[name] is None for r in scored):
            raise ConfigError(f"--min {name}: no record has a {name} score (the rules scorer leaves "
                              "medical_correctness to the judge)")
    failing = _subset_means(rows, subset_min)
    spec = {"scores": str(scores_dir), "scores_job": scores.manifest["job"], "thresholds": thresholds,
            "subset_min": subset_min, "subset_key": subset_key}
    with Job(output, "qc_kept", spec, lines=KEPT, resumable=False,
             info={"failing_subsets": {k: round(v, 4) for k, v in failing.items()}}) as job:
        for r in rows:
            if r["status"] != "scored":
                code, reason = "not_scored", f"the judge failed ({r['error']}); rerun medverl qc score --resume"
            elif r["subset"] in failing:
                code, reason = "subset_below_threshold", f"subset {r['subset']!r} mean {failing[r['subset']]:.3f} < {subset_min}"
            else:
                low = [f"{n} {r[n]:.3f} < {v}" for n, v in thresholds.items() if r[n] is not None and r[n] < v]
                code, reason = ("below_threshold", "; ".join(low)) if low else ("", "")
            if code:
                job.reject(Reject(code, reason, r["index"], r["source"], excerpt(r["text"])))
            else:
                job.write_line(r["record"])
        job.commit(len(rows))
        return job.finish()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``medverl qc filter``'s arguments."""
    parser.add_argument("scores", help="a medverl qc score output directory")
    parser.add_argument("--output", required=True, help=f"directory for {KEPT} (the kept records as they came in), "
                        "rejects.jsonl and manifest.json")
    parser.add_argument("--min", action="append", default=[], metavar="DIMENSION=VALUE",
                        help=f"drop records scoring under VALUE on DIMENSION, one of {', '.join(THRESHOLD_NAMES)} "
                        "(repeatable)")
    parser.add_argument("--subset-min", type=unit_float, help="drop every subset whose mean score is lower")
    parser.add_argument("--subset-key", help="group subsets by this record field (default: the scoring job's)")


def run_command(args: argparse.Namespace) -> int:
    """Run ``medverl qc filter``: exit status 1 when no record is kept."""
    manifest = filter_scores(args.scores, args.output, parse_thresholds(args.min), args.subset_min, args.subset_key)
    return print_job(manifest, args.output, written="kept")
