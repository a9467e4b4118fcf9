"""What MemoryCallback costs: a Keras fit with it vs without, interleaved rounds.

    KERAS_BACKEND=jax python benchmarks/callback_overhead.py [--pairs 11] [--seconds 2]

A small-batch MLP (the worst case: the hook runs after every short step). Printed: the median over
rounds of (fit with the callback / fit without) and the cost of one hook call.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=11)
    parser.add_argument("--seconds", type=float, default=2.0)
    args = parser.parse_args()
    import keras
    import numpy as np

    from kmem_magic import MemoryCallback

    x = np.random.rand(4096, 64).astype("float32")
    y = np.random.randint(0, 10, 4096)
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(128, activation="relu"),
                              keras.layers.Dense(128, activation="relu"), keras.layers.Dense(10)])
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))

    def fit(epochs: int, with_callback: bool) -> float:
        callbacks = [MemoryCallback()] if with_callback else []
        t0 = time.perf_counter()
        model.fit(x, y, batch_size=16, epochs=epochs, verbose=0, callbacks=callbacks)
        return time.perf_counter() - t0

    fit(1, True)
    epochs = max(1, round(args.seconds / fit(1, False)))
    ratios = []
    for round_ in range(args.pairs):
        order = (True, False) if round_ % 2 else (False, True)
        times = {flag: fit(epochs, flag) for flag in order}
        ratios.append(times[True] / times[False])
    callback = MemoryCallback()
    hooks = []
    for batch in range(2000):
        t0 = time.perf_counter()
        callback.on_train_batch_end(batch)
        hooks.append(time.perf_counter() - t0)
    steps = epochs * (len(x) // 16)
    print(f"keras backend {keras.config.backend()}, {args.pairs} rounds of {steps} steps (batch 16)")
    print(f"fit with MemoryCallback / without: {statistics.median(ratios):.3f} (median); "
          f"one hook call: {statistics.median(hooks) * 1e6:.0f} us")


if __name__ == "__main__":
    main()
