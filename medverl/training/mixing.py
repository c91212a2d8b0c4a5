"""Weighted data mixtures without torch: each source's share, its samples per epoch, the epoch's index, and the
per-source draw logs. :mod:`medverl.training.mixture` (the dataset verl loads) and the pipeline (dry-run tables,
realized shares) both use it.

Shares: ``proportions`` takes them from the weights (a missing weight is the source's share of all rows, so no
weights at all is today's concatenation); ``temperature`` makes them proportional to ``rows ** (1 / T)`` (T = 1: by
size; larger T flattens towards equal shares, as in XLM's and mT5's language sampling). An epoch holds ``samples``
samples, or runs until the first (``until: first``) or the last (``until: last``) source is exhausted at those
shares (LLaMA-Factory's interleave_under / interleave_over), or by default as many as there are rows. Shares become
integer counts by largest remainder, so they sum to the epoch exactly.

The index packs ``(source, row)`` into one int64 per position (source in the bits above :data:`ROW_BITS`), built in
place and shuffled with a numpy Generator seeded by ``seed``: 80 MB for 10 million positions, and a sequential
sampler sees the sources interleaved too. A source with more samples than rows goes through fresh permutations of
its rows; one with fewer takes a seeded subset.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

STRATEGIES = ("proportions", "temperature")
UNTIL = ("first", "last")
ROW_BITS = 40  # rows per source below 2**40; sources below 2**23
ROW_MASK = (1 << ROW_BITS) - 1
MAX_LOGGED_POSITIONS = 1_000_000  # per process; past it a draw log keeps only counts (its file stays a few MB)


def check_weight(value: object) -> float:
    """A source's weight: a finite number > 0; raises ValueError saying what to write instead."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"weight {value!r} is not a number: write a number without quotes, e.g. weight: 0.5")
    if value == 0:
        raise ValueError("weight 0 leaves the source out of the mixture: give it a weight > 0 (weights are relative "
                         "shares), or remove it from the stage's train list")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"weight {value!r} is not a positive finite number: give it a weight > 0, e.g. 1")
    return float(value)


def check_options(strategy: str, temperature: float | None, samples: int | None, until: str | None,
                  weighted: bool) -> None:
    """Raise ValueError, with the fix, when a mixture's options contradict each other; `weighted`: a source has a
    weight."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy {strategy!r} is unknown: use one of {', '.join(STRATEGIES)}")
    if strategy == "temperature":
        if temperature is None:
            raise ValueError("strategy temperature needs a temperature T > 0 (1: by size; larger: flatter)")
        if isinstance(temperature, bool) or not isinstance(temperature, int | float) or not (
                math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"temperature {temperature!r} must be a finite number > 0 (1: by size; larger: flatter)")
        if weighted:
            raise ValueError("strategy temperature sets the shares from the sources' sizes: drop the weights, or "
                             "use strategy proportions")
    elif temperature is not None:
        raise ValueError("temperature applies to strategy temperature only: set strategy: temperature, or drop it")
    if samples is not None and until is not None:
        raise ValueError("samples and until both set the epoch's length: keep one of them")
    if until is not None and until not in UNTIL:
        raise ValueError(f"until {until!r} is unknown: use first or last")
    if samples is not None and (isinstance(samples, bool) or not isinstance(samples, int) or samples < 1):
        raise ValueError(f"samples {samples!r} must be a positive integer")


def shares(rows: Sequence[int], weights: Sequence[float | None], strategy: str = "proportions",
           temperature: float | None = None) -> np.ndarray:
    """Each source's share of an epoch (they sum to 1)."""
    sizes = np.asarray(rows, dtype=np.float64)
    if strategy == "temperature":
        raw = sizes ** (1.0 / float(temperature))
    else:
        natural = sizes / sizes.sum()
        raw = np.array([n if w is None else w for n, w in zip(natural, weights, strict=True)], dtype=np.float64)
    return raw / raw.sum()


