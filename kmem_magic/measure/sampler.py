"""A background thread that records memory numbers into a :class:`~kmem_magic.record.Timeline`.

It only records: it never prints or displays, and it is stopped and joined by whoever started
it (``%%gpumem`` does so in ``finally``). Each tick reads NVML's device memory (~10 us), the
allocator counters of frameworks already started (tens of us), and host RSS; the per-process
table, which costs milliseconds and takes the driver's global lock (it can stall the
framework's kernel launches), is read at the cell's edges and at most every 5 s in between.
At the default 10 Hz that is well under 0.1 % of a core, and the thread sleeps in
``Event.wait`` in between.

Exact peaks do not depend on this rate: they come from the allocators' own peak counters, read
at the cell's edges (see :mod:`kmem_magic.measure.cell`). What fails inside a tick is kept in
:attr:`Sampler.errors`, which the record carries as its faults.

The readings at the edges run in the thread too (``before`` ahead of the first sample, ``after``
behind the last), and the caller waits for them at most a deadline: a slow or hung NVML call
then costs the user's cell that deadline, never the call's own time. A thread whose call did
not return in time is told to stop and ends as soon as the call does; it writes nothing more.
"""

from __future__ import annotations

import functools
import threading
import time
import weakref
from typing import Any, Callable, List, Optional, Sequence

from .. import _host, _nvml
from ..record import Device, Series, Timeline

THREAD_NAME = "kmem-sampler"
MAX_POINTS = 20_000
MAX_FAULTS = 10  # a fault that repeats every tick is worth one line, not thousands


def guarded(faults: List[str], what: str, read: Callable[[], Any], unknown: Any = None) -> Any:
    """``read()``, or ``unknown`` when it raises: the failure is noted in ``faults`` (at most
    :data:`MAX_FAULTS` of them), never raised, so a failed reading never costs the cell."""
    try:
        return read()
    except Exception as error:
        if len(faults) < MAX_FAULTS:
            faults.append(f"{what}: {error!r}")
        return unknown


