"""Interrupts held back while kmem's own code runs, so that one never lands half-way through it.

>>> with held() as interrupts:
...     pass
>>> interrupts.count
0

Inside ``with held()``, Ctrl-C (a kernel's interrupt, SIGINT) is counted instead of raised; the
caller decides afterwards what it means (before the cell: stop before the body runs; after the
cell: its result is kept and the panel says so); ``interrupts.let_through()`` opens the block
for the user's own code that kmem runs inside it. Outside the main thread, or where SIGINT is
not Python's to handle, it changes nothing.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Iterator, Optional


class Interrupts:
    """How many interrupts arrived while held."""

    def __init__(self) -> None:
        self.count = 0
        self._outer = None  # the handler a held block replaced, while one is open

    def _handler(self, signum, frame) -> None:
        self.count += 1

    @contextmanager
    def let_through(self) -> Iterator[None]:
        """Inside a held block: Ctrl-C raises again until this block ends (for the user's own
        code that kmem runs, such as ``--compare``'s training)."""
        outer = self._outer
        if outer is None:
            yield
            return
        signal.signal(signal.SIGINT, outer)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, self._handler)


@contextmanager
def held(interrupts: Optional[Interrupts] = None) -> Iterator[Interrupts]:
    """Count SIGINTs instead of raising them, until the block ends (into ``interrupts`` when
    given, so that several blocks of one cell add up)."""
    interrupts = interrupts if interrupts is not None else Interrupts()
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
    outermost = interrupts._outer is None  # a nested block lets through to the user's handler
    if outermost:
        interrupts._outer = previous
    try:
        yield interrupts
    finally:
        if outermost:
            interrupts._outer = None
        signal.signal(signal.SIGINT, previous)
