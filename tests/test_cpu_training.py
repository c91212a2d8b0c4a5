"""Every stage trains for real on CPU: the example pipeline end to end through verl's SFT trainer and GRPO loop.

``recipes/run_example_cpu.sh`` prepares the bundled example records, builds a tiny random Qwen2.5-VL and runs
``medverl pipeline`` (CPT -> SFT stages 1-3 -> GRPO with the hf rollout), each stage's saved HF model handed to the
next. A few minutes on 2 cores; its curves are in the README.
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from medverl.cli import main
from medverl.stages import KINDS

REPO = Path(__file__).resolve().parent.parent
SFT_STAGES = ("cpt", "sft_stage1", "sft_stage2", "sft_stage3")
GRPO_STEPS = 40


@pytest.fixture(scope="module")
def sft_items(tmp_path_factory: pytest.TempPathFactory, tiny_processor: Path) -> tuple:
    """Items of the example SFT data (the first conversation is text-only, the second has an image), as verl's own
    MultiTurnSFTDataset and as medverl's SFTDataset build them."""
    from omegaconf import OmegaConf
    from verl.utils.dataset.multiturn_sft_dataset import MultiTurnSFTDataset

    from medverl.training.sft_dataset import SFTDataset

    root = tmp_path_factory.mktemp("mixed")
    assert main(["prep", "sft", str(REPO / "examples/data/sft.jsonl"), "--output", str(root / "sft"),
                 "--image-root", str(REPO / "examples/data/images"), "--max-pixels", "50176"]) == 0
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_processor)
    files = [str(p) for p in sorted((root / "sft").glob("part-*.parquet"))]
    config = OmegaConf.create({"max_length": 2048, "pad_mode": "no_padding", "truncation": "error"})
    made = []
    for cls in (MultiTurnSFTDataset, SFTDataset):
        dataset = cls(files, processor.tokenizer, config, processor=processor)
        made.append([dataset[0], dataset[1]])
    return made


def test_verls_collator_fails_on_a_batch_whose_first_item_is_text_only(sft_items) -> None:
    from verl.utils.dataset.dataset_utils import SFTTensorCollator

    verl_items, _ = sft_items
    assert "multi_modal_inputs" not in verl_items[0] and "multi_modal_inputs" in verl_items[1]
    with pytest.raises(KeyError, match="multi_modal_inputs"):
        SFTTensorCollator("no_padding")(verl_items)


