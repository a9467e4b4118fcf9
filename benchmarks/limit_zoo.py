"""Which limit, which batch trains: kmem's plans against the smallest hard limit that trains.

    KERAS_BACKEND=jax python3 benchmarks/limit_zoo.py truth --json truth-jax.json   # GPU
    KERAS_BACKEND=jax python3 benchmarks/limit_zoo.py check --truth truth-jax.json \
        --json check-jax.json                                                      # GPU
    python3 benchmarks/limit_zoo.py report truth-*.json check-*.json              # anywhere

``truth`` measures, for every row of the zoo (``benchmarks/zoo.py``; ROWS below), the smallest
hard limit under which three training steps (``model.fit`` over three batches) run, by
bisection to 2 %, set the way kmem sets a ``--limit``: on jax XLA's memory fraction (no
preallocation), every trial a fresh process; on torch the per-process memory fraction with
expandable segments, changed between trials inside one process per row (the allocator's cache
emptied first), and the result confirmed in a fresh process through kmem's own path. Beside
it, from an uncapped run (kmem's default policy): the allocated peak of the steps and the
lifetime peak (jax: XLA's pool, autotuning scratch included; torch: what the allocator
reserved), and what the process holds outside the framework's pool (the CUDA context).

``check`` trains every row in a fresh process under 1.05 x kmem's estimate of the limit, and
runs ``find_batch_size`` under a hard limit (the smallest working limit of the row's larger
batch), then a real fit at the batch it found, in the same process. The true largest batch
under that limit is at least that larger batch; ``report`` brackets it from the two rows'
limits.

``repeat`` trains chosen batches of a model in many fresh processes under one limit (by
default the smallest working limit of the model's larger batch), to say how reliable a single
trial at the edge is:

    KERAS_BACKEND=torch python3 benchmarks/limit_zoo.py repeat --truth truth-torch.json \
        --rows mlp:1,mlp:2048 --trials 6 --json repeat-torch.json  # GPU; rows: .jsonl

``report`` prints the tables of docs/benchmarks.md from those files.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import math
import os
import statistics
import subprocess
import sys
import threading

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from zoo import BATCHES, HELD_OUT  # noqa: E402

MODELS = ("mlp", "cnn", "resnet", "lstm", "gru", "transformer", "embedding", "conv1d",
          "autoencoder", "two_inputs")
MIXED = ("cnn", "resnet", "transformer")
MiB = 2**20
STEPS = 3

PRELUDE = r"""
import gc, json, os, sys, traceback
sys.path[:0] = [{root!r}, {here!r}]
from kmem_magic.policy import Configurator, Policy
limit = {limit!r}
Configurator(printer=lambda _: None).apply(
    Policy.parse(limit=f"{{limit / 1024:.0f}}KiB") if limit else Policy.parse())
import keras
from zoo import ZOO
from kmem_magic import backends
keras.config.set_dtype_policy({policy!r})
batch = {batch}
out = dict(limit=limit, batch=batch)

def fit(model, x, y, size=batch):
    try:
        model.fit(x, y, batch_size=size, epochs=1, verbose=0, shuffle=False)
        return True
    except Exception as error:
        if not backends.is_oom(error):
            raise
        out["oom"] = str(error).strip().splitlines()[0][:200]
        traceback.clear_frames(error.__traceback__)
        del error
        gc.collect()
        return False

model, make = ZOO[{name!r}](keras)
x, y = make({steps} * batch)
"""

# One trial: does the row train under ``limit`` (None: kmem's default policy, measured)?
TRIAL = PRELUDE + r"""
out["trains"] = fit(model, x, y)
if limit is None and out["trains"]:  # jax's uncapped run (torch measures in TORCH_SEARCH)
    from kmem_magic import _nvml
    import jax
    stats = jax.devices()[0].memory_stats()
    out["lifetime"] = int(stats["peak_bytes_in_use"])
    out["in_use_after"] = int(stats["bytes_in_use"])
    out["pool"] = int(stats.get("pool_bytes") or stats.get("bytes_reserved") or 0)
    one = keras.tree.map_structure(lambda a: a[:batch], (x, y))
    xla = backends.by_name("jax").step_bytes(model, *one)
    out["allocated"] = out["in_use_after"] + xla if xla is not None else None
    devices = _nvml.devices()
    out["nvml_process"] = _nvml.process_used(devices[0])[0] if devices else None
