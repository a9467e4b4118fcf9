"""Interrupts through a real kernel (``KernelManager.interrupt_kernel``, what the stop button
sends), landing before, in and after a ``%%gpumem`` cell's body: the panel always ends in a
final state, the cell is always in the history, and a body that completed keeps its result."""

import re
import time

import pytest

jupyter_client = pytest.importorskip("jupyter_client")
pytest.importorskip("anywidget")

pytestmark = pytest.mark.notebook

CELL = "%%gpumem --interval 0.02\nimport time\ntime.sleep(0.15)\n42"


def execute(km, kc, code, interrupt_after=None, timeout=60):
    """Run ``code``; optionally interrupt the kernel ``interrupt_after`` seconds in. Returns the
    result ("42", an error name, or None) and the last bundle of each display id."""
    msg_id = kc.execute(code)
    if interrupt_after is not None:
        time.sleep(interrupt_after)
        km.interrupt_kernel()
    result, displays, deadline = None, {}, time.time() + timeout
    while time.time() < deadline:
        msg = kc.get_iopub_msg(timeout=timeout)
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        kind, content = msg["msg_type"], msg["content"]
        if kind == "execute_result":
            result = content["data"]["text/plain"]
        elif kind == "error":
            result = content["ename"]
        elif kind in ("display_data", "update_display_data"):
            displays[content.get("transient", {}).get("display_id")] = content["data"]
        elif kind == "stream" and "kmem_magic: An interrupt arrived" in content["text"]:
            displays["said"] = content["text"]
        elif kind == "status" and content["execution_state"] == "idle":
            return result, displays
    raise AssertionError("the kernel did not finish the cell")


def test_interrupts_anywhere_leave_a_final_panel_and_a_complete_history():
    km, kc = jupyter_client.manager.start_new_kernel(kernel_name="python3")
    try:
        assert execute(km, kc, "%load_ext kmem_magic")[0] is None
        offsets = [0.0, 0.005, 0.01, 0.02, 0.04, 0.08, 0.12, 0.15, 0.17, 0.2, 0.25]
        outcomes, measured = [], 0
        for offset in offsets:
            result, displays = execute(km, kc, CELL, interrupt_after=offset)
            outcomes.append(result)
            panels = [d for key, d in displays.items() if key != "said"]
            if not panels:
                # the interrupt reached the kernel before the cell started: nothing ran
                assert result == "KeyboardInterrupt", f"no panel, yet {result!r} ({offset} s)"
                continue
            measured += 1
            assert len(panels) == 1, f"one panel for the cell (interrupt at {offset} s)"
            final = panels[0]["text/plain"]
            assert "measuring" not in final, f"the panel never left 'measuring' ({offset} s)"
            if result == "KeyboardInterrupt" and "interrupted" not in final:
                # the body ran its 0.15 s and kmem's report is whole: the interrupt landed after
                # the magic returned, in IPython's own end of the cell, as it would without kmem
                wall = float(re.search(r" · ([\d.]+) s · ", final).group(1))
                assert wall >= 0.15 and "host RSS" in final, \
                    f"an interrupted body must be said interrupted ({offset} s): {final!r}"
            elif result == "KeyboardInterrupt":
                assert "interrupted" in final
            else:
                assert result == "42", f"a completed body keeps its result, got {result!r}"
        history, _ = execute(km, kc, "len(get_ipython().magics_manager.registry['GpuMem']"
                                     ".history)")
        assert int(history) == measured, "every cell kmem measured is in the history"
        assert execute(km, kc, "6 * 7")[0] == "42", "the kernel goes on as usual"
        assert "KeyboardInterrupt" in outcomes and "42" in outcomes, outcomes
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
