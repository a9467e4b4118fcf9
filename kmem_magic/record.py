"""What one ``%%gpumem`` cell measured: a :class:`CellRecord` with its :class:`Timeline`.

A record is plain data. The panel, the plot, the advice and the exports only read it. Every
figure carries its source, so nothing is shown without saying what it counts:

==============  ===========================================================================
``device``      memory used on the GPU by every process (NVML, as nvidia-smi shows it)
``process``     memory this process holds on the GPU (NVML per-process; unknown in containers)
``tensorflow``,
``jax``,
``torch``       bytes the framework's allocator has handed out (its pool can be far larger)
``host``        this process's resident memory (RSS) in RAM
==============  ===========================================================================

Unknown values are ``None`` and print as "unknown", never as 0.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional

from .units import format_bytes

LABELS = {
    "device": "device used (NVML)",
    "process": "this process (NVML)",
    "tensorflow": "tensorflow allocator",
    "jax": "jax allocator",
    "torch": "torch allocator",
    "host": "host RSS",
}


def label(source: str) -> str:
    """The human name of a source, e.g. ``jax allocator`` for ``jax``."""
    return LABELS.get(source, source)


@dataclass(frozen=True)
class Peak:
    """A peak and how far to trust it.

    ``exact`` is True when it comes from an allocator's own peak counter (no spike is missed);
    False for sampled values, which are lower bounds: a spike between two samples is not seen.
    """

    bytes: Optional[int]
    exact: bool
    note: str = ""


@dataclass
class Series:
    """One curve: a source on one device (``device`` None for host memory), sampled over time."""

    source: str
    device: Optional[int] = None
    t_s: List[float] = field(default_factory=list)
    values: List[Optional[int]] = field(default_factory=list)

    @property
    def key(self) -> str:
        return self.source if self.device is None else f"gpu{self.device}.{self.source}"

    def append(self, t_s: float, value: Optional[int]) -> None:
        self.t_s.append(t_s)
        self.values.append(value)

    def max(self) -> Optional[int]:
        known = [v for v in self.values if v is not None]
        return max(known) if known else None

    def argmax_t(self) -> Optional[float]:
        best = None
        for t, v in zip(self.t_s, self.values):
            if v is not None and (best is None or v > best[1]):
                best = (t, v)
        return None if best is None else best[0]


@dataclass
class Timeline:
    """All curves of one cell, keyed by :attr:`Series.key`; times in seconds from the cell start."""

    series: Dict[str, Series] = field(default_factory=dict)
    # Events on the time axis, e.g. ("epoch 2" at 3.1 s) from a MemoryCallback.
    marks: List[list] = field(default_factory=list)

    def get(self, source: str, device: Optional[int] = None) -> Series:
        """The series for ``source`` on ``device``, created empty on first use."""
        probe = Series(source, device)
        return self.series.setdefault(probe.key, probe)

    def find(self, source: str, device: Optional[int] = None) -> Optional[Series]:
        return self.series.get(Series(source, device).key)


@dataclass
class DeviceInfo:
    """A GPU as recorded: CUDA ordinal, model, UUID, total memory, the policy's limit on it."""

    index: int
    name: str
    uuid: str
    total_bytes: int
    limit_bytes: Optional[int] = None


@dataclass
class Figures:
    """Before, after and peak per source for one device (or for the host)."""

    before: Dict[str, Optional[int]] = field(default_factory=dict)
    after: Dict[str, Optional[int]] = field(default_factory=dict)
    peak: Dict[str, Peak] = field(default_factory=dict)

    def left_behind(self, source: str) -> Optional[int]:
        """What the cell left behind: after minus before (None when either is unknown)."""
        before, after = self.before.get(source), self.after.get(source)
        if before is None or after is None:
            return None
        return after - before

    def sources(self) -> List[str]:
        seen = list(self.peak)
        seen += [s for s in list(self.before) + list(self.after) if s not in seen]
        return seen


