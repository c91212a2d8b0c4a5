"""Prove a prepared directory trains: verl's own dataset classes keep every row, every image decodes."""

from __future__ import annotations

import argparse
import io
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from medverl.arguments import EXIT_NOTHING_USABLE, EXIT_OK, positive_int
from medverl.data.prepared import Prepared, open_prepared
from medverl.data.references import check_reward_options
from medverl.data.schemas import IMAGE_PLACEHOLDER, KINDS
from medverl.errors import ConfigError
from medverl.rewards.options import add_reward_options, reward_kwargs

logger = logging.getLogger(__name__)


@dataclass
class ValidationReport:
    """What `validate` found; `ok` is False when anything would make verl drop or fail a row."""

    kind: str
    rows: int = 0
    manifest_written: int | None = None
    duplicates: int = 0
    kept_by_verl: int | None = None
    processor: str | None = None
    problems: list[str] = field(default_factory=list)
    token_lengths: list[int] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def markdown(self) -> str:
        """The report as a short markdown document."""
        lines = [f"## medverl validate ({self.kind})", "", "| check | value |", "|---|---|"]
        lines.append(f"| rows in shards | {self.rows} |")
        if self.manifest_written is not None:
            lines.append(f"| rows the manifest says were written | {self.manifest_written} |")
            lines.append(f"| duplicate rows (same text and images as an earlier row) | {self.duplicates} |")
        if self.kept_by_verl is not None:
            lines.append(f"| rows verl's dataset keeps | {self.kept_by_verl} |")
        elif self.processor is None:
            lines.append("| verl's datasets | not run: pass --processor MODEL_DIR to load every row through them |")
        if self.token_lengths:
            p50, p90, p99 = np.percentile(self.token_lengths, [50, 90, 99])
            lines.append(
                f"| tokens per row (p50 / p90 / p99 / max) | {p50:.0f} / {p90:.0f} / {p99:.0f} / "
                f"{max(self.token_lengths)} |"
            )
        lines += ["", f"**{'OK' if self.ok else f'{len(self.problems)} problem(s)'}**"]
        lines += [f"- {p}" for p in self.problems[:50]]
        if len(self.problems) > 50:
            lines.append(f"- ... and {len(self.problems) - 50} more")
        return "\n".join(lines) + "\n"


def _texts_of(kind: str, row: dict) -> list[str]:
    if kind == "rl":
        return [m["content"] for m in row["prompt"]]
    if kind == "sft":
        return [m["content"] for m in row["messages"]]
    return []


def _check_rows(prepared: Prepared, report: ValidationReport) -> None:
    kind = prepared.kind
    report.manifest_written = prepared.manifest["written"]
    report.duplicates = int((prepared.manifest.get("counts") or {}).get("duplicates", 0))
    if not prepared.complete:
        report.problems.append("the job that wrote it did not complete; rerun it with --resume")
    for shard, batch in prepared.batches(batch_size=64):
        for row in batch:
            where = f"{shard.name} index {row.get('extra_info', {}).get('index')}"
            report.rows += 1
            images = row.get("images") or []
            if kind == "cpt":
                expected = sum(1 for s in row["segments"] if s["type"] == "image")
            else:
                expected = sum(t.count(IMAGE_PLACEHOLDER) for t in _texts_of(kind, row))
            if expected != len(images):
                report.problems.append(f"{where}: {expected} image place(s) for {len(images)} image(s)")
            for i, image in enumerate(images):
                try:
                    Image.open(io.BytesIO(image["bytes"])).load()
                except Exception as exc:
                    report.problems.append(f"{where}: image {i} does not decode: {exc}")
    if report.manifest_written != report.rows:
        report.problems.append(f"manifest says {report.manifest_written} rows were written, shards hold {report.rows}")


def _rl_through_verl(prepared: Prepared, model_dir: str, max_prompt_length: int, report: ValidationReport) -> None:
    from omegaconf import OmegaConf
    from verl.utils import hf_processor, hf_tokenizer
    from verl.utils.dataset.rl_dataset import RLHFDataset

    tokenizer, processor = hf_tokenizer(model_dir), hf_processor(model_dir)
    config = OmegaConf.create(
        {"max_prompt_length": max_prompt_length, "filter_overlong_prompts": True,
         "filter_overlong_prompts_workers": None,  # in-process: a forked pool can deadlock under threads
         "cache_dir": str(prepared.directory / ".verl_cache")}
    )
    dataset = RLHFDataset([str(s) for s in prepared.shards], tokenizer, config, processor)
    report.kept_by_verl = len(dataset)
    kept = {row["index"] for row in dataset.dataframe["extra_info"]}
    for shard, rows in prepared.batches(["extra_info"]):
        for info in (row["extra_info"] for row in rows):
            if info["index"] not in kept:
                report.problems.append(
                    f"{shard.name} index {info['index']} ({info['source']}): dropped by verl's RLHFDataset "
                    f"(longer than max_prompt_length={max_prompt_length}, or its processing fails)"
                )
    for i in range(len(dataset)):
        row = dataset.dataframe[i]
        messages = dataset._build_messages(dict(row), key="prompt")  # verl's own placeholder-to-image mapping
        if processor is None:
            report.token_lengths.append(len(tokenizer.apply_chat_template(messages, add_generation_prompt=True)))
            continue
        text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        images = [c["image"].convert("RGB") for m in messages if isinstance(m["content"], list)
                  for c in m["content"] if c.get("type") == "image"]
        inputs = processor(text=[text], images=images or None, return_tensors="np")
        report.token_lengths.append(int(inputs["input_ids"].shape[-1]))


