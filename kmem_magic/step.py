"""Measure the allocator peak of one real training step of a Keras model.

>>> step_peak(model, x[:256], y[:256])                               # doctest: +SKIP
StepPeak(batch_size=256, peak_bytes=..., before_bytes=..., source='allocator')

The peak is absolute (everything the framework's allocator had handed out at the step's
highest point, the model's weights and optimizer state included), read from the counters the
frameworks keep: torch and TensorFlow reset theirs first. JAX cannot reset its peak, and its
first step at a new shape also holds the autotuner's scratch buffers (a convnet's lifetime peak
was 2.8x its step's): there the figure is XLA's own buffer assignment for the compiled step
(the batch, temporaries and new outputs) on top of what is in use after the step.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, Callable, Optional

from . import backends, units


@dataclass(frozen=True)
class StepPeak:
    """The allocator peak of one training step (bytes, absolute) and where it was read."""

    batch_size: int
    peak_bytes: Optional[int]
    before_bytes: Optional[int]
    source: str


def _run_and_read(backend: str, run: Callable[[], Any], batch_size: int):
    """``(before, peak, source)`` around ``run()``: the allocator counters of GPU 0, read
    through the backend (torch and TensorFlow reset their peak first).

    This is the one place that touches the hardware counters (tests fake it here)."""
    framework = backends.by_name(backend)
    if framework is None:
        run()
        return None, None, "no GPU"
    state = framework.begin_cell()
    before = framework.allocator_in_use().get(0)
    run()
    if backend == "jax":
        # JAX's lifetime peak cannot be reset, and the first step at a new shape also holds
        # the autotuner's scratch buffers (which XLA takes only when free): the step's own
        # figure comes from XLA's buffer assignment, in step_peak
        return (before, None, "jax") if before is not None else (None, None, "no GPU")
    peak = framework.end_cell(state, {}).get(0)
    if peak is None:
        return None, None, "no GPU"
    return before, peak.bytes, "allocator"


def _abstract(tree: Any) -> Any:
    import jax
    import numpy as np

    def leaf(a):
        dtype = a.dtype if hasattr(a, "dtype") else np.asarray(a).dtype
        return jax.ShapeDtypeStruct(np.shape(a), jax.dtypes.canonicalize_dtype(dtype))

    return jax.tree_util.tree_map(leaf, tree)


def xla_step_bytes(train_step: Callable, state: Any, data: Any) -> int:
    """Bytes XLA assigns to one compiled ``train_step(state, data)`` beyond its donated
    state: the batch, the temporaries and the outputs that do not reuse an input's buffer.
    ``state`` and ``data`` may be arrays or shapes (``jax.ShapeDtypeStruct``)."""
    import jax

    state, data = _abstract(state), _abstract(data)
    compiled = jax.jit(train_step, donate_argnums=0).lower(state, data).compile()
    analysis = compiled.memory_analysis()
    return int(state_bytes(data) + analysis.temp_size_in_bytes + analysis.output_size_in_bytes
               - analysis.alias_size_in_bytes)


def state_bytes(state: Any) -> int:
    """Bytes of a (possibly abstract) JAX state tree."""
    import jax

    return units.total_nbytes(jax.tree_util.tree_leaves(state))


def _xla_step_bytes(model: Any, x: Any, y: Any) -> Optional[int]:
    try:
        state = model._get_jax_state(trainable_variables=True, non_trainable_variables=True,
                                     optimizer_variables=True, metrics_variables=True)
        return xla_step_bytes(model.train_step, state, (x, y, None))
    except Exception:  # a Keras or JAX version whose internals differ: no figure, no failure
        return None


def step_peak(model: Any, x: Any, y: Any = None) -> StepPeak:
    """Run one ``model.train_on_batch(x, y)`` and read the allocator's peak around it.

    The step really trains (the caller restores weights if it must); out-of-memory errors
    propagate. ``peak_bytes`` is None where no GPU allocator can be read."""
    import keras

    backend = keras.config.backend()
    batch_size = len(keras.tree.flatten(x)[0])
    before, peak, source = _run_and_read(backend, lambda: model.train_on_batch(x, y), batch_size)
    if source == "jax":
        # after the step: the optimizer's slots exist now, whatever the batch held is gone
        in_use = backends.by_name("jax").allocator_in_use().get(0)
        extra = _xla_step_bytes(model, x, y)
        peak = None if extra is None or in_use is None else in_use + extra
        source = "XLA buffer assignment" if peak is not None else "unknown (jax)"
    return StepPeak(batch_size, peak, before, source)


def recover() -> None:
    """Give back what a failed step left in the allocators' caches."""
    import gc

    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and backends.by_name("torch").is_initialized():
        torch.cuda.empty_cache()