class Sampler:
    """Samples every ``interval_s`` seconds until :meth:`stop`; use as a context manager or
    call :meth:`start` / :meth:`stop` (idempotent). ``on_sample(timeline)``, if given, runs in
    the thread after each tick: it may set widget traits, never display."""

    def __init__(
        self,
        devices: Sequence[Device],
        backends: Sequence = (),
        interval_s: float = 0.1,
        process_interval_s: float = 5.0,
        on_sample: Optional[Callable[[Timeline], None]] = None,
        before: Optional[Callable[[], None]] = None,
        after: Optional[Callable[[], None]] = None,
    ) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s must be positive, not {interval_s}")
        self.devices = list(devices)
        self.backends = list(backends)
        self.interval_s = interval_s
        self.process_interval_s = process_interval_s
        self.on_sample = on_sample
        self.before = before
        self.after = after
        self.timeline = Timeline()
        self.errors: List[str] = []
        self.process_note: Optional[str] = None
        self._t0 = 0.0
        self._next_process = 0.0
        self._stop = threading.Event()
        self._ready = threading.Event()  # ``before`` and the first sample are taken
        self._done = threading.Event()  # the last sample and ``after`` are taken
        self._abandoned = False  # late: whatever the thread reads from now on is dropped
        self._thread: Optional[threading.Thread] = None

    @property
    def t0(self) -> float:
        """``time.perf_counter()`` at :meth:`start`; sample times count from here."""
        return self._t0

    def start(self, deadline_s: Optional[float] = None) -> bool:
        """Start the ``kmem-sampler`` thread: it runs ``before``, takes the first sample, then
        samples every ``interval_s``. Waits for the first two at most ``deadline_s`` (None:
        as long as they take); returns whether they were done in time."""
        if self._thread is not None:
            return self._ready.is_set()
        self._t0 = time.perf_counter()
        self._thread = threading.Thread(target=self._run, name=THREAD_NAME, daemon=True)
        # Should the owner vanish without stop(), the thread still ends: the finalizer holds
        # the event, not the sampler.
        weakref.finalize(self, self._stop.set)
        self._thread.start()
        return self._ready.wait(deadline_s)

    def stop(self, deadline_s: Optional[float] = None) -> bool:
        """Stop the thread, which takes a last sample and runs ``after``; waits for it at most
        ``deadline_s`` (None: as long as it takes). Returns whether it was done in time; if
        not, the thread is abandoned: it ends when its current call returns, recording
        nothing more, and :attr:`timeline` is what was recorded until then. Idempotent."""
        self._stop.set()
        thread = self._thread
        if thread is None:
            return True
        done = self._done.wait(deadline_s)
        if done:
            thread.join()
        else:
            self._abandoned = True
            self.timeline = _copy(self.timeline)
        return done

    def __enter__(self) -> "Sampler":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _run(self) -> None:
        stop, interval = self._stop, self.interval_s
        try:
            if self.before is not None:
                self._read("start readings", self.before)
            self.sample()
        finally:
            self._ready.set()
        while not stop.wait(interval) and not self._abandoned:
            self.sample()
            if self.on_sample is not None and not self._abandoned:
                try:
                    self.on_sample(self.timeline)
                except Exception as error:  # a display problem must not stop the recording
                    self._note(f"on_sample: {error!r}")
            if len(self.timeline.get("host").t_s) > MAX_POINTS:
                self._thin()
                interval *= 2
        try:
            if not self._abandoned:
                self.sample(force_processes=True)
            if self.after is not None and not self._abandoned:
                self._read("end readings", self.after)
        finally:
            self._done.set()

    def sample(self, force_processes: bool = False) -> None:
        """Record one sample of every source (called by the thread; callable directly). A
        source whose reading fails is recorded as unknown (None) and the failure noted; the
        other sources are still read."""
        t = time.perf_counter() - self._t0
        timeline = self.timeline
        if self._abandoned:
            return
        for device in self.devices:
            used = self._read("NVML memory", lambda: _nvml.memory_used(device))
            timeline.get("device", device.index).append(t, used)
        ours: dict = {}
        for backend in self.backends:
            for index, used in self._read(f"{backend.name} in_use", backend.in_use, {}).items():
                timeline.get(backend.name, index).append(t, used)
                ours[index] = ours.get(index, 0) + (used or 0)
        if force_processes or t >= self._next_process:
            self._next_process = t + self.process_interval_s
            for device in self.devices:
                read = functools.partial(_nvml.process_used, device, ours=ours.get(device.index))
                used, why = self._read("NVML processes", read, (None, None))
                self.process_note = why or self.process_note
                timeline.get("process", device.index).append(t, used)
        timeline.get("host").append(t, self._read("host RSS", _host.host_rss))

    def _read(self, what: str, read: Callable[[], Any], unknown: Any = None) -> Any:
        return guarded(self.errors, what, read, unknown)

    def _note(self, text: str) -> None:
        if len(self.errors) < MAX_FAULTS:
            self.errors.append(text)

    def _thin(self) -> None:
        """Halve every series, keeping the larger of each pair, so peaks survive."""
        for series in self.timeline.series.values():
            t, v = series.t_s, series.values
            pairs = range(0, len(t) - 1, 2)
            series.t_s = [t[i] for i in pairs] + t[len(t) - len(t) % 2:]
            series.values = [_larger(v[i], v[i + 1]) for i in pairs] + v[len(v) - len(v) % 2:]


def _copy(timeline: Timeline) -> Timeline:
    """A copy that a late thread can no longer write into."""
    copy = Timeline(marks=list(timeline.marks))
    for key, series in list(timeline.series.items()):
        copy.series[key] = Series(series.source, series.device, list(series.t_s),
                                  list(series.values))
    return copy


def _larger(a: Optional[int], b: Optional[int]) -> Optional[int]:
    if a is None:
        return b
    return a if b is None else max(a, b)
