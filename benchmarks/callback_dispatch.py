"""What MemoryCallback adds to each batch, without the noise of timing whole fits.

    KERAS_BACKEND=jax python benchmarks/callback_dispatch.py [--batches 20000] [--rounds 7]

Keras' own CallbackList calls batch-begin hooks on the training loop's thread, and on jax hands
the batch-end hooks (its History callback is always there) to a worker thread. This drives that
same CallbackList for ``--batches`` batches, both hooks per batch as Keras' trainers call them,
with no user callback, with an empty callback that has MemoryCallback's hook, and with
``MemoryCallback()``, and flushes the worker at the end, so the time covers every hook's own
execution. Printed: the median over rounds of the time per batch for each, and what
MemoryCallback adds per batch over no callback, beside the step time it would be 1 % of.
The rows MemoryCallback records are capped at its ``overhead`` share of the elapsed time; what
one row costs is in callback_overhead.py.
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
    parser.add_argument("--batches", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    import keras
    from keras.src.callbacks.callback_list import CallbackList

    from callback_overhead import empty_callback
    from kmem_magic import MemoryCallback

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])

    def per_batch(callback) -> float:
        callbacks = CallbackList([callback] if callback else [], add_history=True,
                                 add_progbar=False, model=model, verbose=0, epochs=1,
                                 steps=args.batches)
        callbacks.on_train_begin()
        start = time.perf_counter()
        for batch in range(args.batches):  # as Keras' trainers call them, once per step
            callbacks.on_train_batch_begin(batch)
            callbacks.on_train_batch_end(batch, {"loss": 1.0})
        callbacks.on_epoch_end(0, {})  # waits for every dispatched hook to finish
        elapsed = time.perf_counter() - start
        callbacks.on_train_end()
        return elapsed / args.batches

    kinds = {"none": lambda: None, "empty": lambda: empty_callback(keras), "kmem": MemoryCallback}
    times = {kind: [] for kind in kinds}
    for round_ in range(args.rounds):
        order = list(kinds)[round_ % 3:] + list(kinds)[:round_ % 3]
        for kind in order:
            times[kind].append(per_batch(kinds[kind]()))
    median = {kind: statistics.median(values) * 1e6 for kind, values in times.items()}
    added = median["kmem"] - median["none"]
    print(f"keras backend {keras.config.backend()}, {args.rounds} rounds of {args.batches} "
          "batches")
    print(f"per batch: no callback {median['none']:.1f} us (Keras' own dispatch), empty "
          f"callback {median['empty']:.1f} us, MemoryCallback {median['kmem']:.1f} us")
    print(f"MemoryCallback adds {added:+.1f} us per batch: 1 % of a {max(added, 0) * 100 / 1e3:.2f}"
          " ms step")


if __name__ == "__main__":
    main()
