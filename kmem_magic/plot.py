"""The memory plot of a :class:`CellRecord` as a matplotlib ``Figure`` and as PNG bytes.

Uses the object API only (``matplotlib.figure.Figure`` on an Agg canvas), never pyplot: no global
figure state, nothing for ``%matplotlib inline`` to pick up, safe to call from any thread.
"""

from __future__ import annotations

import io
from typing import Optional

from .record import CellRecord, Figures, label
from .units import GiB, MiB, format_bytes

COLORS = {
    "device": "#7f7f7f",
    "process": "#1f77b4",
    "tensorflow": "#ff7f0e",
    "jax": "#2ca02c",
    "torch": "#d62728",
    "host": "#9467bd",
}


def _scale(top: float):
    return (GiB, "GiB") if top >= GiB else (MiB, "MiB")


def figure(record: CellRecord, width_in: float = 8.0):
    """A ``Figure`` with one panel per GPU (device, this process, allocators, total, limit) and
    one for host RSS; exact allocator peaks are marked and labelled."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = len(record.devices) + 1
    height_in = 0.9 + 2.0 * rows
    fig = Figure(figsize=(width_in, height_in), dpi=90)
    # Fixed margins: a layout engine would draw the figure twice (half the cost of the report).
    fig.subplots_adjust(left=0.08, right=0.98, top=1 - 0.55 / height_in, bottom=0.45 / height_in,
                        hspace=0.45)
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, 1, sharex=True, squeeze=False)[:, 0]
    title = f"%%gpumem {record.name} · {record.wall_s:.2f} s"
    if record.backend:
        title += f" · keras {record.backend}"
    title += f" · policy {record.policy}"
    if record.error_kind:
        title += f" · {record.error_kind}: {record.error}"
    fig.suptitle(title, fontsize=10)
    for ax, device in zip(axes, record.devices):
        figures = record.gpu.get(device.index, Figures())
        top = device.total_bytes
        unit, name = _scale(top)
        sources = ["device", "process"] + [s for s in figures.peak if s not in ("device", "process")]
        for source in sources:
            _line(ax, record, source, device.index, unit)
        ax.axhline(device.total_bytes / unit, color="black", lw=0.8, ls="--",
                   label=f"total {format_bytes(device.total_bytes)}")
        if device.limit_bytes:
            ax.axhline(device.limit_bytes / unit, color="#bcbd22", lw=1.2, ls="--",
                       label=f"limit {format_bytes(device.limit_bytes)}")
        _mark_peaks(ax, record, figures, device.index, unit)
        ax.set_ylim(0, top / unit * 1.05)
        ax.set_ylabel(name)
        ax.set_title(f"GPU {device.index} · {device.name}", fontsize=9, loc="left")
        ax.legend(fontsize=7, loc="upper left", ncols=2)
    host_ax = axes[-1]
    host_top = record.host.peak.get("host").bytes if "host" in record.host.peak else None
    unit, name = _scale(host_top or MiB)
    _line(host_ax, record, "host", None, unit)
    _mark_peaks(host_ax, record, record.host, None, unit)
    if host_top:
        host_ax.set_ylim(0, host_top / unit * 1.15)
    host_ax.set_ylabel(name)
    note = f" (no GPU: {record.gpu_note})" if record.gpu_note else ""
    host_ax.set_title(f"host RAM{note}", fontsize=9, loc="left")
    host_ax.legend(fontsize=7, loc="upper left")
    host_ax.set_xlabel("seconds since the cell started")
    host_ax.set_xlim(0, max(record.wall_s, 1e-3))
    return fig


def _line(ax, record: CellRecord, source: str, device: Optional[int], unit: float) -> None:
    series = record.timeline.find(source, device)
    if series is None or not any(v is not None for v in series.values):
        return
    points = [(t, v / unit) for t, v in zip(series.t_s, series.values) if v is not None]
    t, v = zip(*points)
    ax.plot(t, v, color=COLORS.get(source), lw=1.4, label=label(source), drawstyle="steps-post")


def _mark_peaks(ax, record: CellRecord, figures: Figures, device: Optional[int], unit: float) -> None:
    for source, peak in figures.peak.items():
        if not peak.exact or peak.bytes is None:
            continue
        series = record.timeline.find(source, device)
        when = series.argmax_t() if series is not None else None
        when = record.wall_s if when is None else when
        ax.plot([when], [peak.bytes / unit], marker="v", color=COLORS.get(source), ms=7)
        ax.annotate(f"peak {format_bytes(peak.bytes)}", (when, peak.bytes / unit),
                    textcoords="offset points", xytext=(4, 4), fontsize=7,
                    color=COLORS.get(source))


def png(record: CellRecord, width_in: float = 8.0) -> bytes:
    """The plot as PNG bytes."""
    buffer = io.BytesIO()
    figure(record, width_in).savefig(buffer, format="png")
    return buffer.getvalue()
