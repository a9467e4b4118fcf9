"""Planning a Keras training run's memory: :func:`estimate` (a step's peak, before it runs),
:func:`find_batch_size` (the largest batch that fits, from probe steps, :mod:`.probe`) and
:class:`MemoryCallback` (memory per batch while it trains). ``MemoryCallback`` imports Keras,
so it is imported only when first used.
"""

from __future__ import annotations

from .estimator import Estimate, estimate
from .finder import BatchSize, find_batch_size, fit_line
from .sharding import ShardingCheck, sharding


def __getattr__(name: str):
    if name == "MemoryCallback":
        from .callback import MemoryCallback

        return MemoryCallback
    raise AttributeError(f"module 'kmem_magic.plan' has no attribute {name!r}")


__all__ = ["BatchSize", "Estimate", "MemoryCallback", "ShardingCheck", "estimate",
           "find_batch_size", "fit_line", "sharding"]
