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
from .text import holders_line, saving, title


def header(title: str, devices: Sequence[Device]) -> str:
    """The panel's first line: ``title`` (HTML) and each GPU with its total and limit."""
    parts = [f"<b>{title}</b>"]
    for device in devices:
        extra = f", limit {format_bytes(device.limit_bytes)}" if device.limit_bytes else ""
        parts.append(f"GPU {device.index}: {html.escape(device.name)} "
                     f"({format_bytes(device.total_bytes)}{extra})")
    return "<div class='kmem-header'>" + " · ".join(parts) + "</div>"


def static(record: CellRecord, note_gpu: bool = True) -> str:
    """The whole final view as one HTML page fragment, for frontends without the widget
    (nbconvert, GitHub, a saved notebook): title, curves (SVG), figures and suggestions."""
    from .plot import svg

    return (f"<div class='kmem-static'>{header(html.escape(title(record)), record.devices)}"
            f"{svg(record)}{final_stats(record, note_gpu)}{suggestions(record.suggestions)}"
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
    return (f"<table class='kmem-final'>{''.join(rows)}</table>"
            f"<small>wall time {record.wall_s:.2f} s</small>{note}")


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