def test_mixed_text_and_image_batches_collate_and_reach_the_model_inputs(sft_items) -> None:
    from verl.utils.dataset.dataset_utils import SFTTensorCollator
    from verl.utils.model import extract_multi_modal_inputs

    _, items = sft_items
    batch = SFTTensorCollator("no_padding")(items)
    inputs = extract_multi_modal_inputs(batch["multi_modal_inputs"])
    assert torch.equal(inputs["image_grid_thw"], items[1]["multi_modal_inputs"]["image_grid_thw"])
    assert inputs["pixel_values"].shape == items[1]["multi_modal_inputs"]["pixel_values"].shape


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example pipeline on CPU, run as a user runs it; returns its output directory."""
    root = tmp_path_factory.mktemp("example_cpu")
    for name in ("examples", "recipes"):
        (root / name).symlink_to(REPO / name)
    env = {**os.environ, "PYTHON": sys.executable}
    done = subprocess.run(["bash", "recipes/run_example_cpu.sh"], cwd=root, env=env, capture_output=True,
                          text=True, timeout=1800)
    output = root / "runs" / "example_cpu"
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    return output


def _rows(run: Path, stage: str) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["stage"] == stage]


def test_every_stage_saves_the_hf_model_the_next_stage_starts_from(run: Path) -> None:
    state = json.loads((run / "pipeline_state.json").read_text())
    assert list(state["stages"]) == [*SFT_STAGES, "grpo", "eval"]
    for stage, done in state["stages"].items():
        if stage == "eval":
            continue
        # verl saved the HF model where the stage kind's record says it does
        model = KINDS["grpo" if stage == "grpo" else "sft"].latest_model(run / stage / "checkpoints")
        assert Path(done["model"]) == model
        assert (model / "config.json").is_file() and list(model.glob("*.safetensors"))
        assert (run / stage / "model").resolve() == model.resolve()
    # each stage started from the one before (the pipeline's model.path overrides, as verl logged them)
    for previous, stage in zip(SFT_STAGES, [*SFT_STAGES[1:], "grpo"], strict=True):
        assert f"{run / previous / 'model'}" in (run / "logs" / f"{stage}.log").read_text()


def test_sft_losses_are_finite_and_fall_over_the_run(run: Path) -> None:
    losses = []
    for stage in SFT_STAGES:
        rows = _rows(run, stage)
        assert rows and all(math.isfinite(r["train/loss"]) for r in rows)
        losses += [r["train/loss"] for r in rows]
    assert losses[-1] < 0.5 * losses[0]


def _sft_batches(dataset_size: int, batch_size: int, steps: int) -> list[list[int]]:
    """The dataset rows of each of the first `steps` batches, drawn by the sampler and dataloader verl's SFT trainer
    builds (``SFTTrainer._build_dataloader``, one data-parallel rank), one epoch after the other as its ``fit`` does."""
    from types import SimpleNamespace

    from omegaconf import OmegaConf
    from verl.trainer.sft_trainer import SFTTrainer

    trainer = SimpleNamespace(
        config=OmegaConf.create({"data": {"train_batch_size": batch_size, "pad_mode": "no_padding", "num_workers": 0}}),
        engine=SimpleNamespace(get_data_parallel_rank=lambda: 0, get_data_parallel_size=lambda: 1),
        train_dataset=range(dataset_size), val_dataset=None,
    )
    SFTTrainer._build_dataloader(trainer)
    batches, epoch = [], 0
    while len(batches) < steps:
        trainer.train_sampler.set_epoch(epoch)
        batches += list(trainer.train_dataloader.batch_sampler)
        epoch += 1
    return batches[:steps]


def test_a_batch_starting_with_a_text_only_conversation_trained(run: Path) -> None:
    """The SFT stage-2 steps' batches, as verl's own sampler drew them: one began with a text-only conversation
    beside image ones (the batch verl's collator fails on, medverl's SFTDataset trains on)."""
    # verl concatenates the stage's train files in order
    frame = pd.concat([pd.read_parquet(next((run / "data" / name).glob("part-*.parquet")))
                       for name in ("sft_stage2", "sft_stage2_synthetic")], ignore_index=True)
    text_only = {i for i, images in enumerate(frame["images"]) if len(images) == 0}
    # data.train_batch_size=8 in recipes/pipelines/example_cpu.yaml
    batches = _sft_batches(len(frame), batch_size=8, steps=len(_rows(run, "sft_stage2")))
    mixed = [b for b in batches if b[0] in text_only and set(b) - text_only]
    assert mixed, "no step of the run had a text-only first item beside image items"


def test_grpo_reward_reaches_verls_metrics_and_the_rollout_agrees_with_the_actor(run: Path) -> None:
    rows = [r for r in _rows(run, "grpo") if r["step"] > 0]
    assert len(rows) == GRPO_STEPS
    for row in rows:
        assert 0.0 <= row["critic/score/mean"] <= 1.0
        assert row["training/rollout_actor_probs_pearson_corr"] > 0.95
        assert row["training/rollout_probs_diff_mean"] < 0.05
    validation = _rows(run, "grpo")[-1]
    for source in ("synthetic_stain", "example_cxr", "example_fundus"):
        assert f"val-core/{source}/acc/mean@1" in validation


def test_grpo_learns_to_answer_from_the_image(run: Path) -> None:
    """Held-out stain questions, greedy, before GRPO (verl's val_before_train) and after it: every prompt has the same
    text and the answers are balanced, so only reading the image beats 1/3."""
    key = "val-core/synthetic_stain/acc/mean@1"
    validations = [r[key] for r in _rows(run, "grpo") if key in r]
    before, after = validations[0], validations[-1]
    assert after >= before + 0.25, validations
    assert after >= 0.55, validations  # well above what any image-blind answer scores (1/3)
    rows = [r for r in _rows(run, "grpo") if r["step"] > 0]
    quarter = len(rows) // 4
    first, last = rows[:quarter], rows[-quarter:]
    assert sum(r["medverl/format_rate"] for r in last) / quarter >= 0.9
    mean = lambda part: sum(r["critic/score/mean"] for r in part) / quarter  # noqa: E731
    assert mean(last) > mean(first)


def test_the_evaluation_stage_scores_every_checkpoint_and_grpo_helped(run: Path) -> None:
    """The seed's results table per stage: a row per checkpoint, a column per benchmark, scored apart from verl."""
    accuracy = json.loads((run / "eval_table.json").read_text())["accuracy"]
    assert list(accuracy) == ["base", *SFT_STAGES, "grpo"]
    assert all(list(row) == ["stain_val", "vqa_rad", "path_vqa", "slake"] for row in accuracy.values())
    assert (run / "eval_table.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| grpo |" in (run / "eval_table.md").read_text()
    # greedy on the held-out stain questions, as verl's validation after the last step scored them
    validation = [r for r in _rows(run, "grpo") if "val-core/synthetic_stain/acc/mean@1" in r][-1]
    assert accuracy["grpo"]["stain_val"] == pytest.approx(validation["val-core/synthetic_stain/acc/mean@1"], abs=0.06)
    assert accuracy["grpo"]["stain_val"] >= accuracy["sft_stage3"]["stain_val"] + 0.25


def test_the_learning_curves_are_drawn(run: Path) -> None:
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = (run / "summary.md").read_text()
    assert all(f"| {stage} |" in summary for stage in [*SFT_STAGES, "grpo"])
