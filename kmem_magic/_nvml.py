"""The only module that touches NVML: devices in CUDA order, device and per-process memory.

NVML is initialised lazily, once, under a lock; when it cannot be (no driver, no GPU, no
``nvidia-ml-py``) every query answers "unknown" (None) and :func:`unavailable_reason` says why.
Nothing here creates a CUDA context: NVML talks to the driver, not to CUDA.

NVML numbers devices in PCI-bus order and ignores ``CUDA_VISIBLE_DEVICES``, while the
frameworks number them in CUDA order. :func:`devices` returns the GPUs the frameworks see, in
their order, each matched to its NVML handle by UUID.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import warnings
from typing import Any, Dict, List, Optional, Tuple

from .record import Device

_lock = threading.Lock()
_nvml: Any = None
_reason: Optional[str] = None
_devices: Optional[List[Device]] = None
_handles: Dict[str, Any] = {}  # NVML's handle of each visible device, by UUID
_order_note: Optional[str] = None
_warming: Optional[threading.Thread] = None


def _load() -> Any:
    """The initialised ``pynvml`` module, or None (then ``_reason`` says why)."""
    global _nvml, _reason
    with _lock:
        if _nvml is not None or _reason is not None:
            return _nvml
        try:
            # pynvml 13 (the deprecated shim) warns on any `import pynvml`, even nvidia-ml-py's.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                import pynvml
        except ImportError:
            _reason = "nvidia-ml-py is not installed (pip install nvidia-ml-py)"
            return None
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError_LibraryNotFound:
            _reason = "no NVIDIA driver found (NVML library missing)"
        except pynvml.NVMLError_DriverNotLoaded:
            _reason = "the NVIDIA driver is not loaded"
        except pynvml.NVMLError_LibRmVersionMismatch:
            _reason = "NVIDIA driver/library version mismatch: reboot or reload the driver"
        except pynvml.NVMLError as error:
            _reason = f"NVML unavailable: {error}"
        except Exception as error:  # a broken binding or driver: no GPU figures, no traceback
            _reason = f"NVML failed to start: {error!r}"
        else:
            _nvml = pynvml
        return _nvml


def ready() -> bool:
    """Whether NVML has started (or failed to) and the devices are known: from then on a
    query costs microseconds, where the first one costs about 0.1 s (loading the library)."""
    return _devices is not None or _reason is not None


def warm_up() -> None:
    """Start NVML in a short-lived background thread (``kmem-nvml-start``), so that the first
    measured cell does not wait for it; does nothing once it has started or is starting."""
    global _warming
    if ready() or _warming is not None:
        return
    _warming = threading.Thread(target=devices, name="kmem-nvml-start", daemon=True)
    _warming.start()


def unavailable_reason() -> Optional[str]:
    """Why there are no GPU numbers (None when NVML works and at least one GPU is visible)."""
    nvml = _load()
    if nvml is None:
        return _reason
    if not devices():
        return "no GPU is visible to this process (CUDA_VISIBLE_DEVICES hides them all)" if (
            os.environ.get("CUDA_VISIBLE_DEVICES") is not None
        ) else "NVML sees no GPU"
    return None


def order_note() -> Optional[str]:
    """A caveat about how CUDA ordinals were matched to NVML devices, if any (``%gpumem
    status`` shows it)."""
    devices()
    return _order_note


def _decode(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _all_nvml_devices(nvml: Any) -> List[Tuple[int, str, str, int, Any]]:
    found = []
    for index in range(nvml.nvmlDeviceGetCount()):
        handle = nvml.nvmlDeviceGetHandleByIndex(index)
        uuid = _decode(nvml.nvmlDeviceGetUUID(handle))
        name = _decode(nvml.nvmlDeviceGetName(handle))
        total = int(nvml.nvmlDeviceGetMemoryInfo(handle).total)
        found.append((index, uuid, name, total, handle))
    return found


# Runs in a child process so that cuInit never happens in the user's kernel. It prints the UUIDs
# of the devices CUDA enumerates, in CUDA order, with the parent's CUDA_* variables.
_CUDA_UUIDS = r"""
import ctypes, sys
cuda = ctypes.CDLL("libcuda.so.1")
assert cuda.cuInit(0) == 0
count = ctypes.c_int()
assert cuda.cuDeviceGetCount(ctypes.byref(count)) == 0
for ordinal in range(count.value):
    dev = ctypes.c_int()
    assert cuda.cuDeviceGet(ctypes.byref(dev), ordinal) == 0
    raw = (ctypes.c_ubyte * 16)()
    assert cuda.cuDeviceGetUuid(raw, dev) == 0
    h = bytes(raw).hex()
    print(f"GPU-{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}")
