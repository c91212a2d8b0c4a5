"""What only a GPU can check; every stage already trains on CPU in tests/test_cpu_training.py (same tiny model, same
example data, same recipes). Here: sequence packing (remove-padding, flash-attn varlen) against padded batches in
tokens/s on FSDP1 (the recipes' engine), and GRPO steps with vLLM rollouts and their weight sync.

    python -m pytest tests/gpu -m gpu -s
"""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from medverl.stages import KINDS

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

REPO = Path(__file__).resolve().parents[2]
STEPS = (2, 6)  # runs of both lengths: their difference is the time of the steps alone, without start-up
# the example data is a few records: without more epochs a run stops at the end of the first, after 1-2 steps
EPOCHS = "trainer.total_epochs=1000"
PACKING_SPEEDUP = 1.2  # packed tokens/s over padded tokens/s, at least (see the packing test)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled example records at each stage's resolution, prepared as the CPU pipeline prepares them."""
    root = tmp_path_factory.mktemp("repo")
    (root / "examples").symlink_to(REPO / "examples")
    subprocess.run(["bash", str(REPO / "recipes" / "prepare_example_data.sh")], cwd=root, check=True,
                   env={**os.environ, "MEDVERL": f"{sys.executable} -m medverl"})
    return root / "runs" / "example" / "data"


def _files(*dirs: Path) -> str:
    return "[" + ",".join(f'"{p}"' for d in dirs for p in sorted(d.glob("part-*.parquet"))) + "]"


def _sft(recipe: str, model: Path, train: str, out: Path, steps: int, packing: bool) -> float:
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=1",
        "-m", "verl.trainer.sft_trainer",
        "--config-path", str(REPO / "recipes"), "--config-name", recipe,
        f"model.path={model}", f"data.train_files={train}", "data.val_files=null",
        "data.train_batch_size=2", "data.micro_batch_size_per_gpu=1", "data.max_length=2048",
        f"data.use_dynamic_bsz={packing}", f"model.use_remove_padding={packing}",
        f"trainer.total_training_steps={steps}", EPOCHS, "trainer.save_freq=-1", f"trainer.default_local_dir={out}",
        "trainer.logger=[console]", "engine.use_torch_compile=false",
    ]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert (KINDS["sft"].checkpoint_model(out, steps) / "config.json").is_file()  # hf_model for the next stage
    return time.perf_counter() - start


def _tokens_per_step(recipe: str, model: Path, train: str) -> float:
    from hydra import compose, initialize_config_dir
    from verl.trainer.sft_trainer import create_sft_dataset
    from verl.utils import hf_processor, hf_tokenizer

    with initialize_config_dir(config_dir=str(REPO / "recipes"), version_base=None):
        cfg = compose(recipe, overrides=[f"model.path={model}", f"data.train_files={train}", "data.max_length=2048"])
    dataset = create_sft_dataset(cfg.data.train_files, cfg.data, hf_tokenizer(str(model)), hf_processor(str(model)))
    lengths = [dataset[i]["input_ids"].shape[0] for i in range(len(dataset))]
    return 2 * sum(lengths) / len(lengths)  # train_batch_size 2


@pytest.mark.parametrize("recipe", ["cpt", "sft_stage1"])
def test_sequence_packing_against_padding_on_fsdp1(recipe: str, tiny_model: Path, data: Path, tmp_path: Path) -> None:
    train = _files(data / "cpt_captions", data / "cpt_interleaved") if recipe == "cpt" else _files(data / "sft_stage1")
    tokens = _tokens_per_step(recipe, tiny_model, train)
    rates = {}
    for packing in (True, False):
        short, long = (_sft(recipe, tiny_model, train, tmp_path / f"{packing}-{n}", n, packing) for n in STEPS)
        rates[packing] = (STEPS[1] - STEPS[0]) / max(long - short, 1e-6) * tokens
    ratio = rates[True] / rates[False]
    print(f"\n{recipe}: packed {rates[True]:,.0f} tokens/s, padded {rates[False]:,.0f} tokens/s, ratio {ratio:.2f}")
    # Padded, a step runs one forward and backward per sample (micro-batch 1); packed, the step's two samples go in
    # one varlen pass. The tiny model is bound by kernel launches, so packing should come near 2x on the passes;
    # 1.2x leaves room for the per-step work both share (optimizer, logging) and for timing noise, while a ratio
    # near 1 means packing did not engage (use_remove_padding or use_dynamic_bsz ignored).
    assert ratio > PACKING_SPEEDUP, f"{recipe}: packing is {ratio:.2f}x padding, expected > {PACKING_SPEEDUP}x"


def test_grpo_steps_with_vllm_rollouts(tiny_model: Path, data: Path, tmp_path: Path) -> None:
    pytest.importorskip("vllm")
    command = [
        sys.executable, "-m", "verl.trainer.main_ppo", "--config-path", str(REPO / "recipes"), "--config-name", "grpo",
        f"actor_rollout_ref.model.path={tiny_model}", f"data.train_files={_files(data / 'rl')}",
        f"data.val_files={_files(data / 'rl_val')}", "data.train_batch_size=4", "data.max_prompt_length=1024",
        "data.max_response_length=64", "actor_rollout_ref.rollout.max_model_len=1200",
        "actor_rollout_ref.rollout.n=2", "actor_rollout_ref.actor.ppo_mini_batch_size=2",
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=1",
        "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=1",
        "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=1",
        "actor_rollout_ref.rollout.gpu_memory_utilization=0.3", "trainer.n_gpus_per_node=1",
        "trainer.total_training_steps=2", EPOCHS, "trainer.val_before_train=false", "trainer.test_freq=-1",
        "trainer.save_freq=2", f"trainer.default_local_dir={tmp_path}", "reward.num_workers=1",
        "trainer.logger=[console]",
    ]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert (KINDS["grpo"].checkpoint_model(tmp_path, 2) / "config.json").is_file()
    assert "training/rollout_actor_probs_pearson_corr" in done.stdout  # vLLM's log-probs beside the actor's
    print(f"\ngrpo with vLLM: 2 steps in {time.perf_counter() - start:.0f} s including start-up")
