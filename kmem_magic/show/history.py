"""Memory across all measured cells of the kernel's life, as one SVG strip (``%gpumem history
--plot``): each cell a band with its number, its curves squeezed into the band, one row per GPU
and one for host RSS; the cells that left the most behind are marked.

>>> from kmem_magic.record import CellRecord
>>> "<svg" in strip([CellRecord(1, "", 0.5, None, "growth", 0.1)])
True
"""

from __future__ import annotations

from html import escape
from typing import List, Optional, Sequence

from ..backends import color, label
from ..record import CellRecord
from ..sizes import format_bytes
from .plot import _fit
from .points import downsample

POINTS_PER_CELL = 40  # each band is narrow: more points than pixels would only cost bytes
MARKED = 3  # the cells that left the most behind
MIN_MARKED = 2**20  # ... if they left at least this much


def _left(record: CellRecord, device: Optional[int]) -> int:
    """What ``record`` left behind on ``device`` (host RSS when None), the largest source's."""
    figures = record.host if device is None else record.figures(device)
    values = [figures.left_behind(s) for s in figures.sources()]
    return max([v for v in values if v is not None] + [0])


def strip(records: Sequence[CellRecord], width: int = 900, row_height: int = 110) -> str:
    """The strip as SVG text (text in ``currentColor``: it reads in light and dark pages)."""
    devices = sorted({d.index for r in records for d in r.devices})
    rows: List[Optional[int]] = list(devices) + [None]
    left_pad, top_pad, bottom_pad = 66, 18, 30
    band = (width - left_pad - 10) / max(len(records), 1)
    height = len(rows) * (row_height + top_pad + bottom_pad)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" class="kmem-history" font-family="sans-serif" '
           'font-size="10" fill="currentColor">']
    for n, device in enumerate(rows):
        y0 = n * (row_height + top_pad + bottom_pad) + top_pad
        curves = {}  # key -> list of (x, value) over all cells
        for i, record in enumerate(records):
            t_max = max(record.wall_s, 1e-3)
            for series in record.timeline.series.values():
                if series.device != device:
                    continue
                ts, vs = downsample(series.t_s, series.values, POINTS_PER_CELL)
                points = curves.setdefault(series.source, [])
                points += [(left_pad + band * (i + min(t / t_max, 1)), v) for t, v in zip(ts, vs)]
        lo, hi = _fit([v for points in curves.values() for _, v in points], [])

        def y(value, y0=y0, lo=lo, hi=hi):
            return y0 + row_height * (1 - (value - lo) / (hi - lo))

        name = "host RSS" if device is None else f"GPU {device}"
        out.append(f'<text x="{left_pad}" y="{y0 - 5}" font-weight="bold">{name}</text>')
        for value in (lo, hi):
            out.append(f'<text x="{left_pad - 4}" y="{y(value) + 3:.1f}" text-anchor="end" '
                       f'opacity="0.7">{format_bytes(value)}</text>')
        marked = [i for i in sorted(range(len(records)), key=lambda i: -_left(records[i], device))
                  [:MARKED] if _left(records[i], device) >= MIN_MARKED]
        for i, record in enumerate(records):
            x = left_pad + band * i
            shade = (' fill="#d62728" fill-opacity="0.12"' if i in marked else
                     ' fill="#8882" fill-opacity="0.5"' if i % 2 else ' fill="none"')
            out.append(f'<rect x="{x:.1f}" y="{y0}" width="{band:.1f}" height="{row_height}"'
                       f'{shade}><title>{escape(record.name)}: left behind '
                       f'{escape(format_bytes(_left(record, device), signed=True))}</title></rect>')
            if band >= 14 or i % max(1, int(14 / band)) == 0:
                out.append(f'<text x="{x + band / 2:.1f}" y="{y0 + row_height + 12}" '
                           f'text-anchor="middle" opacity="0.7">{record.execution_count or ""}'
                           '</text>')
        for source, points in curves.items():
            path = " ".join(f"{x:.1f},{y(v):.1f}" for x, v in points)
            out.append(f'<polyline fill="none" stroke="{color(source)}" stroke-width="1.4" '
                       f'points="{path}"><title>{escape(label(source))}</title></polyline>')
        if n == len(rows) - 1:
            out.append(f'<text x="{left_pad}" y="{y0 + row_height + 26}" opacity="0.7">cells '
                       '(In[] numbers); shaded red: the cells that left the most behind</text>')
    out.append("</svg>")
    return "".join(out)


def bundle(records: Sequence[CellRecord], table: str) -> dict:
    """A display bundle: the strip (SVG, and in HTML), and ``table`` as text."""
    picture = strip(records)
    legend = " · ".join(sorted({f"<span style='color:{color(s.source)}'>■</span> "
                                f"{escape(label(s.source))}" for r in records
                                for s in r.timeline.series.values()}))
    return {"text/plain": table, "image/svg+xml": picture,
            "text/html": f"<div class='kmem-history'>{legend}<br>{picture}</div>"}


__all__ = ["bundle", "strip"]
