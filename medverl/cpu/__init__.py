"""Run verl's real trainers on CPU: a verl platform and a transformers rollout backend, opt-in with VERL_PLATFORM=cpu.

What it is for: trying recipes and data on a laptop before paying for GPUs, and CI. Every stage runs through verl's
own entry points (``torchrun -m verl.trainer.sft_trainer``, ``python -m verl.trainer.main_ppo``) with a small model.

What it does not cover: sequence packing (``use_remove_padding``, flash-attn varlen), FSDP1 (use fsdp2), vLLM and
its weight sync (``rollout.name=hf`` generates with transformers and receives the actor's weights over Ray), and
torch.compile. Speed on CPU says nothing about speed on GPU.

verl imports :mod:`medverl.cpu.plugin` at start-up in every process (the ``verl.plugins`` entry point); it does
nothing unless ``VERL_PLATFORM=cpu``.
"""

import os

# verl's engine registry has no CPU engine: the FSDP engine runs on CPU as it is.
ENVIRONMENT = {"VERL_PLATFORM": "cpu", "VERL_ENGINE_DEVICE": "cuda"}


# Hydra overrides that put a recipe of verl's SFT trainer on CPU (after the recipe, before the user's own).
SFT_OVERRIDES = (
    "trainer.device=cpu",
    "engine.strategy=fsdp2",  # FSDP1 refuses CPU parameters with sync_module_states
    "model.use_remove_padding=false",  # packing swaps attention for flash-attn varlen kernels
    "engine.use_torch_compile=false",
    "+model.override_config.attn_implementation=sdpa",  # the default is flash_attention_2
    "data.num_workers=0",
)

# The same for verl's GRPO loop (main_ppo), with the hf rollout and Ray sized for a laptop.
PPO_OVERRIDES = (
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
    # trainer processes take Ray "GPU" resources: logical ones on CPU
    "+ray_kwargs.ray_init.num_gpus=${trainer.n_gpus_per_node}",
    # TransferQueue and verl's actors ask for more CPUs than a laptop has; they mostly wait
    "ray_kwargs.ray_init.num_cpus=16",
    "transfer_queue.backend.SimpleStorage.num_data_storage_units=1",
    "actor_rollout_ref.rollout.agent.num_workers=1",
    "data.dataloader_num_workers=0",
)


def activate() -> None:
    """Register the CPU platform and the ``hf`` rollout with verl, and apply the CPU patches (idempotent)."""
    from verl.plugin.platform.platform_manager import PlatformRegistry
    from verl.workers.rollout.replica import RolloutReplicaRegistry

    from medverl.cpu import patches
    from medverl.cpu.platform import NAME, PlatformCPU

    for key, value in ENVIRONMENT.items():
        os.environ.setdefault(key, value)
    if PlatformRegistry.get(NAME) is None:
        PlatformRegistry.register(platform=NAME)(PlatformCPU)
    RolloutReplicaRegistry.register(patches.ROLLOUT_NAME, _hf_replica)
    patches.apply()


def _hf_replica():
    from medverl.cpu.rollout import HFReplica

    return HFReplica
