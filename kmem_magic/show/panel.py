"""The ``%%gpumem`` panel: live memory curves while the cell runs, then the final view.

One display bundle, updated in place through a display id:

* ``application/vnd.jupyter.widget-view+json``: the ipywidgets panel (JupyterLab, Notebook 7,
  VS Code, Colab);
* ``image/png``: the final plot, for nbconvert, GitHub and nbviewer;
* ``text/plain``: the summary, for the terminal.

While the cell runs, the sampler thread calls :meth:`Panel.on_sample`, which only sets widget
traits (batched with ``hold_sync``, at most every ``refresh_s``), never displays: the live curve
is a small hand-made SVG, cheap enough to redraw twice a second without slowing the cell. The
final view, set from the main thread before the magic returns, shows the matplotlib plot (the
same PNG as the static fallback), the facts, a slot for suggestions, and two buttons.
"""

from __future__ import annotations

import base64
from html import escape
import os
import sys
import time
from typing import Callable, Optional, Sequence

from ..record import CellRecord, Device, Timeline
from ..sizes import format_bytes
from . import export, html, text
from .plot import png, svg

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def widgets_available(shell) -> bool:
    """Whether the shell talks to a frontend that can show widgets (a Jupyter kernel)."""
    if shell is None or getattr(shell, "kernel", None) is None:
        return False
    try:
        import ipywidgets  # noqa: F401
    except ImportError:
        return False
    return True


def _enable_colab_widgets() -> None:
    """Colab shows ipywidgets 8 only through its custom widget manager, enabled before display."""
    if "google.colab.output" in sys.modules or "google.colab" in sys.modules:
        try:
            from google.colab import output

            output.enable_custom_widget_manager()
        except Exception:
            pass


class Panel:
    """The widget panel of one cell. Create and :meth:`show` it in the main thread."""

    def __init__(self, title: str, devices: Sequence[Device], refresh_s: float = 0.5,
                 live: bool = True, actions: Optional["Actions"] = None) -> None:
        import ipywidgets as w

        self.devices = list(devices)
        self.limits = [d.limit_bytes for d in self.devices]
        self.refresh_s = refresh_s
        self.live = live
        self.actions = actions
        self._last = 0.0
        self._started = time.perf_counter()
        self.header = w.HTML(value=html.header(title, self.devices, self.limits))
        self.curves = w.HTML(value="")
        self.image = w.Image(format="png", layout=w.Layout(display="none", max_width="100%"))
        self.stats = w.HTML(value="<i>measuring…</i>")
        self.suggestions = w.HTML(value="", layout=w.Layout(display="none"))
        self.clear_button = w.Button(description="Clear Keras session", icon="broom",
                                     tooltip="keras.utils.clear_session() and gc.collect(), "
                                     "then show what was freed", disabled=True,
                                     layout=w.Layout(width="auto"))
        self.save_button = w.Button(description="Save", icon="save", disabled=True,
                                    tooltip="PNG and CSV of this cell, next to the notebook",
                                    layout=w.Layout(width="auto"))
        self.status = w.HTML(value="")
        self.buttons = w.HBox([self.clear_button, self.save_button, self.status])
        self.widget = w.VBox([self.header, self.curves, self.image, self.stats,
                              self.suggestions, self.buttons])
        self.widget.add_class("kmem-panel")
        self.clear_button.on_click(self._clear)
        self.save_button.on_click(self._save)
        self.record: Optional[CellRecord] = None
        self._handle = None

    # ------------------------------------------------------------------ main thread
    def show(self, placeholder: str = "%%gpumem: measuring…") -> None:
        """Display the panel (main thread), with ``placeholder`` for frontends without
        widgets."""
        from IPython.display import display

        _enable_colab_widgets()
        self._handle = display(self._bundle(placeholder), raw=True, display_id=True)

    def finish(self, record: CellRecord, image: bytes, summary: Optional[str] = None) -> None:
        """Switch to the final view of ``record`` (its plot ``image``, its figures and
        suggestions) and update the displayed bundle in place (main thread)."""
        self.record = record
        with self.widget.hold_sync():
            self.header.value = html.header(escape(text.title(record)), self.devices,
                                            self.limits)
            self.curves.layout.display = "none"
            self.image.value = image
            self.image.layout.display = None
            self.stats.value = html.final_stats(record)
            self.suggestions.value = html.suggestions(record.suggestions)
            self.suggestions.layout.display = None if record.suggestions else "none"
            self.clear_button.disabled = "keras" not in sys.modules
            self.save_button.disabled = False
        bundle = self._bundle(summary or text.summary(record))
        bundle["image/png"] = base64.b64encode(image).decode("ascii")
        if self._handle is None:
            from IPython.display import display

            _enable_colab_widgets()
            self._handle = display(bundle, raw=True, display_id=True)
        else:
            self._handle.update(bundle, raw=True)

    def _bundle(self, plain: str) -> dict:
        view = self.widget._repr_mimebundle_()[WIDGET_VIEW]
        return {WIDGET_VIEW: view, "text/plain": plain}

    # ------------------------------------------------------------------ sampler thread
    def on_sample(self, timeline: Timeline) -> None:
        """Redraw the live curves, at most every ``refresh_s`` (called from the sampler)."""
        now = time.perf_counter()
        if not self.live or now - self._last < self.refresh_s:
            return
        self._last = now
        self.paint(timeline, now - self._started)

    def paint(self, timeline: Timeline, elapsed_s: float) -> None:
        """Set the live curves and the live stats from ``timeline`` (traits only)."""
        with self.widget.hold_sync():
            self.curves.value = svg(timeline, self.devices, elapsed_s)
            self.stats.value = html.live_stats(timeline, self.devices, elapsed_s)

    # ------------------------------------------------------------------ buttons
    def _clear(self, _button=None) -> None:
        if self.actions is not None:
            self.status.value = self.actions.clear_session()

    def _save(self, _button=None) -> None:
        if self.actions is not None and self.record is not None:
            self.status.value = self.actions.save(self.record)


class Actions:
    """What the panel's buttons do; kept apart so that tests and the line magic can call it."""

    def __init__(self, measure_now: Callable[[], dict], folder: Optional[str] = None) -> None:
        self.measure_now = measure_now
        self.folder = folder

    def clear_session(self) -> str:
        """Run ``keras.utils.clear_session()`` and ``gc.collect()``; say what was freed, per
        source. Device memory rarely drops: the frameworks keep freed memory in their pools."""
        import gc

        keras = sys.modules.get("keras")
        if keras is None:
            return "Keras is not imported: nothing to clear."
        before = self.measure_now()
        keras.utils.clear_session()
        gc.collect()
        after = self.measure_now()
        parts = []
        for key in before:
            if before[key] is None or after.get(key) is None:
                parts.append(f"{key}: unknown")
            else:
                parts.append(f"{key}: {format_bytes(before[key] - after[key])} freed")
        return ("Cleared the Keras session (the global dtype policy is reset too). "
                + "; ".join(parts) + ". Memory freed by the allocator stays in its pool for "
                "reuse, so the device figure usually does not drop.")

    def save(self, record: CellRecord) -> str:
        """Write the plot (PNG) and the timeline (CSV) next to the notebook, never overwriting."""
        folder = self.folder or os.getcwd()
        try:
            stem = export.save(record, png(record), folder)
        except OSError as error:  # said in the panel: a button's exception would be silent
            return f"Could not save in {escape(folder)}: {escape(error.strerror or str(error))}"
        return f"Saved {escape(os.path.basename(stem))}.png and .csv in " \
            f"{escape(folder)}"
