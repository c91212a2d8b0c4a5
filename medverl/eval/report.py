"""The report of ``medverl eval score``: metrics per benchmark, the seed's table (markdown, CSV, a bar chart) and the
per-sample JSONL."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import unicodedata
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path

from medverl.data.job import write_text_atomically
from medverl.eval import medevalkit
from medverl.eval.benchmarks import BENCHMARKS, PUBLISHED, PUBLISHED_SIZES
from medverl.eval.judge import judged_counts
from medverl.eval.scoring import NO_PREDICTION, SampleScore

SAMPLES, REPORT = "samples.jsonl", "report.md"


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
            "parse_failures": sum(s.parse_failure for s in items),
            "missing": sum(s.reason == NO_PREDICTION for s in items),
            **judged_counts(items),
        }
        compat_open = [s.medevalkit_open for s in items if s.medevalkit_open is not None]
        if compat_open:  # --compat medevalkit: its open-question BLEU / ROUGE / F1, as its cal_metrics averages them
            metrics[source]["medevalkit_open"] = medevalkit.aggregate_open_metrics(compat_open)
    return metrics


def group_metrics(scores: list[SampleScore], key: str) -> dict[tuple[str, str], dict]:
    """Accuracy per (benchmark, value of meta[key]) for the questions that have it (language, modality, ...)."""
    groups: dict[tuple[str, str], list[float]] = defaultdict(list)
    for s in scores:
        if key in s.meta:
            groups[(s.data_source, str(s.meta[key]))].append(s.acc)
    return {k: {"n": len(v), "acc": sum(v) / len(v)} for k, v in sorted(groups.items())}


PUBLISHED_SUFFIX = " (published)"
SAMPLE_MARK = "*"  # a cell scored on fewer questions than the published number was measured on
TABLE_NOTE = (f"Accuracy (%). Rows marked (published) are the seed's table, measured with MedEvalKit on the full test "
              f"sets; a row \"A − B\" is run A minus B in points. {SAMPLE_MARK}: scored on a sample (fewer questions "
              "than the published number), so no difference from the published number is shown.")


def _row(name: str, values: list[float | None], sign: bool = False, samples: list[bool] | None = None) -> list[str]:
    known = [v for v in values if v is not None]
    average = sum(known) / len(known) if known and len(known) == len(values) else None
    cell = "{:+.1f}" if sign else "{:.1f}"
    marks = [SAMPLE_MARK if sample else "" for sample in samples or [False] * len(values)]
    average_mark = SAMPLE_MARK if any(marks) else ""
    return [name, *(cell.format(v) + mark if v is not None else "-"
                    for v, mark in zip([*values, average], [*marks, average_mark], strict=True))]


def seed_table(
    per_model: dict[str, dict[str, dict]], published: Mapping[str, Mapping[str, float]] = PUBLISHED,
) -> tuple[list[str], list[list[str]]]:
    """The seed's layout: one row per model, the benchmarks in the seed's order, then the average (accuracy %).

    The published rows (labelled "(published)") come first, for the benchmarks that were scored; then each run;
    then, per run and published row, the difference in points (run minus published).
    """
    present = [b for b in BENCHMARKS if any(b in m for m in per_model.values())]
    header = ["Model", *(BENCHMARKS[b] for b in present), "Avg."]
    reference = {name + PUBLISHED_SUFFIX: [values.get(b) for b in present] for name, values in published.items()}
    runs = {model: [100 * metrics[b]["acc"] if b in metrics else None for b in present]
            for model, metrics in per_model.items()}
    samples = {model: [b in metrics and metrics[b]["n"] < PUBLISHED_SIZES.get(b, 0) for b in present]
               for model, metrics in per_model.items()}
    rows = [_row(name, values) for name, values in reference.items()]
    rows += [_row(model, values, samples=samples[model]) for model, values in runs.items()]
    for model, values in runs.items():
        for name, ref in reference.items():
            rows.append(_row(f"{model} − {name}", [None if v is None or r is None or sample else v - r for v, r, sample
                                                   in zip(values, ref, samples[model], strict=True)], sign=True))
    return header, rows


# What could end a cell, open a code span, a link or image, raw HTML or an autolink, or forge an escape (a backslash
# makes each literal in CommonMark); emphasis is left alone: it changes no structure.
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")  # what makes a spreadsheet read a cell as a formula
_MARKDOWN_PUNCTUATION = re.compile(r"([\\`\[\]<>|])")
_INVISIBLE = frozenset(("Cc", "Cf", "Cs", "Zl", "Zp"))  # control, format (bidi overrides), surrogates, line breaks


def _visible(char: str) -> str:
    if unicodedata.category(char) not in _INVISIBLE:
        return char
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def markdown_cell(text: object) -> str:
    """`text` as one markdown table cell that is also safe to print to a terminal: table pipes, code spans, links and
    HTML are shown literally (backslash-escaped) and control and format characters (ANSI escapes, newlines, bidi
    overrides) as ``\\xNN`` / ``\\uNNNN`` escapes.

    >>> markdown_cell("a|b\\x1b[31m<script>")
    'a\\\\|b\\\\x1b\\\\[31m\\\\<script\\\\>'
    """
    return "".join(map(_visible, _MARKDOWN_PUNCTUATION.sub(r"\\\1", str(text))))


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A markdown table, every cell passed through :func:`markdown_cell`."""
    lines = ["| " + " | ".join(map(markdown_cell, header)) + " |", "|---|" + "---:|" * (len(header) - 1)]
    return "\n".join(lines + ["| " + " | ".join(map(markdown_cell, r)) + " |" for r in rows]) + "\n"