print("ROW " + json.dumps(out))
"""

# ``repeat``: one trial, with the allocated peak of its fit where the backend can reset it.
REPEAT = PRELUDE + r"""
framework = backends.by_name(keras.config.backend())
out["in_use_before"] = framework.in_use().get(0)
state = framework.reset_peak() if framework.resettable_peak else None
out["trains"] = fit(model, x, y)
peak = framework.read_peak(state, {{}}).get(0) if state is not None else None
out["allocated"] = peak.bytes if peak is not None else None
print("ROW " + json.dumps(out))
"""

# torch: every trial in one process, the fraction changed between them.
TORCH_SEARCH = PRELUDE + r"""
import torch
torch.cuda.reset_peak_memory_stats()
assert fit(model, x, y), "does not train uncapped"
torch.cuda.reset_peak_memory_stats()
torch.cuda.empty_cache()
assert fit(model, x, y)
out["allocated"] = torch.cuda.max_memory_allocated()
out["lifetime"] = torch.cuda.max_memory_reserved()
out["in_use_after"] = torch.cuda.memory_allocated()
from kmem_magic import _nvml
devices = _nvml.devices()
out["pool"] = torch.cuda.memory_reserved()
out["nvml_process"] = _nvml.process_used(devices[0])[0] if devices else None
total = torch.cuda.get_device_properties(0).total_memory
trials = []

def trains(limit):
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.set_per_process_memory_fraction(limit / total, 0)
    ok = fit(model, x, y)
    trials.append((limit, ok))
    return ok

low, high = out["allocated"] * 0.99, out["lifetime"] * 1.05
while not trains(high):
    low, high = high, high * 1.3
while high / low > 1.02:
    middle = math.sqrt(low * high)
    low, high = (low, middle) if trains(middle) else (middle, high)
out.update(trials=trials, smallest=int(high), largest_failed=int(low))
print("ROW " + json.dumps(out))
"""


def rows():
    for name in MODELS:
        for batch in BATCHES[name]:
            yield name, batch, "float32"
            if name in MIXED:
                yield name, batch, "mixed_float16"


def child(code: str, timeout: int = 900) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("XLA_PYTHON_CLIENT", "XLA_CLIENT", "PYTORCH_"))}
    try:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": "timed out"}
    for line in done.stdout.splitlines():
        if line.startswith("ROW "):
            return json.loads(line[4:])
    return {"error": done.stderr.strip()[-800:]}


def code_for(template: str, name: str, batch: int, policy: str, limit, **more) -> str:
    return "import math\n" + template.format(root=ROOT, here=HERE, name=name, batch=batch,
                                             policy=policy, limit=limit, steps=STEPS, **more)


class Trials:
    """Fresh processes, at most ``jobs`` at once."""

    def __init__(self, jobs: int) -> None:
        self.slots = threading.Semaphore(jobs)

    def run(self, name, batch, policy, limit, template=TRIAL) -> dict:
        with self.slots:
            return child(code_for(template, name, batch, policy,
                                  None if limit is None else int(limit)))


def truth_jax(trials: Trials, name, batch, policy) -> dict:
    row = dict(model=name, batch=batch, policy=policy, backend="jax")
    base = trials.run(name, batch, policy, None)
    if "error" in base or not base.get("trains"):
        return {**row, "error": base.get("error") or base.get("oom")}
    row.update({k: base.get(k) for k in ("allocated", "lifetime", "in_use_after", "pool",
                                         "nvml_process")})
    allocated = base["allocated"] or base["lifetime"]
    # XLA recompiles under a limit (rematerializing, choosing convolutions without scratch),
    # so the answer can lie well below the uncapped allocation: the bracket widens when it
    # has not seen both a failure below and a success above
    low, high, tested = max(base["in_use_after"], 0.45 * allocated), 1.3 * allocated, []

    def trains(limit):
        result = trials.run(name, batch, policy, limit)
        if "error" in result:
            raise RuntimeError(result["error"])
        tested.append((int(limit), result["trains"]))
        return result["trains"]

    def bisect(low, high):
        while high / low > 1.02:
            middle = math.sqrt(low * high)
            low, high = (low, middle) if trains(middle) else (middle, high)
        return low, high

    try:
        for _ in range(4):
            low, high = bisect(low, high)
            failed = any(not ok and limit >= low * 0.9999 for limit, ok in tested)
            worked = any(ok and limit <= high * 1.0001 for limit, ok in tested)
            if not worked and not trains(high):
                low, high = high, high * 1.5
            elif not failed and low > base["in_use_after"] * 1.01 and trains(low):
                low, high = max(base["in_use_after"], low / 2), low
            else:
                break
    except RuntimeError as error:
        return {**row, "error": str(error), "trials": tested}
    return {**row, "smallest": int(high), "largest_failed": int(low), "trials": tested}


def truth_torch(trials: Trials, name, batch, policy) -> dict:
    row = dict(model=name, batch=batch, policy=policy, backend="torch")
    found = trials.run(name, batch, policy, None, TORCH_SEARCH)
    if "error" in found:
        return {**row, "error": found["error"]}
    row.update({k: found.get(k) for k in ("allocated", "lifetime", "in_use_after", "pool",
                                          "nvml_process", "trials", "largest_failed")})
    # the answer must hold for a fresh process through kmem's own --limit path
    smallest = found["smallest"]
    for _ in range(6):
        fresh = trials.run(name, batch, policy, smallest)
        if fresh.get("trains"):
            break
        smallest = int(smallest * 1.02)
    else:
        return {**row, "error": "no fresh process trained up to 1.13 x the in-process limit"}
    return {**row, "smallest": smallest, "in_process_smallest": found["smallest"]}


def truth(args) -> None:
    backend = os.environ.get("KERAS_BACKEND", "")
    search = {"jax": truth_jax, "torch": truth_torch}[backend]
    trials = Trials(args.jobs)
    todo = [r for r in rows() if not args.models or r[0] in args.models.split(",")]
    found = []
    with concurrent.futures.ThreadPoolExecutor(len(todo)) as pool:
        for done in concurrent.futures.as_completed(
                [pool.submit(search, trials, *r) for r in todo]):
            row = done.result()
            found.append(row)
            with open(args.json + "l", "a") as handle:  # kept if the run is cut short
                handle.write(json.dumps(row) + "\n")
            shown = {k: row.get(k) for k in ("model", "batch", "policy", "allocated",
                                             "lifetime", "smallest", "error")}
            print(json.dumps(shown), flush=True)
    with open(args.json, "w") as handle:
        json.dump(found, handle, indent=1)


ESTIMATES = r"""
import json, sys
sys.path[:0] = [{root!r}, {here!r}]
import keras
from zoo import ZOO
from kmem_magic.plan.estimator import estimate
found = []
for name, batch, policy in {rows!r}:
    keras.config.set_dtype_policy(policy)
    model, make = ZOO[name](keras)
    est = estimate(model, batch)
    found.append(dict(model=name, batch=batch, policy=policy, estimate=est.total_bytes,
                      limit=est.limit_bytes, context=est.context_bytes, parts=dict(est.rows())))
