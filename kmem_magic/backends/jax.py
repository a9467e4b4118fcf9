"""JAX: no preallocation (or a memory fraction), and the allocator's counters.

By default JAX preallocates 75 % of each GPU when its backend starts (the first ``jax.devices()``
or operation, not ``import jax``). It reads ``XLA_PYTHON_CLIENT_PREALLOCATE`` and the memory
fraction at that moment, so environment variables are all kmem needs. ``jax.devices()`` and
``Device.memory_stats()`` start the backend themselves: they are only called once
:meth:`Jax.is_initialized` says the user's code has started it.

JAX has no way to reset its peak counter, so a cell's allocator peak is exact only when the
cell set a new lifetime record; otherwise the sampled maximum is reported as a lower bound.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Dict, List, Optional

from ..policy import Report, too_late
from ..record import Peak
from . import Backend, loaded

PREALLOCATE_ENV = "XLA_PYTHON_CLIENT_PREALLOCATE"
# jaxlib reads the newer XLA_CLIENT_MEM_FRACTION first and raises if both are set, so kmem sets
# the older spelling, which every jaxlib reads, and only when the user set neither.
FRACTION_ENVS = ("XLA_CLIENT_MEM_FRACTION", "XLA_PYTHON_CLIENT_MEM_FRACTION")


class Jax(Backend):
    name = "jax"
    package = "jax"

    def is_initialized(self) -> bool:
        bridge = loaded("jax._src.xla_bridge") if loaded("jax") else None
        return bridge is not None and bool(bridge.backends_are_initialized())

    _devices: Optional[List[Any]] = None

    def _gpu_devices(self) -> List[Any]:
        """The started backend's GPUs (cached: a backend's devices never change)."""
        if self._devices is None:
            import jax

            try:
                self._devices = [d for d in jax.local_devices() if d.platform == "gpu"]
            except RuntimeError:
                return []
        return self._devices

    def growth_env(self) -> str:
        return f"{PREALLOCATE_ENV}=false"

    def _configure(self, policy, configurator, devices) -> Report:
        if self.is_initialized():
            if not self._gpu_devices():
                return Report(self.name, "nothing", "already started, on the CPU only")
            what = "no preallocation" if policy.mode == "growth" else f"a {policy.limit} limit"
            return Report(self.name, "too-late",
                          too_late("jax", what, self.growth_env()))
        set_by_kmem, env_text = configurator.env.offer(PREALLOCATE_ENV, "false")
        if policy.mode == "growth":
            return Report(self.name, "applied" if set_by_kmem else "kept",
                          f"no preallocation ({env_text})")
        users = [name for name in FRACTION_ENVS if configurator.env.is_users(name)]
        if users:
            return Report(self.name, "kept", f"no preallocation ({env_text}); your "
                          f"{users[0]}={os.environ[users[0]]} kept as the limit")
        totals = [d.total_bytes for d in devices]
        fraction = policy.limit.fraction_of(min(totals) if totals else None)
        if fraction is None:
            return Report(self.name, "kept", f"no preallocation ({env_text}): a {policy.limit} "
                          "limit needs the GPU's total, and NVML cannot tell it")
        _, fraction_text = configurator.env.offer(FRACTION_ENVS[1], f"{fraction:.4f}")
        return Report(self.name, "applied", f"no preallocation, capped at {policy.limit} "
                      f"({env_text}, {fraction_text})")

    # ------------------------------------------------------------------ allocator counters
    def stats(self) -> Dict[int, dict]:
        """Each GPU's ``memory_stats()`` (bytes_in_use, peak_bytes_in_use, bytes_limit, ...)
        by CUDA ordinal; empty until the user's code has started JAX."""
        if not self.is_initialized():
            return {}
        found = {}
        for device in self._gpu_devices():
            stats = device.memory_stats()
            if stats:
                index = getattr(device, "local_hardware_id", None)
                found[device.id if index is None else index] = stats
        return found

    def allocator_in_use(self) -> Dict[int, int]:
        return {i: int(s.get("bytes_in_use", 0)) for i, s in self.stats().items()}

    def begin_cell(self) -> Any:
        return {i: int(s.get("peak_bytes_in_use", 0)) for i, s in self.stats().items()}

    def end_cell(self, state: Any, sampled_max: Dict[int, int]) -> Dict[int, Peak]:
        peaks = {}
        for index, stats in self.stats().items():
            lifetime = int(stats.get("peak_bytes_in_use", 0))
            if index not in state:
                peaks[index] = Peak(lifetime, True, "started in this cell")
            elif lifetime > state[index]:
                peaks[index] = Peak(lifetime, True, "a new lifetime peak")
            else:
                bound = max(sampled_max.get(index, 0), int(stats.get("bytes_in_use", 0)))
                peaks[index] = Peak(bound, False, "lower bound: jax cannot reset its peak")
        return peaks

    def is_oom(self, error: BaseException) -> bool:
        return "jax" in sys.modules and "RESOURCE_EXHAUSTED" in str(error)[:2000]
