"""``medverl eval score``: predictions keyed by (data_source, index) scored against prepared benchmark directories.

Each answer is scored as :mod:`medverl.eval.scoring` scores it; bad prediction lines go to ``rejects.jsonl`` with
their line number and reason, and make the exit status 1. ``--compat NAME`` gives a registered harness's verdicts
(:mod:`medverl.eval.compat`; ``medevalkit`` for numbers published from MedEvalKit); ``--judge-url`` lets an LLM
decide the open answers (:mod:`medverl.eval.judge`). The report is :mod:`medverl.eval.report`'s.
"""

from __future__ import annotations

import argparse
import random
import sys
from collections.abc import Iterable, Mapping
from dataclasses import replace
from pathlib import Path

from medverl.arguments import EXIT_NOTHING_USABLE, print_rejects
from medverl.data.job import Job, Reject, fingerprint_inputs
from medverl.data.prepared import open_prepared
from medverl.data.records import iter_jsonl, json_object
from medverl.errors import ConfigError
from medverl.eval.compat import COMPAT_MODES
from medverl.eval.judge import answer_judge, judge_open_answers
from medverl.eval.report import REPORT, SAMPLES, write_report
from medverl.eval.scoring import NO_PREDICTION, SampleScore, score_answer
from medverl.http import JudgeConfig, add_judge_arguments, judge_config
from medverl.rewards import RewardOptions

PREDICTION_FIELDS = ("data_source", "index", "response")
JUDGE_CACHE = "judge_cache.sqlite"
UNSAVED_VERDICTS = "judge_cache.unsaved.sqlite"  # the verdicts a read-only or full --judge-cache could not take


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
        if isinstance(item, Reject):
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
    options: RewardOptions | None = None,
) -> list[SampleScore]:
    """Every row scored with `options` (default: the reward's defaults) or by compat mode `compat`; a row without a
    prediction scores 0 with the reason "no prediction"."""
    options = options or RewardOptions()
    seed = COMPAT_MODES.get(compat).seed if compat is not None else 0
    rngs: dict[str, random.Random] = {}  # a harness seeds its random draws before each benchmark
    scores = []
    for key in sorted(rows):
        row = rows[key]
        info, ground_truth = row["extra_info"], row["reward_model"]["ground_truth"]
        response = predictions.get(key)
        sample = score_answer("" if response is None else response, ground_truth, info, options, model=model,
                              data_source=key[0], index=key[1], compat=compat,
                              rng=rngs.setdefault(key[0], random.Random(seed)))
        if response is None:
            sample = replace(sample, score=0.0, acc=0.0, format=0.0, parsed=False, pred="", reason=NO_PREDICTION)
        scores.append(sample)
    return scores


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
    options = RewardOptions()
    judge_client = None
    if judge is not None:
        Path(output).mkdir(parents=True, exist_ok=True)
        judge_client = answer_judge(judge, judge_cache or Path(output) / JUDGE_CACHE, Path(output) / UNSAVED_VERDICTS)
        judge_client.preflight()
    try:
        with Job(output, "eval_scores", spec, resumable=False) as job:
            scored = {}
            for name, path in runs.items():
                predictions = load_predictions(path, rows, job)
                scored[name] = score_predictions(rows, predictions, name, compat, options)
                if judge_client is not None:
                    scored[name] = judge_open_answers(judge_client, scored[name], rows, predictions, options)
            job.commit(job.written + job.rejected)
            write_report(scored, output)
            manifest = job.finish()
    finally:
        if judge_client is not None:
            judge_client.close()
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
    parser.add_argument("--compat", choices=COMPAT_MODES.names(), help="a registered harness's verdicts, to "
                        "compare with numbers published from it (medevalkit: MedEvalKit's rule path)")
    add_judge_arguments(parser)
    parser.add_argument("--judge-cache", help=f"the judge's verdict cache (default OUTPUT/{JUDGE_CACHE}); give an "
                        "earlier run's to ask only what it did not decide")


def run_command(args: argparse.Namespace) -> int:
    """Run ``medverl eval score``: exit status 1 when a prediction line is rejected or a judge call failed."""
    runs = dict(args.run)
    if len(runs) != len(args.run):
        raise ConfigError("each --run needs its own NAME")
    manifest = score_runs(args.data, runs, args.output, args.compat, judge_config(args), args.judge_cache)
    print((Path(args.output) / REPORT).read_text(encoding="utf-8"))
    status = print_rejects(manifest, args.output)
    if manifest["judge_failures"]:
        cache = args.judge_cache or Path(args.output) / JUDGE_CACHE
        print(f"\n{manifest['judge_failures']} judge call(s) failed (scored 0, listed with their error in "
              f"{Path(args.output) / SAMPLES}); to retry only them, rerun into a new --output with --judge-cache "
              f"{cache}", file=sys.stderr)
        return EXIT_NOTHING_USABLE
    return status
