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
from .points import downsample
from .text import measured_peak, title

LIMIT_COLOR = "#bcbd22"


def _scale(top: float):
    return (GiB, "GiB") if top >= GiB else (MiB, "MiB")


def figure(record: CellRecord, width_in: float = 8.0):
    """A ``Figure`` with one panel per GPU (device, this process, allocators, total, limit) and
    one for host RSS; exact allocator peaks are marked and labelled."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = len(record.devices) + 1
    plan = record.step_plan if record.step_plan and record.step_plan.parts else None
    bars_in = 0.5 + 0.2 * len(plan.parts) if plan else 0.0
    height_in = 0.9 + 2.0 * rows + bars_in + (0.5 if plan else 0.0)
    fig = Figure(figsize=(width_in, height_in), dpi=90)
    # Fixed margins: a layout engine would draw the figure twice (half the cost of the report).
    fig.subplots_adjust(left=0.08, right=0.98, top=1 - 0.55 / height_in, bottom=0.45 / height_in,
                        hspace=0.45)
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(rows + bool(plan), 1,
                            height_ratios=[2.0] * rows + ([bars_in] if plan else []))
    axes: list = []
    for row in range(rows):
        axes.append(fig.add_subplot(grid[row, 0], sharex=axes[0] if axes else None))
    if plan:
        _step_bars(fig.add_subplot(grid[rows, 0]), record)
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
        ax.set_ylim(*(v / unit for v in _fit(_values(record, device.index), [
            device.limit_bytes, device.total_bytes if device.total_bytes <= top else None])))
        ax.set_ylabel(name)
        ax.set_title(f"{device.label} · {device.name} · {format_bytes(device.total_bytes)} "
                     "total", fontsize=9, loc="left")
        ax.legend(fontsize=7, loc="upper left", ncols=2)
    host_ax = axes[-1]
    host_top = record.peak(HOST).bytes
    unit, name = _scale(host_top or MiB)
    _line(host_ax, record, HOST, None, unit)
    _mark_peaks(host_ax, record, record.host, None, unit)
    if host_top:
        host_ax.set_ylim(*(v / unit for v in _fit(_values(record, None) + [host_top], [])))
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
    host_ax.xaxis.set_major_locator(_seconds_locator())
    return fig


BAR_COLORS = {"weights": "#1f77b4", "gradients": "#ff7f0e", "optimizer": "#2ca02c",
               "activations": "#d62728", "batch": "#9467bd", "temporary": "#8c564b"}


def _step_bars(ax, record: CellRecord) -> None:
    """Where the training step's peak goes (planning estimate), the measured peak beside it."""
    plan = record.step_plan
    parts = list(reversed(plan.parts))  # largest on top
    scale, name = _scale(max(p.bytes for p in parts))
    ax.barh(range(len(parts)), [p.bytes / scale for p in parts],
            color=[BAR_COLORS.get(p.kind, NEUTRAL) for p in parts], height=0.6)
    ax.set_yticks(range(len(parts)), [p.name for p in parts], fontsize=7)
    for i, part in enumerate(parts):
        ax.annotate(format_bytes(part.bytes), (part.bytes / scale, i), textcoords="offset points",
                    xytext=(3, -2), fontsize=6)
    measured = measured_peak(record)
    ax.set_title(f"where a step's peak goes: planning estimate for '{plan.model}', batch "
                 f"{plan.batch_size}: predicted {format_bytes(plan.predicted_bytes)} · measured "
                 f"peak {measured}", fontsize=8, loc="left")
    ax.set_xlabel(name, fontsize=7)
    ax.tick_params(axis="x", labelsize=7)
    ax.margins(x=0.15)


def _values(record: CellRecord, device: Optional[int]) -> list:
    """Every known reading on ``device`` (host when None), for fitting the axis to them."""
    return [v for s in record.timeline.series.values() if s.device == device
            for v in s.values if v is not None]


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


NEUTRAL = "#808080"  # text and frames that read on a light and on a dark page


def _seconds_locator():
    """A few round ticks, never a crowd of 0.0002 s steps on a short cell."""
    from matplotlib.ticker import MaxNLocator

    return MaxNLocator(nbins=6, steps=[1, 2, 5, 10], min_n_ticks=2)


