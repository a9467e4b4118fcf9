"""The memory plot of a :class:`CellRecord` as a matplotlib ``Figure`` and as PNG bytes.

Uses the object API only (``matplotlib.figure.Figure`` on an Agg canvas), never pyplot: no global
figure state, nothing for ``%matplotlib inline`` to pick up, safe to call from any thread.
"""

from __future__ import annotations

import io
from typing import Optional

from ..backends import color, label
from ..record import HOST, CellRecord, Figures
from ..sizes import GiB, MiB, format_bytes
from .text import title

LIMIT_COLOR = "#bcbd22"


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
    fig.suptitle(title(record), fontsize=10)
    for ax, device in zip(axes, record.devices):
        figures = record.figures(device.index)
        top = axis_top(record, figures, device.total_bytes, device.limit_bytes)
        unit, name = _scale(top)
        sources = ["device", "process"]
        sources += [s for s in figures.peak if s not in sources]
        for source in sources:
            _line(ax, record, source, device.index, unit)
        if device.total_bytes <= top:
            ax.axhline(device.total_bytes / unit, color="black", lw=0.8, ls="--",
                       label=f"total {format_bytes(device.total_bytes)}")
        if device.limit_bytes:
            ax.axhline(device.limit_bytes / unit, color=LIMIT_COLOR, lw=1.2, ls="--",
                       label=f"limit {format_bytes(device.limit_bytes)}")
        _mark_peaks(ax, record, figures, device.index, unit)
        ax.set_ylim(0, top / unit)
        ax.set_ylabel(name)
        ax.set_title(f"GPU {device.index} · {device.name} · {format_bytes(device.total_bytes)} "
                     "total", fontsize=9, loc="left")
        ax.legend(fontsize=7, loc="upper left", ncols=2)
    host_ax = axes[-1]
    host_top = record.peak(HOST).bytes
    unit, name = _scale(host_top or MiB)
    _line(host_ax, record, HOST, None, unit)
    _mark_peaks(host_ax, record, record.host, None, unit)
    if host_top:
        host_ax.set_ylim(0, host_top / unit * 1.15)
    host_ax.set_ylabel(name)
    note = f" (no GPU: {record.gpu_note})" if record.gpu_note else ""
    host_ax.set_title(f"host RAM{note}", fontsize=9, loc="left")
    host_ax.legend(fontsize=7, loc="upper left")
    for when, text in record.timeline.marks[:40]:  # e.g. epochs, from a MemoryCallback
        for ax in axes:
            ax.axvline(when, color="#999", lw=0.6, ls=":")
        axes[0].annotate(text, (when, 1), xycoords=("data", "axes fraction"), fontsize=6,
                         rotation=90, va="top", ha="right", color="#777")
    host_ax.set_xlabel("seconds since the cell started")
    host_ax.set_xlim(0, max(record.wall_s, 1e-3))
    return fig


def axis_top(record: CellRecord, figures: Figures, total: int, limit: Optional[int]) -> float:
    """Where a GPU axis ends: a margin above the highest figure or the limit, at most the
    device's total (a 900 MiB curve drawn against 80 GiB would be a flat line at the bottom)."""
    highest = max([p.bytes or 0 for p in figures.peak.values()] + [limit or 0, 1])
    return min(total * 1.02, highest * 1.25)


def _line(ax, record: CellRecord, source: str, device: Optional[int], unit: float) -> None:
    series = record.timeline.find(source, device)
    if series is None or not any(v is not None for v in series.values):
        return
    points = [(t, v / unit) for t, v in zip(series.t_s, series.values) if v is not None]
    t, v = zip(*points)
    if source == "process":
        # Read every few seconds only (it is costly): show the readings, not a made-up staircase.
        ax.plot(t, v, color=color(source), lw=1.0, ls="--", marker="o", ms=3,
                label=label(source) + ", every 5 s")
    else:
        ax.plot(t, v, color=color(source), lw=1.4, label=label(source),
                drawstyle="steps-post")


