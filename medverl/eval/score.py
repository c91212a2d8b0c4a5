"""`medverl eval score`: predictions against prepared benchmarks, with the rewards' extraction and the seed's table.

Ours (default): exactly the GRPO reward's rules: the answer is the ``<answer>`` content, an answer the reward
cannot read scores 0 and counts as a parse failure, nothing is guessed. ``compat="medevalkit"`` reproduces the
common harness where published numbers must be compared: yes/no read as substrings of the whole response (so
"nodule" reads as "no"), an unreadable multiple-choice answer given the most similar option (the harness may pick
at random; the most similar option keeps scoring deterministic), open answers scored by token recall.
"""

from __future__ import annotations

import csv
import difflib
import io
import json
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import pyarrow.parquet as pq

from medverl.eval.benchmarks import BENCHMARKS
from medverl.rewards import RewardOptions, answer_region, extract_choice, score_sample, tokens
from medverl.rewards.choice import gold_letters, parse_options
from medverl.rewards.scoring import parse_ground_truth

COMPAT_MODES = ("medevalkit",)


@dataclass(frozen=True)
class SampleScore:
    """One question scored: ``acc`` in [0, 1]; ``recall``/``f1`` of tokens for open questions."""

    model: str
    data_source: str
    index: int
    query_type: str
    answer_type: str
    acc: float
    parsed: bool
    pred: str
    reason: str
    recall: float | None
    f1: float | None
    meta: dict


class PredictionError(ValueError):
    """Predictions that do not line up with the prepared benchmark rows."""


def load_rows(data_dirs: Iterable[str | Path]) -> dict[tuple[str, int], dict]:
    """Benchmark rows of prepared directories keyed by (data_source, extra_info.index)."""
    rows = {}
    for directory in data_dirs:
        shards = sorted(Path(directory).glob("part-*.parquet"))
        if not shards:
            raise FileNotFoundError(f"{directory}: no part-*.parquet shards; run medverl eval prepare first")
        for shard in shards:
            table = pq.read_table(shard, columns=["data_source", "reward_model", "extra_info"])
            for row in table.to_pylist():
                rows[(row["data_source"], row["extra_info"]["index"])] = row
    return rows


def load_predictions(path: str | Path) -> dict[tuple[str, int], str]:
    """``{"data_source", "index", "response"}`` per line; duplicates and bad lines raise naming the line."""
    predictions = {}
    with Path(path).open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
                key = (str(item["data_source"]), int(item["index"]))
                response = item["response"]
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                raise PredictionError(f"{path}:{number}: need data_source, index and response ({exc})") from None
            if key in predictions:
                raise PredictionError(f"{path}:{number}: a second prediction for {key}")
            predictions[key] = "" if response is None else str(response)
    return predictions


def _token_recall_f1(pred: str, golds: tuple[str, ...]) -> tuple[float, float]:
    best = (0.0, 0.0)
    got = tokens(pred)
    for gold in golds:
        want = tokens(gold)
        common = len(got & want)
        if not common:
            continue
        recall, precision = common / len(want), common / len(got)
        best = max(best, (recall, 2 * recall * precision / (recall + precision)))
    return best


def _compat_medevalkit(response: str, row: dict) -> tuple[float, bool, str, str]:
    """(acc, parsed, pred, reason) under the common harness's rules."""
    info, golds = row["extra_info"], parse_ground_truth(row["reward_model"]["ground_truth"])
    text = answer_region(response)
    if "<answer>" in text and "</answer>" in text:
        text = text[text.find("<answer>") + 8 : text.rfind("</answer>")]
    query_type = info["query_type"]
    if query_type == "yes_no":
        low = text.lower()
        found = [w for w in ("yes", "no") if w in low]  # substrings, as the harness does
        pred = found[0] if len(found) == 1 else ""
        return float(pred != "" and pred in {g.strip().lower() for g in golds}), bool(pred), pred, ""
    if query_type == "multiple_choice":
        options = parse_options(info.get("options"))
        letter = extract_choice(text, options).letter
        if not letter and options:  # the harness's fallback: the most similar option
            ratios = [difflib.SequenceMatcher(None, text.lower(), o.lower()).ratio() for o in options]
            letter = "ABCDEFGHIJ"[ratios.index(max(ratios))]
            return float(letter in gold_letters(golds, options)), False, letter, "fallback: most similar option"
        return float(letter in gold_letters(golds, options)), bool(letter), letter, ""
    recall, _ = _token_recall_f1(text, golds)
    return recall, bool(tokens(text)), text.strip(), ""


