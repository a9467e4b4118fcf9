"""This kernel's line in the ledger (:mod:`kmem_magic.ledger`): what it holds, written when kmem
loads or its policy changes, at most every few seconds while a measured cell runs, and at each
cell's end.

>>> import tempfile
>>> from kmem_magic.ledger import Ledger
>>> presence = Presence(Ledger(tempfile.mkdtemp()))
>>> presence.update(policy="growth")
>>> presence.who().peers[0].me
True
>>> presence.close()

The files are written by a short-lived thread (``kmem-ledger``), newest entry last, so that
neither the cell nor the sampler ever waits for a folder (a slow network share, a full disk): a
write that fails costs a note in :attr:`Presence.fault`, never the cell. Only ``%gpumem who``
asks NVML anything; after a cell the figures are the record's, and a policy change writes the
last figures known.
"""

from __future__ import annotations

import atexit
import threading
import time
from typing import Dict, Optional, Tuple

from .. import _host, _nvml, backends
from ..ledger import WRITE_EVERY_S, Entry, GpuUse, Identity, Ledger, Readings, \
    job_view, share_in_force, view
from ..record import NVML_SOURCES, CellRecord, Device, Job, JobDevice, Sharing, Timeline
from ..sizes import Limit
from .cell import limited

WRITER_NAME = "kmem-ledger"
GATHER_S = 5.0  # how long process 0 of a job waits for the others' records of a cell


