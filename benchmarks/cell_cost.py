"""What ``%%gpumem`` adds to a cell, as the user waits for it, in a real Jupyter kernel.

    python benchmarks/cell_cost.py [--rounds 21] [--kernels 5]

A trivial cell (``x = 1``) runs bare, under ``%%time``, under ``%%gpumem`` (default, ``--no-live``,
``--quiet``) and, where memory_profiler is installed, under ``%%memit``: interleaved, in rotating
order, for ``--rounds`` rounds; ipython_memory_usage and ipyexperiments, which hook every cell,
each run in a kernel of their own beside a bare one. Each arm's cost is the median over rounds
of (arm - bare) in the same round, with its interquartile range. The time is the frontend's:
execute request sent to the kernel's "idle" received (what "Run" feels like). Also printed:

* the same cost in steady state (20 live panels, older ones retired), with an empty namespace
  and with 100,000 names in it;
* the first ``%%gpumem`` cell after ``%load_ext`` and ``%load_ext`` itself, each in fresh kernels;
* the live panel's traffic during a 5 s cell (comm messages to the browser, bytes a second);
* widget models alive in the kernel after all rounds.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
from kernel_client import Kernel  # noqa: E402

BODY = "x = 1"


def arms(kernel: Kernel) -> dict:
    found = {"bare": BODY, "%%time": f"%%time\n{BODY}", "%%gpumem": f"%%gpumem\n{BODY}",
             "%%gpumem --no-live": f"%%gpumem --no-live\n{BODY}",
             "%%gpumem --quiet": f"%%gpumem --quiet\n{BODY}"}
    if kernel.run("%load_ext memory_profiler").result is None:
        found["%%memit"] = f"%%memit\n{BODY}"
    return found


def quartiles(values):
    q = statistics.quantiles(values, n=4) if len(values) > 1 else values * 3
    return statistics.median(values), q[0], q[2]


def per_cell(rounds: int) -> None:
    with Kernel() as kernel:
        kernel.run("%load_ext kmem_magic")
        cells = arms(kernel)
        for code in cells.values():  # warm every arm once (imports, first display)
            kernel.run(code)
        times = {name: [] for name in cells}
        wire = {name: [] for name in cells}
        names = list(cells)
        for r in range(rounds):
            order = names[r % len(names):] + names[:r % len(names)]
            for name in order:
                ran = kernel.run(cells[name], cell_id=f"{name}-{r}")
                times[name].append(ran.seconds)
                wire[name].append(ran.wire_bytes())
        models = kernel.value("import ipywidgets; len(ipywidgets.Widget.widgets)")
    print(f"\nper cell, {rounds} interleaved rounds (cost = arm - bare in the same round)")
    print(f"{'arm':<22} {'median cost':>12} {'IQR':>19} {'bare':>9} {'iopub/cell':>11}")
    bare = times["bare"]
    for name in names:
        cost = [a - b for a, b in zip(times[name], bare)]
        median, low, high = quartiles(cost)
        print(f"{name:<22} {median * 1e3:>9.2f} ms {low * 1e3:>8.2f}..{high * 1e3:>6.2f} ms "
              f"{statistics.median(bare) * 1e3:>6.1f} ms {statistics.median(wire[name]):>8.0f} B")
    print(f"widget models alive after {rounds * len(names)} cells: {models}")


PEERS = {  # tools that measure every cell once started: one kernel each, beside a bare one
    "ipython_memory_usage": ["%load_ext ipython_memory_usage", "%imu_start"],
    "ipyexperiments": ["from ipyexperiments import IPyExperimentsCPU",
                       "exp = IPyExperimentsCPU()"],
}


def peers(rounds: int) -> None:
    """Peers that hook every cell, where they are installed, each against a bare kernel in
    the same round (a cell's cost there is the same trivial cell's, bare vs hooked)."""
    found = {}
    with Kernel() as bare:
        for name, setup in PEERS.items():
            with Kernel() as hooked:
                results = [hooked.run(line).result or "" for line in setup]
                if any(result.endswith("Error") for result in results):
                    print(f"  {name}: not installed here, skipped")
                    continue
                for _ in range(3):
                    hooked.run(BODY), bare.run(BODY)
                cost = []
                for _ in range(rounds):
                    cost.append(hooked.run(BODY).seconds - bare.run(BODY).seconds)
                found[name] = quartiles(cost)
    if found:
        print("\npeers that hook every cell (hooked kernel - bare kernel, same round):")
    for name, (median, low, high) in found.items():
        print(f"  {name:<22} {median * 1e3:7.2f} ms (IQR {low * 1e3:.2f}..{high * 1e3:.2f})")


def namespace(rounds: int, names: int = 100_000) -> None:
    """The same costs with ``names`` variables in the user's namespace (``%%time`` shows what
    IPython itself pays for a cell magic there)."""
    costs = {}
    with Kernel() as kernel:
        kernel.run("%load_ext kmem_magic")
        for size in ("empty namespace", f"{names:,} names"):
            if size != "empty namespace":
                kernel.run(f"for _i in range({names}): globals()[f'v{{_i}}'] = _i")
            for _ in range(25):  # steady state: 20 live panels, older ones retired
                kernel.run(f"%%gpumem\n{BODY}")
            for arm in ("%%time", "%%gpumem"):
                cost = []
                for r in range(rounds):
                    bare = kernel.run(BODY).seconds
                    cost.append(kernel.run(f"{arm}\n{BODY}", cell_id=f"n{r}").seconds - bare)
                costs[f"{arm}, {size}"] = quartiles(cost)
    print("\nover bare, after 25 cells (20 live panels, older ones retired):")
    for label, (median, low, high) in costs.items():
        print(f"  {label:<28} {median * 1e3:6.2f} ms (IQR {low * 1e3:.2f}..{high * 1e3:.2f})")


def first_cell(kernels: int) -> None:
    loads, firsts = [], []
    for _ in range(kernels):
        with Kernel() as kernel:
            kernel.run("import time")
            load = kernel.run("_t = time.perf_counter(); get_ipython().run_line_magic("
                              "'load_ext', 'kmem_magic'); print(time.perf_counter() - _t)")
            loads.append(float(load.messages[-1]["content"]["text"].strip().splitlines()[-1]))
            bare = kernel.run(BODY).seconds
            firsts.append(kernel.run(f"%%gpumem\n{BODY}").seconds - bare)
    print(f"\nfresh kernels ({kernels}): %load_ext kmem_magic {statistics.median(loads) * 1e3:.1f} "
          f"ms (median, timed in the kernel); first %%gpumem cell "
          f"{statistics.median(firsts) * 1e3:.1f} ms over a bare cell (median)")


def traffic(seconds: float = 5.0) -> None:
    with Kernel() as kernel:
        kernel.run("%load_ext kmem_magic")
        kernel.run(f"%%gpumem\n{BODY}")
        ran = kernel.run(f"%%gpumem\nimport time\ntime.sleep({seconds})")
    live = [m for m in ran.messages if m["msg_type"] == "comm_msg"
            and m["content"]["data"].get("method") == "custom"]
    rest = ran.wire_bytes() - sum(m["_bytes"] for m in live)
    print(f"\nlive panel, a {seconds:g} s cell: {len(live)} live messages, "
          f"{sum(m['_bytes'] for m in live) / seconds:.0f} B/s on the wire; the panel's opening "
          f"and final view {rest / 1024:.1f} KiB once")


def main() -> None:
    # as pip leaves an installed package: compiled (this sandbox sets PYTHONDONTWRITEBYTECODE)
    subprocess.run([sys.executable, "-m", "compileall", "-q", os.path.join(ROOT, "kmem_magic")],
                   check=True)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--kernels", type=int, default=5)
    args = parser.parse_args()
    per_cell(args.rounds)
    peers(args.rounds)
    namespace(args.rounds)
    first_cell(args.kernels)
    traffic()


if __name__ == "__main__":
    main()
