"""The only code that reads host memory: this process's resident set size (RSS) and its peak.

>>> host_rss() > 0
True

Linux keeps a high-water mark of each process's RSS (``VmHWM``), which catches a spike between
two samples. kmem only reads it (:func:`peak`), never resets it: rewinding it
(``/proc/self/clear_refs``) would also rewind what ``getrusage`` and every other tool report as
the process's peak. Where it is unknown, :func:`peak` answers None.
"""

from __future__ import annotations

import os
from typing import Optional

import psutil

from .sizes import KiB

_process: Optional[psutil.Process] = None


def host_rss() -> int:
    """This process's resident set size in bytes."""
    global _process
    # made once per process (creating one costs more than reading it); a forked child makes
    # its own, else it would read its parent
    if _process is None or _process.pid != os.getpid():
        _process = psutil.Process()
    return int(_process.memory_info().rss)


def peak() -> Optional[int]:
    """The kernel's high-water mark of this process's RSS in bytes, None where unknown."""
    try:
        with open(f"/proc/{os.getpid()}/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * KiB
    except (OSError, ValueError, IndexError):
        return None
    return None
