"""kmem_magic: GPU memory for Keras in notebooks.

``%load_ext kmem_magic`` applies a memory policy (growth by default, or a hard limit) to every
Keras backend (tensorflow, jax, torch) that has not started yet; ``%%gpumem`` measures a cell's
GPU and host memory and shows its peak and what it left behind (``%%gpumem -o rec`` also keeps
the record, and :func:`history` returns every record of the kernel); ``%gpumem status`` shows
what is in place. For Keras code: ``MemoryCallback`` (memory per batch), ``estimate`` (a training
step's peak, before it runs), ``find_batch_size`` (the largest batch that fits) and ``sharding``
(what each device holds under a keras.distribution layout). Importing
this package is cheap: no framework, NVML, matplotlib or ipywidgets.
"""

from __future__ import annotations

from typing import Any, Dict, Tuple

__version__ = "0.1.0"
__all__ = ["load_ipython_extension", "unload_ipython_extension", "history", "MemoryCallback",
           "estimate", "find_batch_size", "sharding", "__version__"]

_LOADED: Dict[int, Any] = {}


def load_ipython_extension(ipython) -> None:
    """``%load_ext kmem_magic``: register the magics and apply the default memory policy."""
    if id(ipython) in _LOADED:
        return
    from ._magics import GpuMem

    magics = GpuMem(shell=ipython)  # (a Magics adds itself to the shell's configurables)
    try:
        magics.load()  # may raise UsageError on a bad KMEM_LIMIT: then nothing is registered
    except BaseException:
        if magics in ipython.configurables:
            ipython.configurables.remove(magics)
        raise
    ipython.register_magics(magics)
    _LOADED[id(ipython)] = magics


def unload_ipython_extension(ipython) -> None:
    """``%unload_ext kmem_magic``: remove the magics, environment variables and import hooks."""
    magics = _LOADED.pop(id(ipython), None)
    if magics is None:
        return
    magics.unload()
    manager = ipython.magics_manager
    for kind, method in (("line", magics.gpumem_line), ("cell", magics.gpumem_cell)):
        if manager.magics[kind].get("gpumem") == method:
            manager.magics[kind].pop("gpumem", None)
    manager.registry.pop(type(magics).__name__, None)
    if magics in ipython.configurables:
        ipython.configurables.remove(magics)


def history(shell: Any = None) -> Tuple[Any, ...]:
    """The records (``CellRecord``) of the cells ``%%gpumem`` measured in this kernel, oldest
    first (at most ``GpuMem.history_size``); empty when kmem_magic is not loaded."""
    if shell is None:
        from IPython import get_ipython

        shell = get_ipython()
    magics = _LOADED.get(id(shell))
    return tuple(magics.history) if magics is not None else ()


def __getattr__(name: str):
    """``MemoryCallback``, ``estimate`` and ``find_batch_size``, imported (with Keras) only
    when first used."""
    if name in ("MemoryCallback", "estimate", "find_batch_size", "sharding"):
        from . import plan

        return getattr(plan, name)
    raise AttributeError(f"module 'kmem_magic' has no attribute {name!r}")