print("ROW " + json.dumps(found))
"""

# find_batch_size under a hard limit, then a real fit at the batch it found, same process.
FINDER = PRELUDE + r"""
import kmem_magic
from kmem_magic.plan import finder
fragmentation = {fragmentation!r}  # check --fragmentation: the margin an A/B run tries
if fragmentation is not None:
    finder._FRAGMENTATION[keras.config.backend()] = fragmentation
x, y = make(4 * batch)
framework = backends.by_name(keras.config.backend())
# what the search leaves in use is what the fit after it has less of
out["in_use_before_search"] = framework.in_use().get(0)
found = kmem_magic.find_batch_size(model, x, y)
out["in_use_after_search"] = framework.in_use().get(0)
out.update(found=found.batch_size, estimated=found.estimated_batch, peak=found.peak_bytes,
           budget=found.budget_bytes, hard=found.hard,
           probes=[(p.batch_size, p.peak_bytes, p.outcome, p.room_bytes)
                   for p in found.probes])
part = keras.tree.map_structure(lambda a: a[:3 * found.batch_size], (x, y))
out["fit_trains"] = fit(model, *part, size=found.batch_size)
print("ROW " + json.dumps(out))
"""


def estimates(todo, backend=None) -> dict:
    """kmem's estimates for the rows, computed in a process that keeps off the GPU."""
    code = ESTIMATES.format(root=ROOT, here=HERE, rows=[list(r) for r in todo])
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "CUDA_VISIBLE_DEVICES": ""}
    if backend:
        env["KERAS_BACKEND"] = backend
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=900)
    for line in done.stdout.splitlines():
        if line.startswith("ROW "):
            return {(r["model"], r["batch"], r["policy"]): r for r in json.loads(line[4:])}
    raise RuntimeError(done.stderr[-800:])