def score_predictions(
    rows: dict[tuple[str, int], dict], predictions: dict[tuple[str, int], str], model: str, compat: str | None = None,
) -> list[SampleScore]:
    """Every row scored (a row without a prediction scores 0, reason "no prediction"); predictions for rows that
    are not there raise."""
    if compat is not None and compat not in COMPAT_MODES:
        raise ValueError(f"unknown compat mode {compat!r}; known: {', '.join(COMPAT_MODES)}")
    unknown = sorted(set(predictions) - set(rows))
    if unknown:
        raise PredictionError(f"{len(unknown)} prediction(s) for rows not in the data, e.g. {unknown[:3]}")
    options = RewardOptions()
    scores = []
    for key in sorted(rows):
        row = rows[key]
        info = row["extra_info"]
        meta = json.loads(info.get("meta") or "{}")
        golds = parse_ground_truth(row["reward_model"]["ground_truth"])
        response = predictions.get(key)
        answer_type = str(meta.get("answer_type") or ("open" if info["query_type"] in ("jaccard",) else "closed"))
        recall = f1 = None
        if response is None:
            acc, parsed, pred, reason = 0.0, False, "", "no prediction"
        elif compat == "medevalkit":
            acc, parsed, pred, reason = _compat_medevalkit(response, row)
        else:
            result = score_sample(response, row["reward_model"]["ground_truth"], info, options)
            acc, parsed, pred, reason = result.acc, result.parsed, result.pred, result.reason
        if answer_type == "open":
            recall, f1 = _token_recall_f1(pred, golds) if pred else (0.0, 0.0)
        scores.append(SampleScore(model, key[0], key[1], info["query_type"], answer_type, acc, parsed, pred, reason,
                                  recall, f1, meta))
    return scores


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def benchmark_metrics(scores: list[SampleScore]) -> dict[str, dict]:
    """Per benchmark: n, acc, closed and open counts and accuracy, open token recall and F1, parse failures."""
    by_source: dict[str, list[SampleScore]] = defaultdict(list)
    for s in scores:
        by_source[s.data_source].append(s)
    metrics = {}
    order = list(BENCHMARKS)
    for source, items in sorted(by_source.items(), key=lambda kv: (order.index(kv[0]) if kv[0] in order else 99, kv[0])):
        closed = [s for s in items if s.answer_type == "closed"]
        opened = [s for s in items if s.answer_type == "open"]
        if len(closed) + len(opened) != len(items):  # every question is open or closed, once
            raise RuntimeError(f"{source}: {len(closed)} closed + {len(opened)} open != {len(items)} questions")
        metrics[source] = {
            "n": len(items), "acc": _mean([s.acc for s in items]),
            "closed_n": len(closed), "closed_acc": _mean([s.acc for s in closed]),
            "open_n": len(opened), "open_acc": _mean([s.acc for s in opened]),
            "open_recall": _mean([s.recall for s in opened]), "open_f1": _mean([s.f1 for s in opened]),
            "parse_failures": sum(1 for s in items if not s.parsed and s.reason != "no prediction"),
            "missing": sum(1 for s in items if s.reason == "no prediction"),
        }
    return metrics


