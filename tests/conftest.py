"""Shared fixtures: a real IPython shell, fake NVML hardware, and helpers for fresh processes.

Hardware is faked only at its boundary (the ``pynvml`` module the driver bindings provide);
everything above it runs for real.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from types import SimpleNamespace

import pytest

from kmem_magic import _nvml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KMEM_ENV = (
    "TF_FORCE_GPU_ALLOW_GROWTH", "XLA_PYTHON_CLIENT_PREALLOCATE", "XLA_PYTHON_CLIENT_MEM_FRACTION",
    "XLA_CLIENT_MEM_FRACTION", "PYTORCH_ALLOC_CONF", "PYTORCH_CUDA_ALLOC_CONF",
    "KMEM_LIMIT", "KMEM_POLICY", "KMEM_LEDGER",
)


def pytest_collection_modifyitems(config, items):
    """Skip ``gpu`` tests where NVML sees no GPU, unless they were asked for with ``-m gpu``."""
    asked = "gpu" in (config.getoption("-m") or "")
    if asked:
        return
    if _has_gpu():
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU (run with -m gpu on the GPU machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def _has_gpu() -> bool:
    has = bool(_nvml.devices())
    _nvml.reset_for_tests()
    return has


@pytest.fixture(autouse=True)
def no_thread_left_behind():
    """Fail any test that leaves a ``kmem-*`` thread alive (invariant 3); one that ends within
    a second (NVML starting in the background after %load_ext) is not left behind."""
    yield
    for thread in threading.enumerate():
        if thread.name.startswith("kmem-"):
            thread.join(timeout=1)
    alive = [t.name for t in threading.enumerate() if t.name.startswith("kmem-") and t.is_alive()]
    assert not alive, f"threads left running: {alive}"


@pytest.fixture(autouse=True)
def clean_environment(tmp_path_factory):
    """Each test starts and ends without kmem's variables, and with fresh NVML state; the
    kernels it starts share a ledger folder of its own (never the machine's)."""
    saved = {name: os.environ.pop(name, None) for name in KMEM_ENV}
    os.environ["KMEM_LEDGER"] = str(tmp_path_factory.mktemp("ledger"))
    _nvml.reset_for_tests()
    yield
    for name, value in saved.items():
        os.environ.pop(name, None)
        if value is not None:
            os.environ[name] = value
    _nvml.reset_for_tests()


@pytest.fixture(scope="session")
def shell():
    """The real terminal IPython shell used by IPython's own test suite."""
    from IPython.testing.globalipapp import start_ipython

    return start_ipython()


@pytest.fixture
def ip(shell):
    """The shell with kmem_magic loaded; unloaded again after the test."""
    shell.run_line_magic("load_ext", "kmem_magic")
    yield shell
    shell.run_line_magic("unload_ext", "kmem_magic")


# --------------------------------------------------------------------------- fake NVML
class FakeNVMLError(Exception):
    pass


class FakeLibraryNotFound(FakeNVMLError):
    pass


class FakeNvml:
    """Stands in for the ``pynvml`` module: GPUs with a total, a used figure and processes.

    ``gpus`` is a list of dicts: name, uuid, total, used, procs (list of (pid, bytes)).
    """

    nvmlMemory_v2 = 0x02000028
    NVMLError = FakeNVMLError
    NVMLError_LibraryNotFound = FakeLibraryNotFound
    NVMLError_DriverNotLoaded = type("DriverNotLoaded", (FakeNVMLError,), {})
    NVMLError_LibRmVersionMismatch = type("Mismatch", (FakeNVMLError,), {})

    def __init__(self, gpus, missing=False, broken=False):
        self.gpus = gpus
        self.missing = missing
        self.broken = broken  # nvmlInit raises an error that is no NVMLError
        self.calls = []
        self.failing_reads = set()  # numbers (1, 2, ...) of the `used` reads that raise
        self.delay_s = 0.0  # how long each memory or process query takes (a slow driver)
        self.init_delay_s = 0.0  # how long nvmlInit takes (loading the library: ~0.1 s)
        self.on_read = None  # called with the number of each `used` read, before it answers

    def nvmlInit(self):
        time.sleep(self.init_delay_s)
        if self.broken:
            raise OSError("libnvidia-ml.so.1: wrong ELF class")
        if self.missing:
            raise FakeLibraryNotFound("NVML Shared Library Not Found")

    def nvmlDeviceGetCount(self):
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index):
        return index

    def nvmlDeviceGetUUID(self, handle):
        return self.gpus[handle]["uuid"]

    def nvmlDeviceGetName(self, handle):
        return self.gpus[handle]["name"]

    def nvmlDeviceGetMemoryInfo(self, handle, version=None):
        self.calls.append(("memory", handle, version))
        reads = sum(1 for call in self.calls if call[0] == "memory" and call[2] is not None)
        if version is not None and self.on_read is not None:
            self.on_read(reads)
        time.sleep(self.delay_s)
        if version is not None and reads in self.failing_reads:
            raise RuntimeError("driver hiccup")  # not an NVMLError: a fault kmem did not expect
        gpu = self.gpus[handle]
        return SimpleNamespace(total=gpu["total"], used=gpu["used"], free=gpu["total"] - gpu["used"])

    def nvmlDeviceGetComputeRunningProcesses(self, handle):
        self.calls.append(("processes", handle))
        time.sleep(self.delay_s)
        return [SimpleNamespace(pid=pid, usedGpuMemory=used)
                for pid, used in self.gpus[handle].get("procs", [])]


