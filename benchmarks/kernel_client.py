"""A real Jupyter kernel driven the way a frontend drives it, for the per-cell benchmarks.

``Kernel.run(code)`` sends an execute request (with a ``cellId``, as JupyterLab does), waits for
the kernel to go idle, and returns what the user waited (request sent to idle received, seconds),
the result, and every iopub message of the cell with its size on the wire.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from typing import List, Optional

from jupyter_client.manager import start_new_kernel


@dataclass
class Ran:
    seconds: float
    result: Optional[str]
    messages: List[dict] = field(default_factory=list)

    def wire_bytes(self, kind: Optional[str] = None) -> int:
        """Bytes of the cell's iopub messages (header, parent, metadata and content, as JSON)."""
        return sum(m["_bytes"] for m in self.messages if kind is None or m["msg_type"] == kind)


class Kernel:
    """A python3 kernel of this environment; use as a context manager."""

    def __init__(self, env: Optional[dict] = None) -> None:
        self.km, self.kc = start_new_kernel(kernel_name="python3",
                                            env=dict(os.environ, **(env or {})))

    def __enter__(self) -> "Kernel":
        return self

    def __exit__(self, *exc) -> None:
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=True)

    def run(self, code: str, cell_id: Optional[str] = None,
            interrupt_after: Optional[float] = None, timeout: float = 120) -> Ran:
        msg = self.kc.session.msg("execute_request", {
            "code": code, "silent": False, "store_history": True, "user_expressions": {},
            "allow_stdin": False, "stop_on_error": False},
            metadata={"cellId": cell_id} if cell_id else {})
        started = time.perf_counter()
        self.kc.shell_channel.send(msg)
        if interrupt_after is not None:
            time.sleep(interrupt_after)
            self.km.interrupt_kernel()
        msg_id, result, messages = msg["header"]["msg_id"], None, []
        deadline = time.time() + timeout
        while time.time() < deadline:
            reply = self.kc.get_iopub_msg(timeout=timeout)
            if reply["parent_header"].get("msg_id") != msg_id:
                continue
            kind, content = reply["msg_type"], reply["content"]
            if kind == "status" and content["execution_state"] == "idle":
                return Ran(time.perf_counter() - started, result, messages)
            reply["_bytes"] = len(json.dumps(
                [reply["header"], reply["parent_header"], reply["metadata"], content],
                default=str))
            messages.append(reply)
            if kind == "execute_result":
                result = content["data"]["text/plain"]
            elif kind == "error":
                result = content["ename"]
            elif kind == "stream" and result is None and content["name"] == "stdout":
                result = content["text"].strip()
        raise TimeoutError(f"the kernel did not finish: {code[:60]!r}")

    def value(self, expression: str) -> str:
        """The repr of ``expression`` evaluated in the kernel."""
        return self.run(expression).result