def check(args) -> None:
    backend = os.environ.get("KERAS_BACKEND", "")
    truth = {(r["model"], r["batch"], r["policy"]): r for r in load(args.truth)
             if r.get("smallest")}
    todo = [k for k in truth if not args.models or k[0] in args.models.split(",")]
    est = estimates(todo)
    trials = Trials(args.jobs)

    def safe(key):
        limit = 1.05 * est[key]["limit"]
        result = trials.run(*key, limit)
        return dict(est[key], backend=backend, kind="safety", tried=int(limit),
                    trains=result.get("trains"), error=result.get("error"))

    def finder(key):
        limit = truth[key]["smallest"]
        with trials.slots:
            result = child(code_for(FINDER, *key, limit, fragmentation=args.fragmentation))
        return dict(model=key[0], batch=key[1], policy=key[2], backend=backend,
                    kind="finder", limit=limit, fragmentation=args.fragmentation,
                    **{k: v for k, v in result.items() if k not in ("limit", "batch")})

    largest = [k for k in todo if k[2] == "float32" and k[1] == max(BATCHES[k[0]])]
    kinds = args.kinds.split(",")
    jobs = [(finder, k) for k in largest if "finder" in kinds] + \
        [(safe, k) for k in todo if "safety" in kinds]  # the longest first
    with concurrent.futures.ThreadPoolExecutor(len(jobs)) as pool:
        futures = [pool.submit(f, k) for f, k in jobs]
        for done in concurrent.futures.as_completed(futures):
            row = done.result()
            with open(args.json + "l", "a") as handle:
                handle.write(json.dumps(row) + "\n")
            print(json.dumps({k: row.get(k) for k in ("kind", "model", "batch", "policy",
                                                      "trains", "found", "fit_trains",
                                                      "error")}), flush=True)


def repeat(args) -> None:
    """Each ``model:batch`` of ``--rows`` trained ``--trials`` times, each a fresh process,
    under the smallest working limit of the model's larger batch (or ``--limit`` bytes)."""
    backend = os.environ.get("KERAS_BACKEND", "")
    truth = {(r["model"], r["batch"], r["policy"]): r for r in load(args.truth)
             if r.get("smallest")} if args.truth else {}
    todo = []
    for item in args.rows.split(","):
        name, _, size = item.partition(":")
        if name not in MODELS or not size.isdigit():
            raise SystemExit(f"--rows: {item!r} is not model:batch (models: {MODELS})")
        row = truth.get((name, max(BATCHES[name]), "float32"))
        limit = args.limit or (row or {}).get("smallest")
        if not limit:
            raise SystemExit(f"--rows: no limit for {name}: give --truth or --limit")
        todo += [(name, int(size), "float32", limit)] * args.trials
    trials = Trials(args.jobs)
    rows = []  # this run's: the file may hold earlier runs too
    with concurrent.futures.ThreadPoolExecutor(len(todo)) as pool:
        futures = [pool.submit(trials.run, n, b, p, lim, REPEAT) for n, b, p, lim in todo]
        for (name, size, policy, limit), done in zip(todo, futures):
            row = dict(model=name, batch=size, policy=policy, backend=backend,
                       kind="repeat", **{k: v for k, v in done.result().items()
                                         if k != "batch"})
            rows.append(row)
            with open(args.json + "l", "a") as handle:
                handle.write(json.dumps(row) + "\n")
    for key in sorted({(r["model"], r["batch"], r["limit"]) for r in rows}):
        mine = [r for r in rows if (r["model"], r["batch"], r["limit"]) == key]
        peaks = sorted(r["allocated"] for r in mine if r.get("allocated"))
        print(f"{key[0]} batch {key[1]} under {_mib(key[2])} MiB: trained "
              f"{sum(1 for r in mine if r.get('trains'))} of {len(mine)}"
              + (f"; allocated peak {_mib(peaks[0])}-{_mib(peaks[-1])} MiB" if peaks else "")
              + "".join(f"; error: {r['error'][-200:]}" for r in mine if r.get("error"))[:400])


def load(paths) -> list:
    rows = []
    for path in paths if isinstance(paths, list) else [paths]:
        with open(path) as handle:
            text = handle.read().strip()
        rows += json.loads(text) if text.startswith("[") else \
            [json.loads(line) for line in text.splitlines() if line.strip()]
    return rows


def _mib(value) -> str:
    return "" if value is None else f"{value / MiB:,.0f}"


