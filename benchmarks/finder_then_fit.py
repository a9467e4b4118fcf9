"""Does the batch find_batch_size found train in a real fit under the same hard limit, right
after the search, and in a fresh process? Per step: what the allocator had allocated and
reserved (torch) or in use (jax), to see what differs between the probes and the fit.

    KERAS_BACKEND=torch python3 benchmarks/finder_then_fit.py --truth TRUTH.jsonl \
        --models conv1d,cnn,resnet   # GPU
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

LOG = r"""
import torch as _t
steps = []
class Log(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        steps.append((_t.cuda.memory_allocated(), _t.cuda.memory_reserved(),
                      _t.cuda.max_memory_allocated()))
def memory():
    return dict(allocated=_t.cuda.memory_allocated(), reserved=_t.cuda.memory_reserved(),
                max_allocated=_t.cuda.max_memory_allocated(),
                max_reserved=_t.cuda.max_memory_reserved())
"""

# after the search: the memory state, then a real fit of 3 steps, logged per step
AFTER = PRELUDE + LOG + r"""
import kmem_magic
x, y = make(4 * batch)
found = kmem_magic.find_batch_size(model, x, y)
out.update(found=found.batch_size, probes=[(p.batch_size, p.peak_bytes, p.outcome)
                                           for p in found.probes], after_search=memory())
_t.cuda.reset_peak_memory_stats()
part = keras.tree.map_structure(lambda a: a[:3 * found.batch_size], (x, y))
try:
    model.fit(*part, batch_size=found.batch_size, epochs=1, verbose=0, shuffle=False,
              callbacks=[Log()])
    out["fit_trains"] = True
except Exception as error:
    out["fit_trains"] = False
    out["oom"] = str(error).splitlines()[0][:300]
out.update(steps=steps, after_fit=memory(), cudnn_benchmark=_t.backends.cudnn.benchmark)
print("ROW " + json.dumps(out))
"""

# a fresh process: the same batch, the same limit, no search before
FRESH = PRELUDE + LOG + r"""
size = @FOUND@
x, y = make(3 * size)
_t.cuda.reset_peak_memory_stats()
try:
    model.fit(x, y, batch_size=size, epochs=1, verbose=0, shuffle=False, callbacks=[Log()])
    out["fit_trains"] = True
except Exception as error:
    out["fit_trains"] = False
    out["oom"] = str(error).splitlines()[0][:300]
out.update(steps=steps, after_fit=memory())
print("ROW " + json.dumps(out))
"""


def one(truth, name):
    batch = max(BATCHES[name])
    limit = truth[(name, batch, "float32")]["smallest"]
    after = child(code_for(AFTER, name, batch, "float32", limit))
    row = dict(model=name, batch=batch, limit=limit, after=after)
    if after.get("found"):
        code = code_for(FRESH, name, batch, "float32", limit)
        row["fresh"] = child(code.replace("@FOUND@", str(after["found"])))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--truth", required=True)
    parser.add_argument("--models", required=True)
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    truth = {(r["model"], r["batch"], r["policy"]): r for r in load(args.truth)
             if r.get("smallest")}
    names = args.models.split(",")
    with concurrent.futures.ThreadPoolExecutor(len(names)) as pool:
        for row in pool.map(lambda n: one(truth, n), names):
            print(json.dumps(row), flush=True)
            if args.json:
                with open(args.json, "a") as handle:
                    handle.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
