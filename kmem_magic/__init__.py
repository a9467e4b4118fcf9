"""kmem_magic: GPU memory for Keras in notebooks.

``%load_ext kmem_magic`` applies a memory policy (growth by default, or a hard limit) to every
Keras backend (tensorflow, jax, torch) that has not started yet; ``%%gpumem`` measures a cell's
GPU and host memory and shows its peak and what it left behind; ``%gpumem status`` shows what
is in place. For Keras code: ``MemoryCallback`` (memory per batch), ``estimate`` (a training
step's peak, before it runs) and ``find_batch_size`` (the largest batch that fits). Importing
this package is cheap: no framework, NVML, matplotlib or ipywidgets.
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["load_ipython_extension", "unload_ipython_extension", "MemoryCallback", "estimate",
           "find_batch_size", "__version__"]

_LOADED: dict = {}


def load_ipython_extension(ipython) -> None:
    """``%load_ext kmem_magic``: register the magics and apply the default memory policy."""
    if id(ipython) in _LOADED:
        return
    from ._magics import GpuMem

    magics = GpuMem(shell=ipython)
    magics.load()  # may raise UsageError on a bad KMEM_LIMIT: then nothing is registered
    ipython.register_magics(magics)
    _LOADED[id(ipython)] = magics


def unload_ipython_extension(ipython) -> None:
    """``%unload_ext kmem_magic``: remove the magics, environment variables and import hooks."""
    magics = _LOADED.pop(id(ipython), None)
    if magics is None:
        return
    magics.unload()
    manager = ipython.magics_manager
    for kind in ("line", "cell"):
        if manager.magics[kind].get("gpumem") == getattr(magics, "gpumem", None):
            manager.magics[kind].pop("gpumem", None)
    manager.registry.pop(type(magics).__name__, None)
    if magics in ipython.configurables:
        ipython.configurables.remove(magics)


def __getattr__(name: str):
    """``MemoryCallback``, ``estimate`` and ``find_batch_size``, imported (with Keras) only
    when first used."""
    if name == "MemoryCallback":
        from .keras import MemoryCallback

        return MemoryCallback
    if name == "estimate":
        from .estimator import estimate

        return estimate
    if name == "find_batch_size":
        from .finder import find_batch_size

        return find_batch_size
    raise AttributeError(f"module 'kmem_magic' has no attribute {name!r}")
