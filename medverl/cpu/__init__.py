"""Run verl's real trainers on CPU: a verl platform and a transformers rollout backend, opt-in with VERL_PLATFORM=cpu.

What it is for: trying recipes and data on a laptop before paying for GPUs, and CI. Every stage runs through verl's
own entry points (``torchrun -m verl.trainer.sft_trainer``, ``python -m verl.trainer.main_ppo``) with a small model.

What it does not cover: sequence packing (``use_remove_padding``, flash-attn varlen), FSDP1 (use fsdp2), vLLM and
its weight sync (``rollout.name=hf`` generates with transformers and receives the actor's weights over Ray), and
torch.compile. Speed on CPU says nothing about speed on GPU.

The overrides and environment that put each kind of stage on CPU are in :mod:`medverl.stages`. verl imports
:mod:`medverl.cpu.plugin` at start-up in every process (the ``verl.plugins`` entry point); it does
nothing unless ``VERL_PLATFORM=cpu``.
"""

import os

from medverl.stages import CPU_ENVIRONMENT


def activate() -> None:
    """Register the CPU platform and the ``hf`` rollout with verl, and apply the CPU patches (idempotent)."""
    from verl.plugin.platform.platform_manager import PlatformRegistry
    from verl.workers.rollout.replica import RolloutReplicaRegistry

    from medverl.cpu import patches
    from medverl.cpu.platform import NAME, PlatformCPU

    for key, value in CPU_ENVIRONMENT.items():
        os.environ.setdefault(key, value)
    if PlatformRegistry.get(NAME) is None:
        PlatformRegistry.register(platform=NAME)(PlatformCPU)
    RolloutReplicaRegistry.register(patches.ROLLOUT_NAME, _hf_replica)
    patches.apply()


def _hf_replica():
    from medverl.cpu.rollout import HFReplica

    return HFReplica
