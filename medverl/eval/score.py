"""Scoring predictions with the rewards' rules: ``medverl score`` and ``medverl eval score``.

``medverl score`` reads predictions that carry their own ground truth; ``eval score`` reads predictions keyed by
(data_source, index) against prepared benchmark directories. Both score each answer with the GRPO reward's rules
(the ``<answer>`` content; an answer the reward cannot read scores 0 and counts as a parse failure; nothing is
guessed), reject bad lines into ``rejects.jsonl`` with their line number and reason, and exit 1 when there is one.
``compat="medevalkit"`` gives MedEvalKit's rule-path verdicts (:mod:`medverl.eval.medevalkit`), for comparison
with numbers published from it: yes/no as substrings (so "nodule" reads as "no"), open answers by exact match after
its parse, an unreadable multiple-choice answer given the most similar choice, MMMU's random letter under its seed;
its open questions also carry its BLEU / ROUGE / F1 (``medevalkit_open``, per sample and per benchmark).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import random
import sys
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from medverl.arguments import (
    EXIT_NOTHING_USABLE,
    EXIT_OK,
    add_reward_options,
    non_negative_int,
    positive_float,
    positive_int,
    reward_options,
)
from medverl.data.job import Job, Rejected, fingerprint_inputs
from medverl.data.prepared import open_prepared
from medverl.data.records import iter_jsonl, json_object
from medverl.errors import ConfigError
from medverl.eval import medevalkit
from medverl.eval.benchmarks import BENCHMARKS, PUBLISHED
from medverl.eval.judge import AnswerJudge, judge_open_answers, judged_counts
from medverl.qc.judge import JudgeConfig
from medverl.rewards import (
    REGISTRY,
    InvalidReference,
    RewardOptions,
    UnknownQueryType,
    score_sample,
    tokens,
)
from medverl.rewards.choice import parse_options
from medverl.rewards.scoring import parse_ground_truth

SCORE_FIELDS = ("solution_str", "ground_truth")
PREDICTION_FIELDS = ("data_source", "index", "response")
SAMPLES, REPORT, JUDGE_CACHE = "samples.jsonl", "report.md", "judge_cache.sqlite"


@dataclass(frozen=True)
class SampleScore:
    """One answer scored: ``score`` as training sees it, ``acc`` in [0, 1], the prediction read and why points were
    lost; ``recall``/``f1`` of tokens for open questions."""

    model: str
    data_source: str
    index: int
    query_type: str
    answer_type: str
    score: float
    acc: float
    format: float
    parsed: bool
    pred: str
    reason: str
    recall: float | None = None
    f1: float | None = None
    meta: dict = field(default_factory=dict)
    id: object = None
    judge: str | None = None  # with an LLM judge: "correct", "wrong" or "failed" (the call failed: not a verdict)
    medevalkit_open: dict | None = None  # --compat medevalkit, its open questions: MedEvalKit's BLEU/ROUGE/F1 values


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


COMPAT_MODES = ("medevalkit",)


def _compat_medevalkit(
    response: str, ground_truth: object, info: Mapping, meta: Mapping, rng: random.Random,
) -> tuple[float, bool, str, str, dict | None]:
    """(acc, parsed, pred, reason, open metrics) by MedEvalKit's rule path (:mod:`medverl.eval.medevalkit`); the
    open metrics (``medevalkit.open_metrics``) are None for a question MedEvalKit does not score as open."""
    view = meta.get("medevalkit")
    if not isinstance(view, Mapping):
        golds = parse_ground_truth(ground_truth)
        view = medevalkit.view_from_query_type(str(info.get("query_type")), golds[0] if golds else "",
                                               parse_options(info.get("options")))
    result = medevalkit.verdict(view, response, rng)
    reason = f"fallback: {result.fallback}" if result.fallback else ""
    return float(result.correct), not result.fallback, result.pred, reason, medevalkit.open_metrics(view, response)


def score_answer(
    response: str, ground_truth: object, extra_info: Mapping, options: RewardOptions, *, model: str = "",
    data_source: str = "unknown", index: int = 0, compat: str | None = None, id: object = None,
    rng: random.Random | None = None,
) -> SampleScore:
    """Score one answer; raises :class:`InvalidReference` or :class:`UnknownQueryType` for a bad reference.

    `rng` draws MedEvalKit's random letters under ``compat="medevalkit"`` (one per benchmark, seeded as
    MedEvalKit seeds it, advanced in question order)."""
    meta = json.loads(extra_info.get("meta") or "{}") if isinstance(extra_info.get("meta"), str) else {}
    result = score_sample(response, ground_truth, extra_info, options)
    acc, parsed, pred, reason = result.acc, result.parsed, result.pred, result.reason
    open_metrics = None
    if compat == "medevalkit":
        acc, parsed, pred, reason, open_metrics = _compat_medevalkit(
            response, ground_truth, extra_info, meta, rng or random.Random(medevalkit.MEDEVALKIT_SEED))
    answer_type = str(meta.get("answer_type") or REGISTRY.get(result.query_type).answer_type)
    recall = f1 = None
    if answer_type == "open":
        recall, f1 = _token_recall_f1(pred, parse_ground_truth(ground_truth)) if pred else (0.0, 0.0)
    return SampleScore(model, data_source, index, result.query_type, answer_type, result.score, acc, result.format,
                       parsed, pred, reason, recall, f1, meta, id, medevalkit_open=open_metrics)


# --- medverl score: predictions with their own ground truth ---------------------------------------------------


@dataclass(slots=True)
class Group:
    """Running totals of one table row."""

    n: int = 0
    score: float = 0.0
    acc: float = 0.0
    formatted: int = 0
    parse_failures: int = 0

    def add(self, sample: SampleScore) -> None:
        self.n += 1
        self.score += sample.score
        self.acc += sample.acc
        self.formatted += sample.format == 1.0
        self.parse_failures += sample.format == 1.0 and not sample.parsed

    def cells(self, name: str) -> list[str]:
        if not self.n:
            return [name, "0", "-", "-", "-", "-"]
        return [name, str(self.n), f"{self.score / self.n:.3f}", f"{self.acc / self.n:.3f}",
                f"{100 * self.formatted / self.n:.1f}%", str(self.parse_failures)]


@dataclass(slots=True)
class ScoreSummary:
    """Totals per query_type and per data_source."""

    by_query_type: dict[str, Group] = field(default_factory=lambda: defaultdict(Group))
    by_data_source: dict[str, Group] = field(default_factory=lambda: defaultdict(Group))
    overall: Group = field(default_factory=Group)

    def add(self, sample: SampleScore) -> None:
        self.by_query_type[sample.query_type].add(sample)
        self.by_data_source[sample.data_source].add(sample)
        self.overall.add(sample)

    def markdown(self) -> str:
        """Both tables as markdown."""
        tables = []
        for title, groups in (("query_type", self.by_query_type), ("data_source", self.by_data_source)):
            header = [title, "n", "score", "acc", "format pass", "parse failures"]
            rows = [groups[name].cells(name) for name in sorted(groups)] + [self.overall.cells("**all**")]
            tables.append(markdown_table(header, rows))
        return "\n".join(tables)


def _extra_info(row: Mapping) -> dict:
    """The extra_info verl would pass: the row's own ``extra_info`` plus top-level query_type and options."""
    extra = row.get("extra_info") or {}
    if not isinstance(extra, Mapping):
        raise InvalidReference(f"extra_info must be an object, got {type(extra).__name__}")
    extra = dict(extra)
    for key in ("query_type", "options", "index"):
        if key in row:
            extra[key] = row[key]
    return extra