def report(args) -> None:
    rows = load(args.files)
    for backend in ("jax", "torch"):
        truth = {(r["model"], r["batch"], r["policy"]): r for r in rows
                 if r.get("backend") == backend and "smallest" in r}
        if not truth:
            continue
        checks = {(r["model"], r["batch"], r["policy"]): r for r in rows
                  if r.get("backend") == backend and r.get("kind") == "safety"}
        est = {k: v for k, v in checks.items()}
        missing = [k for k in truth if k not in est]
        if missing:
            est.update(estimates(missing, backend))
        print(f"\n### {backend}\n")
        print("| model | batch | policy | allocated peak | uncapped lifetime peak | smallest "
              "working limit | kmem's limit | kmem / smallest | trains at 1.05 x kmem |")
        print("| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | --- |")
        ratios, held, unsafe = [], [], []
        for key in sorted(truth, key=lambda k: (MODELS.index(k[0]), k[1], k[2])):
            r, e = truth[key], est[key]
            ratio = e["limit"] / r["smallest"]
            ratios.append(ratio)
            if key[0] in HELD_OUT:
                held.append(ratio)
            trains = checks.get(key, {}).get("trains")
            if trains is False:
                unsafe.append(key)
            mark = " (held out)" if key[0] in HELD_OUT else ""
            print(f"| {key[0]}{mark} | {key[1]} | {key[2]} | {_mib(r['allocated'])} MiB | "
                  f"{_mib(r['lifetime'])} MiB | {_mib(r['smallest'])} MiB | "
                  f"{_mib(e['limit'])} MiB | {ratio:.3f} | "
                  f"{'' if trains is None else 'yes' if trains else '**no**'} |")
        print(f"\n{backend}: kmem / smallest working limit: "
              f"median {statistics.median(ratios):.3f}, "
              f"lowest {min(ratios):.3f}, highest {max(ratios):.3f} over {len(ratios)} rows; "
              f"held-out models: median {statistics.median(held):.3f} over {len(held)} rows; "
              f"checked at 1.05 x: {sum(1 for k in truth if checks.get(k, {}).get('trains'))} "
              f"of {len(checks)} trained" + (f"; failed: {unsafe}" if unsafe else ""))
        # an A/B run of another margin (check --fragmentation) is not kmem's finder
        found = [r for r in rows if r.get("backend") == backend and r.get("kind") == "finder"
                 and r.get("fragmentation") is None]
        if not found:
            continue
        print("\n| model | limit | estimate's batch | found | probe steps | true largest "
              "(bracket) | found / true | fit at found, same limit |")
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
        for f in sorted(found, key=lambda r: MODELS.index(r["model"])):
            low_b, high_b = min(BATCHES[f["model"]]), f["batch"]
            big = truth.get((f["model"], high_b, "float32"))
            small = truth.get((f["model"], low_b, "float32"))
            if "found" not in f or big is None:
                print(f"| {f['model']} | {_mib(f['limit'])} MiB | failed: "
                      f"{(f.get('error') or '').splitlines()[-1:]} |")
                continue
            slope = (big["smallest"] - small["smallest"]) / (high_b - low_b) if small else None
            top = high_b + int((big["smallest"] - big["largest_failed"]) / slope) \
                if slope and slope > 0 else None
            # the batch found trained in a real fit under the limit: the true largest is at
            # least that (the bisection's bracket is an estimate from two rows' limits)
            floor = max(high_b, f["found"]) if f.get("fit_trains") else high_b
            top = max(top, floor) if top else None
            bracket = f"{floor}–{top}" if top else f"≥ {floor}"
            share = f"{f['found'] / top:.2f}–{f['found'] / floor:.2f}" if top else \
                f"≤ {f['found'] / floor:.2f}"
            print(f"| {f['model']} | {_mib(f['limit'])} MiB | {f.get('estimated')} | "
                  f"{f['found']} | {len(f['probes'])} | {bracket} | {share} | "
                  f"{'yes' if f.get('fit_trains') else '**no**'} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    one = sub.add_parser("truth")
    one.add_argument("--json", required=True)
    one.add_argument("--jobs", type=int, default=12)
    one.add_argument("--models", default="")
    two = sub.add_parser("check")
    two.add_argument("--truth", required=True)
    two.add_argument("--json", required=True)
    two.add_argument("--jobs", type=int, default=12)
    two.add_argument("--models", default="")
    two.add_argument("--kinds", default="finder,safety",
                     help="which checks to run: finder, safety or both (comma-separated)")
    two.add_argument("--fragmentation", type=float, default=None,
                     help="the finder's fragmentation margin to try instead of kmem's "
                          "(a share of a step's own allocations)")
    four = sub.add_parser("repeat")
    four.add_argument("--rows", required=True, help="model:batch,... (e.g. mlp:1,mlp:2048)")
    four.add_argument("--truth", default="")
    four.add_argument("--limit", type=int, default=0, help="bytes (default: the truth's)")
    four.add_argument("--trials", type=int, default=6)
    four.add_argument("--jobs", type=int, default=12)
    four.add_argument("--json", required=True)
    three = sub.add_parser("report")
    three.add_argument("files", nargs="+")
    args = parser.parse_args()
    {"truth": truth, "check": check, "repeat": repeat, "report": report}[args.mode](args)


if __name__ == "__main__":
    main()
