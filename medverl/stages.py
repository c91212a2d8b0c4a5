"""The kinds of pipeline stage, one record each: which trainer runs it, the data it reads, where its trainer saves the
model and what puts it on CPU; and the names of the metrics the trainers log.

CPT and SFT run verl's SFT trainer (torchrun), GRPO runs ``main_ppo``; an eval stage runs ``medverl eval
checkpoints``. The pipeline, the learning curves and the tests ask these records instead of spelling a layout again.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

# verl's metric names, as its file logger writes them, and those medverl adds from the rollouts
LOSS = "train/loss"  # the SFT trainer's loss per step
REWARD_MEAN = "critic/score/mean"  # main_ppo: the mean training reward of a step
GENERATION_S = "timing_s/gen"  # main_ppo: seconds a step spent generating rollouts
FORMAT_RATE = "medverl/format_rate"  # share of a step's rollouts whose format is right
ACCURACY = "medverl/accuracy"  # mean accuracy of a step's rollouts
VAL_PREFIX, VAL_SUFFIX = "val-core/", "/acc/mean@1"  # main_ppo: greedy validation accuracy per data source

TRACKER = "latest_checkpointed_iteration.txt"  # verl's record of the last checkpoint's step
CPU_ENVIRONMENT = {"VERL_PLATFORM": "cpu", "VERL_ENGINE_DEVICE": "cuda"}  # the FSDP engine runs on CPU as it is
RAY_MIN_CPUS = 16  # CPUs verl's TransferQueue and agent-loop actors reserve on one node; they mostly wait

# Hydra overrides that put verl's SFT trainer on CPU (after the recipe, before the stage's own)
_SFT_CPU = (
    "trainer.device=cpu",
    "engine.strategy=fsdp2",  # FSDP1 refuses CPU parameters with sync_module_states
    "model.use_remove_padding=false",  # packing swaps attention for flash-attn varlen kernels
    "engine.use_torch_compile=false",
    "+model.override_config.attn_implementation=sdpa",  # the default is flash_attention_2
    "data.num_workers=0",
)
# the same for verl's GRPO loop, with the hf rollout (medverl.cpu); Ray's CPUs come from :func:`ray_cpus`
_PPO_CPU = (
    "trainer.device=cpu",
    "actor_rollout_ref.rollout.name=hf",
    "actor_rollout_ref.actor.strategy=fsdp2",
    "actor_rollout_ref.actor.fsdp_config.strategy=fsdp2",
    "actor_rollout_ref.ref.fsdp_config.strategy=fsdp2",
    "actor_rollout_ref.model.use_remove_padding=false",
    "+actor_rollout_ref.model.override_config.attn_implementation=sdpa",
    "actor_rollout_ref.actor.use_torch_compile=false",
    "actor_rollout_ref.actor.fsdp_config.use_torch_compile=false",
    "actor_rollout_ref.ref.fsdp_config.use_torch_compile=false",
    "+ray_kwargs.ray_init.num_gpus=${trainer.n_gpus_per_node}",  # trainer processes take Ray "GPU"s: logical ones
    # one machine: Ray's node (and TransferQueue's sockets, bound to its address) on the loopback interface
    "+ray_kwargs.ray_init._node_ip_address=127.0.0.1",
    "+ray_kwargs.ray_init.include_dashboard=false",
    "transfer_queue.backend.SimpleStorage.num_data_storage_units=1",
    "actor_rollout_ref.rollout.agent.num_workers=1",
    "data.dataloader_num_workers=0",
)


def ray_cpus() -> int:
    """The CPUs Ray is told a CPU machine has: its own, and at least what verl's actors reserve."""
    return max(os.cpu_count() or 1, RAY_MIN_CPUS)


@dataclass(frozen=True)
class StageKind:
    """One kind of stage.

    Attributes:
        name: what a pipeline file's ``kind:`` says (cpt, sft, grpo, eval).
        trainer: the launcher it runs with (a pipeline file's ``launchers:`` key): sft, ppo or eval.
        module: the Python module that trainer runs (``python -m``).
        data_kind: the ``medverl prep`` output kind it trains on (None for eval).
        model_key: the Hydra key of the model it starts from.
        saved: where, inside a checkpoint's ``global_step_N``, the trainer saves the HF model (``hf_model``).
        cpu_overrides: the Hydra overrides that run it on CPU.
    """

    name: str
    trainer: str
    module: str
    data_kind: str | None = None
    model_key: str | None = None
    saved: tuple[str, ...] = ()
    cpu_overrides: tuple[str, ...] = ()

    def cpu_arguments(self) -> tuple[str, ...]:
        """:attr:`cpu_overrides`, with Ray sized for this machine where the stage starts Ray."""
        ray = (f"ray_kwargs.ray_init.num_cpus={ray_cpus()}",) if self.trainer == "ppo" else ()
        return (*self.cpu_overrides, *ray)

    def checkpoint_model(self, checkpoints: Path, step: int) -> Path:
        """The HF model directory of the checkpoint of `step` under a stage's ``trainer.default_local_dir``."""
        return checkpoints.joinpath(f"global_step_{step}", *self.saved)

    def latest_model(self, checkpoints: Path) -> Path | None:
        """The HF model directory of the last checkpoint verl recorded under `checkpoints`; None when none is."""
        tracker = checkpoints / TRACKER
        if not tracker.is_file():
            return None
        step = tracker.read_text(encoding="utf-8").strip()
        return self.checkpoint_model(checkpoints, int(step)) if step.isdigit() else None


_SFT_TRAINER = "verl.trainer.sft_trainer"
KINDS = {kind.name: kind for kind in (
    StageKind("cpt", "sft", _SFT_TRAINER, "cpt", "model.path", ("huggingface",), _SFT_CPU),
    StageKind("sft", "sft", _SFT_TRAINER, "sft", "model.path", ("huggingface",), _SFT_CPU),
    StageKind("grpo", "ppo", "verl.trainer.main_ppo", "rl", "actor_rollout_ref.model.path", ("actor", "huggingface"),
              _PPO_CPU),
    StageKind("eval", "eval", "medverl"),
)}
CPT_DATASET = "CPTDataset"  # the dataset class (data.custom_cls.name) that makes an SFT-trainer recipe a CPT one


def kind_of_recipe(recipe: dict) -> StageKind:
    """The kind of training stage a recipe (its YAML, as written) makes: GRPO when it builds on verl's
    ``ppo_trainer`` config, CPT when its dataset is medverl's CPTDataset, SFT otherwise."""
    if "ppo_trainer" in (recipe.get("defaults") or []):
        return KINDS["grpo"]
    custom = (recipe.get("data") or {}).get("custom_cls") or {}
    return KINDS["cpt"] if custom.get("name") == CPT_DATASET else KINDS["sft"]
