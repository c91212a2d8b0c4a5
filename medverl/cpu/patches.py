"""The only changes medverl makes to verl internals, and only under ``VERL_PLATFORM=cpu``.

Each patch replaces one name in one verl module. :data:`PINS` holds the sha256 of the verl source each patch was
written against, and of every other verl object medverl.cpu relies on beyond verl's public API; :func:`apply` checks
them first (:func:`medverl.verl_pins.check`), so a verl upgrade stops a CPU run at start-up, naming what changed.
"""

from __future__ import annotations

import os
from datetime import timedelta

from medverl import verl_pins
from medverl.verl_pins import Pin

# "module:qualified.name" -> its source's sha256 in verl 0.9.1, and what medverl.cpu does with it
PINS = {
    "verl.utils.distributed:initialize_global_process_group": Pin(
        "33a5452c4dde00591e00692a5f967cc7b424a3b7ebd9da7cb23697209ddbd0e1",
        "replaces it: it builds the backend 'cpu:gloo,cpu:gloo', which torch refuses"),
    "verl.utils.distributed:initialize_global_process_group_ray": Pin(
        "761a94d1a2e058d31a0ac231c89a142abf5daf822e333bac75e84cafcf7507ac",
        "wraps it to pass the plain gloo backend instead of its 'cpu:gloo,cpu:gloo'"),
    "verl.workers.engine.fsdp.transformer_impl:FSDPEngine._build_fsdp_module": Pin(
        "35b7b539858443e45894da2d9675fb5a1d7b2bbb7c7c8b35605b0746d3179213",
        "replaces the CPUOffloadPolicy it builds: its pinned memory needs a CUDA driver"),
    "verl.workers.rollout.base:get_rollout_class": Pin(
        "d0be5827f1214f04fa25ce71c8df8b6297540e8dd714bec35245ec63f932fb74",
        "adds the hf rollout to the private table _ROLLOUT_REGISTRY it reads, which has no register function"),
    "verl.workers.rollout.base:BaseRollout": Pin(
        "05c01b83ca41ee6fef3403745913be33acb89f2febf50a14728c48d74b767acb",
        "implements it in HFServerAdapter (its constructor and abstract methods, update_weights' wire formats)"),
    "verl.workers.rollout.replica:RolloutReplica": Pin(
        "5983e713558c4e04aee091e92a47ba52269def5bea650ab1bebc2868fbcb5775",
        "subclasses it in HFReplica, which sets its private _server_handle and _server_address and serves the calls "
        "it makes to its servers (HFServer)"),
    "verl.workers.rollout.llm_server:LLMServerManager._initialize_llm_servers": Pin(
        "c862f5411a8828a87f8abec120a6fa0f80c0f0bd841bc4778e8a3aa2fe4f57a1",
        "sets the private _server_handle and _server_address that it reads from every replica"),
    "verl.workers.rollout.llm_server:LLMServerClient.generate": Pin(
        "45f4cf4029f0be37b7de9c19972b0606b8052cf81c937e1b0f836c38d022acdb",
        "answers its call to server.generate in HFServer.generate (its keywords, a TokenOutput)"),
}

ROLLOUT_NAME = "hf"
ROLLOUT_ADAPTER = "medverl.cpu.rollout.HFServerAdapter"


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
    """Check the pins, then apply every patch (idempotent).

    Raises:
        VerlChanged: a pinned verl source is not the one medverl.cpu was written against.
    """
    from verl.utils import distributed
    from verl.workers.engine.fsdp import transformer_impl
    from verl.workers.rollout import base

    if getattr(distributed, "_medverl_cpu_patched", False):
        return
    verl_pins.check(PINS)
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
