"""Showing a record: plain text (:mod:`.text`), HTML pieces (:mod:`.html`), the widget panel
(:mod:`.panel`), the plot (:mod:`.plot`) and files (:mod:`.export`). Each reads the record and
changes nothing; a new output is one module here.
"""

from __future__ import annotations

import base64
from typing import Optional

from ..record import CellRecord
from . import text
from .panel import Panel
from .plot import png


def report(record: CellRecord, panel: Optional[Panel] = None, quiet: bool = False) -> None:
    """Show ``record`` the way the cell asked: one line (``quiet``), the final view of its
    live ``panel``, or one bundle of text and PNG. A failure here never reaches the cell."""
    try:
        if quiet:
            print(text.quiet_line(record))
            return
        image, summary = png(record), text.summary(record)
        if panel is not None:
            panel.finish(record, image, summary)
            return
        from IPython.display import display

        display({"text/plain": summary, "image/png": base64.b64encode(image).decode("ascii")},
                raw=True)
    except Exception as error:  # showing must never hide the cell's own result or error
        print(f"kmem_magic: could not show the memory report: {error!r}")
        try:
            print(text.summary(record))
        except Exception:
            pass  # the error above is all kmem can say


__all__ = ["report"]