def epoch_length(rows: Sequence[int], share: np.ndarray, samples: int | None = None, until: str | None = None) -> int:
    """Samples in an epoch: `samples`; the first (`until` first) or last (`until` last) source exhausted at `share`;
    else the total rows."""
    if samples is not None:
        return int(samples)
    if until is None:
        return int(sum(rows))
    drawn = [n / s for n, s in zip(rows, share, strict=True) if s > 0]
    # the tolerance keeps a source that is exactly exhausted from being rounded past its rows
    return math.floor(min(drawn) * (1 + 1e-12)) if until == "first" else math.ceil(max(drawn) * (1 - 1e-12))


def counts(share: np.ndarray, length: int) -> np.ndarray:
    """Integer samples per source summing to `length` exactly (largest remainder; ties go to the earlier source)."""
    quotas = share * length
    whole = np.floor(quotas).astype(np.int64)
    left = int(length - whole.sum())
    if left > 0:
        whole[np.argsort(-(quotas - whole), kind="stable")[:left]] += 1
    return whole


def build_index(rows: Sequence[int], samples: Sequence[int], seed: int) -> np.ndarray:
    """The epoch: one int64 per position packing ``(source << ROW_BITS) | row``, shuffled; `samples[i]` positions of
    source i (more than its rows: fresh permutations cycled; fewer: a seeded subset)."""
    rng = np.random.default_rng(seed)
    index = np.empty(int(sum(samples)), dtype=np.int64)
    start = 0
    for source, (size, count) in enumerate(zip(rows, samples, strict=True)):
        count = int(count)
        if not count:
            continue
        if not size:
            raise ValueError(f"source {source} has no rows but {count} samples")
        part = index[start : start + count]
        for offset in range(0, count - count % size, size):  # whole passes: a fresh permutation each
            window = part[offset : offset + size]
            window[:] = np.arange(size, dtype=np.int64)
            rng.shuffle(window)
        if rest := count % size:
            part[count - rest :] = rng.choice(size, rest, replace=False)
        part |= np.int64(source) << ROW_BITS
        start += count
    rng.shuffle(index)
    return index


def unpack(value: int) -> tuple[int, int]:
    """``(source, row)`` of an index entry."""
    return int(value) >> ROW_BITS, int(value) & ROW_MASK


@dataclass(frozen=True)
class Plan:
    """A mixture's epoch, per source: name, rows, weight (None: by size), share and samples."""

    names: tuple[str, ...]
    rows: tuple[int, ...]
    weights: tuple[float | None, ...]
    shares: tuple[float, ...]
    samples: tuple[int, ...]

    @property
    def length(self) -> int:
        return sum(self.samples)

    def table(self) -> str:
        """Markdown: each source's rows, weight, share and samples per epoch."""
        lines = ["| source | rows | weight | share | samples per epoch |", "|---|---:|---:|---:|---:|"]
        for name, rows, weight, share, count in zip(self.names, self.rows, self.weights, self.shares, self.samples,
                                                    strict=True):
            shown = "by size" if weight is None else f"{weight:g}"
            lines.append(f"| {name} | {rows} | {shown} | {share:.1%} | {count} |")
        lines.append(f"| total | {sum(self.rows)} | | 100% | {self.length} |")
        return "\n".join(lines)

    def realized(self, drawn: dict[str, int]) -> str:
        """Markdown: each source's requested share beside the samples `drawn` from it and their share."""
        total = sum(drawn.values())
        lines = ["| source | requested share | drawn | realized share |", "|---|---:|---:|---:|"]
        for name, share in zip(self.names, self.shares, strict=True):
            realized = f"{drawn.get(name, 0) / total:.1%}" if total else ""
            lines.append(f"| {name} | {share:.1%} | {drawn.get(name, 0)} | {realized} |")
        return "\n".join(lines)


