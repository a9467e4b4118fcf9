"""Measure one stretch of code (a cell) and turn what was seen into a :class:`CellRecord`.

>>> m = Measurement(policy="growth").start()
>>> data = bytearray(50 * 2**20)
>>> record = m.finish()
>>> record.peak("host").bytes > 0
True

At the start it takes a snapshot of every source, resets the allocators' peak counters (and the
kernel's high-water mark of host RSS, where Linux allows), and starts the :class:`Sampler`. At the
end it stops the sampler, takes a second snapshot, and reads the peak counters: those give the
exact peak of the cell even when a spike lasted a millisecond. The record it returns has no
suggestions yet: the advice (``kmem_magic.advise``) reads it and the caller completes it.

A reading that fails (NVML, an allocator counter, whatever it raises) never stops the cell: the
figure is unknown, and the record's ``faults`` say which reading failed and how.
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


class Measurement:
    """One measured stretch: :meth:`start`, run the code, :meth:`finish` (always, in finally)."""

    def __init__(
        self,
        policy: str = "growth",
        limit: Optional[Limit] = None,
        interval_s: float = 0.1,
        execution_count: Optional[int] = None,
        on_sample: Optional[Callable[[Timeline], None]] = None,
        source: str = "",
    ) -> None:
        self.policy = policy
        self.limit = limit
        self.interval_s = interval_s
        self.execution_count = execution_count
        self.on_sample = on_sample
        self.source = source
        self.sampler: Optional[Sampler] = None
        self.faults: List[str] = []

    def start(self) -> "Measurement":
        global _current
        guard = self._guard
        self.devices = limited(guard("NVML devices", _nvml.devices, []), self.limit)
        self.gpu_note = guard("NVML", _nvml.unavailable_reason, "NVML failed")
        self.started_at = datetime.datetime.now().isoformat(timespec="seconds")
        self._before = _snapshot(self.devices, guard)
        # a backend whose counter could not be reset gets no allocator peak (unknown), never
        # a peak from before the cell
        self._states = {}
        for backend in backends.BACKENDS:
            state = guard(f"{backend.name} reset_peak", backend.reset_peak, _FAILED)
            if state is not _FAILED:
                self._states[backend.name] = state
        self._host_peak_exact = guard("host peak", _host.reset_peak, False)
        self._t0 = time.perf_counter()
        self.sampler = Sampler(
            self.devices, backends.BACKENDS, self.interval_s, on_sample=self.on_sample
        ).start()
        _current = weakref.ref(self)
        return self

    def finish(self, error: Optional[BaseException] = None) -> CellRecord:
        """Stop sampling and build the record; ``error`` is what the code raised, if anything."""
        global _current
        if _current is not None and _current() is self:
            _current = None
        timeline = self.sampler.stop()
        wall_s = time.perf_counter() - self._t0
        others: Dict[int, tuple] = {}
        after = _snapshot(self.devices, self._guard, others)
        started = self._guard("backends", backends.started, [])
        gpu = {d.index: self._gpu_figures(d.index, after[d.index], timeline)
               for d in self.devices}
        self._add_allocator_peaks(gpu, started, timeline)
        host = Figures(before={HOST: self._before[HOST]}, after={HOST: after[HOST]})
        host_peak = self._guard("host peak", _host.peak, None) if self._host_peak_exact else None
        host.peak[HOST] = (
            Peak(host_peak, True, "kernel high-water mark") if host_peak is not None
            else _sampled_peak(timeline, HOST, None, host, f"every {self.interval_s:g} s"))
        return CellRecord(
            execution_count=self.execution_count,
            started_at=self.started_at,
            wall_s=wall_s,
            backend=self._guard("keras backend", backends.keras_backend, None),
            policy=self.policy,
            interval_s=self.interval_s,
            devices=tuple(self.devices),
            gpu=gpu,
            host=host,
            timeline=timeline,
            frameworks=tuple(b.name for b in started),
            gpu_note=self.gpu_note,
            process_note=self.sampler.process_note,
            error=None if error is None else type(error).__name__,
            error_kind=_error_kind(error),
            source=self.source,
            others=others,
            faults=tuple(self.faults + self.sampler.errors),
        )

    def _guard(self, what: str, read: Callable[[], Any], unknown: Any) -> Any:
        return guarded(self.faults, what, read, unknown)

    def _gpu_figures(self, index: int, after: dict, timeline: Timeline) -> Figures:
        figures = Figures(before=dict(self._before[index]), after=dict(after))
        figures.peak["device"] = _sampled_peak(
            timeline, "device", index, figures, f"every {self.interval_s:g} s")
        figures.peak["process"] = _sampled_peak(
            timeline, "process", index, figures,
            f"at the edges and every {self.sampler.process_interval_s:g} s")
        return figures

    def _add_allocator_peaks(self, gpu: Dict[int, Figures], started: Sequence,
                             timeline: Timeline) -> None:
        for backend in (b for b in started if b.name in self._states):
            sampled = {i: series.max() or 0 for i in gpu
                       for series in [timeline.find(backend.name, i)] if series is not None}
            read = functools.partial(backend.read_peak, self._states[backend.name], sampled)
            for i, peak in self._guard(f"{backend.name} read_peak", read, {}).items():
                if i in gpu:
                    # A framework that started during the cell held nothing before it.
                    gpu[i].before.setdefault(backend.name, 0)
                    gpu[i].peak[backend.name] = peak


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
    for device in devices:
        shot[device.index]["device"] = guard("NVML memory", lambda: _nvml.memory_used(device),
                                             None)
        table = guard("NVML processes", lambda: _nvml.processes(device), None)
        shot[device.index]["process"] = _nvml.process_used(device, table=table)[0] \
            if table is not None else None
        if others is not None and table is not None:
            others[device.index] = tuple((pid, _process_name(pid), used)
                                         for pid, used in table if pid != me)
    for backend in guard("backends", backends.started, []):
        for index, used in guard(f"{backend.name} in_use", backend.in_use, {}).items():
            if index in shot:
                shot[index][backend.name] = used
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
