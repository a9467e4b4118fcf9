"""Measuring: the sampler thread (:mod:`.sampler`) and one cell's measurement (:mod:`.cell`).

>>> from kmem_magic.measure import Measurement
"""

from .cell import Measurement, mark, measure_now
from .sampler import Sampler

__all__ = ["Measurement", "Sampler", "mark", "measure_now"]
