"""GRPO on CPU through verl's main_ppo in short runs of their own (the example pipeline's run is in
test_cpu_training.py): length shaping, a query type no reward knows, a weighted mixture of sources."""

import json
import os
import subprocess
from pathlib import Path

import yaml

from medverl.cli import main

REPO = Path(__file__).resolve().parent.parent


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
