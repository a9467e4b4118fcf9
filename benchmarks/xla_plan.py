"""Does XLA's compile-time memory plan of a Keras training step say which batch trains?

XLA rematerializes a step when its buffers would not fit the memory it may use, so under a
hard limit a batch can train whose uncapped step needs 2-3x the limit. This compares, per
row, what the compiled step plans (arguments + temporaries + outputs - aliased, plus what is
in use before it) with whether a real fit of that batch trains, in a process under the row's
limit; and, with ``--slop``, how the plan moves with ``xla_gpu_memory_limit_slop_factor``
(the share of the device XLA's rematerialization aims below).

    KERAS_BACKEND=jax python3 benchmarks/xla_plan.py --truth TRUTH.jsonl \
        --models resnet,cnn,conv1d,gru   # GPU
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from limit_zoo import PRELUDE, child, code_for, load  # noqa: E402
from zoo import BATCHES  # noqa: E402

PLAN = PRELUDE + r"""
import time
import jax
from kmem_magic.backends.jax import _abstract, state_bytes
framework = backends.by_name("jax")
small = keras.tree.map_structure(lambda a: a[:16], (x, y))
out["small_fit"] = fit(model, *small, 8)   # builds optimizer and metrics
state = model._get_jax_state(trainable_variables=True, non_trainable_variables=True,
                             optimizer_variables=True, metrics_variables=True)
out["in_use"] = framework.in_use().get(0)
out["bytes_limit"] = (jax.devices()[0].memory_stats() or {{}}).get("bytes_limit")
rows = []

def plan(size, options=None):
    shapes = keras.tree.map_structure(
        lambda a: jax.ShapeDtypeStruct((size,) + a.shape[1:], a.dtype), (x, y))
    start = time.perf_counter()
    lowered = jax.jit(model.train_step, donate_argnums=0).lower(
        _abstract(state), (shapes[0], shapes[1], None))
    compiled = lowered.compile(compiler_options=options) if options else lowered.compile()
    a = compiled.memory_analysis()
    return dict(size=size, options=options, seconds=round(time.perf_counter() - start, 2),
                args=a.argument_size_in_bytes, temp=a.temp_size_in_bytes,
                output=a.output_size_in_bytes, alias=a.alias_size_in_bytes,
                total=a.argument_size_in_bytes + a.temp_size_in_bytes
                + a.output_size_in_bytes - a.alias_size_in_bytes)

for factor in {slops}:
    try:
        rows.append(plan(batch, dict(xla_gpu_memory_limit_slop_factor=factor)))
    except Exception as error:
        rows.append(dict(size=batch, slop=factor, plan_error=str(error)[:200]))
from kmem_magic import _nvml
for scale in {scales}:
    size = max(1, int(batch * scale))
    try:
        row = plan(size)
    except Exception as error:
        row = dict(size=size, plan_error=str(error).strip().splitlines()[0][:200])
    xs, ys = make(3 * size)
    row["trains"] = fit(model, xs, ys, size)
    del xs, ys
    stats = jax.devices()[0].memory_stats() or dict()
    row["lifetime_peak"] = stats.get("peak_bytes_in_use")
    devices = _nvml.devices()
    row["nvml_process"] = _nvml.process_used(devices[0])[0] if devices else None
    rows.append(row)
out["rows"] = rows
print("ROW " + json.dumps(out))
"""


def one(truth, name, capped, slops, scales):
    batch = max(BATCHES[name])
    limit = truth[(name, batch, "float32")]["smallest"] if capped else None
    code = code_for(PLAN.replace("{slops}", repr(slops)).replace("{scales}", repr(scales)),
                    name, batch, "float32", limit)
    return {**child(code), "model": name, "capped": capped}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--truth", required=True)
    parser.add_argument("--models", default="resnet,cnn,conv1d,gru")
    parser.add_argument("--json", default="xla-plan.jsonl")
    parser.add_argument("--slop", action="store_true",
                        help="also compile each row uncapped at four slop factors")
    args = parser.parse_args()
    truth = {(r["model"], r["batch"], r["policy"]): r for r in load([args.truth])
             if "smallest" in r}
    jobs = []
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        for name in args.models.split(","):
            jobs.append(pool.submit(one, truth, name, True, [], [0.9, 1.0, 1.25, 1.6]))
            if args.slop:
                jobs.append(pool.submit(one, truth, name, False, [95, 20, 5, 1], [1.0]))
        for job in concurrent.futures.as_completed(jobs):
            row = job.result()
            with open(args.json, "a") as handle:
                handle.write(json.dumps(row) + "\n")
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
