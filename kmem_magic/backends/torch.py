"""PyTorch: expandable segments, a per-process memory fraction, and the allocator's counters.

PyTorch's caching allocator already grows on demand, but keeps what it once used; expandable
segments (read from the allocator configuration variable when CUDA starts) cut the slivers that
varying batch sizes leave. A hard cap exists only as ``set_per_process_memory_fraction``, which
would start CUDA if called early, so kmem queues it with ``torch.cuda._lazy_call``: it runs as
part of the user's own first CUDA use.

``torch.cuda.memory_stats`` and friends answer 0 without starting CUDA, but kmem calls them
only once :meth:`Torch.is_initialized` is true anyway.
"""

from __future__ import annotations

import importlib.metadata
import os
import sys
from typing import Any, Dict

from ..policy import Report, too_late
from ..record import Peak
from . import Backend, loaded

SEGMENTS = "expandable_segments:True"


def alloc_conf_env() -> str:
    """The allocator configuration variable this torch reads (renamed in torch 2.9)."""
    for name in ("PYTORCH_ALLOC_CONF", "PYTORCH_CUDA_ALLOC_CONF"):
        if name in os.environ:
            return name
    try:
        major, minor = (int(p) for p in importlib.metadata.version("torch").split(".")[:2])
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return "PYTORCH_CUDA_ALLOC_CONF"
    # torch 2.9.x ignores expandable_segments under the new name (pytorch #183387).
    return "PYTORCH_ALLOC_CONF" if (major, minor) >= (2, 10) else "PYTORCH_CUDA_ALLOC_CONF"


class Torch(Backend):
    name = "torch"
    package = "torch"

    def is_initialized(self) -> bool:
        torch = loaded("torch")
        cuda = getattr(torch, "cuda", None)
        return bool(cuda is not None and cuda.is_initialized())

    def growth_env(self) -> str:
        return f"{alloc_conf_env()}={SEGMENTS}"

    def _configure(self, policy, configurator, devices) -> Report:
        env_name = alloc_conf_env()
        if self.is_initialized():
            segments = "expandable segments no longer possible (CUDA already started)"
            if policy.mode == "growth":
                return Report(self.name, "too-late",
                              too_late("torch", segments, self.growth_env()))
        else:
            set_by_kmem, env_text = configurator.env.offer(env_name, SEGMENTS)
            segments = f"expandable segments ({env_text})"
            if policy.mode == "growth":
                return Report(self.name, "applied" if set_by_kmem else "kept", segments)

        limit, generation = policy.limit, configurator.generation

        def cap() -> None:
            import torch

            if configurator.generation != generation:
                return  # the extension was unloaded or the policy replaced before CUDA started
            for index in range(torch.cuda.device_count()):
                total = torch.cuda.get_device_properties(index).total_memory
                torch.cuda.set_per_process_memory_fraction(limit.fraction_of(total), index)

        def queue(torch: Any) -> None:
            torch.cuda._lazy_call(cap)  # runs now if CUDA is up, else at its first use

        configurator.hooks.add("torch", queue)
        when = "now" if self.is_initialized() else "when CUDA starts"
        return Report(self.name, "applied",
                      f"{segments}, capped at {limit} per GPU (memory fraction, set {when})")

    # ------------------------------------------------------------------ allocator counters
    def allocator_in_use(self) -> Dict[int, int]:
        if not self.is_initialized():
            return {}
        import torch

        found = {}
        for index in range(torch.cuda.device_count()):
            # memory_allocated() is this same number after flattening and sorting every one of
            # the allocator's statistics into a new dict, which costs more than reading it
            stats = torch.cuda.memory_stats_as_nested_dict(index)
            found[index] = int(stats.get("allocated_bytes", {}).get("all", {}).get("current", 0))
        return found

    def begin_cell(self) -> Any:
        if not self.is_initialized():
            return {"started": False}
        import torch

        for index in range(torch.cuda.device_count()):
            torch.cuda.reset_peak_memory_stats(index)
        return {"started": True}

    def end_cell(self, state: Any, sampled_max: Dict[int, int]) -> Dict[int, Peak]:
        if not self.is_initialized():
            return {}
        import torch

        note = "reset at cell start" if state and state["started"] else "started in this cell"
        return {
            i: Peak(int(torch.cuda.max_memory_allocated(i)), True, note)
            for i in range(torch.cuda.device_count())
        }

    def is_oom(self, error: BaseException) -> bool:
        torch = sys.modules.get("torch")
        oom = getattr(getattr(torch, "cuda", None), "OutOfMemoryError", None)
        return oom is not None and isinstance(error, oom)