def csv_cell(text: object) -> str:
    """A cell a spreadsheet shows as text: one that would start a formula (``= + - @``, a tab or carriage return
    before more) and is not a number gets a leading ``'``; a lone ``-`` (no value) stays.

    >>> [csv_cell(c) for c in ("=HYPERLINK(1)", "-2.5", "+1", "@SUM(A1)", "-", "medverl")]
    ["'=HYPERLINK(1)", '-2.5', '+1', "'@SUM(A1)", '-', 'medverl']
    """
    text = str(text)
    if len(text) > 1 and text[0] in _FORMULA_STARTS:
        try:
            float(text)
        except ValueError:
            return "'" + text
    return text


def csv_table(header: list[str], rows: list[list[str]]) -> str:
    """CSV of the table, every cell passed through :func:`csv_cell`."""
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows([list(map(csv_cell, r)) for r in [header, *rows]])
    return buffer.getvalue()


def bar_chart(header: list[str], rows: list[list[str]], path: Path) -> None:
    """Grouped bars: accuracy per benchmark (and the average) for each model, as a PNG; published rows hatched."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = header[1:]
    rows = [r for r in rows if " − " not in r[0]]  # the differences are read in the tables
    width = 0.8 / max(len(rows), 1)
    figure, axes = plt.subplots(figsize=(max(6, 1.3 * len(columns)), 4), dpi=120)
    for i, row in enumerate(rows):
        values = [float(v.rstrip(SAMPLE_MARK)) if v != "-" else 0.0 for v in row[1:]]
        published = row[0].endswith(PUBLISHED_SUFFIX)
        # a "$" would start mathtext, which raises on what it cannot parse
        axes.bar([c + i * width for c in range(len(columns))], values, width, label=row[0].replace("$", r"\$"),
                 hatch="//" if published else None, alpha=0.6 if published else 1.0)
    axes.set_xticks([c + width * (len(rows) - 1) / 2 for c in range(len(columns))], columns, rotation=20)
    axes.set_ylabel("accuracy (%)")
    axes.set_ylim(0, 100)
    axes.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    figure.tight_layout()
    figure.savefig(path.with_name(f".{path.name}.tmp"), format="png")  # renamed once whole
    os.replace(path.with_name(f".{path.name}.tmp"), path)
    plt.close(figure)


def _medevalkit_open_lines(metrics: Mapping[str, dict]) -> list[str]:
    """The report's table of MedEvalKit's open-question metrics (``--compat medevalkit`` only)."""
    rows = {source: m["medevalkit_open"] for source, m in metrics.items() if "medevalkit_open" in m}
    if not rows:
        return []
    keys = medevalkit.OPEN_METRIC_KEYS
    lines = ["", "MedEvalKit's open-question metrics (utils/utils.py judge_open_end_vqa, averaged as its cal_metrics "
             "does; fractions). Its labels are kept: \"precision\" holds the token F1, \"recall\" the precision and "
             "\"f1\" the recall. Where MedEvalKit raises on some answer (an empty one fails its ROUGE), it writes no "
             "metrics for the benchmark: the cells are \"-\" and the raises are counted.", "",
             "| benchmark | open n | " + " | ".join(keys) + " | raises |", "|---|" + "---:|" * (len(keys) + 2)]
    for source, m in rows.items():
        cells = ["-" if m[k] is None else f"{m[k]:.4f}" for k in keys]
        lines.append(f"| {markdown_cell(source)} | {m['total']} | " + " | ".join(cells) + f" | {m['errors']} |")
    return lines


def write_report(runs: dict[str, list[SampleScore]], output: str | Path) -> dict[str, dict[str, dict]]:
    """Per-sample JSONL, metrics JSON, the seed table (markdown and CSV) and the bar chart, in `output`."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    per_model = {model: benchmark_metrics(scores) for model, scores in runs.items()}
    with (output / f".{SAMPLES}.tmp").open("w", encoding="utf-8") as f:  # renamed once whole
        for scores in runs.values():
            for s in scores:
                record = asdict(s)
                if record["medevalkit_open"] is None:  # only --compat medevalkit's open questions carry it
                    del record["medevalkit_open"]
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
    os.replace(output / f".{SAMPLES}.tmp", output / SAMPLES)
    header, rows = seed_table(per_model)
    lines = ["# Medical benchmarks", "", TABLE_NOTE, "", markdown_table(header, rows)]
    for model, metrics in per_model.items():
        lines += [f"## {markdown_cell(model)}", "", "| benchmark | n | acc | closed n | closed acc | open n | open acc "
                  "| open recall | open F1 | parse failures | missing |", "|---|" + "---:|" * 10]
        for source, m in metrics.items():
            cells = [m["n"], m["acc"], m["closed_n"], m["closed_acc"], m["open_n"], m["open_acc"], m["open_recall"],
                     m["open_f1"], m["parse_failures"], m["missing"]]
            lines.append(f"| {markdown_cell(source)} | " + " | ".join(
                "-" if c is None else f"{c:.3f}" if isinstance(c, float) else str(c) for c in cells) + " |")
        judged = {source: m for source, m in metrics.items() if m["judged"] or m["judge_failures"]}
        if judged:
            lines += ["", "LLM judge on the open answers (a failed call scores 0 and is counted here, apart from "
                      "wrong answers; a run given this run's --judge-cache asks only for these):", "",
                      "| benchmark | judged | judge failures |", "|---|---:|---:|"]
            lines += [f"| {markdown_cell(b)} | {m['judged']} | {m['judge_failures']} |" for b, m in judged.items()]
        lines += _medevalkit_open_lines(metrics)
        for key in ("language", "question_type", "modality"):
            groups = group_metrics(runs[model], key)
            if groups:
                lines += ["", f"by {key}:", "", f"| benchmark | {key} | n | acc |", "|---|---|---:|---:|"]
                lines += [f"| {markdown_cell(b)} | {markdown_cell(v)} | {g['n']} | {g['acc']:.3f} |"
                          for (b, v), g in groups.items()]
        lines.append("")
    write_text_atomically(output / REPORT, "\n".join(lines))
    write_text_atomically(output / "table.csv", csv_table(header, rows))
    write_text_atomically(output / "table.md", TABLE_NOTE + "\n\n" + markdown_table(header, rows))
    write_text_atomically(output / "metrics.json", json.dumps(per_model, indent=2))
    bar_chart(header, rows, output / "table.png")
    return per_model