@dataclass
class CellRecord:
    """Everything ``%%gpumem`` measured for one cell."""

    execution_count: Optional[int]
    started_at: str
    wall_s: float
    backend: Optional[str]
    policy: str
    interval_s: float
    devices: List[DeviceInfo]
    gpu: Dict[int, Figures]
    host: Figures
    timeline: Timeline
    frameworks: List[str] = field(default_factory=list)
    gpu_note: Optional[str] = None
    process_note: Optional[str] = None
    error: Optional[str] = None
    error_kind: Optional[str] = None  # "exception" | "oom" | "interrupt"
    source: str = ""  # the cell's code, to recognise re-runs and patterns
    # Other processes on each GPU at the cell's end: [pid, name or None, bytes or None].
    others: Dict[int, List[list]] = field(default_factory=dict)
    suggestions: List[dict] = field(default_factory=list)

    @property
    def name(self) -> str:
        """A short name for files and titles: ``cell-12`` (or ``cell`` outside a notebook)."""
        return f"cell-{self.execution_count}" if self.execution_count else "cell"

    def peak(self, source: str, device: Optional[int] = None) -> Peak:
        """The peak of ``source`` on GPU ``device`` (host memory when ``device`` is None)."""
        figures = self.host if device is None else self.gpu.get(device, Figures())
        return figures.peak.get(source, Peak(None, False))

    def left_behind(self, source: str, device: Optional[int] = None) -> Optional[int]:
        figures = self.host if device is None else self.gpu.get(device, Figures())
        return figures.left_behind(source)

    # ----------------------------------------------------------------------------- text
    def summary(self) -> str:
        """The compact text view: one header line, then per device the peak and what was left."""
        head = [f"%%gpumem {self.name}", f"{self.wall_s:.2f} s"]
        head.append(f"keras backend {self.backend}" if self.backend else "keras not imported")
        head.append(f"policy {self.policy}")
        if self.error_kind:
            head.append({"oom": "OUT OF MEMORY", "interrupt": "interrupted"}.get(
                self.error_kind, "failed") + f" ({self.error})")
        lines = [" · ".join(head)]
        for device in self.devices:
            limit = f", limit {format_bytes(device.limit_bytes)}" if device.limit_bytes else ""
            lines.append(
                f"GPU {device.index} {device.name} ({format_bytes(device.total_bytes)}{limit})"
            )
            lines += _figure_lines(self.gpu.get(device.index, Figures()))
            if self.process_note and self.gpu.get(device.index, Figures()).peak.get(
                "process", Peak(None, False)
            ).bytes is None:
                lines.append(f"  this process: unknown, {self.process_note}")
        if self.gpu_note:
            lines.append(f"no GPU: {self.gpu_note}; host memory only")
        lines.append("host")
        lines += _figure_lines(self.host)
        if self.suggestions:
            lines.append("suggestions")
            for s in self.suggestions:
                saving = (f" (saves about {format_bytes(s['saving_bytes'])}, {s['saving_kind']})"
                          if s.get("saving_bytes") else "")
                lines.append(f"  * {s['title']}{saving}")
                lines.append(f"    {s['evidence']}")
                lines += [f"      {line}" for line in s["code"].splitlines()]
        return "\n".join(lines)

    def title(self) -> str:
        """``%%gpumem cell-3 · 2.10 s · keras jax · policy growth`` (and the error, if any)."""
        title = f"%%gpumem {self.name} · {self.wall_s:.2f} s"
        if self.backend:
            title += f" · keras {self.backend}"
        title += f" · policy {self.policy}"
        if self.error_kind:
            title += f" · {self.error_kind}: {self.error}"
        return title

    def headline(self) -> tuple:
        """``(peak, source, device, left behind)`` of the figure that best sums up the cell:
        the largest exact allocator peak on a GPU, else a sampled GPU one, else host RSS
        (``device`` None)."""
        best = None
        for device in self.devices:
            for source, peak in self.gpu.get(device.index, Figures()).peak.items():
                rank = (peak.exact, source not in ("device", "process"), peak.bytes or 0)
                if peak.bytes is not None and (best is None or rank > best[0]):
                    best = (rank, device.index, source, peak)
        if best is None:
            peak = self.host.peak.get("host", Peak(None, False))
            return peak, "host", None, self.left_behind("host")
        _, index, source, peak = best
        return peak, source, index, self.left_behind(source, index)

    def one_line(self) -> str:
        """A single line: the largest exact peak (or sampled, if none), left behind, time."""
        peak, source, device, left = self.headline()
        where = "host" if device is None else f"GPU {device}"
        return (
            f"%%gpumem {self.name}: peak {format_bytes(peak.bytes)} ({label(source)}, {where}), "
            f"left behind {format_bytes(left, signed=True)}, {self.wall_s:.2f} s"
        )

    # ----------------------------------------------------------------------------- export
    def to_dict(self) -> dict:
        """Everything as JSON-ready data (the timeline included)."""
        data = asdict(self)
        data["timeline"] = {
            key: {"source": s.source, "device": s.device, "t_s": s.t_s, "bytes": s.values}
            for key, s in self.timeline.series.items()
        }
        data["marks"] = [list(m) for m in self.timeline.marks]
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_dict(cls, data: dict) -> "CellRecord":
        """The record :meth:`to_dict` wrote (e.g. one measured on another machine)."""
        data = dict(data)

        def figures(raw: dict) -> Figures:
            return Figures(dict(raw["before"]), dict(raw["after"]),
                           {k: Peak(**v) for k, v in raw["peak"].items()})

        timeline = Timeline(marks=[list(m) for m in data.pop("marks", [])])
        for raw in data.pop("timeline").values():
            series = timeline.get(raw["source"], raw["device"])
            series.t_s, series.values = list(raw["t_s"]), list(raw["bytes"])
        data["devices"] = [DeviceInfo(**d) for d in data["devices"]]
        data["gpu"] = {int(k): figures(v) for k, v in data["gpu"].items()}
        data["host"] = figures(data["host"])
        data["others"] = {int(k): v for k, v in data.get("others", {}).items()}
        return cls(timeline=timeline, **data)

    @classmethod
    def from_json(cls, text: str) -> "CellRecord":
        return cls.from_dict(json.loads(text))

    def to_csv(self) -> str:
        """The timeline as CSV, one row per sample: ``t_s,series,source,device,bytes``."""
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(["t_s", "series", "source", "device", "bytes"])
        for key, series in self.timeline.series.items():
            for t, value in zip(series.t_s, series.values):
                device = "" if series.device is None else series.device
                writer.writerow([f"{t:.4f}", key, series.source, device,
                                 "" if value is None else value])
        return out.getvalue()


