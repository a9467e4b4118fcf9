"""The surface every framework backend offers, and the helpers they share.

Every method is safe to call at any time, from any thread: none imports or starts a framework,
and none touches one whose import is still running (see :func:`loaded`). Methods that read
allocator counters answer only for a framework the user's code has already started.

=========================  ==================================================================
``is_installed()``         the package can be imported (found on the path; nothing imported)
``is_imported()``          the user's code imported it
``is_initialized()``       it has started on the device (its memory settings are fixed now)
``configure(p, setup, d)`` apply a policy through ``setup`` (a :class:`Setup`), one report
``growth_env()``           ``NAME=value`` that gives growth when set before the framework starts
``in_use()``               bytes its allocator has handed out, per CUDA ordinal
``reset_peak()``           reset (or remember) the allocator's peak counter; returns a state
``read_peak(state, ...)``  the peak since :meth:`reset_peak` per CUDA ordinal, and if exact
``cap_bytes(i)``           the framework's own hard cap on GPU ``i``, None if it has none
``held_bytes(i)``          what its pool holds on GPU ``i`` (in use, plus its cache)
``sizeof(value)``          ``(kind, bytes)`` for one of its tensors, else None
``step_bytes(m, x, y)``    a compiled training step's bytes, where the peak cannot be reset
``release_cache()``        give the allocator's cached, unused blocks back to the device
``is_oom(exc)``            whether an exception is this framework's out-of-memory error
``job()``                  the multi-process job this process belongs to, with its devices
``placement(t)``           a tensor's bytes on each device, its partition spec, its devices
=========================  ==================================================================
"""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Callable, Dict, Optional, Protocol, Sequence, Tuple

from ..record import Device, Peak


def loaded(name: str) -> Optional[ModuleType]:
    """The module ``name`` if its import has finished, else None; never imports anything.

    The sampler calls the backends from its own thread while the cell may be importing a
    framework. Importing (even ``from jax._src import xla_bridge``) or reading a module that
    another thread is still executing takes part in that import: Python hands one of the two
    threads half a module, and the user's ``import keras`` fails.
    """
    module = sys.modules.get(name)
    if module is None or getattr(getattr(module, "__spec__", None), "_initializing", False):
        return None
    return module


@dataclass(frozen=True)
class Report:
    """The outcome of applying a policy to one backend: the line ``%load_ext`` prints."""

    backend: str
    message: str

    def __str__(self) -> str:
        return f"  {self.backend:<11} {self.message}"


class Setup(Protocol):
    """What a backend may use to apply a policy (the policy package provides it)."""

    active: bool  # False once the policy was replaced or the extension unloaded

    def offer(self, name: str, value: str) -> Tuple[bool, str]:
        """Set an environment variable unless the user set it: (set by kmem, text to show)."""

    def is_users(self, name: str) -> bool:
        """Whether the environment variable ``name`` is the user's own."""

    def after_import(self, package: str, hook: Callable[[Any], None]) -> None:
        """Call ``hook(module)`` right after the user's own import of ``package`` (now if
        it is imported already)."""


def too_late(backend: str, what: str, fix_env: str) -> str:
    """The message for a backend that started before kmem could configure it."""
    return (
        f"already started before kmem_magic was loaded: {what} can no longer apply. "
        f"Fix: restart the kernel and run %load_ext kmem_magic before anything imports "
        f"{backend}, or set {fix_env} before starting Jupyter."
    )


class Backend:
    """Shared plumbing; each framework's subclass fills in its calls."""

    name = ""
    package = ""
    color = "#333333"
    resettable_peak = True  # False where the allocator's peak counter cannot be reset (jax)

    @property
    def label(self) -> str:
        """How reports name this backend's figures: ``jax allocator``."""
        return f"{self.name} allocator"

    def is_installed(self) -> bool:
        if self.package in sys.modules:
            return True
        try:
            return importlib.util.find_spec(self.package) is not None
        except (ImportError, ValueError):
            return False

    def is_imported(self) -> bool:
        return self.package in sys.modules

    def is_initialized(self) -> bool:
        raise NotImplementedError

    def configure(self, policy: Any, setup: Setup, devices: Sequence[Device]) -> Report:
        """Apply ``policy`` (``mode`` and ``limit``) if the framework is installed and a
        policy is asked for."""
        if not self.is_installed():
            return Report(self.name, "not installed")
        if policy.mode == "none":
            return Report(self.name, "left as it is (measure only)")
        return self._configure(policy, setup, devices)

    def _configure(self, policy: Any, setup: Setup, devices: Sequence[Device]) -> Report:
        raise NotImplementedError

    def growth_env(self) -> str:
        raise NotImplementedError

    def in_use(self) -> Dict[int, int]:
        return {}

    def reset_peak(self) -> Any:
        return None

    def read_peak(self, state: Any, sampled_max: Dict[int, int]) -> Dict[int, Peak]:
        return {}

    def cap_bytes(self, index: int = 0) -> Optional[int]:
        return None

    def held_bytes(self, index: int = 0) -> Optional[int]:
        return self.in_use().get(index)

    def sizeof(self, value: Any) -> Optional[Tuple[str, int]]:
        return None

    def tensor_types(self) -> tuple:
        """The classes whose instances :meth:`sizeof` measures (empty until imported)."""
        return ()

    def step_bytes(self, model: Any, x: Any, y: Any) -> Optional[int]:
        return None

    def trace_steps(self, models: Sequence[Any]) -> list:
        """Start noting the shapes each model's training step is compiled for (where the
        peak cannot be reset, :meth:`traced_step_bytes` then sizes the largest step)."""
        return []

    def traced_step_bytes(self, traced: list) -> Optional[int]:
        return None

    def release_cache(self) -> None:
        return None

    def placement(self, value: Any) -> Optional[Tuple[int, str, int]]:
        """How a tensor is laid out over devices: ``(bytes on each device it is on, its
        partition spec, how many devices hold a copy or a shard)``; None where this framework
        does not place tensors over several devices."""
        return None

    def job(self) -> Optional[dict]:
        """The multi-process job this process is one of, once the user's code started it:
        ``{"key", "process", "processes", "devices": [{"id", "platform", "kind", "in_use",
        "peak"}]}`` (its local devices; bytes None where the device does not count them);
        None for a process on its own."""
        return None

    def is_oom(self, error: BaseException) -> bool:
        return False

    def oom_request(self, message: str) -> Optional[int]:
        """The bytes of the request that failed, read from this framework's out-of-memory
        message (None when the message does not say)."""
        return None

    def __repr__(self) -> str:
        return f"<kmem backend {self.name}>"


_UNITS = {"B": 1, "bytes": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40}


def amount(number: str, unit: str) -> int:
    """``518.00`` ``MiB`` as bytes (the units frameworks print in their errors)."""
    return int(float(number) * _UNITS[unit])


SIZE_PATTERN = r"([\d.]+)\s*(TiB|GiB|MiB|KiB|bytes|B)\b"