def plan(names: Sequence[str], rows: Sequence[int], weights: Sequence[float | None], *,
         strategy: str = "proportions", temperature: float | None = None, samples: int | None = None,
         until: str | None = None, max_samples: int = -1) -> Plan:
    """The epoch of a mixture of sources with `rows` each; `max_samples` > 0 caps its length. Raises ValueError,
    naming the source, for an empty one."""
    for name, size in zip(names, rows, strict=True):
        if size < 1:
            raise ValueError(f"source {name} has no rows: remove it from the mixture, or prepare data into it")
    check_options(strategy, temperature, samples, until, any(w is not None for w in weights))
    share = shares(rows, weights, strategy, temperature)
    length = epoch_length(rows, share, samples, until)
    if max_samples > 0:
        length = min(length, max_samples)
    return Plan(tuple(names), tuple(int(r) for r in rows), tuple(weights), tuple(float(s) for s in share),
                tuple(int(c) for c in counts(share, length)))


class DrawLog:
    """Appends the draws of this process (and of each DataLoader worker, which has its own pid) to
    ``DIRECTORY/RANK-PID.jsonl``: one JSON line per `every` draws, ``{"t", "counts": {source: n}, "positions":
    {source: [epoch position, ...]}}`` (positions until :data:`MAX_LOGGED_POSITIONS` per process, then counts only).
    What is left is written when the process exits or the log is collected."""

    def __init__(self, directory: str | Path, names: Sequence[str], every: int) -> None:
        self.directory, self.names, self.every = Path(directory), tuple(names), max(1, every)
        self._pid: int | None = None
        self._buffer: list[tuple[int, int]] = []
        self._logged = 0

    def record(self, source: int, position: int) -> None:
        if self._pid != os.getpid():  # first draw of this process: a forked worker starts its own file
            self._start()
        self._buffer.append((source, position))
        if len(self._buffer) >= self.every:
            self.flush()

    def _start(self) -> None:
        import multiprocessing.util

        self._pid, self._buffer, self._logged = os.getpid(), [], 0
        self.directory.mkdir(parents=True, exist_ok=True)
        self._path = self.directory / f"{os.environ.get('RANK', '0')}-{self._pid}.jsonl"
        # runs at the exit of the main process and of multiprocessing (DataLoader worker) processes alike
        multiprocessing.util.Finalize(self, self.flush, exitpriority=10)

    def flush(self) -> None:
        """Append the buffered draws as one line."""
        if not self._buffer or self._pid != os.getpid():
            return
        line: dict = {"t": round(time.time(), 3),
                      "counts": dict(Counter(self.names[s] for s, _ in self._buffer))}
        if self._logged < MAX_LOGGED_POSITIONS:
            positions: dict[str, list[int]] = {}
            for source, position in self._buffer:
                positions.setdefault(self.names[source], []).append(position)
            line["positions"] = positions
            self._logged += len(self._buffer)
        self._buffer = []
        with open(self._path, "a", encoding="utf-8") as sink:
            sink.write(json.dumps(line, separators=(",", ":")) + "\n")


def draw_lines(directory: str | Path) -> Iterator[tuple[str, dict]]:
    """``(file name, line)`` of every draw log in `directory`, in the order they were written (by time); lines that
    are not draw logs are skipped."""
    lines = []
    for path in sorted(Path(directory).glob("*.jsonl")):
        for text in path.read_text(encoding="utf-8").splitlines():
            try:
                line = json.loads(text)
                float(line["t"]), dict(line["counts"])
            except (ValueError, KeyError, TypeError):
                continue
            lines.append((path.name, line))
    lines.sort(key=lambda pair: pair[1]["t"])
    yield from lines


def drawn_per_step(directory: str | Path, steps: Sequence[int], per_step: int) -> tuple[dict[int, dict[str, int]],
                                                                                          dict[str, int]]:
    """Samples drawn per source, cumulative by draw order, at each of `steps` (the draws of the first ``step *
    per_step``), and in all."""
    cumulative: Counter = Counter()
    at: dict[int, dict[str, int]] = {}
    pending = sorted(steps)
    for _, line in draw_lines(directory):
        batch = sum(line["counts"].values())
        while pending and sum(cumulative.values()) + batch > pending[0] * per_step:
            at[pending.pop(0)] = dict(cumulative)
        cumulative.update(line["counts"])
    for step in pending:
        at[step] = dict(cumulative)
    return at, dict(cumulative)
