"""One small, identical surface per framework Keras can run on: tensorflow, jax, torch.

Every method is safe to call at any time, from any thread: none imports or starts a framework,
and none touches one whose import is still running (see :func:`loaded`). Methods that read
allocator counters answer only for a framework the user's code has already started.

=====================  ======================================================================
``is_installed()``     the package can be imported (found on the path; nothing is imported)
``is_imported()``      the user's code imported it
``is_initialized()``   it has started on the device (from then on its memory settings are fixed)
``configure(...)``     apply a :class:`~kmem_magic.policy.Policy`, return a one-line report
``allocator_in_use()`` bytes its allocator has handed out, per CUDA ordinal
``begin_cell()``       reset (or remember) the allocator's peak counter at a cell's start
``end_cell(...)``      the cell's allocator peak per CUDA ordinal, and whether it is exact
``is_oom(exc)``        whether an exception is this framework's out-of-memory error
=====================  ======================================================================
"""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType
from typing import Any, Dict, List, Optional

from ..policy import Report
from ..record import Peak


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


class Backend:
    """Shared plumbing; subclasses fill in the framework-specific calls."""

    name = ""
    package = ""

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

    def configure(self, policy, configurator, devices) -> Report:
        """Apply ``policy`` if the framework is installed and a policy is asked for."""
        if not self.is_installed():
            return Report(self.name, "not-installed", "not installed")
        if policy.mode == "none":
            return Report(self.name, "nothing", "left as it is (measure only)")
        return self._configure(policy, configurator, devices)

    def _configure(self, policy, configurator, devices) -> Report:
        raise NotImplementedError

    def growth_env(self) -> str:
        """``NAME=value``: the variable that gives this framework growth if set before it
        starts (what the "too late" fix and the preallocation advice tell the user to set)."""
        raise NotImplementedError

    def allocator_in_use(self) -> Dict[int, int]:
        return {}

    def begin_cell(self) -> Any:
        return None

    def end_cell(self, state: Any, sampled_max: Dict[int, int]) -> Dict[int, Peak]:
        return {}

    def is_oom(self, error: BaseException) -> bool:
        return False

    def __repr__(self) -> str:
        return f"<kmem backend {self.name}>"


def _all() -> List[Backend]:
    from .jax import Jax
    from .tensorflow import TensorFlow
    from .torch import Torch

    return [TensorFlow(), Jax(), Torch()]


BACKENDS: List[Backend] = _all()


def started() -> List[Backend]:
    """The backends whose framework has started on a device, in a fixed order."""
    return [backend for backend in BACKENDS if backend.is_initialized()]


def keras_backend() -> Optional[str]:
    """The backend Keras runs on, if the user imported Keras (Keras reads it once, at import)."""
    keras = loaded("keras")
    if keras is None:
        return None
    try:
        return keras.config.backend()
    except Exception:
        return None


def by_name(name: Optional[str]) -> Optional[Backend]:
    """The backend called ``name`` (tensorflow, jax or torch); None for any other name, such as
    Keras' numpy or openvino backends, which have no GPU allocator to read."""
    return next((backend for backend in BACKENDS if backend.name == name), None)


def is_oom(error: BaseException) -> bool:
    """Whether ``error`` is an out-of-memory error of any framework."""
    return any(backend.is_oom(error) for backend in BACKENDS)
