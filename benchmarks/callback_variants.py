"""Where a MemoryCallback row's cost inside a fit comes from: variants side by side.

    KERAS_BACKEND=jax python benchmarks/callback_variants.py [--model mlp|cnn] [--rounds 15]
                                                             [--seconds 1]

Rotating rounds of the same fit with: no callback; an empty callback; ``MemoryCallback()``;
the same with a budget so small that it records only its first two rows; rows every 4th batch
reading only the allocator counter, only NVML and host RSS, or everything; and no callback but
``%%gpumem``'s 10 Hz sampler thread, with and without allocator reads. Printed per variant: the
median of (fit with / fit without) with its 95 % bootstrap interval, and for the callbacks the
rows taken and the median time of one row inside the fit (the first row apart).
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
    parser.add_argument("--model", choices=("mlp", "cnn"), default="mlp")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--seconds", type=float, default=1.0, help="length of one fit")
    args = parser.parse_args()
    import keras

    from callback_overhead import empty_callback, interval, model_and_data
    from kmem_magic import MemoryCallback, _nvml, backends
    from kmem_magic.measure import Sampler

    class Timed(MemoryCallback):
        """Times each row; ``parts`` picks what a row reads."""

        def __init__(self, parts="all", **options):
            super().__init__(**options)
            self.parts, self.took = parts, []

        def _row(self, phase, batch, full):
            start = time.perf_counter()
            if self.parts == "all":
                row = super()._row(phase, batch, full)
            elif self.parts == "allocator":
                row = [b.in_use() for b in backends.started()]
            else:
                row = ([_nvml.memory_used(d) for d in self._devices],
                       self._process.memory_info().rss)
            if self.parts != "all":
                self.history.append(row)
            self.took.append(time.perf_counter() - start)
            return row

    class WithSampler:
        def __init__(self, allocator):
            self.allocator = allocator

    model, x, y, batch_size = model_and_data(keras, args.model)
    made = {
        "none": None,
        "empty": lambda: empty_callback(keras),
        "MemoryCallback()": Timed,
        "first rows only": lambda: Timed(overhead=1e-12),
        "allocator, every 4": lambda: Timed("allocator", every=4),
        "NVML + RSS, every 4": lambda: Timed("host", every=4),
        "everything, every 4": lambda: Timed(every=4),
        "sampler 10 Hz": lambda: WithSampler(True),
        "sampler, no allocator": lambda: WithSampler(False),
    }
    last = {}

    def fit(epochs, kind):
        callbacks = [made[kind]()] if made[kind] else []
        last[kind] = callbacks
        sampler = None
        if callbacks and isinstance(callbacks[0], WithSampler):
            sampler = Sampler(_nvml.devices(),
                              backends.started() if callbacks[0].allocator else [], 0.1)
            callbacks = []
        start = time.perf_counter()
        if sampler:
            sampler.start()
        model.fit(x, y, batch_size=batch_size, epochs=epochs, verbose=0, callbacks=callbacks)
        if sampler:
            sampler.stop()
        return time.perf_counter() - start

    for kind in made:
        fit(1, kind)
    epochs = max(1, round(args.seconds / fit(1, "none")))
    kinds = list(made)
    ratios = {kind: [] for kind in kinds}
    took = {kind: [] for kind in kinds}
    rows = {}
    for round_ in range(args.rounds):
        order = kinds[round_ % len(kinds):] + kinds[:round_ % len(kinds)]
        times = {kind: fit(epochs, kind) for kind in order}
        for kind in kinds:
            ratios[kind].append(times[kind] / times["none"])
            callback = last[kind][0] if last[kind] else None
            if isinstance(callback, Timed):
                took[kind] += callback.took[1:]
                rows[kind] = len(callback.took)
    steps = epochs * (len(x) // batch_size)
    print(f"keras backend {keras.config.backend()}, model {args.model}, {args.rounds} rounds of "
          f"{steps} steps (batch {batch_size})")
    for kind in kinds:
        low, high = interval(ratios[kind])
        line = f"{kind:22s} {statistics.median(ratios[kind]):.4f} ({low:.4f}-{high:.4f})"
        if took[kind]:
            line += (f"  {rows[kind]} rows, one row in the fit "
                     f"{1e6 * statistics.median(took[kind]):.0f} us")
        print(line)


if __name__ == "__main__":
    main()