def _sft_trainer_dataset(prepared: Prepared, model_dir: str, max_length: int, report: ValidationReport) -> None:
    """Every row through the dataset class verl's SFT trainer would use: MultiTurnSFTDataset, or CPTDataset."""
    from omegaconf import OmegaConf
    from verl.utils import hf_processor, hf_tokenizer
    from verl.utils.dataset.multiturn_sft_dataset import MultiTurnSFTDataset

    from medverl.training.cpt_dataset import CPTDataset

    tokenizer, processor = hf_tokenizer(model_dir), hf_processor(model_dir)
    config = OmegaConf.create({"max_length": max_length, "truncation": "error", "pad_mode": "no_padding"})
    dataset_cls = CPTDataset if prepared.kind == "cpt" else MultiTurnSFTDataset
    dataset = dataset_cls([str(s) for s in prepared.shards], tokenizer, config, processor)
    kept = 0
    for i in range(len(dataset)):
        try:
            item = dataset[i]
        except Exception as exc:  # verl asserts and raises many types per row
            report.problems.append(f"row {i}: {dataset_cls.__name__} fails: {type(exc).__name__}: {exc}")
            continue
        kept += 1
        report.token_lengths.append(int(item["input_ids"].shape[-1]))
        if report.token_lengths[-1] > max_length:
            report.problems.append(f"row {i}: {report.token_lengths[-1]} tokens, over max_length={max_length}")
    report.kept_by_verl = kept


def _check_processor(model_dir: str) -> None:
    """A local model directory that is not there is a usage error (the hub would say "Repo id must be ...")."""
    path = Path(model_dir).expanduser()
    looks_local = path.is_absolute() or model_dir.startswith((".", "~")) or model_dir.count("/") != 1
    if not path.exists() and looks_local:
        raise ConfigError(f"--processor {model_dir}: no such directory; pass a local model directory with the "
                          "tokenizer and processor files (or a hub id such as Qwen/Qwen2.5-VL-3B-Instruct)")
    if path.exists() and not path.is_dir():
        raise ConfigError(f"--processor {model_dir}: not a directory")


def validate(
    directory: str | Path, model_dir: str | None = None, max_length: int = 4096, reward_kwargs: dict | None = None,
) -> ValidationReport:
    """Check a prepared directory: structure, images, and (with `model_dir`) loading through verl's datasets.

    Args:
        directory: a ``medverl prep`` output directory; its manifest gives the kind.
        model_dir: a model directory with tokenizer and processor (``--processor``), for verl's datasets.
        max_length: ``max_prompt_length`` for RL, ``max_length`` for SFT and CPT.
        reward_kwargs: for RL, the GRPO stage's reward options, checked against the data's prompt template.
    """
    prepared = open_prepared(directory, KINDS, complete=False)
    if model_dir is not None:
        _check_processor(model_dir)
    report = ValidationReport(prepared.kind, processor=model_dir)
    if prepared.kind == "rl":
        report.problems += check_reward_options(prepared.manifest, reward_kwargs or {})
    _check_rows(prepared, report)
    if prepared.shards and model_dir is not None:
        if prepared.kind == "rl":
            _rl_through_verl(prepared, model_dir, max_length, report)
        else:
            _sft_trainer_dataset(prepared, model_dir, max_length, report)
        if report.kept_by_verl is not None and report.kept_by_verl != report.rows:
            report.problems.insert(0, f"verl keeps {report.kept_by_verl} of {report.rows} rows")
    return report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``medverl validate``'s arguments."""
    parser.add_argument("directory", help="a medverl prep output directory (its manifest gives the kind)")
    parser.add_argument("--processor", help="model directory with the tokenizer and processor to load the data "
                        "with (without it verl's datasets are not run)")
    parser.add_argument("--max-prompt-length", type=positive_int, default=4096,
                        help="verl's data.max_prompt_length (RL) or data.max_length (SFT, CPT)")
    parser.add_argument("--report", help="also write the report to this markdown file")
    group = parser.add_argument_group("RL: the GRPO stage's reward options, checked against the prompt template")
    add_reward_options(group)


def run_command(args: argparse.Namespace) -> int:
    """Run ``medverl validate``."""
    report = validate(args.directory, args.processor, args.max_prompt_length, reward_kwargs(args))
    text = report.markdown()
    print(text)
    if args.report:
        Path(args.report).write_text(text, encoding="utf-8")
    return EXIT_OK if report.ok else EXIT_NOTHING_USABLE
