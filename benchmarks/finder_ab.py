"""A/B of find_batch_size between two source trees, on one zoo model, interleaved.

    git archive <rev> kmem_magic | tar -x -C /tmp/old
    KERAS_BACKEND=torch python benchmarks/finder_ab.py /tmp/old [--model transformer] [--rounds 4]

Each round runs the finder once per tree, each in a fresh process (2 GiB budget, 4,096 samples),
and prints the batch found with its probes: a change in the measure shows as a difference that
holds over rounds, noise as one that does not.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CHILD = r"""
import json, sys
sys.path[:0] = [{tree!r}, {here!r}]
import keras, kmem_magic
from zoo import ZOO
model, make = ZOO[{model!r}](keras)
x, y = make(4096)
found = kmem_magic.find_batch_size(model, x, y, budget={budget!r})
print("ROW " + json.dumps([found.batch_size,
                           [(p.batch_size, p.peak_bytes, p.outcome) for p in found.probes]]))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("old", help="a folder holding the other tree's kmem_magic/")
    parser.add_argument("--model", default="transformer")
    parser.add_argument("--budget", default="2GiB")
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    for round_ in range(args.rounds):
        for name, tree in (("old", os.path.abspath(args.old)), ("new", ROOT)):
            path = os.pathsep.join([tree] + sys.path[1:])
            code = CHILD.format(tree=tree, here=HERE, model=args.model, budget=args.budget)
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                 env=dict(os.environ, PYTHONPATH=path), cwd="/tmp")
            row = [line for line in out.stdout.splitlines() if line.startswith("ROW ")]
            print(name, round_, row[0][4:] if row else out.stderr[-500:], flush=True)


if __name__ == "__main__":
    main()
