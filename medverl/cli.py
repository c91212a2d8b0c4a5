"""The ``medverl`` command line."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from medverl import __version__


def _reward_options_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format-weight", type=float, default=0.1, help="w in w*format + (1-w)*acc (default 0.1)")
    parser.add_argument("--think-prefilled", action="store_true", help="the chat template opened <think>")
    parser.add_argument("--require-think", action="store_true", help="reasoning must be one <think> block")
    parser.add_argument("--max-answer-chars", type=int, default=8192, help="longer answers score acc 0")
    parser.add_argument(
        "--plugins", action="append", default=[], metavar="MODULE_OR_FILE",
        help="module or .py file registering more query types (repeatable)",
    )


def _cmd_rewards_list(args: argparse.Namespace) -> int:
    from medverl.rewards import registry

    registry.REGISTRY.load_plugins(args.plugins)
    print("| query_type | source | description |\n|---|---|---|")
    for spec in registry.REGISTRY.specs():
        print(f"| {spec.name} | {spec.source} | {spec.doc} |")
    return 0


def _cmd_rewards_check(args: argparse.Namespace) -> int:
    from medverl.reference_check import check_parquet
    from medverl.rewards import RewardOptions

    options = RewardOptions(default_query_type=args.default_query_type, plugins=tuple(args.plugins))
    report = check_parquet(args.parquet, options)
    print("| query_type | rows |\n|---|---:|")
    for name, count in sorted(report.checked.items()):
        print(f"| {name} | {count} |")
    if not report.bad:
        print(f"all {sum(report.checked.values())} references can be scored")
        return 0
    print(f"\n{len(report.bad)} row(s) cannot be scored:", file=sys.stderr)
    for bad in report.bad[:20]:
        print(f"  {bad.file} row {bad.row} (index={bad.index!r}, {bad.data_source}): {bad.reason}", file=sys.stderr)
    if len(report.bad) > 20:
        print(f"  ... and {len(report.bad) - 20} more", file=sys.stderr)
    return 1


def _cmd_score(args: argparse.Namespace) -> int:
    from medverl.rewards import RewardOptions
    from medverl.score_report import score_rows

    options = RewardOptions(
        format_weight=args.format_weight,
        think_prefilled=args.think_prefilled,
        require_think=args.require_think,
        max_answer_chars=args.max_answer_chars,
        plugins=tuple(args.plugins),
    )
    source = sys.stdin if args.input == "-" else open(args.input, encoding="utf-8")  # noqa: SIM115
    with contextlib.ExitStack() as stack:
        if source is not sys.stdin:
            stack.enter_context(source)
        per_sample = stack.enter_context(open(args.output, "w", encoding="utf-8")) if args.output else None
        lines = tqdm(source, desc="scoring", unit=" rows", disable=None, file=sys.stderr)
        summary = score_rows(lines, options, per_sample)

    table = summary.markdown()
    print(table)
    if args.report:
        Path(args.report).write_text(table, encoding="utf-8")
        print(f"table written to {args.report}")
    if args.output:
        print(f"per-sample scores written to {args.output}")
    if summary.rejected:
        rejects_path = args.rejects or (f"{args.output}.rejects.jsonl" if args.output else None)
        if rejects_path:
            with open(rejects_path, "w", encoding="utf-8") as f:
                for r in summary.rejected:
                    f.write(json.dumps({"line": r.line, "reason": r.reason, "excerpt": r.excerpt}, ensure_ascii=False) + "\n")
        print(f"\n{len(summary.rejected)} row(s) could not be scored:", file=sys.stderr)
        for r in summary.rejected[:20]:
            print(f"  {args.input}:{r.line}: {r.reason}", file=sys.stderr)
        if len(summary.rejected) > 20:
            print(f"  ... and {len(summary.rejected) - 20} more", file=sys.stderr)
        if rejects_path:
            print(f"all rejected rows are listed in {rejects_path}", file=sys.stderr)
        return 1
    return 0


def _parse_preset(value: str) -> str | tuple[float, float]:
    """A CT preset name or 'CENTER,WIDTH'."""
    if "," not in value:
        return value
    try:
        center, width = (float(v) for v in value.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a preset name or CENTER,WIDTH, got {value!r}") from None
    return center, width


def _cmd_dicom(args: argparse.Namespace) -> int:
    from medverl.data.images import ImageError, load_image

    out_dir = Path(args.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    failed = 0
    for name in tqdm(args.inputs, desc="converting", unit=" files", disable=None, file=sys.stderr):
        try:
            image = load_image(name, dicom_preset=args.preset, pixel_limit=args.pixel_limit)
        except (ImageError, ValueError) as exc:
            failed += 1
            print(f"{name}: {exc}", file=sys.stderr)
            continue
        target = out_dir / (Path(name).stem + ".png")
        target.write_bytes(image.data)
        sidecar = {"source": name, "width": image.width, "height": image.height, **image.metadata}
        target.with_suffix(".json").write_text(json.dumps(sidecar, indent=2) + "\n", encoding="utf-8")
        print(f"{name} -> {target} ({image.width}x{image.height}, window {image.metadata.get('window', '-')})")
    return 1 if failed else 0


def _cmd_prep(args: argparse.Namespace) -> int:
    from medverl.data.converters import PrepOptions
    from medverl.data.records import InputError
    from medverl.data.runner import PrepJob, run_prep
    from medverl.prompts import load_template

    options = PrepOptions(
        image_root=Path(args.image_root) if args.image_root else None,
        max_pixels=args.max_pixels,
        min_pixels=args.min_pixels,
        pixel_limit=args.pixel_limit,
        image_check=args.image_check,
        data_source=args.data_source or Path(args.inputs[0]).stem,
        split=args.split,
        query_type=args.query_type,
        template=load_template(args.template),
        plugins=tuple(args.plugins),
    )
    job = PrepJob(args.kind, tuple(args.inputs), Path(args.output), options, args.rows_per_shard)
    try:
        if args.engine == "ray":
            import ray

            ray.init(address=args.ray_address, ignore_reinit_error=True)
        manifest = run_prep(job, workers=args.workers, resume=args.resume, engine=args.engine)
    except (InputError, FileExistsError) as exc:
        print(f"medverl prep: {exc}", file=sys.stderr)
        return 2
    print(
        f"read {manifest['read']}, written {manifest['written']} in {len(manifest['shards'])} shard(s), "
        f"rejected {manifest['rejected']} -> {args.output}"
    )
    if manifest["rejected"]:
        for code, count in manifest["rejected_by_reason"].items():
            print(f"  {count:>8}  {code}")
        print(f"every rejected record is listed with its reason in {Path(args.output) / 'rejects.jsonl'}")
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    from medverl.data.validate import validate

    report = validate(args.directory, args.kind, args.processor, args.max_prompt_length)
    text = report.markdown()
    print(text)
    if args.report:
        Path(args.report).write_text(text, encoding="utf-8")
    return 0 if report.ok else 1


def _cmd_eval_prepare(args: argparse.Namespace) -> int:
    from medverl.eval.prepare import prepare

    manifest = prepare(args.benchmark, args.source, args.output, max_pixels=args.max_pixels, template=args.template,
                       workers=args.workers)
    print(f"{args.benchmark}: read {manifest['read']}, written {manifest['written']}, rejected {manifest['rejected']}"
          f" -> {args.output}")
    for code, count in manifest["rejected_by_reason"].items():
        print(f"  {code}: {count}")
    return 0


def _cmd_eval_run(args: argparse.Namespace) -> int:
    from medverl.eval.run import generate

    n = generate(args.model, args.data, args.output, max_tokens=args.max_tokens,
                 tensor_parallel_size=args.tensor_parallel_size)
    print(f"{n} predictions -> {args.output}")
    return 0


def _cmd_eval_score(args: argparse.Namespace) -> int:
    from medverl.eval.score import PredictionError, load_predictions, load_rows, score_predictions, write_report

    rows = load_rows(args.data)
    runs = {}
    for spec in args.run:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            print(f"medverl eval score: --run takes NAME=PREDICTIONS.jsonl, got {spec!r}", file=sys.stderr)
            return 2
        try:
            runs[name] = score_predictions(rows, load_predictions(path), name, compat=args.compat)
        except PredictionError as exc:
            print(f"medverl eval score: {exc}", file=sys.stderr)
            return 1
    write_report(runs, args.output)
    print((Path(args.output) / "report.md").read_text(encoding="utf-8"))
    return 0


def _cmd_eval_decontaminate(args: argparse.Namespace) -> int:
    from medverl.eval.decontaminate import decontaminate

    result = decontaminate(args.train, args.against, args.drop)
    for (shard, index), reasons in sorted(result.matches.items()):
        print(f"{shard} index {index}: {'; '.join(reasons)}")
    action = f"; clean rows -> {args.drop}" if args.drop else " (--drop DIR writes the clean rows)"
    print(f"{len(result.matches)} of {result.read} training rows found in the evaluation sets{action}")
    return 0


def _cmd_qc_score(args: argparse.Namespace) -> int:
    from medverl.qc.job import QCJob, run_qc
    from medverl.qc.judge import JudgeConfig

    judge = None
    if args.scorer == "judge":
        if not args.judge_url or not args.judge_model:
            print("medverl qc score: --scorer judge needs --judge-url and --judge-model", file=sys.stderr)
            return 2
        judge = JudgeConfig(args.judge_url, args.judge_model, api_key=os.environ.get("OPENAI_API_KEY", "EMPTY"),
                            concurrency=args.concurrency, timeout_s=args.timeout, retries=args.retries)
    job = QCJob(args.kind, tuple(args.inputs), Path(args.output), args.scorer, args.image_root, args.subset_key, judge)
    try:
        manifest = run_qc(job, resume=args.resume)
    except FileExistsError as exc:
        print(f"medverl qc score: {exc}", file=sys.stderr)
        return 2
    print(f"read {manifest['read']}, scored {manifest['scored']}, judge failures {manifest['judge_failed']}, "
          f"rejected {manifest['rejected']} -> {args.output}")
    return 0


def _cmd_qc_filter(args: argparse.Namespace) -> int:
    from medverl.qc.filter import filter_scores, parse_thresholds

    manifest = filter_scores(args.scores, args.output, parse_thresholds(args.min), args.subset_min, args.subset_key)
    print(f"read {manifest['read']}, kept {manifest['kept']}, dropped {manifest['dropped']} "
          f"{manifest['dropped_by_reason']} -> {args.output}/kept.jsonl")
    return 0


def _cmd_qc_report(args: argparse.Namespace) -> int:
    from medverl.qc.report import write_report

    result = write_report(args.scores, args.output, labels=args.labels, threshold=args.threshold)
    print(f"report -> {Path(args.output) / 'report.html'}; sample for reviewers -> "
          f"{Path(args.output) / 'review_sample.jsonl'}")
    if result:
        print(f"agreement with reviewers: {result['agree']}/{result['labelled']} ({100 * result['agreement']:.0f}%)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every ``medverl`` subcommand."""
    parser = argparse.ArgumentParser(prog="medverl", description=__doc__)
    parser.add_argument("--version", action="version", version=f"medverl {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    rewards = sub.add_parser("rewards", help="inspect the query_type reward registry")
    rewards_sub = rewards.add_subparsers(dest="rewards_command", required=True)
    listing = rewards_sub.add_parser("list", help="list registered query types")
    listing.add_argument("--plugins", action="append", default=[], metavar="MODULE_OR_FILE")
    listing.set_defaults(func=_cmd_rewards_list)
    check = rewards_sub.add_parser(
        "check",
        help="check that every row of verl RL parquet files has a registered query_type and a usable ground truth",
    )
    check.add_argument("parquet", nargs="+", help="verl RL parquet files")
    check.add_argument("--default-query-type", help="for rows without extra_info.query_type")
    check.add_argument("--plugins", action="append", default=[], metavar="MODULE_OR_FILE")
    check.set_defaults(func=_cmd_rewards_check)

    score = sub.add_parser(
        "score",
        help="score predictions with the rewards GRPO trains on",
        description="Score a JSONL of predictions (solution_str, ground_truth, query_type, optional options, "
        "data_source, extra_info) and print per-query_type and per-data_source tables.",
    )
    score.add_argument("--input", required=True, help="predictions JSONL, or - for stdin")
    score.add_argument("--output", help="per-sample JSONL with the extracted prediction and the reason for each 0")
    score.add_argument("--report", help="also write the tables to this markdown file")
    score.add_argument("--rejects", help="where to list rows that could not be scored (default: OUTPUT.rejects.jsonl)")
    _reward_options_args(score)
    score.set_defaults(func=_cmd_score)

    prep = sub.add_parser(
        "prep",
        help="convert records into verl parquet (rl, sft) or medverl CPT parquet (caption, interleaved)",
        description="Convert JSONL / JSON-array / parquet records into parquet shards, a rejects file and a manifest.",
    )
    prep.add_argument("kind", choices=["rl", "sft", "caption", "interleaved"])
    prep.add_argument("inputs", nargs="+", help=".jsonl, .json (an array) or .parquet files")
    prep.add_argument("--output", required=True, help="output directory (part-NNNNN.parquet, rejects.jsonl, manifest.json)")
    prep.add_argument("--image-root", help="base directory of relative image paths")
    prep.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    prep.add_argument("--rows-per-shard", type=int, default=1000,
                      help="input records per window; each window is written to its own shard(s) (default 1000)")
    prep.add_argument("--max-pixels", type=int, help="written into every image dict; verl resizes to at most this")
    prep.add_argument("--min-pixels", type=int, help="written into every image dict; verl resizes to at least this")
    prep.add_argument("--pixel-limit", type=int, default=8192 * 8192, help="reject larger images (decompression bombs)")
    prep.add_argument(
        "--image-check", choices=["structure", "decode"], default="structure",
        help="structure (default): JPEG markers and PNG chunk CRCs, at disk speed; decode: every pixel decoded",
    )
    prep.add_argument("--resume", action="store_true", help="continue an interrupted job in the same directory")
    prep.add_argument("--engine", choices=["local", "ray"], default="local",
                      help="local: --workers processes here; ray: Ray Data on the cluster of --ray-address")
    prep.add_argument("--ray-address", default=None, help="Ray cluster address (default: start or join a local one)")
    prep.add_argument("--data-source", help="data_source for records without one (default: the first input's name)")
    prep.add_argument("--split", default="train", help="extra_info.split for RL records without one")
    prep.add_argument("--query-type", help="query_type for RL records without one")
    prep.add_argument(
        "--template", default="think_answer",
        help="RL prompt template: think_answer, think_prefilled, or a file with {question} {options} {answer_hint}",
    )
    prep.add_argument("--plugins", action="append", default=[], metavar="MODULE_OR_FILE",
                      help="reward plugins, so their query types validate")
    prep.set_defaults(func=_cmd_prep)

    check = sub.add_parser(
        "validate",
        help="prove a prepared directory trains: verl's datasets keep every row, every image decodes",
    )
    check.add_argument("directory", help="a medverl prep output directory")
    check.add_argument("--kind", required=True, choices=["rl", "sft", "cpt"])
    check.add_argument("--processor", help="model directory with the tokenizer and processor to load the data with")
    check.add_argument("--max-prompt-length", type=int, default=4096,
                       help="verl's data.max_prompt_length (RL) or data.max_length (SFT, CPT)")
    check.add_argument("--report", help="also write the report to this markdown file")
    check.set_defaults(func=_cmd_validate)

    dicom = sub.add_parser(
        "dicom",
        help="convert DICOM files to the 8-bit PNGs training sees, with a JSON sidecar of window and metadata",
    )
    dicom.add_argument("inputs", nargs="+", help=".dcm files")
    dicom.add_argument("--output", required=True, help="directory for NAME.png and NAME.json")
    dicom.add_argument(
        "--preset", type=_parse_preset, default=None,
        help="window: brain, soft_tissue, lung, bone or CENTER,WIDTH (write --preset=-600,1500 for a negative "
        "center; default: the file's own window, else a fallback)",
    )
    dicom.add_argument("--pixel-limit", type=int, default=8192 * 8192, help="reject larger images")
    dicom.set_defaults(func=_cmd_dicom)

    evaluation = sub.add_parser("eval", help="medical benchmarks: prepare, generate, score, decontaminate")
    eval_sub = evaluation.add_subparsers(dest="eval_command", required=True)
    eval_prepare = eval_sub.add_parser("prepare", help="a benchmark's public distribution to RL parquet")
    eval_prepare.add_argument("benchmark", choices=["mmmu_hm", "vqa_rad", "slake", "path_vqa", "pmc_vqa",
                                                    "omnimedvqa", "medxpertqa_mm"])
    eval_prepare.add_argument("--source", required=True, help="the downloaded distribution's directory")
    eval_prepare.add_argument("--output", required=True)
    eval_prepare.add_argument("--max-pixels", type=int, help="written into every image dict (as in training)")
    eval_prepare.add_argument("--template", default="think_answer", help="the prompt template training used")
    eval_prepare.add_argument("--workers", type=int, default=1)
    eval_prepare.set_defaults(func=_cmd_eval_prepare)
    eval_run = eval_sub.add_parser("run", help="generate answers with vLLM (GPU)")
    eval_run.add_argument("--model", required=True)
    eval_run.add_argument("--data", nargs="+", required=True, help="prepared benchmark directories")
    eval_run.add_argument("--output", required=True, help="predictions JSONL")
    eval_run.add_argument("--max-tokens", type=int, default=2048)
    eval_run.add_argument("--tensor-parallel-size", type=int, default=1)
    eval_run.set_defaults(func=_cmd_eval_run)
    eval_score = eval_sub.add_parser("score", help="score predictions; the seed's table, per-sample JSONL, a chart")
    eval_score.add_argument("--data", nargs="+", required=True, help="prepared benchmark directories")
    eval_score.add_argument("--run", action="append", required=True, metavar="NAME=PREDICTIONS.jsonl",
                            help="a model's predictions ({data_source, index, response} per line); repeat per model")
    eval_score.add_argument("--output", required=True, help="directory for report.md, table.csv, table.png, ...")
    eval_score.add_argument("--compat", choices=["medevalkit"], help="the common harness's rules, for comparison")
    eval_score.set_defaults(func=_cmd_eval_score)
    eval_decon = eval_sub.add_parser("decontaminate", help="training rows whose image or question is in an eval set")
    eval_decon.add_argument("train", help="a medverl prep output directory")
    eval_decon.add_argument("--against", nargs="+", required=True, help="prepared evaluation directories")
    eval_decon.add_argument("--drop", metavar="DIR", help="write the clean rows here, the dropped ones to rejects")
    eval_decon.set_defaults(func=_cmd_eval_decontaminate)

    qc = sub.add_parser("qc", help="data quality: five-dimension scores, filtering, a review report")
    qc_sub = qc.add_subparsers(dest="qc_command", required=True)
    qc_score = qc_sub.add_parser("score", help="score every record on the five dimensions")
    qc_score.add_argument("kind", choices=["caption", "interleaved", "sft", "rl"])
    qc_score.add_argument("inputs", nargs="+", help="the records medverl prep reads (.jsonl, .json, .parquet)")
    qc_score.add_argument("--output", required=True)
    qc_score.add_argument("--scorer", choices=["rules", "judge"], default="rules")
    qc_score.add_argument("--image-root")
    qc_score.add_argument("--subset-key", default="data_source", help="record field that names its subset")
    qc_score.add_argument("--judge-url", help="OpenAI-compatible base URL, e.g. http://host:8000/v1")
    qc_score.add_argument("--judge-model", help="the served model's name")
    qc_score.add_argument("--concurrency", type=int, default=8, help="judge calls at a time")
    qc_score.add_argument("--timeout", type=float, default=120.0, help="seconds per judge call")
    qc_score.add_argument("--retries", type=int, default=3, help="judge retries per record, with backoff")
    qc_score.add_argument("--resume", action="store_true")
    qc_score.set_defaults(func=_cmd_qc_score)
    qc_filter = qc_sub.add_parser("filter", help="drop records and whole subsets below thresholds")
    qc_filter.add_argument("scores", help="a medverl qc score output directory")
    qc_filter.add_argument("--output", required=True)
    qc_filter.add_argument("--min", action="append", default=[], metavar="DIMENSION=VALUE")
    qc_filter.add_argument("--subset-min", type=float, help="drop every subset whose mean score is lower")
    qc_filter.add_argument("--subset-key", help="group subsets by this record field (default: the scoring job's)")
    qc_filter.set_defaults(func=_cmd_qc_filter)
    qc_report = qc_sub.add_parser("report", help="an HTML page for reviewers, and their agreement with the scorer")
    qc_report.add_argument("scores", help="a medverl qc score output directory")
    qc_report.add_argument("--output", required=True)
    qc_report.add_argument("--labels", help="review_sample.jsonl with human_pass filled in")
    qc_report.add_argument("--threshold", type=float, default=0.5, help="mean score that counts as a pass")
    qc_report.set_defaults(func=_cmd_qc_report)

    from medverl import pipeline as pipeline_command

    pipeline = sub.add_parser("pipeline", help="run CPT, SFT and GRPO stages in order from a pipeline file; resumable")
    pipeline_command.add_arguments(pipeline)
    pipeline.set_defaults(func=pipeline_command.run_command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``medverl`` command line; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (OSError, ValueError, ImportError) as exc:
        print(f"medverl: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
