"""The ``medverl`` command line. Each command's arguments are declared beside the code it drives."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from medverl import __version__, recipes_dir
from medverl.arguments import EXIT_STATUS, EXIT_USAGE, HelpFormatter
from medverl.errors import ConfigError
from medverl.rewards import PluginError

# The command that makes each kind of job directory, told when a command is given the wrong one.
MADE_BY = {"rl": "medverl prep rl", "sft": "medverl prep sft", "cpt": "medverl prep caption|interleaved",
           "qc_scores": "medverl qc score"}


def _add(
    sub: argparse._SubParsersAction, name: str, help: str, add_arguments: Callable[[argparse.ArgumentParser], None],
    run: Callable[[argparse.Namespace], int],
) -> argparse.ArgumentParser:
    parser = sub.add_parser(name, help=help, description=help, formatter_class=HelpFormatter)
    add_arguments(parser)
    parser.set_defaults(func=run)
    return parser


def _group(sub: argparse._SubParsersAction, name: str, help: str) -> argparse._SubParsersAction:
    group = sub.add_parser(name, help=help, description=help, formatter_class=HelpFormatter)
    return group.add_subparsers(dest=f"{name}_command", required=True, metavar="COMMAND")


def _add_recipes_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--path", action="store_true", help="print only the directory, for verl's --config-path: "
                        '--config-path "$(medverl recipes --path)"')


def _run_recipes(args: argparse.Namespace) -> int:
    directory = recipes_dir()
    print(directory)
    if not args.path:
        for recipe in sorted(directory.rglob("*.yaml")):
            print(f"  {recipe.relative_to(directory)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every ``medverl`` subcommand."""
    from medverl.data import dicom_command, references, runner
    from medverl.eval import decontaminate, prepare, run, score, score_file, stage
    from medverl.qc import filter as qc_filter
    from medverl.qc import job as qc_job
    from medverl.qc import report as qc_report
    from medverl.training import validate

    parser = argparse.ArgumentParser(prog="medverl", description=__doc__, formatter_class=HelpFormatter,
                                     epilog=EXIT_STATUS)
    parser.add_argument("--version", action="version", version=f"medverl {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    rewards = _group(sub, "rewards", "inspect the query_type reward registry and check data against it")
    _add(rewards, "list", "list registered query types", references.add_list_arguments, references.run_list)
    _add(rewards, "check", "check that every row of RL data has a registered query_type and a usable ground truth",
         references.add_check_arguments, references.run_check)
    _add(sub, "score", "score predictions with the rewards GRPO trains on; tables per query_type and data_source",
         score_file.add_arguments, score_file.run_command)
    _add(sub, "prep", "convert records into verl parquet (rl, sft) or medverl CPT parquet (caption, interleaved)",
         runner.add_arguments, runner.run_command)
    _add(sub, "validate", "prove a prepared directory trains: verl's datasets keep every row, every image decodes",
         validate.add_arguments, validate.run_command)
    _add(sub, "dicom", "convert DICOM files to the 8-bit PNGs training sees, with a JSON sidecar of window and "
         "metadata", dicom_command.add_arguments, dicom_command.run_command)

    evaluation = _group(sub, "eval", "medical benchmarks: prepare, generate, score, compare checkpoints, decontaminate")
    _add(evaluation, "prepare", "a benchmark's public distribution to RL parquet", prepare.add_arguments,
         prepare.run_command)
    _add(evaluation, "run", "generate greedy answers with vLLM (GPU) or transformers (CPU)", run.add_arguments,
         run.run_command)
    _add(evaluation, "checkpoints", "generate and score several checkpoints on several benchmarks: one table, a row "
         "per checkpoint; resumable", stage.add_arguments, stage.run_command)
    _add(evaluation, "score", "score predictions; the seed's table, per-sample JSONL, a chart", score.add_arguments,
         score.run_command)
    _add(evaluation, "decontaminate", "training rows whose image or question is in an evaluation set",
         decontaminate.add_arguments, decontaminate.run_command)

    _add(sub, "recipes", "where the Hydra recipes medverl ships are (verl's --config-path) and what they are",
         _add_recipes_arguments, _run_recipes)

    qc = _group(sub, "qc", "data quality: five-dimension scores, filtering, a review report")
    _add(qc, "score", "score every record on the five dimensions", qc_job.add_arguments, qc_job.run_command)
    _add(qc, "filter", "drop records and whole subsets below thresholds", qc_filter.add_arguments,
         qc_filter.run_command)
    _add(qc, "report", "an HTML page for reviewers, and their agreement with the scorer", qc_report.add_arguments,
         qc_report.run_command)

    from medverl import pipeline as pipeline_command

    pipeline = sub.add_parser("pipeline", help="run CPT, SFT and GRPO stages in order from a pipeline file; resumable",
                              formatter_class=HelpFormatter)
    pipeline_command.add_arguments(pipeline)
    pipeline.set_defaults(func=pipeline_command.run_command)
    return parser


def _made_by(exc: Exception) -> str:
    """Which commands make the data a :class:`~medverl.data.prepared.PreparedError` asked for (its `kinds`)."""
    kinds = [kind for kind in getattr(exc, "kinds", ()) if kind in MADE_BY]
    return "".join(f"\n  {kind} data is made by {MADE_BY[kind]}" for kind in kinds)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``medverl`` command line; returns the exit status."""
    try:
        parser = build_parser()  # the choices of some arguments come from plugins' entry points
    except PluginError as exc:
        print(f"medverl: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, PluginError) as exc:
        print(f"medverl {args.command}: error: {exc}{_made_by(exc)}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
