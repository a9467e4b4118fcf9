"""How close kmem_magic.estimate comes to the allocator peak of a real training step, beside
the widely copied ``get_model_memory_usage`` formula, on the model zoo (benchmarks/zoo.py).

    KERAS_BACKEND=jax python benchmarks/estimate_zoo.py [--jobs 4] [--json out.json]

Every row runs in a fresh process (a framework starts once per process, and JAX's peak counter
cannot be reset): build the model, estimate, one warm-up training step, then one measured step.
The measured peak is absolute (weights and optimizer state included), as the estimate is:
torch's max_memory_allocated after a reset; on JAX the lifetime peak_bytes_in_use in a process
that loads the compiled steps from a cache a first process filled (so that no autotuning
scratch counts), when the training steps set it; else (when the weights' initializers peaked
higher) XLA's buffer assignment for the compiled step on top of what was in use. Errors are
(estimate - measured) / measured; the summary is the median of their absolute values, over all rows and over the
held-out models alone (the estimate's per-layer constants were fitted on the others).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from zoo import HELD_OUT  # noqa: E402

CACHE = os.path.join(os.environ.get("TMPDIR", "/tmp"), "kmem-jax-cache")
GROWTH = {"XLA_PYTHON_CLIENT_PREALLOCATE": "false", "TF_FORCE_GPU_ALLOW_GROWTH": "true"}

CHILD = r"""
import json, sys
sys.path[:0] = [{root!r}, {here!r}]
import keras
from zoo import ZOO
from kmem_magic.plan.estimator import estimate, rule_of_thumb
from kmem_magic import backends
from kmem_magic.plan import probe as step
name, batch, policy = {name!r}, {batch}, {policy!r}
keras.config.set_dtype_policy(policy)
model, make = ZOO[name](keras)
x, y = make(batch)
est = estimate(model, batch)
row = dict(model=name, batch=batch, policy=policy, estimate=est.total_bytes,
           formula=rule_of_thumb(model, batch), parts=dict(est.rows()))
if keras.config.backend() == "jax":
    import jax
    gpu = jax.devices()[0]
    built = gpu.memory_stats()["peak_bytes_in_use"]  # the model built: weights, initializers
    model.train_on_batch(x, y)
    model.train_on_batch(x, y)
    lifetime = gpu.memory_stats()["peak_bytes_in_use"]
    row["xla"] = gpu.memory_stats()["bytes_in_use"] + backends.by_name("jax").step_bytes(model, x, y)
    # the steps' peak is the lifetime peak if they set it (not the weights' initializers)
    row["measured"], row["source"] = ((lifetime, "allocator") if lifetime > built else
                                      (row["xla"], "XLA buffer assignment"))
else:
    model.train_on_batch(x, y)                  # warm-up: lazy init, kernel selection
    measured = step.step_peak(model, x, y)
    row["measured"], row["source"] = measured.peak_bytes, measured.source
print("ROW " + json.dumps(row))
"""


def run(name, batch, policy):
    code = CHILD.format(root=ROOT, here=HERE, name=name, batch=batch, policy=policy)
    env = {**os.environ, **GROWTH}
    if env.get("KERAS_BACKEND") == "jax":
        # JAX's first compile of a shape autotunes, with scratch buffers that would count in
        # the lifetime peak: a first process fills a compilation cache, a second one, which
        # loads the tuned executables from it, is measured
        env.update(JAX_COMPILATION_CACHE_DIR=os.path.join(CACHE, f"{name}-{batch}-{policy}"),
                   JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                   JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
        subprocess.run([sys.executable, "-c", code], capture_output=True, env=env, timeout=600)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=600)
    for line in done.stdout.splitlines():
        if line.startswith("ROW "):
            return json.loads(line[4:])
    return dict(model=name, batch=batch, policy=policy, error=done.stderr[-600:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=4)
    parser.add_argument("--json")
    parser.add_argument("--models", default="")
    args = parser.parse_args()
    from zoo import BATCHES

    names = [n for n in BATCHES if not args.models or n in args.models.split(",")]
    tasks = [(n, b, p) for n in names for b in BATCHES[n] for p in ("float32", "mixed_float16")]
    with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
        rows = list(pool.map(lambda t: run(*t), tasks))
    backend = os.environ.get("KERAS_BACKEND", "tensorflow")
    print(f"keras backend {backend}: estimate vs the allocator peak of a real training step")
    print("| model | batch | policy | measured | kmem estimate | error | formula | formula error |")
    print("| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |")
    errors, formula_errors, held = [], [], []
    for r in rows:
        if r.get("measured") is None:
            print(f"| {r['model']} | {r['batch']} | {r['policy']} | failed: "
                  f"{(r.get('error') or r.get('source', '')).strip().splitlines()[-1:]} |")
            continue
        err = (r["estimate"] - r["measured"]) / r["measured"]
        ferr = (r["formula"] - r["measured"]) / r["measured"]
        errors.append(abs(err))
        formula_errors.append(abs(ferr))
        mib = 2**20
        mark = "" if r["model"] not in HELD_OUT else " (held out)"
        source = "" if r.get("source") == "allocator" else " (XLA)"
        if r["model"] in HELD_OUT:
            held.append(abs(err))
        print(f"| {r['model']}{mark} | {r['batch']} | {r['policy']} | "
              f"{r['measured'] / mib:,.0f} MiB{source} | "
              f"{r['estimate'] / mib:,.0f} MiB | {err:+.1%} | {r['formula'] / mib:,.0f} MiB | "
              f"{ferr:+.1%} |")
    if errors:
        print(f"median |error|: kmem {statistics.median(errors):.1%}, formula "
              f"{statistics.median(formula_errors):.1%} over {len(errors)} rows")
    if held:
        print(f"median |error| on the held-out models alone: {statistics.median(held):.1%} "
              f"over {len(held)} rows")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
