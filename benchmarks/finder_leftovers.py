"""What ``find_batch_size`` leaves in use on the GPU, against what a plain fit leaves (torch).

    KERAS_BACKEND=torch python3 benchmarks/finder_leftovers.py \
        --truth docs/gpu-runs/limit-truth-torch-h200.jsonl --json leftovers.json      # GPU

For each model, under the smallest working limit of its larger batch: one fresh process runs
``find_batch_size`` and then reads what is allocated, before and after a garbage collection;
another fits the found batch once, the collector on as in a user's fit, and reads the same:
what a fit's reference cycles still hold after it, until the collector's next run (and, the
collector off, at half the batch: what three steps' cycles hold). What the
search leaves beyond the plain fit is room the user's fit after it does not have. The
allocations still live after the search are listed with the Python frames that made them
(torch's memory history). With ``--oom``:
probes that run out of memory, one after another, and what each leaves in use.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from limit_zoo import MODELS, PRELUDE, Trials, child, code_for, load  # noqa: E402
from zoo import BATCHES  # noqa: E402

LIVE = r"""
live = []
for segment in torch.cuda.memory._snapshot()["segments"]:
    for block in segment["blocks"]:
        if block["state"] == "active_allocated":
            frames = [f"{{f['filename'].split('site-packages/')[-1]}}:{{f['line']}} {{f['name']}}"
                      for f in block.get("frames", []) if f["filename"].endswith(".py")]
            live.append((block["size"], frames[:8]))
live.sort(key=lambda b: -b[0])
out["live"] = live[:25]
print("ROW " + json.dumps(out))
"""

SEARCH = PRELUDE + r"""
import torch, kmem_magic
x, y = make(4 * batch)
model.optimizer.build(model.trainable_variables)
out["in_use_before"] = torch.cuda.memory_allocated()
torch.cuda.memory._record_memory_history(stacks="python", max_entries=200000)
found = kmem_magic.find_batch_size(model, x, y)
out["found"] = found.batch_size
out["probes"] = [(p.batch_size, p.outcome) for p in found.probes]
out["in_use_after"] = torch.cuda.memory_allocated()
gc.collect()
out["in_use_after_gc"] = torch.cuda.memory_allocated()
""" + LIVE


# probes that run out of memory, one after another, as the search runs them
OOM = PRELUDE + r"""
import torch
from kmem_magic.plan import finder
x, y = make(12 * batch)
model.optimizer.build(model.trainable_variables)
fit(model, *keras.tree.map_structure(lambda a: a[:3 * batch], (x, y)))
gc.collect()
out["in_use_before"] = torch.cuda.memory_allocated()
torch.cuda.memory._record_memory_history(stacks="python", max_entries=200000)
search = finder._Search(keras, model, x, y, limit, 12 * batch, limit, True,
                        finder._snapshot(model))
steps = []
for size in (int(1.3 * batch), 2 * batch, 4 * batch):
    search.probe(size)
    gc.collect()
    steps.append((size, search.probes[-1].outcome, torch.cuda.memory_allocated()))
out["steps"] = steps
""" + LIVE

PLAIN = PRELUDE + r"""
import torch
model.optimizer.build(model.trainable_variables)
out["in_use_before"] = torch.cuda.memory_allocated()
if {collector_off!r}:  # how much the cycles of three steps hold when nothing collects them
    gc.disable()
out["trains"] = fit(model, x, y)  # else the collector on, as a user's fit runs
out["in_use_after"] = torch.cuda.memory_allocated()
gc.collect()
out["in_use_after_gc"] = torch.cuda.memory_allocated()
print("ROW " + json.dumps(out))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--truth", required=True)
    parser.add_argument("--json", required=True)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--jobs", type=int, default=12)
    parser.add_argument("--oom", action="store_true",
                        help="instead: three probes at 1.3x, 2x and 4x the larger batch, what "
                             "each leaves in use, and what is live after them")
    args = parser.parse_args()
    truth = {(r["model"], r["batch"]): r for r in load(args.truth)
             if r.get("smallest") and r["policy"] == "float32"}
    trials = Trials(args.jobs)

    def one(name):
        limit = truth[(name, max(BATCHES[name]))]["smallest"]
        if args.oom:
            with trials.slots:
                return dict(model=name, limit=limit, oom=child(
                    code_for(OOM, name, max(BATCHES[name]), "float32", limit)))
        with trials.slots:
            search = child(code_for(SEARCH, name, max(BATCHES[name]), "float32", limit))
        if "found" not in search:
            return dict(model=name, limit=limit, search=search)
        with trials.slots:
            plain = child(code_for(PLAIN, name, search["found"], "float32", limit,
                                   collector_off=False))
        with trials.slots:  # at half the batch, so that the garbage's growth still fits
            off = child(code_for(PLAIN, name, max(1, search["found"] // 2), "float32", limit,
                                 collector_off=True))
        return dict(model=name, limit=limit, search=search, plain=plain, collector_off=off)

    names = args.models.split(",")
    with concurrent.futures.ThreadPoolExecutor(len(names)) as pool:
        rows = list(pool.map(one, names))
    with open(args.json, "w") as handle:
        json.dump(rows, handle, indent=1)
    mib = 2**20
    for row in rows:
        if args.oom:
            oom = row["oom"]
            print(row["model"], f"in use before {oom.get('in_use_before', 0) / mib:,.1f} MiB",
                  [(size, outcome, f"{used / mib:,.1f} MiB")
                   for size, outcome, used in oom.get("steps", [])], oom.get("error", "")[-300:])
            for size, frames in oom.get("live", [])[:6]:
                print(f"    {size / mib:8.1f} MiB  " + " <- ".join(frames[:5]))
            continue
        search, plain = row["search"], row.get("plain", {})
        if "in_use_after" not in search or "in_use_after" not in plain:
            print(row["model"], "failed:", (search.get("error") or plain.get("error") or
                                            "")[-300:])
            continue
        extra = search["in_use_after"] - plain["in_use_after_gc"]
        if not plain.get("trains"):
            print(f"{row['model']}: the plain fit at {search['found']} ran out of memory "
                  f"({plain.get('oom', '')[:120]}): not compared")
            continue
        print(f"{row['model']}: batch {search['found']} ({len(search['probes'])} probes, "
              f"{sum(1 for _, o in search['probes'] if o == 'out of memory')} out of memory); "
              f"in use after the search {search['in_use_after'] / mib:,.1f} MiB "
              f"({(search['in_use_after'] - search['in_use_after_gc']) / mib:,.1f} of it "
              f"garbage), after a plain fit {plain['in_use_after_gc'] / mib:,.1f} MiB "
              f"({extra / mib:+,.1f} MiB); the plain fit's garbage after it "
              f"{(plain['in_use_after'] - plain['in_use_after_gc']) / mib:,.1f} MiB")
        off = row["collector_off"]
        if off.get("trains"):
            print(f"    the collector off, 3 steps at batch {off['batch']}: "
                  f"{(off['in_use_after'] - off['in_use_after_gc']) / mib:,.1f} MiB garbage")
        else:
            print(f"    the collector off, batch {off.get('batch')}: did not train "
                  f"({(off.get('oom') or off.get('error') or '')[:120]})")
        for size, frames in search["live"][:4]:
            print(f"    {size / mib:8.1f} MiB  " + " <- ".join(frames[:4]))


if __name__ == "__main__":
    main()
