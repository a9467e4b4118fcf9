"""Measure one stretch of code (a cell) and turn what was seen into a :class:`CellRecord`.

>>> m = Measurement(policy="growth").start()
>>> data = bytearray(50 * 2**20)
>>> record = m.finish()
>>> record.peak("host").bytes > 0
True

At the start it takes a snapshot of every source, resets the allocators' peak counters and
notes the kernel's high-water mark of host RSS, then samples in the :class:`Sampler`'s thread.
At the end it stops the sampler, takes a second snapshot, and reads the peak counters: those
give the exact peak of the cell even when a spike lasted a millisecond. The record it returns has
no suggestions yet: the advice (``kmem_magic.advise``) reads it and the caller completes it.

Nothing here can cost the cell:

* a reading that fails (NVML, an allocator counter, whatever it raises) makes that figure
  unknown, and the record's ``faults`` say which reading failed and how;
* the readings at both edges run in the sampler's thread and are waited for at most
  ``deadline_s`` each (:data:`DEADLINE_S`): NVML taking seconds to answer costs the cell that
  deadline, and the figures it did not deliver in time are unknown, with the reason;
* the process-wide high-water mark of host RSS is read, never reset: the host peak is exact
  when the cell set a new high for the process, else it is the sampled maximum.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import os
import time
import weakref
from typing import Any, Callable, Dict, List, Optional, Sequence

import psutil

from .. import _host, _nvml, backends
from ..record import HOST, CellRecord, Device, Figures, Peak, Timeline
from ..sizes import Limit
from .sampler import Sampler, guarded

DEADLINE_S = 0.025  # the most each edge of a cell waits for its readings
FIRST_DEADLINE_S = 2.0  # the first time: NVML starts (loads its library) once per process


@dataclasses.dataclass
class _Start:
    devices: List[Device]
    gpu_note: Optional[str]
    before: Dict
    states: Dict[str, Any]
    host_mark: Optional[int]


@dataclasses.dataclass
class _End:
    after: Dict
    others: Dict[int, tuple]
    started: List
    peaks: Dict[str, Dict[int, Peak]]
    host_mark: Optional[int]


class Measurement:
    """One measured stretch: :meth:`start`, run the code, :meth:`finish` (always, in finally).
    ``deadline_s`` bounds how long each edge waits for its readings (None: as long as they
    take, for callers that are not a user's cell)."""

    def __init__(
        self,
        policy: str = "growth",
        limit: Optional[Limit] = None,
        interval_s: float = 0.1,
        execution_count: Optional[int] = None,
        on_sample: Optional[Callable[[Timeline], None]] = None,
        source: str = "",
        deadline_s: Optional[float] = DEADLINE_S,
    ) -> None:
        self.policy = policy
        self.limit = limit
        self.interval_s = interval_s
        self.execution_count = execution_count
        self.on_sample = on_sample
        self.source = source
        self.deadline_s = deadline_s
        self.sampler: Optional[Sampler] = None
        self.faults: List[str] = []
        self.devices: List[Device] = []
        self._start: Optional[_Start] = None
        self._end: Optional[_End] = None
        self._late_start = False

    def start(self) -> "Measurement":
        """Take the readings before the cell and start sampling (waits at most the deadline)."""
        global _current
        self.started_at = datetime.datetime.now().isoformat(timespec="seconds")
        self.sampler = Sampler([], backends.BACKENDS, self.interval_s,
                               on_sample=self._on_sample, before=self._read_start,
                               after=self._read_end)
        deadline = self.deadline_s
        if deadline is not None and not _nvml.ready():
            deadline = max(deadline, FIRST_DEADLINE_S)
        if not self.sampler.start(deadline):
            self._late_start = True
            self.faults.append(f"the readings before the cell took longer than "
                               f"{deadline * 1000:.0f} ms (NVML or a framework counter is slow): "
                               "the figures from before the cell are unknown")
        elif self._start is not None:
            self.devices = self._start.devices
        self._t0 = time.perf_counter()
        _current = weakref.ref(self)
        return self

    def finish(self, error: Optional[BaseException] = None) -> CellRecord:
        """Stop sampling and build the record; ``error`` is what the code raised, if anything."""
        global _current
        if _current is not None and _current() is self:
            _current = None
        on_time = self.sampler.stop(self.deadline_s)
        wall_s = time.perf_counter() - self._t0
        timeline = self.sampler.timeline
        if not on_time:
            self.faults.append(f"the readings after the cell took longer than "
                               f"{self._deadline_ms()} (NVML or a framework counter is slow): "
                               "the figures after the cell and the exact peaks are unknown")
        start = self._start if not self._late_start else None
        end = self._end if on_time else None
        devices = (self._start.devices if self._start is not None else []) or self.devices
        before = start.before if start else {d.index: {} for d in devices} | {HOST: None}
        after = end.after if end else {d.index: {} for d in devices} | {HOST: None}
        gpu = {d.index: self._gpu_figures(d.index, before.get(d.index, {}),
                                          after.get(d.index, {}), timeline) for d in devices}
        if start and end:
            self._add_allocator_peaks(gpu, end)
        host = Figures(before={HOST: before[HOST]}, after={HOST: after[HOST]})
        host.peak[HOST] = _host_peak(start, end, timeline, host, self.interval_s)
        return CellRecord(
            execution_count=self.execution_count,
            started_at=self.started_at,
            wall_s=wall_s,
            backend=self._guard("keras backend", backends.keras_backend, None),
            policy=self.policy,
            interval_s=self.interval_s,
            devices=tuple(devices),
            gpu=gpu,
            host=host,
            timeline=timeline,
            frameworks=tuple(b.name for b in (end.started if end else [])),
            gpu_note=self._start.gpu_note if self._start else None,
            process_note=self.sampler.process_note,
            error=None if error is None else type(error).__name__,
            error_kind=_error_kind(error),
            error_message=_message(error),
            source=self.source,
            others=end.others if end else {},
            faults=tuple(self.faults + self.sampler.errors),
        )

    # ------------------------------------------------------------ in the sampler's thread
    def _read_start(self) -> None:
        guard = self._guard
        devices = limited(guard("NVML devices", _nvml.devices, []), self.limit)
        gpu_note = guard("NVML", _nvml.unavailable_reason, "NVML failed")
        self.sampler.devices = devices
        before = _snapshot(devices, guard)
        # a backend whose counter could not be reset gets no allocator peak (unknown), never
        # a peak from before the cell; a start the cell stopped waiting for resets nothing
        # (its reset could land in a later cell)
        states = {}
        for backend in () if self._late_start else backends.BACKENDS:
            state = guard(f"{backend.name} reset_peak", backend.reset_peak, _FAILED)
            if state is not _FAILED:
                states[backend.name] = state
        host_mark = guard("host peak", _host.peak, None)
        self._start = _Start(devices, gpu_note, before, states, host_mark)

    def _read_end(self) -> None:
        guard = self._guard
        devices = self._start.devices if self._start is not None else []
        others: Dict[int, tuple] = {}
        after = _snapshot(devices, guard, others)
        started = guard("backends", backends.started, [])
        peaks = {}
        states = self._start.states if self._start is not None else {}
        for backend in (b for b in started if b.name in states):
            sampled = {d.index: series.max() or 0 for d in devices
                       for series in [self.sampler.timeline.find(backend.name, d.index)]
                       if series is not None}
            read = functools.partial(backend.read_peak, states[backend.name], sampled)
            peaks[backend.name] = guard(f"{backend.name} read_peak", read, {})
        host_mark = guard("host peak", _host.peak, None)
        self._end = _End(after, others, started, peaks, host_mark)

    def _on_sample(self, timeline: Timeline) -> None:
        if self.on_sample is not None:
            self.on_sample(timeline)

    # ------------------------------------------------------------ building the record
    def _guard(self, what: str, read: Callable[[], Any], unknown: Any) -> Any:
        return guarded(self.faults, what, read, unknown)

    def _deadline_ms(self) -> str:
        return f"{self.deadline_s * 1000:.0f} ms"

    def _gpu_figures(self, index: int, before: dict, after: dict, timeline: Timeline) -> Figures:
        figures = Figures(before=dict(before), after=dict(after))
        figures.peak["device"] = _sampled_peak(
            timeline, "device", index, figures, f"every {self.interval_s:g} s")
        figures.peak["process"] = _sampled_peak(
            timeline, "process", index, figures,
            f"at the edges and every {self.sampler.process_interval_s:g} s")
        return figures

    def _add_allocator_peaks(self, gpu: Dict[int, Figures], end: _End) -> None:
        for name, peaks in end.peaks.items():
            for i, peak in peaks.items():
                if i in gpu:
                    # A framework that started during the cell held nothing before it.
                    gpu[i].before.setdefault(name, 0)
                    gpu[i].peak[name] = peak


def _host_peak(start: Optional[_Start], end: Optional[_End], timeline: Timeline,
               host: Figures, interval_s: float) -> Peak:
    """Exact when the process's high-water mark rose during the cell (the cell set a new high,
    so the mark is the cell's peak), else the sampled maximum."""
    before = start.host_mark if start else None
    after = end.host_mark if end else None
    if before is not None and after is not None and after > before:
        return Peak(after, True, "kernel high-water mark")
    how = f"every {interval_s:g} s"
    if before is not None and after is not None:
        how += "; below the process's earlier high-water mark"
    return _sampled_peak(timeline, HOST, None, host, how)


_current: Optional["weakref.ref[Measurement]"] = None
_FAILED = object()


def limited(devices: Sequence[Device], limit: Optional[Limit]) -> List[Device]:
    """``devices`` with the policy's ``limit`` on each (in bytes) where one is set."""
    if limit is None:
        return list(devices)
    return [dataclasses.replace(d, limit_bytes=limit.bytes_of(d.total_bytes)) for d in devices]


def mark(text: str) -> None:
    """Put ``text`` on the time axis of the cell being measured, if one is (else nothing)."""
    running = _current() if _current is not None else None
    if running is not None and running.sampler is not None:
        running.sampler.timeline.marks.append([time.perf_counter() - running.sampler.t0, text])


def _unguarded(what: str, read: Callable[[], Any], unknown: Any) -> Any:
    return read()


def _snapshot(devices: Sequence[Device], guard: Callable = _unguarded,
              others: Optional[Dict] = None) -> Dict:
    """Every source, now: ``{CUDA ordinal: {source: bytes}, "host": bytes}``, each read through
    ``guard(what, read, unknown)``; fills ``others`` (if given) with the other processes on each
    GPU: ``(pid, name or None, bytes or None)``."""
    shot: Dict = {d.index: {} for d in devices}
    me = os.getpid()
    for backend in guard("backends", backends.started, []):
        for index, used in guard(f"{backend.name} in_use", backend.in_use, {}).items():
            if index in shot:
                shot[index][backend.name] = used
    for device in devices:
        readings = shot[device.index]
        ours = sum(v or 0 for v in readings.values())
        readings["device"] = guard("NVML memory", lambda: _nvml.memory_used(device), None)
        table = guard("NVML processes", lambda: _nvml.processes(device), None)
        readings["process"] = _nvml.process_used(device, table=table, ours=ours)[0] \
            if table is not None else None
        if others is not None and table is not None:
            others[device.index] = tuple((pid, _process_name(pid), used)
                                         for pid, used in table if pid != me)
    shot[HOST] = guard("host RSS", _host.host_rss, None)
    return shot


def _process_name(pid: int) -> Optional[str]:
    """The name of a local process, None when this container cannot see it."""
    try:
        return psutil.Process(pid).name()
    except (psutil.Error, OSError):
        return None


def _sampled_peak(timeline: Timeline, source: str, device, figures: Figures, how: str) -> Peak:
    series = timeline.find(source, device)
    values = [figures.before.get(source), figures.after.get(source)]
    values.append(series.max() if series is not None else None)
    known = [v for v in values if v is not None]
    if not known:
        return Peak(None, False, "no reading succeeded")
    return Peak(max(known), False, how)


def _message(error: Optional[BaseException]) -> str:
    """The error's text (its start), or "" when there is none or its ``str`` fails."""
    try:
        return "" if error is None else str(error)[:2000]
    except Exception:
        return ""


def _error_kind(error: Optional[BaseException]) -> Optional[str]:
    if error is None:
        return None
    if isinstance(error, KeyboardInterrupt):
        return "interrupt"
    if backends.is_oom(error):
        return "oom"
    return "exception"


def measure_now() -> Dict[str, Optional[int]]:
    """Every source now, summed over GPUs, keyed by its label (for "what was freed")."""
    devices = _nvml.devices()
    shot = _snapshot(devices)
    totals: Dict[str, Optional[int]] = {}
    for device in devices:
        for source, value in shot[device.index].items():
            key = backends.label(source)
            if value is None or (key in totals and totals[key] is None):
                totals[key] = None
            else:
                totals[key] = totals.get(key, 0) + value
    totals[backends.label(HOST)] = shot[HOST]
    return totals
