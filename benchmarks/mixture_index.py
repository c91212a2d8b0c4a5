"""The mixture's epoch index (medverl.training.mixing.build_index) for 10 million rows across 10 sources: time and
peak memory, beside a plain concatenation (``np.arange`` + shuffle of the same length) measured in the same run.

    python benchmarks/mixture_index.py [--rows 10000000] [--sources 10] [--repeats 3]

Sources of unequal sizes, weighted so that some are upsampled and some downsampled. Peak memory is numpy's
allocations as tracemalloc traces them; PASS needs at most 200 MB and 5 s.
"""

from __future__ import annotations

import argparse
import time
import tracemalloc

import numpy as np

from medverl.training.mixing import build_index, plan

LIMIT_MB, LIMIT_S = 200.0, 5.0


def measure(build) -> tuple[float, float]:
    """Wall seconds of one call of `build`, and the peak MB traced during it."""
    tracemalloc.start()
    started = time.perf_counter()
    result = build()
    seconds = time.perf_counter() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del result
    return seconds, peak / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--sources", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    sizes = np.arange(1, args.sources + 1, dtype=np.float64)
    rows = [int(r) for r in sizes / sizes.sum() * args.rows]
    rows[-1] += args.rows - sum(rows)
    mixture = plan([f"s{i}" for i in range(args.sources)], rows, [1.0] * args.sources)  # equal shares
    print(f"{args.sources} sources, {sum(rows):,} rows ({min(rows):,} to {max(rows):,}), "
          f"{mixture.length:,} samples per epoch, equal shares: each source {mixture.samples[0]:,} samples")

    def concatenation() -> np.ndarray:
        index = np.arange(mixture.length, dtype=np.int64)
        np.random.default_rng(0).shuffle(index)
        return index

    results = {}
    for name, build in (("concatenation", concatenation),
                        ("mixture", lambda: build_index(mixture.rows, mixture.samples, seed=0))):
        runs = [measure(build) for _ in range(args.repeats)]
        results[name] = (min(s for s, _ in runs), max(m for _, m in runs))
        print(f"{name:>13}: {results[name][0]:.2f} s, peak {results[name][1]:.0f} MB")
    seconds, peak = results["mixture"]
    base_s, base_mb = results["concatenation"]
    print(f"mixture / concatenation: time x{seconds / base_s:.2f}, memory x{peak / base_mb:.2f}")
    ok = seconds <= LIMIT_S and peak <= LIMIT_MB
    verdict = "PASS" if ok else "FAIL"
    print(f"{verdict}: {seconds:.2f} s (limit {LIMIT_S:.0f} s), {peak:.0f} MB (limit {LIMIT_MB:.0f} MB)")


if __name__ == "__main__":
    main()
