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
import yaml

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


LATERALITY = '''
from medverl.rewards import Verdict, register


@register("laterality")
def laterality(answer, golds):
    """Left or right."""
    side = answer.strip().lower()
    return Verdict(float(side == golds[0]), pred=side)
'''


TINY_GRPO = (
    "data.train_batch_size=4", "data.max_prompt_length=1024", "data.max_response_length=8",
    "actor_rollout_ref.rollout.max_model_len=1100", "actor_rollout_ref.rollout.n=2",
    "actor_rollout_ref.actor.ppo_mini_batch_size=4", "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=8",
    "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=8",
    "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=8", "reward.num_workers=1", "trainer.save_freq=-1",
    "trainer.total_epochs=100",
)


def _stain_rl(tmp_path: Path, extra: list[dict] = (), plugin: Path | None = None) -> tuple[Path, Path]:
    """Four prepared stain questions (and `extra` records), as training and validation data. Each question is worded
    at its own length: sequences all of one length (a random model's responses all run to the limit) trip verl
    0.9.1's nested-tensor micro-batching (``split_with_sizes`` in ``index_select_tensor_dict``)."""
    records = [json.loads(line) for line in (REPO / "examples/data/stain_rl.jsonl").read_text().splitlines()[:4]]
    for i, record in enumerate(records):
        record["question"] = "Look closely. " * i + record["question"]
    (tmp_path / "rl.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [*records[: 4 - len(extra)], *extra]))
    for split in ("train", "test"):
        args = ["prep", "rl", str(tmp_path / "rl.jsonl"), "--output", str(tmp_path / split), "--split", split,
                "--image-root", str(REPO / "examples/data/images")]
        assert main([*args, *(["--plugins", str(plugin)] if plugin else [])]) == 0
    return tmp_path / "train", tmp_path / "test"


def test_length_shaping_runs_in_the_cpu_pipeline_and_its_penalty_reaches_the_metrics(tiny_model: Path,
                                                                                     tmp_path: Path) -> None:
    """length_shaping=overlong (verl's dapo reward manager) on a random model, whose responses mostly run to the limit
    of 8 tokens: with the penalty starting 4 tokens before it, each of those loses the whole penalty_factor (a rare
    sampled end of sequence makes one shorter)."""
    from medverl.pipeline import Pipeline, Stage, run_pipeline

    train, val = _stain_rl(tmp_path)
    stage = Stage("grpo", "grpo", (str(train),), (str(val),), overrides=(
        *TINY_GRPO, "length_shaping=overlong", "reward.reward_kwargs.overlong_buffer_cfg.len=4",
        "trainer.total_training_steps=2", "trainer.test_freq=2", "trainer.save_freq=2",
    ))
    pipeline = Pipeline(model=str(tiny_model), output=tmp_path / "out", stages=(stage,),
                        gpus_per_node=1, device="cpu")
    with (tmp_path / "pipeline.log").open("w") as log:
        assert run_pipeline(pipeline, out=log) == 0
    rows = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if r["step"] > 0]
    assert len(steps) == 2
    for step in steps:  # format 0; a response at the limit loses the whole penalty, a shorter one (EOS) less
        clipped = step["response_length/clip_ratio"]
        assert clipped >= 0.5 and -1.0 <= step["critic/score/mean"] <= -clipped + 1e-6, step
    validation = rows[-1]
    assert validation["val-aux/synthetic_stain/overlong_reward/mean@1"] <= -0.5
    assert validation["val-aux/synthetic_stain/format/mean@1"] == 0.0  # medverl's extras survive the dapo manager


def test_a_raw_main_ppo_run_stops_at_a_query_type_no_reward_knows(tiny_model: Path, tmp_path: Path) -> None:
    """Rows prepared with a reward plugin, trained without it: verl's agent loop catches the reward's error and would
    train on without those rows; the recipe's replay buffer ends main_ppo at its first step instead."""
    from medverl.pipeline import Pipeline, Stage

    plugin = tmp_path / "laterality.py"
    plugin.write_text(LATERALITY)
    image = json.loads((REPO / "examples/data/stain_rl.jsonl").read_text().splitlines()[0])["image"]
    train, val = _stain_rl(tmp_path, [{"question": "Which side is the lesion on?", "answer": "left",
                                       "query_type": "laterality", "image": image, "data_source": "sides"}], plugin)
    stage = Stage("grpo", "grpo", (str(train),), (str(val),), overrides=(
        *TINY_GRPO, "trainer.val_before_train=false", "trainer.total_training_steps=2", "trainer.logger=[console]",
    ))
    pipeline = Pipeline(model=str(tiny_model), output=tmp_path / "out", stages=(stage,),
                        gpus_per_node=1, device="cpu")
    done = subprocess.run(pipeline.command(0), cwd=tmp_path, env={**os.environ, **pipeline.environment(stage)},
                          capture_output=True, text=True, timeout=900)
    output = done.stdout + done.stderr
    assert done.returncode != 0, output[-4000:]
    assert "RolloutFailed" in output and "1 in training" in output, output[-4000:]
    assert "unknown query_type 'laterality'" in output, output[-4000:]  # verl's own log of the reward's error
    assert "step:1 " not in output  # no update ran


def test_a_grpo_stage_mixes_its_sources_through_main_ppo(tiny_model: Path, tmp_path: Path) -> None:
    """Two sources weighted 1:3, 8 prompts an epoch, 2 steps of 4 prompts: main_ppo's own sampler draws through the
    mixture, every prompt of the epoch once, 2 from the first source and 6 from the second (upsampled)."""
    from medverl.pipeline import Pipeline, run_pipeline

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first, val = _stain_rl(tmp_path / "a")
    second, _ = _stain_rl(tmp_path / "b")
    config = {"model": str(tiny_model), "output": str(tmp_path / "out"), "gpus_per_node": 1, "device": "cpu",
              "stages": [{"name": "grpo", "recipe": "grpo", "val": [str(val)],
                          "train": [{"path": str(first), "name": "first", "weight": 1},
                                    {"path": str(second), "name": "second", "weight": 3}],
                          "mixture": {"samples": 8},
                          "overrides": [*TINY_GRPO, "trainer.val_before_train=false", "trainer.test_freq=-1",
                                        "trainer.total_training_steps=2", "trainer.save_freq=2"]}]}
    (tmp_path / "pipeline.yaml").write_text(yaml.safe_dump(config))
    with (tmp_path / "pipeline.log").open("w") as log:
        assert run_pipeline(Pipeline.load(tmp_path / "pipeline.yaml"), out=log) == 0
    rows = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in rows if r["step"] > 0][-1]
    assert (last["mixture/first/samples"], last["mixture/second/samples"]) == (2, 6)
    assert "| second | 75.0% | 6 | 75.0% |" in (tmp_path / "out" / "summary.md").read_text()
