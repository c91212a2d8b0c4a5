"""The CPU platform for verl (``VERL_PLATFORM=cpu``): torch.cpu plus what verl asks of a torch.cuda-like module."""

from __future__ import annotations

import contextlib
import os
import types
from typing import Any

import torch
from verl.plugin.platform.platform_base import PlatformBase

NAME = "cpu"


def _memory() -> tuple[int, int]:
    """(available, total) bytes of this machine's memory."""
    pages, free_pages = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_AVPHYS_PAGES")
    size = os.sysconf("SC_PAGE_SIZE")
    return free_pages * size, pages * size


def _zero(*_args: Any, **_kwargs: Any) -> int:
    return 0


def _nothing(*_args: Any, **_kwargs: Any) -> None:
    return None


def _device_module() -> types.ModuleType:
    """torch.cpu with the torch.cuda calls verl makes: memory statistics read as 0, cache calls do nothing."""
    module = types.ModuleType("medverl_cpu_device")
    for name in dir(torch.cpu):
        if not name.startswith("_"):
            setattr(module, name, getattr(torch.cpu, name))
    module.is_available = lambda: True
    module.device_count = lambda: 1
    module.current_device = lambda: "cpu"
    module.set_device = _nothing
    module.synchronize = _nothing
    module.empty_cache = _nothing
    module.ipc_collect = _nothing
    module.set_per_process_memory_fraction = _nothing
    module.reset_peak_memory_stats = _nothing
    module.memory_allocated = module.memory_reserved = _zero
    module.max_memory_allocated = module.max_memory_reserved = _zero
    module.mem_get_info = lambda *_: _memory()
    module.get_device_name = lambda *_: "cpu"
    module.get_rng_state = lambda *_: torch.get_rng_state()
    module.set_rng_state = lambda state, *_: torch.set_rng_state(state)
    module.manual_seed = module.manual_seed_all = torch.manual_seed
    return module


class PlatformCPU(PlatformBase):
    """verl on CPU: gloo collectives, one logical "GPU" per trainer process for Ray's scheduler."""

    _module = None

    @property
    def device_name(self) -> str:
        return "cpu"

    @property
    def vendor_name(self) -> str:
        return "cpu"

    @property
    def device_module(self) -> types.ModuleType:
        if PlatformCPU._module is None:
            PlatformCPU._module = _device_module()
        return PlatformCPU._module

    def is_available(self) -> bool:
        return True

    def is_platform_available(self, use_smi_check: bool = False) -> bool:
        # never auto-detected: only VERL_PLATFORM=cpu selects it, so nothing changes for GPU users
        return False

    def current_device(self) -> str:
        # verl passes this straight to .to(device=...): an int would mean a CUDA device
        return "cpu"

    def device_count(self) -> int:
        return 1

    def set_device(self, device_index: int) -> None:
        return None

    def synchronize(self, device_index: int | None = None) -> None:
        return None

    def manual_seed(self, seed: int) -> None:
        torch.manual_seed(seed)

    def manual_seed_all(self, seed: int) -> None:
        torch.manual_seed(seed)

    def set_allocator_settings(self, settings: str) -> None:
        return None

    def empty_cache(self) -> None:
        return None

    def get_device_capability(self, device_index: int = 0) -> tuple[int | None, int | None]:
        return None, None

    def communication_backend_name(self) -> str:
        return "gloo"

    def visible_devices_envvar(self) -> str:
        return "CUDA_VISIBLE_DEVICES"

    @contextlib.contextmanager
    def nvtx_range(self, msg: str):
        yield

    def profiler_start(self) -> None:
        return None

    def profiler_stop(self) -> None:
        return None

    def ray_resource_name(self) -> str:
        # main_ppo counts "GPU" resources; on CPU they are logical ones (+ray_kwargs.ray_init.num_gpus=N)
        return "GPU"

    def ray_noset_envvars(self) -> list[str]:
        return []

    def is_ipc_supported(self) -> bool:
        return False

    def cudart(self) -> Any:
        return None
