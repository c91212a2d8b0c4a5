"""`medverl eval decontaminate`: training rows whose image or question appears in an evaluation set."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

from medverl.arguments import EXIT_OK, print_job
from medverl.data.contamination import evaluation_keys, row_questions
from medverl.data.job import Job, Reject, excerpt
from medverl.data.prepared import open_prepared
from medverl.data.schemas import KINDS


@dataclass
class Contamination:
    """What `find` saw: rows read, and per contaminated row (shard, index) its reasons."""

    read: int = 0
    matches: dict[tuple[str, int], list[str]] = field(default_factory=dict)


def decontaminate(
    train_dir: str | Path, against: list[str | Path], output: str | Path | None = None,
) -> tuple[Contamination, dict]:
    """Find training rows sharing an image (content hash) or a normalised question with any evaluation set.

    With `output`, the clean rows are written there (one shard per input shard, same schema, the training job's
    options in the manifest) and every dropped row goes to its ``rejects.jsonl`` with the reason.

    Returns:
        What was found, and the job's manifest (``read == written + rejected``).
    """
    train = open_prepared(train_dir, KINDS)
    keys = evaluation_keys(against)
    result = Contamination()
    spec = {**train.manifest["job"], "decontaminated": {"train": str(train_dir), "against": [str(a) for a in against]}}
    info = {"template": train.template} if train.template else {}
    with Job(output, train.kind, spec, info=info) as job:
        for shard, table in train.tables():
            keep = []
            for position, row in enumerate(table.to_pylist()):
                reasons = [reason for _, reason in keys.matches(row)]
                extra_info = row.get("extra_info") or {}
                index = extra_info.get("index", position)
                keep.append(not reasons)
                if reasons:
                    result.matches[(shard.name, index)] = reasons
                    job.reject(Reject(reasons[0].split(":", 1)[0], "; ".join(reasons), index,
                                      extra_info.get("source", ""), excerpt(" ".join(row_questions(row)))))
            kept = table.filter(keep)
            if kept.num_rows:
                job.write_table(kept)
            job.commit(table.num_rows)
        result.read = job.read
        return result, job.finish()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``medverl eval decontaminate``'s arguments."""
    parser.add_argument("train", help="a prepared training directory (medverl prep)")
    parser.add_argument("--against", nargs="+", required=True, help="prepared evaluation directories (eval prepare)")
    parser.add_argument("--drop", metavar="DIR", help="write the clean rows here (a prepared directory), the dropped "
                        "ones to its rejects.jsonl")


def run_command(args: argparse.Namespace) -> int:
    """Run ``medverl eval decontaminate``."""
    result, manifest = decontaminate(args.train, args.against, args.drop)
    for (shard, index), reasons in sorted(result.matches.items()):
        print(f"{shard} index {index}: {'; '.join(reasons)}")
    print(f"{len(result.matches)} of {result.read} training rows found in the evaluation sets")
    if args.drop:
        return print_job(manifest, args.drop)
    print("(--drop DIR writes the clean rows)")
    return EXIT_OK