def score_file(path: str, options: RewardOptions, output: str | Path | None = None) -> tuple[ScoreSummary, dict]:
    """Score every line of a predictions JSONL (``-``: standard input) as training would.

    Each line holds ``solution_str``, ``ground_truth`` and ``query_type`` (or an ``extra_info`` that has it), and
    optionally ``options``, ``data_source``, ``id``. With `output`, ``samples.jsonl`` gets one line per scored row
    and ``rejects.jsonl`` one per bad row (bad JSON, a missing field, an unknown query_type, an invalid reference).

    Returns:
        The tables' totals, and the job's manifest.
    """
    records = iter_jsonl(path)
    spec = {"input": fingerprint_inputs([path]) if path != "-" else "-", "options": asdict(options)}
    summary = ScoreSummary()
    with Job(output, "scores", spec, lines=SAMPLES if output is not None else None, resumable=False) as job:
        for record in records:
            row = json_object(record, SCORE_FIELDS)
            if isinstance(row, Rejected):
                job.reject(row)
                continue
            try:
                sample = score_answer(row["solution_str"], row["ground_truth"], _extra_info(row), options,
                                      data_source=str(row.get("data_source") or "unknown"), index=record.position,
                                      id=row.get("id"))
            except (InvalidReference, UnknownQueryType) as exc:
                job.reject(record.rejected("invalid_reference" if isinstance(exc, InvalidReference)
                                           else "unknown_query_type", str(exc)))
                continue
            summary.add(sample)
            line = {"line": record.position, "data_source": sample.data_source, "id": sample.id,
                    "query_type": sample.query_type, "score": sample.score, "acc": sample.acc,
                    "format": sample.format, "pred": sample.pred, "reason": sample.reason}
            job.write_line(json.dumps(line, ensure_ascii=False))
        job.commit(job.written + job.rejected)
        manifest = job.finish()
    if output is not None:
        (Path(output) / REPORT).write_text(summary.markdown(), encoding="utf-8")
    return summary, manifest


