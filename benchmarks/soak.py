"""500 ``%%gpumem`` cells in one real kernel: nothing may keep running or keep growing.

    python benchmarks/soak.py [--cells 500]

Most cells are trivial; before each a bare cell runs (IPython's own growth); every 10th raises,
every 10th (offset by 5) is interrupted half-way through its body by
``KernelManager.interrupt_kernel``; a control kernel runs the same cells without ``%%gpumem``.
After cell 50 and after the last one the kernel reports: kmem threads alive, widget models and
comms open, records alive, gc-tracked objects and the time of a full ``gc.collect()`` (median
of 5), and RSS. The per-cell time of the first and last 50 trivial cells is the frontend's
(request sent to idle). Then one cell is re-run 10 times under the same cell id, as JupyterLab
does, and the widget state a saved notebook would hold is compared with a single run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from kernel_client import Kernel  # noqa: E402

PROBE = '''
import gc as _gc, json as _json, threading as _th, time as _time, psutil as _ps
def _kmem_probe():
    import ipywidgets
    from comm import get_comm_manager
    from kmem_magic.record import CellRecord
    runs = []
    for _ in range(5):
        _t = _time.perf_counter(); _gc.collect(); runs.append(_time.perf_counter() - _t)
    full = sorted(runs)[2]
    records = sum(1 for o in _gc.get_objects() if type(o) is CellRecord)
    state = sum(len(_json.dumps(w.get_state(), default=str)) for w in
                list(ipywidgets.Widget.widgets.values()))
    return _json.dumps({
        "threads": sorted(t.name for t in _th.enumerate() if t.name.startswith("kmem-")),
        "widgets": len(ipywidgets.Widget.widgets), "comms": len(get_comm_manager().comms),
        "records": records, "gc_objects": len(_gc.get_objects()),
        "full_gc_ms": round(full * 1e3, 1), "widget_state_kib": round(state / 1024, 1),
        "rss_mib": round(_ps.Process().memory_info().rss / 2**20, 1)})
'''


def probe(kernel: Kernel) -> dict:
    return json.loads(kernel.run("print(_kmem_probe())").result)


def soak(cells: int) -> None:
    with Kernel() as kernel:
        kernel.run("%load_ext kmem_magic")
        kernel.run(PROBE)
        times, bare, snapshots = [], [], {}
        outcomes = {"ok": 0, "ValueError": 0, "KeyboardInterrupt": 0}
        for n in range(1, cells + 1):
            bare.append(kernel.run(f"y = {n}").seconds)  # IPython's own growth, beside kmem's
            if n % 10 == 0:
                ran = kernel.run("%%gpumem\nraise ValueError('soak')", cell_id=f"c{n}")
            elif n % 10 == 5:
                ran = kernel.run("%%gpumem\nimport time\ntime.sleep(0.3)", cell_id=f"c{n}",
                                 interrupt_after=0.1)
            else:
                ran = kernel.run(f"%%gpumem\nx = [0] * 1000\n{n}", cell_id=f"c{n}")
                times.append(ran.seconds)
            key = ran.result if ran.result in outcomes else "ok"
            outcomes[key] += 1
            if n in (50, cells):
                snapshots[n] = probe(kernel)
        print(f"{cells} cells: {outcomes}")
        for n, snap in snapshots.items():
            print(f"after cell {n:>3}: {json.dumps(snap)}")
        for name, series in (("%%gpumem", times), ("bare", bare)):
            per = len(series) // (cells // 50)
            first, steady, last = (statistics.median(series[:per]),
                                   statistics.median(series[per:2 * per]),
                                   statistics.median(series[-per:]))
            print(f"per trivial {name} cell (frontend's time, median): cells 1-50 "
                  f"{first * 1e3:.1f} ms, 51-100 {steady * 1e3:.1f} ms, last 50 "
                  f"{last * 1e3:.1f} ms (last / 51-100: {last / steady:.2f}x)")
        print("(from cell 21 on, each %%gpumem cell also retires the oldest live panel; a bare "
              "cell runs before each measured one)")
        a, b = snapshots[50], snapshots[cells]
        print(f"growth from cell 50 to {cells}: RSS {b['rss_mib'] - a['rss_mib']:+.1f} MiB, "
              f"gc objects {b['gc_objects'] / a['gc_objects']:.3f}x, full gc "
              f"{b['full_gc_ms']:.1f} ms vs {a['full_gc_ms']:.1f} ms, records alive "
              f"{b['records']} (history_size 100)")


def control(cells: int) -> None:
    """The same kernel life without kmem: what IPython and the kernel grow by themselves."""
    with Kernel() as kernel:
        kernel.run("%load_ext kmem_magic")  # loaded (the probe imports it), never used
        kernel.run(PROBE)
        snapshots = {}
        for n in range(1, cells + 1):
            kernel.run(f"y = {n}")
            if n % 10 == 0:
                kernel.run("raise ValueError('soak')")
            elif n % 10 == 5:
                kernel.run("import time\ntime.sleep(0.3)", interrupt_after=0.1)
            else:
                kernel.run(f"x = [0] * 1000\n{n}")
            if n in (50, cells):
                snapshots[n] = probe(kernel)
    a, b = snapshots[50], snapshots[cells]
    print(f"control, the same {cells} cells without %%gpumem: RSS "
          f"{b['rss_mib'] - a['rss_mib']:+.1f} MiB, gc objects "
          f"{b['gc_objects'] / a['gc_objects']:.3f}x, full gc {b['full_gc_ms']:.1f} ms vs "
          f"{a['full_gc_ms']:.1f} ms")


def reruns() -> None:
    sizes = []
    for runs in (1, 10):
        with Kernel() as kernel:
            kernel.run("%load_ext kmem_magic")
            kernel.run(PROBE)
            for _ in range(runs):
                kernel.run("%%gpumem\nimport time\ntime.sleep(0.3)", cell_id="same-cell")
            sizes.append(probe(kernel))
    one, ten = sizes
    print(f"one cell run once: {one['widgets']} widget models, {one['widget_state_kib']} KiB of "
          f"widget state; run 10 times: {ten['widgets']} models, {ten['widget_state_kib']} KiB "
          f"({ten['widget_state_kib'] / one['widget_state_kib']:.2f}x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=500)
    args = parser.parse_args()
    soak(args.cells)
    control(args.cells)
    reruns()


if __name__ == "__main__":
    main()
