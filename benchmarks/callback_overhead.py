"""What MemoryCallback costs a Keras fit: fits with it and without, in rotating rounds.

    KERAS_BACKEND=jax python benchmarks/callback_overhead.py [--model mlp|cnn] [--rounds 31]
                                                             [--seconds 1.5]

``--model mlp`` is a small MLP at batch 16 (the worst case: the hook runs after every step,
and a step takes under a millisecond); ``--model cnn`` is the zoo's convnet at batch 64 (steps
of a few milliseconds, as in real training). Each round runs one fit with no callback, one with
an empty callback that has the same batch hook, and one with ``MemoryCallback()``, rotating
which runs first. Printed: the median over rounds of (fit with / fit without), with a 95 %
bootstrap interval, for the empty callback (the noise floor: its true ratio is 1) and for
MemoryCallback; the share of the fit's time the callback's rows took by its own clock (what its
``overhead`` budget caps); what one recorded row costs and its parts; and, on torch, what
``torch.cuda.memory_allocated`` costs beside kmem's read of the same counter.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def empty_callback(keras):
    """A callback with MemoryCallback's batch hook doing nothing: what Keras' per-batch call of
    a user hook costs by itself."""

    class Empty(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            pass

    return Empty()


def interval(ratios, draws=4000):
    """The 95 % bootstrap interval of the median of ``ratios``."""
    rng = random.Random(0)
    medians = sorted(statistics.median(rng.choices(ratios, k=len(ratios)))
                     for _ in range(draws))
    return medians[int(0.025 * draws)], medians[int(0.975 * draws)]


def microseconds(call, repeat=2000) -> float:
    """The median time of ``call()``, in microseconds."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6


def model_and_data(keras, name):
    import numpy as np

    if name == "cnn":
        from zoo import cnn

        model, make_batch = cnn(keras)
        x, y = make_batch(2048)
        return model, x, y, 64
    x = np.random.rand(4096, 64).astype("float32")
    y = np.random.randint(0, 10, 4096)
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(128, activation="relu"),
                              keras.layers.Dense(128, activation="relu"), keras.layers.Dense(10)])
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model, x, y, 16


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=("mlp", "cnn"), default="mlp")
    parser.add_argument("--rounds", type=int, default=31)
    parser.add_argument("--seconds", type=float, default=1.5, help="length of one fit")
    args = parser.parse_args()
    import keras
    import psutil

    from kmem_magic import MemoryCallback, _nvml, backends

    model, x, y, batch_size = model_and_data(keras, args.model)
    made = {"kmem": MemoryCallback, "empty": lambda: empty_callback(keras), "none": None}
    last = {}

    def fit(epochs: int, kind: str) -> float:
        callbacks = [made[kind]()] if made[kind] else []
        last[kind] = callbacks
        start = time.perf_counter()
        model.fit(x, y, batch_size=batch_size, epochs=epochs, verbose=0, callbacks=callbacks)
        return time.perf_counter() - start

    for kind in made:  # compiles, caches, the allocator's first growth
        fit(1, kind)
    epochs = max(1, round(args.seconds / fit(1, "none")))
    kinds = tuple(made)
    ratios, floors, spent, plain = [], [], [], []
    for round_ in range(args.rounds):
        order = kinds[round_ % 3:] + kinds[:round_ % 3]
        times = {kind: fit(epochs, kind) for kind in order}
        ratios.append(times["kmem"] / times["none"])
        floors.append(times["empty"] / times["none"])
        plain.append(times["none"])
        spent.append(last["kmem"][0]._spent / times["kmem"])
    recorded = len(last["kmem"][0].history)

    devices = _nvml.devices()
    process = psutil.Process()
    every = MemoryCallback(every=1)
    row = microseconds(lambda: every.record("train", 0))
    parts = {
        "allocator counter": microseconds(
            lambda: [b.in_use() for b in backends.started()]),
        "NVML device used": microseconds(lambda: [_nvml.memory_used(d) for d in devices]),
        "host RSS": microseconds(process.memory_info),
    }
    steps = epochs * (len(x) // batch_size)
    low, high = interval(floors)
    print(f"keras backend {keras.config.backend()}, model {args.model}, {args.rounds} rounds of "
          f"{steps} steps (batch {batch_size}); without callback a step takes "
          f"{1e3 * statistics.median(plain) / steps:.2f} ms")
    print(f"empty batch callback / none: {statistics.median(floors):.4f} "
          f"(95 % interval {low:.4f}-{high:.4f}; the noise floor, truly 1)")
    low, high = interval(ratios)
    print(f"MemoryCallback() / none:     {statistics.median(ratios):.4f} "
          f"(95 % interval {low:.4f}-{high:.4f})")
    print(f"{recorded} of {steps} batches recorded; their rows took "
          f"{statistics.median(spent):.3%} of the fit by the callback's own clock (it records "
          f"while that is within {MemoryCallback().overhead:.2%})")
    print(f"one full row outside a fit: {row:.1f} us = " + ", ".join(
        f"{name} {value:.1f} us" for name, value in parts.items()) + " (+ the row itself); "
        "between full rows, twice a second, the budgeted rows read only the allocator counter")
    if keras.config.backend() == "torch" and backends.by_name("torch").is_initialized():
        import torch

        alternative = microseconds(lambda: torch.cuda.memory_allocated(0))
        print(f"torch.cuda.memory_allocated(0): {alternative:.1f} us, "
              f"{alternative / parts['allocator counter']:.1f}x kmem's read of the same counter")


if __name__ == "__main__":
    main()
