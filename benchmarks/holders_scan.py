"""The holders scan over a large namespace: its time, beside a loop that only iterates it.

    python benchmarks/holders_scan.py [--names 100000]

The namespace holds ``--names`` variables as notebooks hold them (numbers, strings, short
lists, small dicts) and five holders inside the user's containers and objects; the scan must
find all five. Medians of 7 runs each, interleaved.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from kmem_magic.advise.holders import scan  # noqa: E402


class Holder:
    def __init__(self) -> None:
        self.weights = np.zeros(2**22, np.uint8)


def namespace(names: int) -> dict:
    ns = {}
    for i in range(names):
        ns[f"v{i}"] = (i, f"s{i}", [i, i + 1], {"k": i})[i % 4]
    ns.update(big=np.zeros(2**23, np.uint8), cache={"a": np.zeros(2**22, np.uint8)},
              batches=[np.zeros(2**21, np.uint8) for _ in range(3)], model=Holder(),
              nested={"inner": [np.zeros(2**21, np.uint8)]})
    return ns


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--names", type=int, default=100_000)
    args = parser.parse_args()
    ns = namespace(args.names)
    scans, copies = [], []
    for _ in range(7):
        t = time.perf_counter()
        found = scan(ns)
        scans.append(time.perf_counter() - t)
        t = time.perf_counter()
        for _name, _value in list(ns.items()):
            pass
        copies.append(time.perf_counter() - t)
    names = sorted(h.name for h in found)
    print(f"{args.names:,} names: scan {statistics.median(scans) * 1e3:.1f} ms (median of 7), "
          f"a loop over its items {statistics.median(copies) * 1e3:.1f} ms, ratio "
          f"{statistics.median(scans) / statistics.median(copies):.1f}x; found {names}")


if __name__ == "__main__":
    main()