@pytest.fixture
def fake_nvml(monkeypatch):
    """Install a :class:`FakeNvml` as ``pynvml``; call it with the GPUs to present."""

    def install(gpus, missing=False, broken=False):
        fake = FakeNvml(gpus, missing, broken)
        monkeypatch.setitem(sys.modules, "pynvml", fake)
        _nvml.reset_for_tests()
        return fake

    return install


def advise(record, history, ctx=None):
    """kmem's ``advise`` for rule tests, failing the test when a rule raised: ``advise`` keeps
    the others' suggestions and names the fault, so a crashed rule would pass as silent."""
    from kmem_magic.advise import Context, rules

    ctx = ctx if ctx is not None else Context()
    found = rules.advise(record, history, ctx)
    assert ctx.faults == [], ctx.faults
    return found


def gpu(index, name="NVIDIA H100 80GB HBM3", total=80 * 2**30, used=0, procs=()):
    """One fake GPU's description for :func:`fake_nvml`."""
    return {"name": name, "uuid": f"GPU-{index:08d}-aaaa-bbbb-cccc-{index:012d}", "total": total,
            "used": used, "procs": list(procs)}


# --------------------------------------------------------------------------- fresh processes
PRELUDE = """
import dataclasses, json, os, sys
from IPython.core.interactiveshell import InteractiveShell
import kmem_magic
ip = InteractiveShell.instance()
RESULT = {}
def cell(source):
    result = ip.run_cell(source, store_history=True)
    return result
def last():
    return kmem_magic.history(ip)[-1]
def advice():
    return [dataclasses.asdict(s) for s in last().suggestions]
"""


def run_fresh(code: str, env: dict | None = None, timeout: float = 600) -> dict:
    """Run ``code`` in a new Python process with a real IPython shell ``ip`` and a ``cell()``
    helper; the script fills the dict ``RESULT``, which comes back. Fails on a crash."""
    script = PRELUDE + textwrap.dedent(code) + "\nprint('@@RESULT@@' + json.dumps(RESULT))\n"
    full_env = {k: v for k, v in os.environ.items() if k not in KMEM_ENV}
    full_env["KMEM_LEDGER"] = os.environ.get("KMEM_LEDGER", "off")
    full_env.update(env or {})
    full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, full_env.get("PYTHONPATH")]))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=full_env, timeout=timeout, cwd=ROOT)
    for line in done.stdout.splitlines():
        if line.startswith("@@RESULT@@"):
            result = json.loads(line[len("@@RESULT@@"):])
            result["_stdout"] = done.stdout
            result["_stderr"] = done.stderr
            return result
    raise AssertionError(f"script failed ({done.returncode}):\n{done.stdout}\n{done.stderr[-4000:]}")


@pytest.fixture
def fresh():
    return run_fresh
