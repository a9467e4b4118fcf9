"""What MemoryCallback costs: a Keras fit with it vs without, interleaved rounds.

    KERAS_BACKEND=jax python benchmarks/callback_overhead.py [--pairs 11] [--seconds 2]

A small-batch MLP (the worst case: the hook runs after every short step). Printed: the median over
rounds of (fit with the default callback / fit without) beside (fit with an empty callback that
has the same batch hook / fit without), which is what Keras' per-batch dispatch costs whatever
the callback does; the cost of one recorded row; and how many batches the default callback
recorded (it skips rows to keep within its time budget).
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

    class Empty(keras.callbacks.Callback):
        """The same hooks doing nothing: what Keras' per-batch dispatch costs by itself."""

        async_safe = True

        def on_train_batch_end(self, batch, logs=None):
            pass

    def fit(epochs: int, kind: str) -> float:
        callbacks = {"kmem": [MemoryCallback()], "empty": [Empty()], "none": []}[kind]
        t0 = time.perf_counter()
        model.fit(x, y, batch_size=16, epochs=epochs, verbose=0, callbacks=callbacks)
        return time.perf_counter() - t0

    fit(1, "kmem")
    fit(1, "empty")
    epochs = max(1, round(args.seconds / fit(1, "none")))
    ratios, floors = [], []
    kinds = ("none", "empty", "kmem")
    for round_ in range(args.pairs):
        order = kinds[round_ % 3:] + kinds[:round_ % 3]  # rotate which runs first
        times = {kind: fit(epochs, kind) for kind in order}
        ratios.append(times["kmem"] / times["none"])
        floors.append(times["empty"] / times["none"])
    callback = MemoryCallback(every=1)
    hooks = []
    for batch in range(2000):
        t0 = time.perf_counter()
        callback.on_train_batch_end(batch)
        hooks.append(time.perf_counter() - t0)
    recorded = MemoryCallback()
    model.fit(x, y, batch_size=16, epochs=epochs, verbose=0, callbacks=[recorded])
    steps = epochs * (len(x) // 16)
    print(f"keras backend {keras.config.backend()}, {args.pairs} rounds of {steps} steps "
          "(batch 16)")
    print(f"fit with an empty batch callback / without: {statistics.median(floors):.3f} "
          "(median: Keras' own per-batch dispatch)")
    print(f"fit with MemoryCallback / without: {statistics.median(ratios):.3f} (median); "
          f"one recorded row: {statistics.median(hooks) * 1e6:.0f} us; by default "
          f"{len(recorded.history)} of {steps} batches recorded (the rest skipped to stay "
          f"within {recorded.overhead:.1%} of the fit's time)")


if __name__ == "__main__":
    main()