def _mark_peaks(ax, record: CellRecord, figures: Figures, device: Optional[int],
                unit: float) -> None:
    for source, peak in figures.peak.items():
        if not peak.exact or peak.bytes is None:
            continue
        series = record.timeline.find(source, device)
        when = series.argmax_t() if series is not None else None
        when = record.wall_s if when is None else when
        ax.plot([when], [peak.bytes / unit], marker="v", color=color(source), ms=7)
        # Label to the left of a peak in the right half, so that it stays inside the axes.
        right_half = when > 0.5 * max(record.wall_s, 1e-3)
        ax.annotate(f"peak {format_bytes(peak.bytes)}", (when, peak.bytes / unit),
                    textcoords="offset points", xytext=(-6 if right_half else 6, 4), fontsize=7,
                    ha="right" if right_half else "left", color=color(source))


def png(record: CellRecord, width_in: float = 8.0) -> bytes:
    """The plot as PNG bytes."""
    buffer = io.BytesIO()
    figure(record, width_in).savefig(buffer, format="png")
    return buffer.getvalue()


# --------------------------------------------------------------------------- live SVG
def _points(series, t_max: float, x0: float, width: float, y0: float, height: float,
            top: float, budget: int = 300) -> str:
    """``x,y`` pairs for an SVG polyline, at most ``budget`` of them (the larger of each
    bucket, so that peaks survive)."""
    known = [(t, v) for t, v in zip(series.t_s, series.values) if v is not None]
    if len(known) > budget:
        step = len(known) / budget
        known = [max(known[int(i * step):int((i + 1) * step)] or known[-1:], key=lambda p: p[1])
                 for i in range(budget)]
    return " ".join(
        f"{x0 + width * t / t_max:.1f},{y0 + height * (1 - min(v / top, 1.05)):.1f}"
        for t, v in known
    )


def svg(timeline, devices, elapsed_s: float, width: int = 760,
        panel_height: int = 120) -> str:
    """The live curves as a small SVG: one panel per GPU (with its total and limit) and one
    for host RSS. Cheap (well under a millisecond for a few hundred points), so it can be
    redrawn from the sampler thread twice a second."""
    left, right, top_pad, bottom_pad = 62, 8, 14, 16
    rows = [(d.index, d.total_bytes, d.limit_bytes) for d in devices]
    rows.append((None, None, None))  # host RSS
    height = len(rows) * (panel_height + top_pad + bottom_pad)
    t_max = max(elapsed_s, 1e-3)
    x0, plot_w = left, width - left - right
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'class="kmem-curves" font-family="sans-serif" font-size="10">']
    for row, (device, total, limit) in enumerate(rows):
        y0 = row * (panel_height + top_pad + bottom_pad) + top_pad
        series = [s for s in timeline.series.values() if s.device == device]
        peak = max([s.max() or 0 for s in series] + [1])
        top = min(total * 1.02, max(peak, limit or 0) * 1.25) if total else peak * 1.15
        name = "host RSS" if device is None else f"GPU {device} (of {format_bytes(total)})"
        out.append(f'<text x="{x0}" y="{y0 - 3}" font-weight="bold">{name}</text>')
        out.append(f'<rect x="{x0}" y="{y0}" width="{plot_w}" height="{panel_height}" '
                   f'fill="none" stroke="#ccc"/>')
        out.append(f'<text x="{x0 - 4}" y="{y0 + 8}" text-anchor="end">{format_bytes(top)}</text>')
        out.append(f'<text x="{x0 - 4}" y="{y0 + panel_height}" text-anchor="end">0</text>')
        if limit:
            y = y0 + panel_height * (1 - limit / top)
            out.append(f'<line x1="{x0}" x2="{x0 + plot_w}" y1="{y:.1f}" y2="{y:.1f}" '
                       f'stroke="{LIMIT_COLOR}" stroke-dasharray="4 3"/>')
            out.append(f'<text x="{x0 + plot_w - 2}" y="{y - 2:.1f}" text-anchor="end" '
                       f'fill="{LIMIT_COLOR}">limit {format_bytes(limit)}</text>')
        for s in series:
            points = _points(s, t_max, x0, plot_w, y0, panel_height, top)
            if points:
                dash = ' stroke-dasharray="3 3"' if s.source == "process" else ""
                out.append(f'<polyline fill="none" stroke="{color(s.source)}" '
                           f'stroke-width="1.6"{dash} points="{points}"/>')
        out.append(f'<text x="{x0 + plot_w}" y="{y0 + panel_height + 12}" text-anchor="end">'
                   f'{t_max:.1f} s</text>')
    out.append("</svg>")
    return "".join(out)