def png(record: CellRecord, width_in: float = 8.0, dpi: int = 90) -> bytes:
    """The plot as PNG bytes (``dpi`` 180 for a crisp image on a high-density screen), on a
    transparent background with neutral grey text, so that it reads in light and dark themes."""
    import matplotlib

    buffer = io.BytesIO()
    with matplotlib.rc_context({"text.color": NEUTRAL, "axes.labelcolor": NEUTRAL,
                                "axes.edgecolor": NEUTRAL, "xtick.color": NEUTRAL,
                                "ytick.color": NEUTRAL, "legend.framealpha": 0.0}):
        figure(record, width_in).savefig(buffer, format="png", dpi=dpi, transparent=True)
    return buffer.getvalue()


# --------------------------------------------------------------------------- static SVG
def _fit(values, lines):
    """The y range of a row: the data with a margin, and a limit or total line when it is near
    the data (else the curve would be a flat line under it)."""
    lo, hi = (min(values), max(values)) if values else (0, 1)
    for value in lines:
        if value and lo <= value <= hi * 1.5:
            hi = max(hi, value)
    span = max(hi - lo, hi * 0.02, MiB)
    return max(0.0, lo - span * 0.08), hi + span * 0.12


def svg(record: CellRecord, width: int = 760, row_height: int = 130) -> str:
    """The final curves as SVG, for the static fallbacks: one row per GPU and one for host RSS,
    the axis fitted to the data, exact peaks marked. Text uses ``currentColor``, so it reads in
    light and dark pages; about a millisecond (each curve is downsampled)."""
    left, right, top_pad, bottom_pad = 66, 12, 16, 18
    rows = [(d.index, d.limit_bytes, d.total_bytes) for d in record.devices] + [(None, None, None)]
    height = len(rows) * (row_height + top_pad + bottom_pad)
    t_max = max(record.wall_s, 1e-3)
    plot_w = width - left - right
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" class="kmem-curves" font-family="sans-serif" '
           'font-size="10" fill="currentColor">']
    for n, (device, limit, total) in enumerate(rows):
        y0 = n * (row_height + top_pad + bottom_pad) + top_pad
        curves = [(s, downsample(s.t_s, s.values)) for s in record.timeline.series.values()
                  if s.device == device]
        lo, hi = _fit([v for _, (_, vs) in curves for v in vs], [limit, total])

        def y(value, y0=y0, lo=lo, hi=hi):
            return y0 + row_height * (1 - (value - lo) / (hi - lo))

        name = "host RSS" if device is None else f"GPU {device} (of {format_bytes(total)})"
        out.append(f'<text x="{left}" y="{y0 - 4}" font-weight="bold">{name}</text>')
        out.append(f'<rect x="{left}" y="{y0}" width="{plot_w}" height="{row_height}" '
                   'fill="none" stroke="#8888"/>')
        for value in (lo, hi):
            out.append(f'<text x="{left - 4}" y="{y(value) + 3:.1f}" text-anchor="end" '
                       f'opacity="0.7">{format_bytes(value)}</text>')
        if limit and lo <= limit <= hi:
            out.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{y(limit):.1f}" '
                       f'y2="{y(limit):.1f}" stroke="{LIMIT_COLOR}" stroke-dasharray="4 3"/>'
                       f'<text x="{left + plot_w - 2}" y="{y(limit) - 2:.1f}" text-anchor="end" '
                       f'fill="{LIMIT_COLOR}">limit {format_bytes(limit)}</text>')
        for series, (ts, vs) in curves:
            points = " ".join(f"{left + plot_w * t / t_max:.1f},{y(v):.1f}" for t, v in zip(ts, vs))
            if points:
                dash = ' stroke-dasharray="3 3"' if series.source == "process" else ""
                out.append(f'<polyline fill="none" stroke="{color(series.source)}" '
                           f'stroke-width="1.6"{dash} points="{points}"/>')
        out.append(f'<text x="{left}" y="{y0 + row_height + 12}" opacity="0.7">0 s</text>'
                   f'<text x="{left + plot_w}" y="{y0 + row_height + 12}" text-anchor="end" '
                   f'opacity="0.7">{t_max:.2f} s</text>')
    out.append("</svg>")
    return "".join(out)