def add_score_arguments(parser: argparse.ArgumentParser) -> None:
    """``medverl score``'s arguments."""
    parser.add_argument("--input", required=True, help="predictions JSONL (solution_str, ground_truth, query_type, "
                        "optional options, data_source, id, extra_info), or - for standard input")
    parser.add_argument("--output", help="directory for samples.jsonl (each row's score, prediction and reason), "
                        "report.md (the tables), rejects.jsonl and manifest.json")
    add_reward_options(parser)


def run_score(args: argparse.Namespace) -> int:
    """Run ``medverl score``: exit status 1 when a row cannot be scored."""
    summary, manifest = score_file(args.input, reward_options(args), args.output)
    print(summary.markdown())
    if args.output:
        print(f"per-sample scores, the tables and the manifest -> {args.output}")
    return _report_rejects(manifest, args.output)


def _report_rejects(manifest: dict, output: str | None) -> int:
    if not manifest["rejected"]:
        return EXIT_OK
    print(f"\n{manifest['rejected']} row(s) could not be scored: {manifest['rejected_by_reason']}", file=sys.stderr)
    if output:
        print(f"each is listed with its line and reason in {Path(output) / manifest['rejects']}", file=sys.stderr)
    else:
        print("(--output DIR lists each with its line and reason)", file=sys.stderr)
    return EXIT_NOTHING_USABLE


# --- medverl eval score: predictions against prepared benchmarks ----------------------------------------------


def load_rows(data_dirs: Iterable[str | Path]) -> dict[tuple[str, int], dict]:
    """Benchmark rows of prepared RL directories keyed by (data_source, extra_info.index)."""
    rows = {}
    for directory in data_dirs:
        for row in open_prepared(directory, ("rl",)).rows(["data_source", "reward_model", "extra_info"]):
            rows[(row["data_source"], row["extra_info"]["index"])] = row
    return rows


def load_predictions(path: str | Path, rows: Mapping[tuple[str, int], dict], job: Job) -> dict[tuple[str, int], str]:
    """``{"data_source", "index", "response"}`` per line; bad lines, second predictions and predictions for
    questions not in `rows` are rejected into `job`."""
    predictions = {}
    for record in iter_jsonl(path):
        item = json_object(record, PREDICTION_FIELDS)
        if isinstance(item, Rejected):
            job.reject(item)
            continue
        try:
            key = (str(item["data_source"]), int(item["index"]))
        except (TypeError, ValueError, OverflowError):
            job.reject(record.rejected("bad_field", f"index must be an integer, got {item['index']!r}"))
            continue
        if key in predictions:
            job.reject(record.rejected("duplicate_prediction", f"a second prediction for {key}"))
        elif key not in rows:
            job.reject(record.rejected("unknown_question", f"no question {key} in the data"))
        else:
            response = item["response"]
            predictions[key] = "" if response is None else str(response)
            job.wrote()
    return predictions


def score_predictions(
    rows: dict[tuple[str, int], dict], predictions: dict[tuple[str, int], str], model: str, compat: str | None = None,
) -> list[SampleScore]:
    """Every row scored; a row without a prediction scores 0 with the reason "no prediction"."""
    if compat is not None and compat not in COMPAT_MODES:
        raise ValueError(f"unknown compat mode {compat!r}; known: {', '.join(COMPAT_MODES)}")
    options = RewardOptions()
    rngs: dict[str, random.Random] = {}  # MedEvalKit seeds Python's random before each benchmark
    scores = []
    for key in sorted(rows):
        row = rows[key]
        info, ground_truth = row["extra_info"], row["reward_model"]["ground_truth"]
        response = predictions.get(key)
        sample = score_answer("" if response is None else response, ground_truth, info, options, model=model,
                              data_source=key[0], index=key[1], compat=compat,
                              rng=rngs.setdefault(key[0], random.Random(medevalkit.MEDEVALKIT_SEED)))
        if response is None:
            sample = replace(sample, score=0.0, acc=0.0, format=0.0, parsed=False, pred="", reason="no prediction")
        scores.append(sample)
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


