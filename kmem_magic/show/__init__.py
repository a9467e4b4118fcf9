"""Showing a record: plain text (:mod:`.text`), HTML pieces (:mod:`.html`), the widget panel
(:mod:`.panel`), the plot (:mod:`.plot`) and files (:mod:`.export`). Each reads the record and
changes nothing; a new output is one module here.
"""

from __future__ import annotations

from typing import Optional

from ..record import CellRecord
from . import html, text
from .panel import Panel


def report(record: CellRecord, panel: Optional[Panel] = None, quiet: bool = False,
           note_gpu: bool = True) -> None:
    """Show ``record`` the way the cell asked: one line (``quiet``), the final view of its
    ``panel``, or one bundle of text and HTML (figures, suggestions and an SVG of the curves).
    A failure here never reaches the cell."""
    try:
        if quiet:
            print(text.quiet_line(record))
            return
        summary = text.summary(record, note_gpu)
        if panel is not None:
            panel.finish(record, summary, note_gpu=note_gpu)
            return
        from IPython.display import display

        display({"text/plain": summary, "text/html": html.static(record, note_gpu)}, raw=True)
    except Exception as error:  # showing must never hide the cell's own result or error
        print(f"kmem_magic: could not show the memory report: {error!r}")
        try:
            if panel is not None:
                panel.fail(f"could not show the memory report: {error!r}")
        except Exception:
            pass  # the line above said it
        try:
            print(text.summary(record))
        except Exception:
            pass  # the error above is all kmem can say


__all__ = ["report"]
