"""Find the largest batch size whose training step fits in GPU memory, without crashing.

>>> found = kmem_magic.find_batch_size(model, x, y)                  # doctest: +SKIP
>>> found.batch_size, found                                          # doctest: +SKIP

How: the estimate (:mod:`kmem_magic.plan.estimator`) says where to look; two probe steps well below
the budget measure the real cost (a fixed part and a per-sample slope, read from the
allocator); the line through them predicts the largest batch, and one more step at that size
confirms it. A probe that runs out of memory or over the budget is caught, its memory is
given back, and the search backs off below it. The model's weights, optimizer state and
metrics are restored afterwards: probing never trains the model.
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass, field
from typing import Any, List, Optional, Sequence, Tuple

from .. import _nvml, backends
from ..sizes import format_bytes, parse_limit
from .probe import recover, step_peak
from .estimator import estimate


@dataclass(frozen=True)
class Probe:
    """One measured training step: its batch size, its allocator peak and the outcome."""

    batch_size: int
    peak_bytes: Optional[int]
    outcome: str  # "fits", "over budget" or "out of memory"


@dataclass
class BatchSize:
    """What :func:`find_batch_size` found: ``batch_size`` and how it got there."""

    batch_size: int
    budget_bytes: int
    peak_bytes: Optional[int]
    estimate_bytes: Optional[int]
    probes: List[Probe] = field(default_factory=list)
    limited_by: str = "memory"
    capped: bool = False

    def __int__(self) -> int:
        return self.batch_size

    def __str__(self) -> str:
        budget = "budget" + (" (capped at what this process may use)" if self.capped else "")
        head = (f"batch size {self.batch_size}: peak {format_bytes(self.peak_bytes)} of a "
                f"{format_bytes(self.budget_bytes)} {budget} ({len(self.probes)} probe steps")
        head += ", limited by the data)" if self.limited_by == "data" else ")"
        rows = [f"  {p.batch_size:>7}  {format_bytes(p.peak_bytes):>11}  {p.outcome}"
                for p in self.probes]
        return "\n".join([head] + rows)

    def _repr_pretty_(self, printer, cycle) -> None:
        printer.text(str(self))


def fit_line(points: Sequence[Tuple[int, int]]) -> Optional[Tuple[float, float]]:
    """``(fixed, per_sample)``: the least-squares line through measured ``(batch, peak)``
    points (the fixed part is weights, optimizer state, workspace); None unless two batch
    sizes were measured and memory grows with the batch."""
    if len({b for b, _ in points}) < 2:
        return None
    n = len(points)
    mean_b = sum(b for b, _ in points) / n
    mean_p = sum(p for _, p in points) / n
    slope = sum((b - mean_b) * (p - mean_p) for b, p in points) / \
        sum((b - mean_b) ** 2 for b, _ in points)
    if slope <= 0:
        return None
    return mean_p - slope * mean_b, slope


def _capacity() -> Optional[int]:
    """What this process may allocate on GPU 0: the framework's cap if it has one, else what
    its allocator holds plus what the device has free."""
    framework = backends.by_name(backends.keras_backend())  # None on numpy or openvino
    held = 0
    if framework is not None:
        cap = framework.cap_bytes(0)
        if cap is not None:
            return cap
        held = framework.held_bytes(0) or 0
    devices = _nvml.devices()
    if not devices:
        return None
    used = _nvml.memory_used(devices[0])
    if used is None:
        return None
    return held + devices[0].total_bytes - used


def _budget(budget: Any, headroom: float) -> Tuple[int, bool]:
    """``(bytes, capped)``: the budget asked for, capped at what this process may use."""
    if budget is not None and not isinstance(budget, str) and (
            isinstance(budget, bool) or not isinstance(budget, (int, float)) or budget <= 0):
        raise ValueError(f"budget must be bytes (an int), a size like '4GiB' or a share like "
                         f"'80%', not {budget!r}")
    limit = parse_limit(budget) if isinstance(budget, str) else None
    capacity = _capacity()
    if budget is None:
        if capacity is None:
            raise ValueError("no GPU memory to read the budget from: pass budget= (e.g. '4GiB')")
        return int(capacity * (1 - headroom)), False
    if limit is not None and limit.fraction is not None:
        if capacity is None:
            raise ValueError(f"budget={budget!r} needs the GPU's memory, which is unknown "
                             "here: give bytes (e.g. '4GiB')")
        return int(limit.fraction * capacity), False
    asked = limit.bytes if limit is not None else int(budget)
    if capacity is not None and asked > capacity:
        return capacity, True  # more than the limit or the free memory cannot be used
    return asked, False


def _take(keras: Any, data: Any, size: int, count: int) -> Any:
    import numpy as np

    index = np.arange(size) % count  # repeat the data when the batch is larger than it
    return keras.tree.map_structure(lambda a: np.asarray(a)[index], data)


def _snapshot(model: Any) -> List[Tuple[Any, Any]]:
    import numpy as np

    variables = list(model.variables) + list(model.optimizer.variables)
    return [(v, np.array(v.numpy(), copy=True)) for v in variables]


def find_batch_size(model: Any, x: Any, y: Any = None, budget: Any = None,
                    headroom: float = 0.1, max_batch_size: Optional[int] = None,
                    max_probes: int = 6) -> BatchSize:
    """The largest batch size whose training step of ``model`` on ``x``/``y`` fits ``budget``.

    ``budget``: bytes, a size (``"4GiB"``) or a share of the GPU (``"80%"``); by default the
    memory this process may use on GPU 0 (the policy's limit, or what is free) less
    ``headroom``. A budget above what this process may use is capped at it.
    ``max_batch_size`` defaults to the number of samples in ``x``. At most ``max_probes``
    training steps run; the model is left as it was.
    """
    import keras

    if not isinstance(model, keras.Model) or not getattr(model, "compiled", False):
        raise ValueError("find_batch_size needs a compiled Keras model (model.compile(...))")
    if not 0 <= headroom < 1:
        raise ValueError(f"headroom must be in [0, 1), not {headroom!r}")
    if isinstance(max_probes, bool) or not isinstance(max_probes, int) or max_probes < 3:
        raise ValueError(f"max_probes must be an integer of at least 3, not {max_probes!r}")
    leaves = keras.tree.flatten(x)
    if not leaves or not hasattr(leaves[0], "shape") or not len(leaves[0]):
        raise ValueError("x must be an array (or a list/dict of arrays) with samples in it")
    budget_bytes, capped = _budget(budget, headroom)
    search = _Search(keras, model, x, y, budget_bytes, max_batch_size or len(leaves[0]))
    try:
        guess = estimate(model, 1)
        predicted = max(1, guess.largest_batch(budget_bytes, search.ceiling))
    except (ValueError, TypeError):  # a subclassed model: no graph, start from probes alone
        guess, predicted = None, 64
    if not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
    saved = _snapshot(model)
    try:
        search.run(predicted, max_probes)
    finally:
        for variable, value in saved:
            variable.assign(value)
        model.reset_metrics()
    low, probes = search.low, search.probes
    if low == 0:
        raise RuntimeError(f"even a batch of {min(b.batch_size for b in probes)} does not fit "
                           f"in {format_bytes(budget_bytes)}: {probes[-1].outcome}")
    peak = max(p.peak_bytes for p in probes if p.batch_size == low and p.peak_bytes is not None)
    return BatchSize(low, budget_bytes, peak,
                     guess.at(low) if guess is not None else None, probes,
                     "data" if low >= search.ceiling else "memory", capped)


class _Search:
    """The probes of one search: what is known to fit (``low``) and not to (``high``)."""

    def __init__(self, keras: Any, model: Any, x: Any, y: Any, budget_bytes: int,
                 ceiling: int) -> None:
        self.keras, self.model, self.x, self.y = keras, model, x, y
        self.count = len(keras.tree.flatten(x)[0])
        self.budget_bytes, self.ceiling = budget_bytes, ceiling
        self.probes: List[Probe] = []
        self.fits: List[Tuple[int, int]] = []
        self.low, self.high = 0, ceiling + 1  # largest batch that fitted, smallest that did not

    def run(self, predicted: int, max_probes: int) -> None:
        """Probe at a quarter and half of ``predicted``, then where the line through the
        measured peaks says the budget ends, until the answer is within 1 %."""
        target = max(1, min(predicted, self.ceiling))
        for size in sorted({max(1, target // 4), max(1, target // 2)}):
            self.probe(size)
        while len(self.probes) < max_probes and self.high - self.low > 1:
            nxt = self._next()
            close = self.low and nxt <= self.low * 1.01 and self.high <= self.ceiling
            if nxt <= self.low or close or nxt in {p.batch_size for p in self.probes}:
                break
            self.probe(nxt)

    def _next(self) -> int:
        low, high = self.low, self.high
        line = fit_line(self.fits)
        nxt = int((self.budget_bytes - line[0]) / line[1]) if line else low * 2
        if high <= self.ceiling and nxt >= high:
            # the line says more than a size that already failed (out of memory below
            # the budget): the device has less than the budget, so bisect
            nxt = (low + high) // 2
        # stay strictly between what is known to fit and what is known not to
        return min(max(nxt, low + 1), high - 1, self.ceiling)

    def probe(self, size: int) -> None:
        """One real training step at ``size``; an out-of-memory error is caught and given back."""
        batch_x = _take(self.keras, self.x, size, self.count)
        batch_y = None if self.y is None else _take(self.keras, self.y, size, self.count)
        try:
            measured = step_peak(self.model, batch_x, batch_y)
        except Exception as error:
            if not backends.is_oom(error):
                raise
            traceback.clear_frames(error.__traceback__)
            del error
            recover()
            self.probes.append(Probe(size, None, "out of memory"))
            self.high = min(self.high, size)
            return
        finally:
            del batch_x, batch_y
        if measured.peak_bytes is None:
            raise ValueError(f"the step's peak cannot be measured here ({measured.source}): "
                             "find_batch_size needs a GPU")
        fitted = measured.peak_bytes <= self.budget_bytes
        self.probes.append(Probe(size, measured.peak_bytes, "fits" if fitted else "over budget"))
        self.fits.append((size, measured.peak_bytes))
        if fitted:
            self.low = max(self.low, size)
        else:
            self.high = min(self.high, size)
