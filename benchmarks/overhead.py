"""What ``%%gpumem`` costs: a Keras fit in a measured cell vs the same cell without kmem.

    KERAS_BACKEND=jax python benchmarks/overhead.py [--pairs 11]

One process, one real IPython shell, one Keras backend. For each model (a small-batch MLP, the
worst case for a sampler thread competing for the GIL, and a small convnet), the same ``fit``
cell runs in three arms, interleaved and in rotating order so that drift hits all alike:

* ``plain``:  the bare cell;
* ``kmem``:   the cell under ``%%gpumem`` (sampling, peaks, and the full report with its PNG);
* ``naive``:  the bare cell while a naive thread polls every 10 ms (NVML where there is a GPU,
  the framework's allocator statistics, host RSS), as the weaker tools of the field do.

Printed per model: the median over pairs of (arm / plain) for the whole cell as the user waits
for it, and for the ``fit`` call alone (which isolates the sampler's cost from the report's).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

MODELS = {
    "mlp-batch16": """
x = np.random.rand(4096, 64).astype("float32"); y = np.random.randint(0, 10, 4096)
model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(128, activation="relu"),
                          keras.layers.Dense(128, activation="relu"), keras.layers.Dense(10)])
model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
BATCH = 16
""",
    "convnet-batch64": """
x = np.random.rand(8192, 28, 28, 1).astype("float32"); y = np.random.randint(0, 10, 8192)
model = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Conv2D(32, 3, activation="relu"),
                          keras.layers.MaxPooling2D(), keras.layers.Conv2D(64, 3, activation="relu"),
                          keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(10)])
model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
BATCH = 64
""",
}
FIT = ("import time as _t\n_t0 = _t.perf_counter()\n"
       "model.fit(x, y, batch_size=BATCH, epochs=EPOCHS, verbose=0)\n"
       "FIT_S = _t.perf_counter() - _t0\n")


class NaivePoller:
    """The pattern kmem avoids: poll every source every 10 ms from a thread."""

    def __init__(self) -> None:
        from kmem_magic import _nvml, backends
        from kmem_magic._host import host_rss

        self.devices = _nvml.devices()
        self.read = lambda: ([_nvml.memory_used(d) for d in self.devices],
                             [b.in_use() for b in backends.BACKENDS], host_rss())
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="naive-poller", daemon=True)

    def _run(self) -> None:
        while not self.stop.wait(0.01):
            self.read()
            torch = sys.modules.get("torch")
            if torch is not None and torch.cuda.is_initialized():
                torch.cuda.memory_stats()  # the full statistics, as such tools read them

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


def timed(shell, source: str, arm: str):
    poller = NaivePoller() if arm == "naive" else contextlib.nullcontext()
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink), poller:
        t0 = time.perf_counter()
        result = shell.run_cell(source)
        total = time.perf_counter() - t0
    if not result.success:
        raise RuntimeError(sink.getvalue())
    return total, shell.user_ns["FIT_S"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=11)
    parser.add_argument("--seconds", type=float, default=2.5,
                        help="target length of one fit; epochs are calibrated to it")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--kernel", action="store_true",
                        help="run inside a Jupyter kernel, with the live panel")
    args = parser.parse_args()
    if args.kernel:
        return in_kernel([a for a in sys.argv[1:] if a != "--kernel"])
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "kmem_magic")
    import keras

    print(f"keras backend {keras.config.backend()}, {args.pairs} interleaved rounds, "
          f"python {sys.version.split()[0]}")
    cells = {"plain": FIT, "kmem": "%%gpumem\n" + FIT, "naive": FIT}
    print("| model | one plain fit cell, s (median) | kmem / plain, whole cell | kmem / plain, "
          "fit only | naive 100 Hz / plain, fit only |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name in args.models.split(","):
        shell.run_cell("import numpy as np, keras\n" + MODELS[name] + "EPOCHS = 1\n")
        timed(shell, FIT, "plain")  # compile and warm up
        one_epoch = timed(shell, FIT, "plain")[1]
        shell.user_ns["EPOCHS"] = max(1, round(args.seconds / one_epoch))
        timed(shell, "%%gpumem\n" + FIT, "kmem")
        times = {arm: [] for arm in cells}
        arms = list(cells)
        for round_ in range(args.pairs):
            order = arms[round_ % 3:] + arms[: round_ % 3]
            for arm in order:
                times[arm].append(timed(shell, cells[arm], arm))
        plain = times["plain"]

        def ratio(arm: str, index: int) -> float:
            return statistics.median(a[index] / p[index] for a, p in zip(times[arm], plain))

        print(f"| {name} | {statistics.median(t for t, _ in plain):.2f} | {ratio('kmem', 0):.3f} "
              f"| {ratio('kmem', 1):.3f} | {ratio('naive', 1):.3f} |", flush=True)
    print()
    print(fixed_costs(shell))


def in_kernel(argv) -> None:
    """Run this script with ``argv`` in a fresh Jupyter kernel and print what it printed."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(f"%run {os.path.abspath(__file__)} {' '.join(argv)}")]
    NotebookClient(nb, timeout=3600, kernel_name="python3", resources={"metadata": {"path": ROOT}}).execute()
    for output in nb.cells[0].outputs:
        if output.output_type == "stream" and output.name == "stdout":
            print(output.text, end="")
    print("(inside a Jupyter kernel: the live panel was on)")


def fixed_costs(shell) -> str:
    """What one measured cell costs beside the code it runs, and one sampler tick, in ms."""
    from kmem_magic import _nvml, backends
    from kmem_magic.measure import Sampler

    def median_ms(source: str) -> float:
        runs = []
        for _ in range(15):
            with contextlib.redirect_stdout(io.StringIO()):
                t0 = time.perf_counter()
                shell.run_cell(source)
                runs.append(time.perf_counter() - t0)
        return statistics.median(runs) * 1000

    bare = median_ms("pass")
    quiet = median_ms("%%gpumem --quiet\npass") - bare
    full = median_ms("%%gpumem\npass") - bare
    sampler = Sampler(_nvml.devices(), backends.BACKENDS)
    sampler.sample()
    ticks = []
    for _ in range(200):
        t0 = time.perf_counter()
        sampler.sample()
        ticks.append(time.perf_counter() - t0)
    tick = statistics.median(ticks) * 1e6
    return (f"fixed cost per cell: {quiet:.1f} ms with --quiet, {full:.1f} ms with the full report "
            f"(text + PNG); one sampler tick: {tick:.0f} us (at 10 Hz: {tick / 1e3:.2f} % of a core)")


if __name__ == "__main__":
    main()
