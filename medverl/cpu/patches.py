"""The only changes medverl makes to verl internals, and only under ``VERL_PLATFORM=cpu``.

Each patch replaces one name in one verl module. :data:`TARGETS` records a hash of the source each patch was written
against; ``tests/test_cpu_platform.py`` fails when the pinned verl's source differs, so a verl upgrade cannot change
a patched function silently.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import logging
import os
from datetime import timedelta

logger = logging.getLogger(__name__)

# "module:name" -> sha256 of the source of the function or table medverl replaces or extends (verl 0.9.1).
TARGETS = {
    # builds the backend "cpu:gloo,<device>:<backend>": on CPU "cpu:gloo,cpu:gloo", which torch refuses
    "verl.utils.distributed:initialize_global_process_group":
        "33a5452c4dde00591e00692a5f967cc7b424a3b7ebd9da7cb23697209ddbd0e1",
    "verl.utils.distributed:initialize_global_process_group_ray":
        "761a94d1a2e058d31a0ac231c89a142abf5daf822e333bac75e84cafcf7507ac",
    # the reference model's FSDP2 offload asks for pinned memory, which needs a CUDA driver
    "verl.workers.engine.fsdp.transformer_impl:FSDPEngine._build_fsdp_module":
        "35b7b539858443e45894da2d9675fb5a1d7b2bbb7c7c8b35605b0746d3179213",
    # the per-worker rollout client table has no register function
    "verl.workers.rollout.base:get_rollout_class":
        "d0be5827f1214f04fa25ce71c8df8b6297540e8dd714bec35245ec63f932fb74",
}

ROLLOUT_NAME = "hf"
ROLLOUT_ADAPTER = "medverl.cpu.rollout.HFServerAdapter"


def source_hash(target: str) -> str:
    """sha256 of the current source of a ``module:qualified.name`` target."""
    module_name, qualname = target.split(":")
    obj = importlib.import_module(module_name)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    obj = getattr(obj, "__wrapped_by_medverl__", obj)
    return hashlib.sha256(inspect.getsource(obj).encode()).hexdigest()


def changed_targets() -> list[str]:
    """The patch targets whose verl source is not the one the patches were written against."""
    return [target for target, expected in TARGETS.items() if source_hash(target) != expected]


def _initialize_global_process_group(timeout_second: int = 36000) -> tuple[int, int, int]:
    """verl's initialize_global_process_group with the plain gloo backend."""
    import torch.distributed

    torch.distributed.init_process_group(
        backend="gloo", timeout=timedelta(seconds=timeout_second), init_method=os.environ.get("DIST_INIT_METHOD")
    )
    return int(os.environ["LOCAL_RANK"]), int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])


def _offload_policy(pin_memory: bool = True):
    """FSDP2's CPUOffloadPolicy without pinned memory (pinning needs a CUDA driver)."""
    from torch.distributed.fsdp import CPUOffloadPolicy

    return CPUOffloadPolicy(pin_memory=False)


def apply() -> None:
    """Apply every patch (idempotent); logs the targets whose verl source changed."""
    from verl.utils import distributed
    from verl.workers.engine.fsdp import transformer_impl
    from verl.workers.rollout import base

    if getattr(distributed, "_medverl_cpu_patched", False):
        return
    original_ray = distributed.initialize_global_process_group_ray

    def initialize_global_process_group_ray(timeout_second=None, backend=None):
        return original_ray(timeout_second=timeout_second, backend=backend or "gloo")

    initialize_global_process_group_ray.__wrapped_by_medverl__ = original_ray
    _initialize_global_process_group.__wrapped_by_medverl__ = distributed.initialize_global_process_group
    distributed.initialize_global_process_group = _initialize_global_process_group
    distributed.initialize_global_process_group_ray = initialize_global_process_group_ray
    transformer_impl.CPUOffloadPolicy = _offload_policy
    base._ROLLOUT_REGISTRY[(ROLLOUT_NAME, "async")] = ROLLOUT_ADAPTER
    distributed._medverl_cpu_patched = True
    if changed := changed_targets():
        logger.warning("verl changed where medverl's CPU patches apply (%s); CPU runs may fail", ", ".join(changed))
