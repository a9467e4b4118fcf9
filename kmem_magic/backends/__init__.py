"""One small, identical surface per framework Keras can run on: tensorflow, jax, torch.

Everything in kmem_magic that calls a framework calls it here; the rest of the package loops
over :data:`BACKENDS` or picks one with :func:`by_name`. The surface is documented in
:mod:`kmem_magic.backends._base`; a new backend is one module with one :class:`Backend`
subclass, added to :data:`BACKENDS`.
"""

from __future__ import annotations

from typing import Any, List, Optional, Tuple

from ..record import HOST
from ._base import Backend, Report, Setup, loaded
from .jax import Jax
from .tensorflow import TensorFlow
from .torch import Torch

BACKENDS: Tuple[Backend, ...] = (TensorFlow(), Jax(), Torch())
NAMES: Tuple[str, ...] = tuple(backend.name for backend in BACKENDS)

_LABELS = {"device": "device used (NVML)", "process": "this process (NVML)", HOST: "host RSS"}
_COLORS = {"device": "#7f7f7f", "process": "#1f77b4", HOST: "#9467bd"}


def started() -> List[Backend]:
    """The backends whose framework has started on a device, in a fixed order."""
    return [backend for backend in BACKENDS if backend.is_initialized()]


def by_name(name: Optional[str]) -> Optional[Backend]:
    """The backend called ``name`` (tensorflow, jax or torch); None for any other name, such as
    Keras' numpy or openvino backends, which have no GPU allocator to read."""
    return next((backend for backend in BACKENDS if backend.name == name), None)


def keras_backend() -> Optional[str]:
    """The backend Keras runs on, if the user imported Keras (Keras reads it once, at import)."""
    keras = loaded("keras")
    if keras is None:
        return None
    try:
        return keras.config.backend()
    except Exception:
        return None


def is_oom(error: BaseException) -> bool:
    """Whether ``error`` is an out-of-memory error of any framework."""
    return any(backend.is_oom(error) for backend in BACKENDS)


def oom_request(message: str) -> Optional[int]:
    """The bytes of the request that failed, read from any framework's out-of-memory
    message (None when none says)."""
    for backend in BACKENDS:
        found = backend.oom_request(message)
        if found is not None:
            return found
    return None


def sizeof(value: Any) -> Optional[Tuple[str, int]]:
    """``(kind, bytes)`` when ``value`` is a tensor of a framework, else None."""
    for backend in BACKENDS:
        if backend.is_imported():
            found = backend.sizeof(value)
            if found is not None:
                return found
    return None


def tensor_types() -> tuple:
    """The tensor classes of every framework imported so far (for a fast ``isinstance``)."""
    return tuple(t for backend in BACKENDS if backend.is_imported()
                 for t in backend.tensor_types())


def label(source: str) -> str:
    """The human name of a source: ``jax allocator``, ``device used (NVML)``, ``host RSS``."""
    backend = by_name(source)
    return backend.label if backend is not None else _LABELS.get(source, source)


def color(source: str) -> str:
    """The colour every view draws ``source`` in."""
    backend = by_name(source)
    return backend.color if backend is not None else _COLORS.get(source, "#333333")


__all__ = ["BACKENDS", "NAMES", "Backend", "Report", "Setup", "by_name", "color",
           "is_oom", "keras_backend", "label", "loaded", "oom_request", "sizeof", "started",
           "tensor_types"]
