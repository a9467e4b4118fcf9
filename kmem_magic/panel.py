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
import html
import os
import sys
import time
from typing import Callable, List, Optional, Sequence

from .plot import COLORS, svg
from .record import CellRecord, Figures, Timeline, label
from .units import format_bytes

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

    def __init__(self, title: str, devices: Sequence, limit_bytes: Sequence[Optional[int]],
                 refresh_s: float = 0.5, live: bool = True,
                 actions: Optional["Actions"] = None) -> None:
        import ipywidgets as w

        self.devices = list(devices)
        self.limits = list(limit_bytes)
        self.refresh_s = refresh_s
        self.live = live
        self.actions = actions
        self._last = 0.0
        self._started = time.perf_counter()
        self.header = w.HTML(value=_header(title, self.devices, self.limits))
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
    def show(self, text: str = "%%gpumem: measuring…") -> None:
        """Display the panel (main thread), with ``text`` for frontends without widgets."""
        from IPython.display import display

        _enable_colab_widgets()
        self._handle = display(self._bundle(text), raw=True, display_id=True)

    def finish(self, record: CellRecord, png: bytes,
               suggestions: Sequence[str] = (), text: Optional[str] = None) -> None:
        """Switch to the final view and update the displayed bundle in place (main thread)."""
        self.record = record
        with self.widget.hold_sync():
            self.header.value = _header(html.escape(record.title()), self.devices, self.limits)
            self.curves.layout.display = "none"
            self.image.value = png
            self.image.layout.display = None
            self.stats.value = final_stats(record)
            self.set_suggestions(suggestions)
            self.clear_button.disabled = "keras" not in sys.modules
            self.save_button.disabled = False
        bundle = self._bundle(text or record.summary())
        bundle["image/png"] = base64.b64encode(png).decode("ascii")
        if self._handle is None:
            from IPython.display import display

            _enable_colab_widgets()
            self._handle = display(bundle, raw=True, display_id=True)
        else:
            self._handle.update(bundle, raw=True)

    def set_suggestions(self, suggestions: Sequence[str]) -> None:
        """Fill the suggestion slot (hidden while empty); items are HTML."""
        self.suggestions.value = "".join(f"<li>{s}</li>" for s in suggestions)
        if suggestions:
            self.suggestions.value = f"<b>Suggestions</b><ul>{self.suggestions.value}</ul>"
        self.suggestions.layout.display = None if suggestions else "none"

    def _bundle(self, text: str) -> dict:
        view = self.widget._repr_mimebundle_()[WIDGET_VIEW]
        return {WIDGET_VIEW: view, "text/plain": text}

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
            self.curves.value = svg(timeline, self.devices, self.limits, elapsed_s)
            self.stats.value = live_stats(timeline, self.devices, elapsed_s)

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
        from .plot import png

        folder = self.folder or os.getcwd()
        stem = os.path.join(folder, f"kmem-{record.name}")
        n = 0
        while any(os.path.exists(f"{stem}{'' if n == 0 else f'-{n}'}{ext}")
                  for ext in (".png", ".csv")):
            n += 1
        stem = f"{stem}{'' if n == 0 else f'-{n}'}"
        with open(stem + ".png", "wb") as handle:
            handle.write(png(record))
        with open(stem + ".csv", "w") as handle:
            handle.write(record.to_csv())
        return f"Saved {os.path.basename(stem)}.png and .csv in {html.escape(folder)}"


# --------------------------------------------------------------------------- text pieces
def _header(title: str, devices: Sequence, limits: Sequence[Optional[int]]) -> str:
    parts = [f"<b>{title}</b>"]
    for device, limit in zip(devices, limits or [None] * len(devices)):
        extra = f", limit {format_bytes(limit)}" if limit else ""
        parts.append(f"GPU {device.cuda_index}: {html.escape(device.name)} "
                     f"({format_bytes(device.total_bytes)}{extra})")
    if not devices:
        parts.append("no GPU visible: host memory only")
    return "<div class='kmem-header'>" + " · ".join(parts) + "</div>"


def _swatch(source: str) -> str:
    return f"<span style='color:{COLORS.get(source, '#333')}'>■</span> {label(source)}"


def live_stats(timeline: Timeline, devices: Sequence, elapsed_s: float) -> str:
    """One line per GPU and one for the host: the latest value and the highest so far."""
    rows = []
    keys = [(d.cuda_index, f"GPU {d.cuda_index}") for d in devices] + [(None, "host")]
    for device, name in keys:
        cells = []
        for series in timeline.series.values():
            if series.device != device or not series.values:
                continue
            cells.append(f"{_swatch(series.source)} {format_bytes(series.values[-1])} "
                         f"(max {format_bytes(series.max())})")
        rows.append(f"<b>{name}</b> " + " · ".join(cells))
    return (f"<div class='kmem-live'>running {elapsed_s:.1f} s<br>" + "<br>".join(rows)
            + "</div>")


def final_stats(record: CellRecord) -> str:
    """The facts: peak (value, time, source, exact or sampled) and what was left behind."""
    rows = []
    groups: List = [(f"GPU {d.index}", record.gpu.get(d.index, Figures()), d.index)
                    for d in record.devices] + [("host", record.host, None)]
    for name, figures, device in groups:
        for source in figures.sources():
            peak = figures.peak.get(source)
            series = record.timeline.find(source, device)
            when = series.argmax_t() if series is not None else None
            at = f" at {when:.1f} s" if when is not None and not (peak and peak.exact) else ""
            how = "exact" if peak and peak.exact else "sampled"
            rows.append(
                f"<tr><td>{name}</td><td>{_swatch(source)}</td>"
                f"<td class='kmem-peak'>peak {format_bytes(peak.bytes if peak else None)}{at}"
                f" <small>({how}{', ' + html.escape(peak.note) if peak and peak.note else ''})"
                f"</small></td><td class='kmem-left'>left behind "
                f"{format_bytes(figures.left_behind(source), signed=True)}</td></tr>")
    note = f"<br><small>this process: {html.escape(record.process_note)}</small>" \
        if record.process_note else ""
    return (f"<table class='kmem-final'>{''.join(rows)}</table>"
            f"<small>wall time {record.wall_s:.2f} s</small>{note}")
