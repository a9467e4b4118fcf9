"""Interrupts held back while kmem's own code runs, so that one never lands half-way through it.

>>> with held() as interrupts:
...     pass
>>> interrupts.count
0

Inside ``with held()``, Ctrl-C (a kernel's interrupt, SIGINT) is counted instead of raised; the
caller decides afterwards what it means (before the cell: stop before the body runs; after the
cell: its result is kept and the panel says so). Outside the main thread, or where SIGINT is
not Python's to handle, it changes nothing.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Iterator


class Interrupts:
    """How many interrupts arrived while held."""

    def __init__(self) -> None:
        self.count = 0

    def _handler(self, signum, frame) -> None:
        self.count += 1


@contextmanager
def held() -> Iterator[Interrupts]:
    """Count SIGINTs instead of raising them, until the block ends."""
    interrupts = Interrupts()
    if threading.current_thread() is not threading.main_thread():
        yield interrupts
        return
    try:
        previous = signal.signal(signal.SIGINT, interrupts._handler)
    except (ValueError, OSError):  # not the main interpreter, or no signals here
        yield interrupts
        return
    if not callable(previous):  # SIGINT ignored (or left to the OS): nothing to hold back
        signal.signal(signal.SIGINT, previous)
        yield interrupts
        return
    try:
        yield interrupts
    finally:
        signal.signal(signal.SIGINT, previous)