def group_metrics(scores: list[SampleScore], key: str) -> dict[tuple[str, str], dict]:
    """Accuracy per (benchmark, value of meta[key]) for the questions that have it (language, modality, ...)."""
    groups: dict[tuple[str, str], list[float]] = defaultdict(list)
    for s in scores:
        if key in s.meta:
            groups[(s.data_source, str(s.meta[key]))].append(s.acc)
    return {k: {"n": len(v), "acc": sum(v) / len(v)} for k, v in sorted(groups.items())}


def seed_table(per_model: dict[str, dict[str, dict]]) -> tuple[list[str], list[list[str]]]:
    """The seed's layout: one row per model, the benchmarks in the seed's order, then the average (accuracy %)."""
    present = [b for b in BENCHMARKS if any(b in m for m in per_model.values())]
    header = ["Model", *(BENCHMARKS[b] for b in present), "Avg."]
    rows = []
    for model, metrics in per_model.items():
        values = [100 * metrics[b]["acc"] if b in metrics else None for b in present]
        known = [v for v in values if v is not None]
        average = sum(known) / len(known) if len(known) == len(values) and known else None
        rows.append([model, *(f"{v:.1f}" if v is not None else "-" for v in values),
                     f"{average:.1f}" if average is not None else "-"])
    return header, rows


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows]) + "\n"


def csv_table(header: list[str], rows: list[list[str]]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows([header, *rows])
    return buffer.getvalue()


def bar_chart(header: list[str], rows: list[list[str]], path: Path) -> None:
    """Grouped bars: accuracy per benchmark (and the average) for each model, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = header[1:]
    width = 0.8 / max(len(rows), 1)
    figure, axes = plt.subplots(figsize=(max(6, 1.3 * len(columns)), 4), dpi=120)
    for i, row in enumerate(rows):
        values = [float(v) if v != "-" else 0.0 for v in row[1:]]
        axes.bar([c + i * width for c in range(len(columns))], values, width, label=row[0])
    axes.set_xticks([c + width * (len(rows) - 1) / 2 for c in range(len(columns))], columns, rotation=20)
    axes.set_ylabel("accuracy (%)")
    axes.set_ylim(0, 100)
    axes.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def write_report(runs: dict[str, list[SampleScore]], output: str | Path) -> dict[str, dict[str, dict]]:
    """Per-sample JSONL, metrics JSON, the seed table (markdown and CSV) and the bar chart, in `output`."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    per_model = {model: benchmark_metrics(scores) for model, scores in runs.items()}
    with (output / "samples.jsonl").open("w", encoding="utf-8") as f:
        for scores in runs.values():
            for s in scores:
                f.write(json.dumps(asdict(s), ensure_ascii=False) + "\n")
    header, rows = seed_table(per_model)
    lines = ["# Medical benchmarks", "", markdown_table(header, rows)]
    for model, metrics in per_model.items():
        lines += [f"## {model}", "", "| benchmark | n | acc | closed n | closed acc | open n | open acc | open recall "
                  "| open F1 | parse failures | missing |", "|---|" + "---:|" * 10]
        for source, m in metrics.items():
            cells = [m["n"], m["acc"], m["closed_n"], m["closed_acc"], m["open_n"], m["open_acc"], m["open_recall"],
                     m["open_f1"], m["parse_failures"], m["missing"]]
            lines.append(f"| {source} | " + " | ".join(
                "-" if c is None else f"{c:.3f}" if isinstance(c, float) else str(c) for c in cells) + " |")
        for key in ("language", "question_type", "modality"):
            groups = group_metrics(runs[model], key)
            if groups:
                lines += ["", f"by {key}:", "", f"| benchmark | {key} | n | acc |", "|---|---|---:|---:|"]
                lines += [f"| {b} | {v} | {g['n']} | {g['acc']:.3f} |" for (b, v), g in groups.items()]
        lines.append("")
    (output / "report.md").write_text("\n".join(lines), encoding="utf-8")
    (output / "table.csv").write_text(csv_table(header, rows), encoding="utf-8")
    (output / "metrics.json").write_text(json.dumps(per_model, indent=2), encoding="utf-8")
    bar_chart(header, rows, output / "table.png")
    return per_model
