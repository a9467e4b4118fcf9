"""HTML pieces of the panel: the header, the live figures, the final table, a suggestion.

>>> from kmem_magic.record import Suggestion
>>> suggestion(Suggestion("r", "Title <1>", "why", "code()")).startswith("<b>Title &lt;1&gt;</b>")
True
"""

from __future__ import annotations

import html
from typing import List, Sequence

from ..backends import color, label
from ..record import HOST, CellRecord, Device, Suggestion
from ..sizes import format_bytes
from .text import fault_lines, holders_line, job_lines, measured_peak, postmortem_lines, \
    saving, title, who_rows


def header(title: str, devices: Sequence[Device]) -> str:
    """The panel's first line: ``title`` (HTML) and each GPU with its total and limit."""
    parts = [f"<b>{title}</b>"]
    for device in devices:
        extra = f", limit {format_bytes(device.limit_bytes)}" if device.limit_bytes else ""
        parts.append(f"{html.escape(device.label)}: {html.escape(device.name)} "
                     f"({format_bytes(device.total_bytes)}{extra})")
    return "<div class='kmem-header'>" + " · ".join(parts) + "</div>"


def static(record: CellRecord, note_gpu: bool = True) -> str:
    """The whole final view as one HTML page fragment, for frontends without the widget
    (nbconvert, GitHub, a saved notebook): title, curves (SVG), figures and suggestions."""
    from .plot import svg

    return (f"<div class='kmem-static'>{header(html.escape(title(record)), record.devices)}"
            f"{svg(record)}{final_stats(record, note_gpu)}{postmortem(record)}"
            f"{job(record)}{step_bars(record)}{suggestions(record.suggestions)}{who(record)}"
            "</div>")


def swatch(source: str) -> str:
    """A coloured square and the source's name."""
    return f"<span style='color:{color(source)}'>■</span> {label(source)}"


def final_stats(record: CellRecord, note_gpu: bool = True) -> str:
    """The facts: peak (value, time, source, exact or sampled) and what was left behind."""
    rows = []
    groups: List = [(f"GPU {d.index}", d.index) for d in record.devices] + [(HOST, None)]
    for name, device in groups:
        figures = record.figures(device)
        for source in figures.sources():
            peak = figures.peak.get(source)
            series = record.timeline.find(source, device)
            when = series.argmax_t() if series is not None else None
            at = f" at {when:.1f} s" if when is not None and not (peak and peak.exact) else ""
            how = "exact" if peak and peak.exact else "sampled"
            rows.append(
                f"<tr><td>{name}</td><td>{swatch(source)}</td>"
                f"<td class='kmem-peak'>peak {format_bytes(peak.bytes if peak else None)}{at}"
                f" <small>({how}{', ' + html.escape(peak.note) if peak and peak.note else ''})"
                f"</small></td><td class='kmem-left'>left behind "
                f"{format_bytes(figures.left_behind(source), signed=True)}</td></tr>")
    note = f"<br><small>this process: {html.escape(record.process_note)}</small>" \
        if record.process_note else ""
    if record.holders:
        note += f"<br><small>{html.escape(holders_line(record))}</small>"
    if record.gpu_note and note_gpu:
        note += (f"<br><small>no GPU: {html.escape(record.gpu_note)}; host memory only (said "
                 "once per kernel)</small>")
    note += "".join(f"<br><small class='kmem-fault'>{html.escape(line)}</small>"
                    for line in fault_lines(record))
    return (f"<table class='kmem-final'>{''.join(rows)}</table>"
            f"<small>wall time {record.wall_s:.2f} s</small>{note}")


def postmortem(record: CellRecord) -> str:
    """The out-of-memory post-mortem as a small table (empty for other cells)."""
    lines = postmortem_lines(record)
    if not lines:
        return ""
    return ("<div class='kmem-postmortem'><b>Out of memory: post-mortem</b>"
            f"<pre>{html.escape(chr(10).join(line[2:] for line in lines[1:]))}</pre></div>")


def step_bars(record: CellRecord) -> str:
    """Where a training step's peak goes: one bar per part, from the planning model, with the
    measured peak beside the predicted one (empty without a plan)."""
    from .plot import BAR_COLORS as _BAR_COLORS

    plan = record.step_plan
    if plan is None or not plan.parts:
        return ""
    scale = max(p.bytes for p in plan.parts)
    # inline styles: the static fallback (nbconvert, GitHub) has no stylesheet
    bars = "".join(
        "<div class='kmem-bar' style='display:flex;align-items:center;gap:6px;"
        "font-size:11px'><span style='width:11em;overflow:hidden;text-overflow:ellipsis;"
        f"white-space:nowrap'>{html.escape(p.name)}</span><span style='display:inline-block;"
        f"height:9px;width:{max(1, round(60 * p.bytes / scale))}%;background:"
        f"{_BAR_COLORS.get(p.kind, '#7f7f7f')}'></span><span>{format_bytes(p.bytes)}</span>"
        "</div>" for p in plan.parts)
    measured = measured_peak(record)
    return (f"<div class='kmem-step'><b>Where the step's peak goes</b> <small>(planning "
            f"estimate for model '{html.escape(plan.model)}', batch {plan.batch_size}: predicted "
            f"peak {format_bytes(plan.predicted_bytes)}; measured peak {measured})</small>"
            f"{bars}</div>")


def job(record: CellRecord) -> str:
    """Every device of the cell's multi-process job (empty for a process on its own)."""
    lines = job_lines(record)
    if not lines:
        return ""
    return (f"<div class='kmem-job'><b>{html.escape(lines[0])}</b>"
            f"<pre>{html.escape(chr(10).join(line[2:] for line in lines[1:]))}</pre></div>")


def who(record: CellRecord) -> str:
    """Who holds the GPU (``%gpumem who`` as a small table), shown when other processes hold
    a good share of it (the other-processes suggestion fired); empty otherwise."""
    sharing = record.sharing
    if sharing is None or not any(s.rule == "other-processes" for s in record.suggestions):
        return ""
    parts = []
    for gpu in sharing.gpus:
        head, *rows = who_rows(sharing, gpu.index)
        if not rows:
            continue
        cells = "".join(f"<th>{html.escape(c)}</th>" for c in head[1:])
        body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row[1:]) + "</tr>"
                       for row in rows)
        rest = f"; not accounted: {format_bytes(gpu.unaccounted)}" \
            if gpu.unaccounted is not None else ""
        parts.append(f"<b>Who holds GPU {gpu.index}</b> <small>({format_bytes(gpu.used_bytes)}"
                     f" used of {format_bytes(gpu.total_bytes)}{rest}; %gpumem who)</small>"
                     f"<table class='kmem-who'><tr>{cells}</tr>{body}</table>")
    return f"<div class='kmem-who'>{''.join(parts)}</div>" if parts else ""


def suggestion(item: Suggestion) -> str:
    """One suggestion: title, saving, evidence and the code to apply."""
    extra = f" <small>({saving(item)})</small>" if item.saving_bytes else ""
    return (f"<b>{html.escape(item.title)}</b>{extra}<br><small>{html.escape(item.evidence)}"
            f"</small><pre class='kmem-code'>{html.escape(item.code)}</pre>")


def suggestions(items: Sequence[Suggestion]) -> str:
    """The suggestion list, empty when there are none."""
    if not items:
        return ""
    return "<b>Suggestions</b><ul>" + "".join(f"<li>{suggestion(s)}</li>" for s in items) + "</ul>"
