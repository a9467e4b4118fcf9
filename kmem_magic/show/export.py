"""Files: a cell's timeline as CSV, the history as CSV or JSON, and the panel's Save.

Every file is written by :func:`write_new`: whole or not at all, and only where no file was:
the content goes to a temporary file in the same folder, which is then hard-linked to its name
(``link`` fails on any existing name, a dangling symbolic link included, and follows none). A
write that fails (disk full, a file-size limit) leaves nothing behind, so a retry just works.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from typing import Sequence, Union

from ..record import UNKNOWN, CellRecord


_UMASK = os.umask(0o022)
os.umask(_UMASK)


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
    write_new(path, text)
    return f"wrote {len(records)} cell(s) to {os.path.abspath(path)}"


def save(record: CellRecord, png: bytes, folder: str) -> str:
    """Write the plot (``png``) and the timeline (CSV) of ``record`` into ``folder`` as
    ``kmem-cell-N.png`` and ``.csv`` (``-1``, ``-2``... when taken); returns the stem's path."""
    base = os.path.join(folder, f"kmem-{record.name}")
    table = timeline_csv(record)
    for n in range(10_000):
        stem = base if n == 0 else f"{base}-{n}"
        try:
            write_new(stem + ".png", png)
        except FileExistsError:
            continue
        try:
            write_new(stem + ".csv", table)
        except FileExistsError:  # a lone CSV of that name: keep the pair together elsewhere
            os.unlink(stem + ".png")
            continue
        except BaseException:
            os.unlink(stem + ".png")
            raise
        return stem
    raise FileExistsError(f"{base}-*.png: no free name left")


def write_new(path: str, content: Union[str, bytes]) -> None:
    """Create ``path`` holding ``content``, whole or not at all; FileExistsError if the name is
    taken (by anything, a dangling symbolic link included)."""
    data = content.encode("utf-8") if isinstance(content, str) else content
    folder = os.path.dirname(os.path.abspath(path))
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=".kmem-", suffix=".part")
    try:
        try:  # as open() would have made it, not mkstemp's 0600
            os.fchmod(handle, 0o666 & ~_UMASK)
        except (OSError, AttributeError):  # no modes (vfat), or no fchmod (Windows, < 3.13)
            pass
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        try:
            os.link(temporary, path)
        except FileExistsError:
            raise  # the name is taken
        except OSError:
            _write_exclusive(path, data)  # a filesystem without hard links (FAT, FUSE, ...)
    finally:
        os.unlink(temporary)


def _write_exclusive(path: str, data: bytes) -> None:
    """The fallback: create exclusively, never following a link; remove what a failure left."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    handle = os.open(path, flags, 0o666)
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
    except BaseException:
        os.unlink(path)
        raise


def _blank(value) -> str:
    return "" if value is None else str(value)
