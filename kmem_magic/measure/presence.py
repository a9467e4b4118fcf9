"""This kernel's line in the ledger (:mod:`kmem_magic.ledger`): what it holds, written when kmem
loads, at most every few seconds while a measured cell runs, and at each cell's end.

>>> import tempfile
>>> from kmem_magic.ledger import Ledger
>>> presence = Presence(Ledger(tempfile.mkdtemp()))
>>> presence.update(policy="growth")
>>> presence.who().peers[0].me
True
>>> presence.close()

Every method is guarded: a ledger that cannot be written (a full disk, a folder gone) costs a
note in :attr:`Presence.fault`, never the cell, and a fault in the thread that samples the cell
never reaches it.
"""

from __future__ import annotations

import atexit
import time
from typing import Dict, Optional

from .. import _host, _nvml, backends
from ..ledger import WRITE_EVERY_S, Entry, GpuUse, Identity, Ledger, Readings, \
    share_in_force, view
from ..record import NVML_SOURCES, CellRecord, Device, Sharing, Timeline
from ..sizes import Limit
from .cell import limited


class Presence:
    """This kernel in ``ledger``; :meth:`close` removes its record (also done at exit)."""

    def __init__(self, ledger: Ledger, user_ns: Optional[dict] = None) -> None:
        self.ledger = ledger
        self.me = Identity.here(user_ns)
        self.policy = ""
        self.limit: Optional[Limit] = None
        self.peaks: Dict[str, int] = {}  # the highest allocator in-use seen, per GPU UUID
        self.last_cell: Optional[float] = None
        self.fault: Optional[str] = None
        self.closed = False
        atexit.register(self.close)

    # ------------------------------------------------------------------ writing
    def update(self, policy: Optional[str] = None, limit: Optional[Limit] = None,
               record: Optional[CellRecord] = None) -> None:
        """Write the record now: after ``%load_ext`` or a policy change (``policy`` and its
        ``limit``), after a cell (``record``: its figures at the end and its peaks), or for
        ``%gpumem who``. Never raises: what fails is in :attr:`fault`."""
        if policy is not None:
            self.policy, self.limit = policy, limit
        if record is not None:
            self.last_cell = time.time()
        try:
            gpus = self._gpus_after(record) if record is not None else self._gpus_now()
        except Exception as error:  # a counter that fails: the record says what is known
            self.fault, gpus = f"reading this kernel's figures failed: {error!r}", []
        self._write(gpus, running=False)

    def during(self, timeline: Timeline, devices) -> None:
        """From the sampler's thread while a cell runs: the latest samples, at most every
        :data:`~kmem_magic.ledger.WRITE_EVERY_S` seconds."""
        try:
            if not self.closed and time.monotonic() - self.ledger.written_at >= WRITE_EVERY_S:
                self._during(timeline, devices)
        except Exception as error:
            self.fault = f"the ledger was not updated during the cell: {error!r}"

    def _during(self, timeline: Timeline, devices) -> None:
        gpus = []
        for device in devices:
            latest = {s.source: next((v for v in reversed(s.values) if v is not None), None)
                      for s in timeline.series.values() if s.device == device.index}
            ours = [v for k, v in latest.items() if k not in NVML_SOURCES and v is not None]
            gpus.append(self._use(device, sum(ours) if ours else None, None,
                                  latest.get("process")))
        self._write(tuple(g for g in gpus if g is not None), running=True, every_s=WRITE_EVERY_S)

    def close(self) -> None:
        """Remove this kernel's record; idempotent."""
        if not self.closed:
            self.closed = True
            self.ledger.remove()
            atexit.unregister(self.close)

    # ------------------------------------------------------------------ reading
    def who(self, record: Optional[CellRecord] = None) -> Sharing:
        """Every kmem kernel on this machine and who holds each GPU: after the cell ``record``
        from its figures (it was just written; no new NVML call), else read now."""
        if record is None:
            _nvml.devices()  # asked for: this one waits for NVML to start
            self.update()
        readings = Readings.of(record) if record is not None else Readings.now()
        entries, skipped = self.ledger.read()
        share = share_in_force(entries, self.policy.split("limit ", 1)[-1])
        return view(entries, self.me, readings, self.ledger.folder, skipped, share)

    # ------------------------------------------------------------------ figures
    def _write(self, gpus, running: bool, every_s: float = 0.0) -> None:
        if self.closed:
            return
        try:
            rss = _host.host_rss()
        except Exception:
            rss = None
        entry = Entry.of(self.me, backend=backends.keras_backend(), policy=self.policy,
                         last_cell=self.last_cell, running=running, host_rss=rss,
                         gpus=tuple(gpus))
        try:
            self.ledger.write(entry, every_s)
        except OSError as error:
            self.fault = f"the ledger {self.ledger.folder} cannot be written: " \
                f"{error.strerror or error}"

    def _use(self, device: Device, in_use: Optional[int], pool: Optional[int],
             process: Optional[int]) -> Optional[GpuUse]:
        """One GPU's line, None where this kernel holds nothing there that it knows of."""
        if in_use is None and not process:
            return None
        if in_use is not None:
            self.peaks[device.uuid] = max(self.peaks.get(device.uuid, 0), in_use)
        return GpuUse(device.uuid, device.index, in_use, self.peaks.get(device.uuid), pool,
                      process, device.limit_bytes)

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
            return []
        devices = limited(_nvml.devices(), self.limit)
        table = {d.index: _nvml.process_used(d)[0] for d in devices}
        in_use: Dict[int, int] = {}
        for backend in started:
            for index, used in backend.in_use().items():
                in_use[index] = in_use.get(index, 0) + (used or 0)
        return [g for g in (self._use(d, in_use.get(d.index), _pool(d.index), table[d.index])
                            for d in devices) if g is not None]


def _pool(index: int) -> Optional[int]:
    """What the started frameworks' pools hold on GPU ``index`` (None when none says)."""
    held = [b.held_bytes(index) for b in backends.started()]
    held = [h for h in held if h is not None]
    return sum(held) if held else None


__all__ = ["Presence"]
