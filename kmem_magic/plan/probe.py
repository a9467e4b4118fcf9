"""Measure the allocator peak of one real training step of a Keras model.

>>> step_peak(model, x[:256], y[:256])                               # doctest: +SKIP
StepPeak(batch_size=256, peak_bytes=..., before_bytes=..., source='allocator')

The peak is absolute (everything the framework's allocator had handed out at the step's
highest point, the model's weights and optimizer state included), read through the backend's
counters, whose peak torch and TensorFlow reset first. JAX cannot reset its peak, and its
first step at a new shape also holds the autotuner's scratch buffers (a convnet's lifetime peak
was 2.8x its step's): there the figure is XLA's own buffer assignment for the compiled step
(the batch, temporaries and new outputs) on top of what is in use after the step.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass
from typing import Any, Optional

from .. import backends


@dataclass(frozen=True)
class StepPeak:
    """The allocator peak of one training step (bytes, absolute) and where it was read."""

    batch_size: int
    peak_bytes: Optional[int]
    before_bytes: Optional[int]
    source: str


def step_peak(model: Any, x: Any, y: Any = None, steps: int = 1) -> StepPeak:
    """Run ``model.train_on_batch(x, y)`` (or, with ``steps`` > 1, ``model.fit`` over ``x``
    in that many batches) and read the allocator's peak around it, on GPU 0.

    ``fit`` is what a user runs, and it holds more than one step does (its data pipeline's
    batches): the batch-size finder probes with it. The steps really train (the caller
    restores weights if it must); out-of-memory errors propagate. ``peak_bytes`` is None where
    no GPU allocator can be read; ``batch_size`` is one step's."""
    import keras

    samples = len(keras.tree.flatten(x)[0])
    batch_size = max(1, samples // steps)

    def train() -> None:
        if steps == 1:
            model.train_on_batch(x, y)
            return
        kept = getattr(model, "history", None)  # fit replaces the user's History
        try:
            model.fit(x, y, batch_size=batch_size, epochs=1, verbose=0, shuffle=False)
        finally:
            model.history = kept

    framework = backends.by_name(keras.config.backend())
    if framework is None:  # Keras' numpy or openvino backend: no allocator to read
        train()
        return StepPeak(batch_size, None, None, "no GPU")
    state = framework.reset_peak()
    before = framework.in_use().get(0)
    train()
    if not framework.resettable_peak:
        if before is None:
            return StepPeak(batch_size, None, None, "no GPU")
        # after the step: the optimizer's slots exist now, whatever the batch held is gone
        in_use = framework.in_use().get(0)
        first = keras.tree.map_structure(lambda a: a[:batch_size], x)
        extra = framework.step_bytes(model, first, None if y is None else keras.tree.map_structure(
            lambda a: a[:batch_size], y))
        if extra is None or in_use is None:
            return StepPeak(batch_size, None, before, f"unknown ({framework.name})")
        return StepPeak(batch_size, in_use + extra, before, "XLA buffer assignment")
    peak = framework.read_peak(state, {}).get(0)
    if peak is None:
        return StepPeak(batch_size, None, before, "no GPU")
    return StepPeak(batch_size, peak.bytes, before, "allocator")


def recover() -> None:
    """Give back what a failed step left in the allocators' caches."""
    gc.collect()
    for framework in backends.started():
        framework.release_cache()
