"""kmem_magic.find_batch_size against brute force, on zoo models, under a fixed budget.

    KERAS_BACKEND=torch python benchmarks/find_batch_size.py [--budget 2GiB] [--jobs 4]

For each model: one fresh process runs the finder (counting its probe steps), then trains two
epochs' worth of steps at the size it found, in the same process, to show the kernel goes on.
Brute force is a bisection over batch sizes in which every step runs in its own fresh process
and counts as fitting when its allocator peak leaves the allocator's reserve within the budget
(the finder's criterion under a budget below the limit; ``limit_zoo.py`` measures the finder
under a hard limit instead).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
from kmem_magic.plan.estimator import peak_under  # noqa: E402 (imports no framework)

BACKEND = os.environ.get("KERAS_BACKEND", "tensorflow")
GROWTH = {"XLA_PYTHON_CLIENT_PREALLOCATE": "false", "TF_FORCE_GPU_ALLOW_GROWTH": "true"}

PRELUDE = r"""
import json, sys
sys.path[:0] = [{root!r}, {here!r}]
import keras
from zoo import ZOO
import kmem_magic
from kmem_magic.plan import probe as step
from kmem_magic.sizes import parse_size
model, make = ZOO[{name!r}](keras)
"""
FINDER = PRELUDE + r"""
x, y = make({samples})
before = [v.numpy().copy() for v in model.trainable_variables]
found = kmem_magic.find_batch_size(model, x, y, budget={budget!r})
same = all((a == b.numpy()).all() for a, b in zip(before, model.trainable_variables))
model.fit(x, y, batch_size=found.batch_size, epochs=1, steps_per_epoch=3, verbose=0)
print("ROW " + json.dumps(dict(batch=found.batch_size, probes=len(found.probes),
      outcomes=[(p.batch_size, p.peak_bytes, p.outcome) for p in found.probes],
      weights_restored=bool(same), trained_after=True)))
"""
ONE = PRELUDE + r"""
x, y = make({batch})
model.train_on_batch(x, y)
peak = step.step_peak(model, x, y).peak_bytes
print("ROW " + json.dumps(dict(peak=peak)))
"""


def child(code):
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, **GROWTH}, timeout=600)
    for line in done.stdout.splitlines():
        if line.startswith("ROW "):
            return json.loads(line[4:])
    return {"error": done.stderr[-800:]}


def fits(name, batch, budget):
    row = child(ONE.format(root=ROOT, here=HERE, name=name, batch=batch))
    # the finder's own criterion under a budget: the peak leaves the allocator's reserve
    # that kmem_magic.estimate plans for
    return row.get("peak") is not None and row["peak"] <= peak_under(budget, BACKEND)


def brute(name, budget, start):
    """The largest batch that fits, to 1 %: bracket around ``start``, then bisect."""
    if fits(name, start, budget):
        lo, hi = start, int(start * 1.25) + 1
        while fits(name, hi, budget):
            lo, hi = hi, int(hi * 1.25) + 1
    else:
        lo, hi = max(1, int(start * 0.8)), start
        while not fits(name, lo, budget):
            lo, hi = max(1, int(lo * 0.8)), lo
    while hi - lo > max(1, lo // 100):
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(name, mid, budget) else (lo, mid)
    return lo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budget", default="2GiB")
    parser.add_argument("--models", default="cnn,resnet,lstm,transformer")
    parser.add_argument("--jobs", type=int, default=4)
    args = parser.parse_args()
    sys.path.insert(0, ROOT)
    from kmem_magic.sizes import parse_size

    budget = parse_size(args.budget)
    names = args.models.split(",")
    with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
        found = dict(zip(names, pool.map(lambda n: child(FINDER.format(
            root=ROOT, here=HERE, name=n, samples=4096, budget=args.budget)), names)))
    print("finder:", json.dumps(found), flush=True)
    with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
        truth = dict(zip(names, pool.map(
            lambda n: brute(n, budget, max(1, found[n].get("batch", 64))), names)))
    print(f"keras backend {os.environ.get('KERAS_BACKEND', 'tensorflow')}, budget {args.budget}")
    print("| model | found | probe steps | brute force | found / true | weights restored, "
          "trained after |")
    print("| --- | ---: | ---: | ---: | ---: | --- |")
    for name in names:
        f = found[name]
        if "batch" not in f:
            print(f"| {name} | failed: {f.get('error', '').strip().splitlines()[-1:]} |")
            continue
        print(f"| {name} | {f['batch']} | {f['probes']} | {truth[name]} | "
              f"{f['batch'] / truth[name]:.3f} | {f['weights_restored']}, {f['trained_after']} |")
        print(f"|   probes: {f['outcomes']} |")


if __name__ == "__main__":
    main()
