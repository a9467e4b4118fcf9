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

import os
import re
from typing import Any, Dict, Optional, Sequence, Tuple

from ..record import Device, Peak
from ._base import SIZE_PATTERN, Backend, Report, Setup, amount, loaded, too_late

SEGMENTS = "expandable_segments:True"


def alloc_conf_env() -> str:
    """The allocator configuration variable this torch reads (renamed in torch 2.9)."""
    for name in ("PYTORCH_ALLOC_CONF", "PYTORCH_CUDA_ALLOC_CONF"):
        if name in os.environ:
            return name
    version = _installed_version()
    if version is None:
        return "PYTORCH_CUDA_ALLOC_CONF"
    # torch 2.9.x ignores expandable_segments under the new name (pytorch #183387).
    return "PYTORCH_ALLOC_CONF" if version >= (2, 10) else "PYTORCH_CUDA_ALLOC_CONF"


def _installed_version() -> Optional[Tuple[int, int]]:
    """torch's (major, minor) without importing it, read from its ``version.py``: a tenth of
    a millisecond where ``importlib.metadata`` costs several at ``%load_ext``."""
    import importlib.util
    import re

    try:
        spec = importlib.util.find_spec("torch")
        folder = list(spec.submodule_search_locations or [])[0]
        with open(os.path.join(folder, "version.py")) as handle:
            found = re.search(r"__version__\s*=\s*['\"](\d+)\.(\d+)", handle.read())
    except (ImportError, ValueError, AttributeError, IndexError, OSError):
        return None
    return (int(found.group(1)), int(found.group(2))) if found else None


_CPU_OOM = "DefaultCPUAllocator: can't allocate memory"


class Torch(Backend):
    name = "torch"
    package = "torch"
    color = "#d62728"

    def is_initialized(self) -> bool:
        torch = loaded("torch")
        cuda = getattr(torch, "cuda", None)
        return bool(cuda is not None and cuda.is_initialized())

    def growth_env(self) -> str:
        return f"{alloc_conf_env()}={SEGMENTS}"

    def _configure(self, policy: Any, setup: Setup, devices: Sequence[Device]) -> Report:
        if self.is_initialized():
            segments = "expandable segments no longer possible (CUDA already started)"
            if policy.mode == "growth":
                return Report(self.name, too_late("torch", segments, self.growth_env()))
        else:
            _, env_text = setup.offer(alloc_conf_env(), SEGMENTS)
            segments = f"expandable segments ({env_text})"
            if policy.mode == "growth":
                return Report(self.name, segments)

        limit = policy.limit

        def cap() -> None:
            import torch

            if not setup.active:
                return  # the extension was unloaded or the policy replaced before CUDA started
            for index in range(torch.cuda.device_count()):
                total = torch.cuda.get_device_properties(index).total_memory
                torch.cuda.set_per_process_memory_fraction(limit.fraction_of(total), index)

        def queue(torch: Any) -> None:
            torch.cuda._lazy_call(cap)  # runs now if CUDA is up, else at its first use

        setup.after_import("torch", queue)
        when = "now" if self.is_initialized() else "when CUDA starts"
        return Report(self.name,
                      f"{segments}, capped at {limit} per GPU (memory fraction, set {when})")

    # ------------------------------------------------------------------ allocator counters
    def in_use(self) -> Dict[int, int]:
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

    def reset_peak(self) -> Any:
        if not self.is_initialized():
            return {"started": False}
        import torch

        for index in range(torch.cuda.device_count()):
            torch.cuda.reset_peak_memory_stats(index)
        return {"started": True}

    def read_peak(self, state: Any, sampled_max: Dict[int, int]) -> Dict[int, Peak]:
        if not self.is_initialized():
            return {}
        import torch

        note = "reset at cell start" if state and state["started"] else "started in this cell"
        return {
            i: Peak(int(torch.cuda.max_memory_allocated(i)), True, note)
            for i in range(torch.cuda.device_count())
        }

    def cap_bytes(self, index: int = 0) -> Optional[int]:
        if not self.is_initialized():
            return None
        import torch

        fraction = getattr(torch.cuda, "get_per_process_memory_fraction", lambda *_: 1.0)(index)
        if fraction >= 1.0:
            return None
        return int(fraction * torch.cuda.get_device_properties(index).total_memory)

    def held_bytes(self, index: int = 0) -> Optional[int]:
        if not self.is_initialized():
            return None
        import torch

        return int(torch.cuda.memory_reserved(index))

    def tensor_types(self) -> tuple:
        torch = loaded("torch")
        return (torch.Tensor,) if torch is not None else ()

    def sizeof(self, value: Any) -> Optional[Tuple[str, int]]:
        torch = loaded("torch")
        if torch is not None and isinstance(value, torch.Tensor):
            where = "GPU" if value.is_cuda else "CPU"
            return f"torch tensor ({where})", value.element_size() * value.nelement()
        return None

    def release_cache(self) -> None:
        if self.is_initialized():
            import torch

            torch.cuda.empty_cache()

    def oom_request(self, message: str) -> Optional[int]:
        # CUDA: "Tried to allocate 2.26 GiB"; the CPU allocator: "you tried to allocate N bytes"
        found = re.search(r"[Tt]ried to allocate " + SIZE_PATTERN, message)
        return amount(*found.groups()) if found else None

    def is_oom(self, error: BaseException) -> bool:
        torch = loaded("torch")
        oom = getattr(getattr(torch, "cuda", None), "OutOfMemoryError", None)
        if oom is not None and isinstance(error, oom):
            return True
        # Without a GPU, torch's CPU allocator raises a plain RuntimeError
        return torch is not None and isinstance(error, RuntimeError) and \
            _CPU_OOM in str(error)[:2000]