def _row(name: str, values: list[float | None], sign: bool = False) -> list[str]:
    known = [v for v in values if v is not None]
    average = sum(known) / len(known) if known and len(known) == len(values) else None
    cell = "{:+.1f}" if sign else "{:.1f}"
    return [name, *(cell.format(v) if v is not None else "-" for v in [*values, average])]


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
    rows = [_row(name, values) for name, values in {**reference, **runs}.items()]
    for model, values in runs.items():
        for name, ref in reference.items():
            rows.append(_row(f"{model} − {name}", [None if v is None or r is None else v - r
                                                   for v, r in zip(values, ref, strict=True)], sign=True))
    return header, rows


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows]) + "\n"


def csv_table(header: list[str], rows: list[list[str]]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows([header, *rows])
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
        values = [float(v) if v != "-" else 0.0 for v in row[1:]]
        published = row[0].endswith(PUBLISHED_SUFFIX)
        axes.bar([c + i * width for c in range(len(columns))], values, width, label=row[0],
                 hatch="//" if published else None, alpha=0.6 if published else 1.0)
    axes.set_xticks([c + width * (len(rows) - 1) / 2 for c in range(len(columns))], columns, rotation=20)
    axes.set_ylabel("accuracy (%)")
    axes.set_ylim(0, 100)
    axes.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    figure.tight_layout()
    figure.savefig(path)
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
        lines.append(f"| {source} | {m['total']} | " + " | ".join(cells) + f" | {m['errors']} |")
    return lines


def write_report(runs: dict[str, list[SampleScore]], output: str | Path) -> dict[str, dict[str, dict]]:
    """Per-sample JSONL, metrics JSON, the seed table (markdown and CSV) and the bar chart, in `output`."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    per_model = {model: benchmark_metrics(scores) for model, scores in runs.items()}
    with (output / "samples.jsonl").open("w", encoding="utf-8") as f:
        for scores in runs.values():
            for s in scores:
                record = asdict(s)
                if record["medevalkit_open"] is None:  # only --compat medevalkit's open questions carry it
                    del record["medevalkit_open"]
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
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
        judged = {source: m for source, m in metrics.items() if m["judged"] or m["judge_failures"]}
        if judged:
            lines += ["", "LLM judge on the open answers (a failed call scores 0 and is counted here, apart from "
                      "wrong answers; a run given this run's --judge-cache asks only for these):", "",
                      "| benchmark | judged | judge failures |", "|---|---:|---:|"]
            lines += [f"| {b} | {m['judged']} | {m['judge_failures']} |" for b, m in judged.items()]
        lines += _medevalkit_open_lines(metrics)
        for key in ("language", "question_type", "modality"):
            groups = group_metrics(runs[model], key)
            if groups:
                lines += ["", f"by {key}:", "", f"| benchmark | {key} | n | acc |", "|---|---|---:|---:|"]
                lines += [f"| {b} | {v} | {g['n']} | {g['acc']:.3f} |" for (b, v), g in groups.items()]
        lines.append("")
    (output / REPORT).write_text("\n".join(lines), encoding="utf-8")
    (output / "table.csv").write_text(csv_table(header, rows), encoding="utf-8")
    (output / "table.md").write_text(
        "Accuracy (%). Rows marked (published) are the seed's table, measured with MedEvalKit; a row \"A − B\" is "
        "run A minus B in points.\n\n" + markdown_table(header, rows), encoding="utf-8")
    (output / "metrics.json").write_text(json.dumps(per_model, indent=2), encoding="utf-8")
    bar_chart(header, rows, output / "table.png")
    return per_model


def score_runs(
    data_dirs: list[str | Path], runs: Mapping[str, str | Path], output: str | Path, compat: str | None = None,
    judge: JudgeConfig | None = None, judge_cache: str | Path | None = None,
) -> dict:
    """Score each run's predictions against the prepared benchmarks and write the report into `output`.

    With `judge`, an LLM behind that endpoint decides every open answer (:mod:`medverl.eval.judge`); its verdicts
    are cached in `judge_cache` (default ``OUTPUT/judge_cache.sqlite``): a run given the same cache asks only what
    is not decided yet.

    Returns:
        The job's manifest: ``read`` prediction lines, ``written`` those scored, the others rejected.
    """
    rows = load_rows(data_dirs)
    spec = {"data": [str(d) for d in data_dirs], "runs": {name: fingerprint_inputs([path])[0] for name, path in
                                                         runs.items()}, "compat": compat,
            "judge": None if judge is None else {"url": judge.base_url, "model": judge.model}}
    answer_judge = None
    if judge is not None:
        Path(output).mkdir(parents=True, exist_ok=True)
        answer_judge = AnswerJudge(judge, judge_cache or Path(output) / JUDGE_CACHE)
        answer_judge.preflight()
    try:
        with Job(output, "eval_scores", spec, resumable=False) as job:
            scored = {}
            for name, path in runs.items():
                predictions = load_predictions(path, rows, job)
                scored[name] = score_predictions(rows, predictions, name, compat=compat)
                if answer_judge is not None:
                    scored[name] = judge_open_answers(answer_judge, scored[name], rows, predictions)
            job.commit(job.written + job.rejected)
            write_report(scored, output)
            manifest = job.finish()
    finally:
        if answer_judge is not None:
            answer_judge.close()
    manifest["judge_failures"] = sum(s.judge == "failed" for scores in scored.values() for s in scores)
    return manifest


def _run_spec(spec: str) -> tuple[str, str]:
    name, sep, path = spec.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"takes NAME=PREDICTIONS.jsonl, got {spec!r}")
    return name, path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``medverl eval score``'s arguments."""
    parser.add_argument("--data", nargs="+", required=True, help="prepared benchmark directories (eval prepare)")
    parser.add_argument("--run", action="append", required=True, type=_run_spec, metavar="NAME=PREDICTIONS.jsonl",
                        help="a model's predictions ({data_source, index, response} per line); repeat per model")
    parser.add_argument("--output", required=True, help="directory for report.md, table.md, table.csv, table.png, "
                        "samples.jsonl, metrics.json, rejects.jsonl and manifest.json")
    parser.add_argument("--compat", choices=COMPAT_MODES, help="MedEvalKit's rule path, to compare with numbers "
                        "published from it")
    parser.add_argument("--judge-url", help="an OpenAI-compatible base URL (e.g. http://host:8000/v1): an LLM "
                        "decides the open answers (API key from OPENAI_API_KEY)")
    parser.add_argument("--judge-model", help="the judge's served model name")
    parser.add_argument("--judge-concurrency", type=positive_int, default=8, help="judge calls at a time")
    parser.add_argument("--judge-retries", type=non_negative_int, default=3, help="retries per answer, with backoff")
    parser.add_argument("--judge-timeout", type=positive_float, default=120.0, help="seconds per judge call")
    parser.add_argument("--judge-cache", help=f"the judge's verdict cache (default OUTPUT/{JUDGE_CACHE}); give an "
                        "earlier run's to ask only what it did not decide")


def run_command(args: argparse.Namespace) -> int:
    """Run ``medverl eval score``: exit status 1 when a prediction line is rejected or a judge call failed."""
    runs = dict(args.run)
    if len(runs) != len(args.run):
        raise ConfigError("each --run needs its own NAME")
    judge = None
    if args.judge_url or args.judge_model:
        if not (args.judge_url and args.judge_model):
            raise ConfigError("an LLM judge needs both --judge-url and --judge-model")
        judge = JudgeConfig(args.judge_url, args.judge_model, api_key=os.environ.get("OPENAI_API_KEY", "EMPTY"),
                            concurrency=args.judge_concurrency, retries=args.judge_retries,
                            timeout_s=args.judge_timeout)
    manifest = score_runs(args.data, runs, args.output, args.compat, judge, args.judge_cache)
    print((Path(args.output) / REPORT).read_text(encoding="utf-8"))
    status = _report_rejects(manifest, args.output)
    if manifest["judge_failures"]:
        cache = args.judge_cache or Path(args.output) / JUDGE_CACHE
        print(f"\n{manifest['judge_failures']} judge call(s) failed (scored 0, listed with their error in "
              f"{Path(args.output) / SAMPLES}); to retry only them, rerun into a new --output with --judge-cache "
              f"{cache}", file=sys.stderr)
        return EXIT_NOTHING_USABLE
    return status