class Presence:
    """This kernel in ``ledger``; :meth:`close` removes its record (also done at exit)."""

    def __init__(self, ledger: Ledger, user_ns: Optional[dict] = None) -> None:
        self.ledger = ledger
        self.me = Identity.here(user_ns)
        self.policy = ""
        self.limit: Optional[Limit] = None
        self.peaks: Dict[str, int] = {}  # the highest allocator in-use seen, per GPU UUID
        self.pools: Dict[str, int] = {}  # the last pool read, per GPU UUID
        self.gpus: Tuple[GpuUse, ...] = ()  # the last GPU lines known
        self.last_cell: Optional[float] = None
        self.cells = 0
        self.job: Optional[dict] = None  # the multi-process job, as the backend reports it
        self._job_seen = False  # another process of the job has written to this ledger
        self._job_waited = False
        self.entry: Optional[Entry] = None  # the newest entry, written or on its way
        self.fault: Optional[str] = None
        self.closed = False
        self._lock = threading.Lock()
        self._pending: Optional[Entry] = None
        self._writer: Optional[threading.Thread] = None
        self._submitted_at = 0.0
        atexit.register(self.close)

    # ------------------------------------------------------------------ writing
    def update(self, policy: Optional[str] = None, limit: Optional[Limit] = None,
               record: Optional[CellRecord] = None, fresh: bool = False) -> None:
        """Write the record: after ``%load_ext`` or a policy change (``policy`` and its
        ``limit``: the last figures known, no NVML call), after a cell (``record``: its figures
        at the end and its peaks), or ``fresh`` figures for ``%gpumem who``. Never raises."""
        if policy is not None:
            self.policy, self.limit = policy, limit
        if record is not None:
            self.last_cell = time.time()
            self.cells += 1
        try:
            if record is not None:
                self.job = _job()
                self.gpus = tuple(self._gpus_after(record))
            elif fresh:
                self.gpus = tuple(self._gpus_now())
        except Exception as error:  # a counter that fails: the record says what is known
            self.fault = f"reading this kernel's figures failed: {error!r}"
        self._submit(self._entry(self.gpus, running=False))

    def during(self, timeline: Timeline, devices) -> None:
        """From the sampler's thread while a cell runs: the latest samples, at most every
        :data:`~kmem_magic.ledger.WRITE_EVERY_S` seconds; never waits for the folder."""
        try:
            if not self.closed and time.monotonic() - self._submitted_at >= WRITE_EVERY_S:
                self._submit(self._entry(self._gpus_during(timeline, devices), running=True))
        except Exception as error:
            self.fault = f"the ledger was not updated during the cell: {error!r}"

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait for the writes on their way (at most ``timeout`` s); whether they are done."""
        writer = self._writer
        if writer is not None:
            writer.join(timeout)
            return not writer.is_alive()
        return True

    def close(self) -> None:
        """Remove this kernel's record; idempotent."""
        if self.closed:
            return
        self.closed = True
        atexit.unregister(self.close)
        self.flush(1.0)
        self.ledger.remove()

    def _submit(self, entry: Entry) -> None:
        if self.closed:
            return
        with self._lock:
            self.entry = self._pending = entry
            self._submitted_at = time.monotonic()
            if self._writer is None:
                self._writer = threading.Thread(target=self._drain, name=WRITER_NAME,
                                                daemon=True)
                self._writer.start()

    def _drain(self) -> None:
        """The writer: the newest pending entry, until none is left."""
        while True:
            with self._lock:
                entry, self._pending = self._pending, None
                if entry is None or self.closed:
                    self._writer = None
                    return
            try:
                self.ledger.write(entry)
                if self.fault and self.fault.startswith("the ledger"):
                    self.fault = None  # the folder works again
            except Exception as error:
                self.fault = f"the ledger {self.ledger.folder} cannot be written: " \
                    f"{getattr(error, 'strerror', None) or error}"
            if self.closed:  # closed while this write ran: the record goes with the kernel
                self.ledger.remove()

    def gather(self, wait_s: float = GATHER_S) -> Optional[Job]:
        """In process 0 of a multi-process job, after a cell: every device of the job, from
        the other processes' records of this cell, waiting for them at most ``wait_s`` (None
        in any other process, or alone)."""
        job = self.job
        if job is None or job["process"] != 0:
            return None
        deadline = time.monotonic() + wait_s
        while True:
            self.flush(max(0.0, deadline - time.monotonic()))
            entries = [e for e in self.ledger.read()[0] if e.job == job["key"] and
                       e.process != job["process"]]
            found = job_view(entries + [self.entry] if self.entry else entries, job["key"],
                             job["processes"], self.cells)
            if entries:
                self._job_seen = True
            # a job whose other processes never wrote here (another host's folder, or no
            # kmem there) is waited for once per kernel, not at every cell
            if not found.missing or time.monotonic() >= deadline or (
                    self._job_waited and not self._job_seen):
                self._job_waited = True
                return found
            time.sleep(0.05)

    # ------------------------------------------------------------------ reading
    def who(self, record: Optional[CellRecord] = None) -> Sharing:
        """Every kmem kernel on this machine and who holds each GPU: after the cell ``record``
        from its figures (no new NVML call), else read now (``%gpumem who``)."""
        if record is None:
            _nvml.devices()  # asked for: this one waits for NVML to start
            self.update(fresh=True)
        readings = Readings.of(record) if record is not None else Readings.now()
        entries, skipped = self.ledger.read()
        mine = self.entry
        if mine is not None:  # this kernel's newest figures, whether or not on disk yet
            entries = [e for e in entries if e.pid != mine.pid or e.started != mine.started]
            entries.append(mine)
        share = share_in_force(entries, self.policy.split("limit ", 1)[-1])
        return view(entries, self.me, readings, self.ledger.folder, skipped, share)

    # ------------------------------------------------------------------ figures
    def _entry(self, gpus, running: bool) -> Entry:
        try:
            rss = _host.host_rss()
        except Exception:
            rss = None
        job = self.job or {}
        return Entry.of(self.me, backend=backends.keras_backend(), policy=self.policy,
                        last_cell=self.last_cell, running=running, host_rss=rss,
                        gpus=tuple(gpus), cells=self.cells, job=job.get("key", ""),
                        process=job.get("process"), processes=job.get("processes"),
                        job_devices=tuple(JobDevice(process=job["process"], **d)
                                          for d in job.get("devices", ())))

    def _use(self, device: Device, in_use: Optional[int], pool: Optional[int],
             process: Optional[int]) -> Optional[GpuUse]:
        """One GPU's line, None where this kernel holds nothing there that it knows of."""
        if in_use is None and not process:
            return None
        if in_use is not None:
            self.peaks[device.uuid] = max(self.peaks.get(device.uuid, 0), in_use)
        if pool is not None:
            self.pools[device.uuid] = pool
        return GpuUse(device.uuid, device.index, in_use, self.peaks.get(device.uuid),
                      self.pools.get(device.uuid), process, device.limit_bytes)

    def _gpus_during(self, timeline: Timeline, devices):
        gpus = []
        for device in devices:
            latest = {s.source: next((v for v in reversed(s.values) if v is not None), None)
                      for s in list(timeline.series.values()) if s.device == device.index}
            ours = [v for k, v in latest.items() if k not in NVML_SOURCES and v is not None]
            gpus.append(self._use(device, sum(ours) if ours else None, None,
                                  latest.get("process")))
        return [g for g in gpus if g is not None]

    def _gpus_after(self, record: CellRecord):
        gpus = []
        for device in record.devices:
            figures = record.figures(device.index)
            ours = [figures.after.get(name) for name in record.frameworks]
            ours = [v for v in ours if v is not None]
            peaks = [figures.peak[name].bytes for name in record.frameworks
                     if name in figures.peak and figures.peak[name].bytes is not None]
            if peaks:
                self.peaks[device.uuid] = max([self.peaks.get(device.uuid, 0)] + peaks)
            gpus.append(self._use(device, sum(ours) if ours else None, _pool(device.index),
                                  figures.after.get("process")))
        return [g for g in gpus if g is not None]

    def _gpus_now(self):
        started = backends.started()
        if not started or not _nvml.ready():  # %load_ext never waits for NVML to start
            return list(self.gpus)
        devices = limited(_nvml.devices(), self.limit)
        table = {d.index: _nvml.process_used(d)[0] for d in devices}
        in_use: Dict[int, int] = {}
        for backend in started:
            for index, used in backend.in_use().items():
                in_use[index] = in_use.get(index, 0) + (used or 0)
        return [g for g in (self._use(d, in_use.get(d.index), _pool(d.index), table[d.index])
                            for d in devices) if g is not None]


def _job() -> Optional[dict]:
    """The multi-process job of the first started backend that is part of one."""
    for backend in backends.started():
        job = backend.job()
        if job is not None:
            return job
    return None


def _pool(index: int) -> Optional[int]:
    """What the started frameworks' pools hold on GPU ``index`` (None when none says)."""
    held = [b.held_bytes(index) for b in backends.started()]
    held = [h for h in held if h is not None]
    return sum(held) if held else None


__all__ = ["Presence", "WRITER_NAME"]
