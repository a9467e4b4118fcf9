"""Files: a cell's timeline as CSV, the history as CSV or JSON, and the panel's Save.

Files are created exclusively (``open(..., "x")``: never over an existing file, and never
through a symbolic link, which counts as existing).
"""

from __future__ import annotations

import csv
import io
import json
import os
from typing import Sequence

from ..record import UNKNOWN, CellRecord


def timeline_csv(record: CellRecord) -> str:
    """The timeline as CSV, one row per sample: ``t_s,series,source,device,bytes``."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["t_s", "series", "source", "device", "bytes"])
    for key, series in record.timeline.series.items():
        for t, value in zip(series.t_s, series.values):
            device = "" if series.device is None else series.device
            writer.writerow([f"{t:.4f}", key, series.source, device, _blank(value)])
    return out.getvalue()


def history_csv(records: Sequence[CellRecord]) -> str:
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
                peak = figures.peak.get(source, UNKNOWN)
                writer.writerow([
                    record.execution_count, record.started_at, f"{record.wall_s:.3f}",
                    record.backend or "", record.policy, record.error or "", device, source,
                    _blank(peak.bytes), peak.exact, _blank(figures.before.get(source)),
                    _blank(figures.after.get(source)), _blank(figures.left_behind(source)),
                    " | ".join(s.title for s in record.suggestions)])
    return out.getvalue()


def history_json(records: Sequence[CellRecord]) -> str:
    """Records as a JSON list of :meth:`CellRecord.to_dict`."""
    return json.dumps([r.to_dict() for r in records], indent=1)


def export(records: Sequence[CellRecord], path: str) -> str:
    """Write ``records`` to ``path`` (.json: full records; .csv: one row per figure); raises
    FileExistsError rather than write over a file."""
    text = history_json(records) if path.lower().endswith(".json") else history_csv(records)
    with open(path, "x") as handle:
        handle.write(text)
    return f"wrote {len(records)} cell(s) to {os.path.abspath(path)}"


def save(record: CellRecord, png: bytes, folder: str) -> str:
    """Write the plot (``png``) and the timeline (CSV) of ``record`` into ``folder`` as
    ``kmem-cell-N.png`` and ``.csv`` (``-1``, ``-2``... when taken); returns the stem's path."""
    base = os.path.join(folder, f"kmem-{record.name}")
    for n in range(10_000):
        stem = base if n == 0 else f"{base}-{n}"
        if any(os.path.lexists(stem + ext) for ext in (".png", ".csv")):
            continue
        try:
            with open(stem + ".png", "xb") as handle:
                handle.write(png)
        except FileExistsError:  # taken since the check: try the next name
            continue
        with open(stem + ".csv", "x") as handle:
            handle.write(timeline_csv(record))
        return stem
    raise FileExistsError(f"{base}-*.png: no free name left")


def _blank(value) -> str:
    return "" if value is None else str(value)