def _figure_lines(figures: Figures) -> List[str]:
    lines = []
    for source in figures.sources():
        peak = figures.peak.get(source, Peak(None, False))
        how = "exact" if peak.exact else "sampled"
        if peak.note:
            how += f", {peak.note}"
        lines.append(
            f"  {label(source):<22} peak {format_bytes(peak.bytes):>11} ({how})"
            f"   left behind {format_bytes(figures.left_behind(source), signed=True)}"
        )
    return lines


def history_csv(records: List[CellRecord]) -> str:
    """Records as CSV, one row per cell, device and source."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["cell", "started_at", "wall_s", "backend", "policy", "error", "device",
                     "source", "peak_bytes", "peak_exact", "before_bytes", "after_bytes",
                     "left_behind_bytes", "suggestions"])
    for record in records:
        groups = [(str(d), f) for d, f in record.gpu.items()] + [("host", record.host)]
        for device, figures in groups:
            for source in figures.sources():
                peak = figures.peak.get(source, Peak(None, False))
                writer.writerow([
                    record.execution_count, record.started_at, f"{record.wall_s:.3f}",
                    record.backend or "", record.policy, record.error or "", device, source,
                    _blank(peak.bytes), peak.exact, _blank(figures.before.get(source)),
                    _blank(figures.after.get(source)), _blank(figures.left_behind(source)),
                    " | ".join(s["title"] for s in record.suggestions)])
    return out.getvalue()


def _blank(value) -> str:
    return "" if value is None else str(value)