"""


def _cuda_order_from_driver() -> Optional[List[str]]:
    try:
        out = subprocess.run(
            [sys.executable, "-c", _CUDA_UUIDS], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return [line.strip() for line in out.stdout.splitlines() if line.strip()]


def _select_visible(all_devices: list, spec: Optional[str]) -> Optional[list]:
    """Apply ``CUDA_VISIBLE_DEVICES`` to NVML devices listed in PCI order (None: can't parse)."""
    if spec is None:
        return list(all_devices)
    chosen = []
    for entry in (part.strip() for part in spec.split(",")):
        if not entry:
            break
        if entry.lstrip("-").isdigit():
            index = int(entry)
            if index < 0 or index >= len(all_devices):
                break  # CUDA stops at the first invalid entry
            picked = all_devices[index]
        else:
            matches = [d for d in all_devices if d[1].startswith(entry)]
            if len(matches) != 1:
                if entry.startswith("MIG"):
                    return None
                break
            picked = matches[0]
        if picked in chosen:
            break
        chosen.append(picked)
    return chosen


def devices() -> List[Device]:
    """GPUs visible to the frameworks, in CUDA order, each matched to NVML by UUID (cached)."""
    global _devices, _order_note
    if _devices is not None:
        return _devices
    nvml = _load()
    if nvml is None:
        _devices = []
        return _devices
    try:
        every = _all_nvml_devices(nvml)
    except Exception as error:  # NVMLError or a broken binding: no devices, and why
        _order_note = f"NVML could not list devices: {error}"
        _devices = []
        return _devices
    spec = os.environ.get("CUDA_VISIBLE_DEVICES")
    same_model = len({d[2] for d in every}) <= 1
    pci_order = os.environ.get("CUDA_DEVICE_ORDER", "FASTEST_FIRST") == "PCI_BUS_ID"
    visible = _select_visible(every, spec) if (same_model or pci_order) else None
    if visible is None:
        # Mixed GPU models (CUDA puts the fastest first) or MIG ids: ask the CUDA driver itself,
        # in a child process, which devices it enumerates and in which order.
        uuids = _cuda_order_from_driver()
        by_uuid = {d[1]: d for d in every}
        if uuids is not None and all(u in by_uuid for u in uuids):
            visible = [by_uuid[u] for u in uuids]
        else:
            visible = _select_visible(every, spec) or []
            _order_note = "CUDA device order could not be read; assumed PCI-bus order"
    _handles.clear()
    _handles.update({d[1]: d[4] for d in visible})
    _devices = [Device(index=i, name=d[2], uuid=d[1], total_bytes=d[3])
                for i, d in enumerate(visible)]
    return _devices


def memory_used(device: Device) -> Optional[int]:
    """Bytes in use on ``device`` by everyone, as nvidia-smi shows it (NVML memory v2)."""
    nvml = _nvml
    if nvml is None:
        return None
    try:
        # v1's `used` also counts memory the driver reserves for itself (hundreds of MiB).
        handle = _handles.get(device.uuid)
        return int(nvml.nvmlDeviceGetMemoryInfo(handle, version=nvml.nvmlMemory_v2).used)
    except (nvml.NVMLError, TypeError, AttributeError):
        try:
            return int(nvml.nvmlDeviceGetMemoryInfo(handle).used)
        except nvml.NVMLError:
            return None


def processes(device: Device) -> Optional[List[Tuple[int, Optional[int]]]]:
    """``(pid, bytes)`` of every compute process on ``device`` (bytes None where not reported).

    Takes milliseconds (the driver's process table): call it at cell edges or at most once a
    second, never in a tight loop.
    """
    nvml = _nvml
    if nvml is None:
        return None
    try:
        found = nvml.nvmlDeviceGetComputeRunningProcesses(_handles.get(device.uuid))
    except nvml.NVMLError:
        return None
    return [(int(p.pid), None if p.usedGpuMemory is None else int(p.usedGpuMemory)) for p in found]


def _pid_visible(pid: int) -> bool:
    return os.path.exists(f"/proc/{pid}") if os.path.isdir("/proc") else True


def process_used(
    device: Device, pid: Optional[int] = None, table: Optional[list] = None,
    ours: Optional[int] = None,
) -> Tuple[Optional[int], Optional[str]]:
    """Bytes this process holds on ``device``, and why not when that is unknown.

    In containers NVML reports host PIDs (or none), so our own PID is never found; then the
    answer is ``(None, reason)`` rather than a silent 0. ``ours``, the bytes this process's
    frameworks hold on the device (if known), settles it: a process that holds memory is not
    absent, whatever the table says.
    """
    pid = os.getpid() if pid is None else pid
    table = processes(device) if table is None else table
    if table is None:
        return None, "NVML cannot list the processes on this GPU"
    for other, used in table:
        if other == pid:
            if used is None:
                return None, "NVML does not report per-process memory on this system"
            return used, None
    if ours:
        return None, ("NVML does not list this process although its frameworks hold memory on "
                      "this GPU (a container hides its PIDs), so its share is unknown")
    if all(_pid_visible(other) for other, _ in table):
        return 0, None
    return None, "NVML reports PIDs from outside this container, so this process's share is unknown"


def reset_for_tests() -> None:
    """Forget the cached state so that a test can present different (fake) hardware."""
    global _nvml, _reason, _devices, _order_note, _warming
    if _warming is not None:
        _warming.join()
    with _lock:
        _nvml, _reason, _devices, _order_note, _warming = None, None, None, None, None
        _handles.clear()
