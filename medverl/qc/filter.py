"""`medverl qc filter`: drop records below per-dimension thresholds and whole subsets whose mean fails.

Kept records are written back as they came in (``kept.jsonl``, ready for ``medverl prep``); every dropped record is
in ``rejects.jsonl`` with its reason, and ``read == kept + dropped`` (the manifest says so).
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import pyarrow.parquet as pq

from medverl.qc.rules import DIMENSIONS


def parse_thresholds(specs: list[str]) -> dict[str, float]:
    """``["fluency=0.5", ...]`` as ``{dimension: minimum}``; an unknown dimension raises naming the known ones."""
    thresholds = {}
    for spec in specs:
        name, sep, value = spec.partition("=")
        if not sep or name not in (*DIMENSIONS, "mean"):
            raise ValueError(f"--min takes DIMENSION=VALUE with one of {', '.join((*DIMENSIONS, 'mean'))}; got {spec!r}")
        thresholds[name] = float(value)
    return thresholds


def filter_scores(
    scores_dir: str | Path, output: str | Path, thresholds: dict[str, float], subset_min: float | None = None,
    subset_key: str | None = None,
) -> dict:
    """Apply `thresholds` per record and `subset_min` to each subset's mean score; returns the manifest.

    Subsets are those of the scoring job, or the values of the records' field `subset_key`.
    """
    rows = [r for shard in sorted(Path(scores_dir).glob("scores-*.parquet")) for r in pq.read_table(shard).to_pylist()]
    if not rows:
        raise FileNotFoundError(f"{scores_dir}: no scores-*.parquet; run medverl qc score first")
    if subset_key is not None:
        for r in rows:
            r["subset"] = str(json.loads(r["record"]).get(subset_key) or "(none)")
    scored = [r for r in rows if r["status"] == "scored"]
    for name in thresholds:
        if scored and all(r[name] is None for r in scored):
            raise ValueError(f"--min {name}: no record has a {name} score (the rules scorer leaves "
                             "medical_correctness to the judge)")
    subset_scores = defaultdict(list)
    for r in scored:
        if r["mean"] is not None:
            subset_scores[r["subset"]].append(r["mean"])
    failing_subsets = {s: sum(v) / len(v) for s, v in subset_scores.items()
                       if subset_min is not None and sum(v) / len(v) < subset_min}
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    kept, by_reason = 0, defaultdict(int)
    with (output / "kept.jsonl").open("w", encoding="utf-8") as keep, (output / "rejects.jsonl").open(
        "w", encoding="utf-8"
    ) as rejects:
        for r in rows:
            if r["status"] != "scored":
                code, reason = "not_scored", f"the judge failed ({r['error']}); rerun medverl qc score --resume"
            elif r["subset"] in failing_subsets:
                code = "subset_below_threshold"
                reason = f"subset {r['subset']!r} mean {failing_subsets[r['subset']]:.3f} < {subset_min}"
            else:
                low = [f"{n} {r[n]:.3f} < {v}" for n, v in thresholds.items() if r[n] is not None and r[n] < v]
                code, reason = ("below_threshold", "; ".join(low)) if low else ("", "")
            if not code:
                keep.write(r["record"] + "\n")
                kept += 1
                continue
            by_reason[code] += 1
            rejects.write(json.dumps({"index": r["index"], "source": r["source"], "code": code, "reason": reason,
                                      "excerpt": r["text"][:200]}, ensure_ascii=False) + "\n")
    manifest = {"read": len(rows), "kept": kept, "dropped": len(rows) - kept, "dropped_by_reason": dict(by_reason),
                "thresholds": thresholds, "subset_min": subset_min, "subset_key": subset_key,
                "failing_subsets": {k: round(v, 4) for k, v in sorted(failing_subsets.items())}}
    if manifest["read"] != manifest["kept"] + manifest["dropped"]:
        raise RuntimeError("internal error: filter accounting does not add up")
    (output / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest
