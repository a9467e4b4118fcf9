"""Find the largest batch size whose training step fits in GPU memory, without crashing.

>>> found = kmem_magic.find_batch_size(model, x, y)                  # doctest: +SKIP
>>> found.batch_size, found                                          # doctest: +SKIP

How: the estimate (:mod:`kmem_magic.estimator`) says where to look; two probe steps well below
the budget measure the real cost (a fixed part and a per-sample slope, read from the
allocator); the line through them predicts the largest batch, and one more step at that size
confirms it. A probe that runs out of memory or over the budget is caught, its memory is
given back, and the search backs off below it. The model's weights, optimizer state and
metrics are restored afterwards: probing never trains the model.
"""

from __future__ import annotations

import sys
import traceback
from dataclasses import dataclass, field
from typing import Any, List, Optional, Tuple

from . import _nvml, backends, step
from .advice import fit_line
from .units import format_bytes, parse_limit


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


def _capacity() -> Optional[int]:
    """What this process may allocate on GPU 0: the framework's cap if it has one, else what
    its allocator holds in use plus what the device has free."""
    backend = backends.keras_backend()
    framework = backends.by_name(backend)  # None on Keras' numpy or openvino backends
    if backend == "jax":
        limit = framework.stats().get(0, {}).get("bytes_limit")
        if limit:
            return int(limit)
    in_use = framework.allocator_in_use().get(0, 0) if framework else 0
    if backend == "torch" and framework.is_initialized():
        torch = sys.modules["torch"]
        fraction = getattr(torch.cuda, "get_per_process_memory_fraction", lambda *_: 1.0)(0)
        if fraction < 1.0:
            return int(fraction * torch.cuda.get_device_properties(0).total_memory)
        in_use = torch.cuda.memory_reserved(0)
    devices = _nvml.devices()
    if not devices:
        return None
    used = _nvml.memory_used(devices[0])
    if used is None:
        return None
    return in_use + devices[0].total_bytes - used


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
    count = len(leaves[0])
    ceiling = max_batch_size or count
    budget_bytes, capped = _budget(budget, headroom)

    from .estimator import estimate

    try:
        guess = estimate(model, 1)
        predicted = max(1, guess.largest_batch(budget_bytes, ceiling))
    except (ValueError, TypeError):  # a subclassed model: no graph, start from probes alone
        guess, predicted = None, 64
    if not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
    saved = _snapshot(model)
    probes: List[Probe] = []
    fits: List[Tuple[int, int]] = []
    low, high = 0, ceiling + 1  # largest batch that fitted, smallest that did not

    def probe(size: int) -> None:
        nonlocal low, high
        batch_x = _take(keras, x, size, count)
        batch_y = None if y is None else _take(keras, y, size, count)
        try:
            measured = step.step_peak(model, batch_x, batch_y)
        except Exception as error:
            if not backends.is_oom(error):
                raise
            traceback.clear_frames(error.__traceback__)
            del error
            step.recover()
            probes.append(Probe(size, None, "out of memory"))
            high = min(high, size)
            return
        finally:
            del batch_x, batch_y
        if measured.peak_bytes is None:
            raise ValueError(f"the step's peak cannot be measured here ({measured.source}): "
                             "find_batch_size needs a GPU")
        fitted = measured.peak_bytes <= budget_bytes
        probes.append(Probe(size, measured.peak_bytes, "fits" if fitted else "over budget"))
        fits.append((size, measured.peak_bytes))
        if fitted:
            low = max(low, size)
        else:
            high = min(high, size)

    try:
        target = max(1, min(predicted, ceiling))
        for size in sorted({max(1, target // 4), max(1, target // 2)}):
            probe(size)
        while len(probes) < max_probes and high - low > 1:
            line = fit_line(fits)
            nxt = int((budget_bytes - line[0]) / line[1]) if line else low * 2
            if high <= ceiling and nxt >= high:
                # the line says more than a size that already failed (out of memory below
                # the budget): the device has less than the budget, so bisect
                nxt = (low + high) // 2
            # stay strictly between what is known to fit and what is known not to
            nxt = min(max(nxt, low + 1), high - 1, ceiling)
            close = low and nxt <= low * 1.01 and high <= ceiling  # under 1 % left to gain
            if nxt <= low or close or nxt in {p.batch_size for p in probes}:
                break
            probe(nxt)
    finally:
        for variable, value in saved:
            variable.assign(value)
        model.reset_metrics()
    if low == 0:
        raise RuntimeError(f"even a batch of {min(b.batch_size for b in probes)} does not fit "
                           f"in {format_bytes(budget_bytes)}: {probes[-1].outcome}")
    peak = max(p.peak_bytes for p in probes if p.batch_size == low and p.peak_bytes is not None)
    return BatchSize(low, budget_bytes, peak,
                     guess.at(low) if guess is not None else None, probes,
                     "data" if low >= ceiling else "memory", capped)
