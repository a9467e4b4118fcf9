"""The ``%%gpumem`` panel: one widget, drawn in the browser, live while the cell runs.

The kernel sends data, never markup for the curves: the rows and sources when the panel is
made, new points as small custom messages while the cell runs (at most every ``refresh_s``,
only the points since the last message), and the whole timeline, downsampled, once the cell
has ended. ``panel.js`` draws it (anywidget: JupyterLab, Notebook 7, VS Code, Colab) in the
frontend's theme, with hover values, curves that can be hidden, and the two buttons.

One display bundle, updated in place through a display id, carries the panel and its static
fallbacks: ``text/html`` (the figures, the suggestions and an SVG of the curves, for nbconvert,
GitHub and any saved notebook) and ``text/plain`` (the summary, for a terminal). A panel that
is :meth:`retired <Panel.retire>` is replaced by those fallbacks and its widget closed, so the
kernel and the saved notebook keep no widget for it.
"""

from __future__ import annotations

from html import escape
import itertools
import os
import sys
import threading
import time
from typing import Callable, Dict, Optional, Sequence

from ..backends import color, label
from ..record import HOST, CellRecord, Device, Timeline
from ..sizes import format_bytes
from . import export, html, text
from .points import downsample, packed

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
_HERE = os.path.dirname(__file__)
_uids = itertools.count(1)
_widget_class = None


def widgets_available(shell) -> bool:
    """Whether the shell talks to a frontend that can show widgets (a Jupyter kernel)."""
    if shell is None or getattr(shell, "kernel", None) is None:
        return False
    try:
        import anywidget  # noqa: F401
    except ImportError:
        return False
    return True


def _widget():
    """The widget class, made on first use (anywidget is imported only when a panel is shown)."""
    global _widget_class
    if _widget_class is None:
        import anywidget
        from traitlets import Bool, Dict, List, Unicode

        with open(os.path.join(_HERE, "panel.js")) as js, \
                open(os.path.join(_HERE, "panel.css")) as css:
            esm, style = js.read(), css.read()

        class PanelWidget(anywidget.AnyWidget):
            _esm = esm
            _css = style
            uid = Unicode().tag(sync=True)
            meta = Dict().tag(sync=True)
            header_html = Unicode().tag(sync=True)
            facts_html = Unicode().tag(sync=True)
            final = Dict().tag(sync=True)
            actions = List().tag(sync=True)
            status = Unicode().tag(sync=True)
            history_html = Unicode().tag(sync=True)
            retired = Bool(False).tag(sync=True)

        _widget_class = PanelWidget
    return _widget_class


def _row(device: Optional[int]) -> str:
    return HOST if device is None else f"GPU {device}"


def _rows(devices: Sequence[Device]) -> list:
    """The panel's rows: one per GPU, then host RSS."""
    rows = [{"name": _row(d.index), "title": f"{d.label} · {d.name}",
             "total": d.total_bytes, "limit": d.limit_bytes} for d in devices]
    return rows + [{"name": HOST, "title": "host RSS", "total": None, "limit": None}]


def _source(series) -> dict:
    name = label(series.source)
    if series.source == "process":
        name += ", every 5 s"
    return {"label": name, "color": color(series.source), "row": _row(series.device),
            "dashed": series.source == "process"}


class Panel:
    """The panel of one cell. Create, :meth:`show` and :meth:`finish` it in the main thread;
    :meth:`on_sample` is the sampler thread's."""

    def __init__(self, title: str, devices: Sequence[Device], refresh_s: float = 0.5,
                 live: bool = True, actions: Optional["Actions"] = None) -> None:
        self.devices = list(devices)
        self.refresh_s = refresh_s
        self.live = live
        self.actions = actions
        self.record: Optional[CellRecord] = None
        self.static: Optional[dict] = None
        self.retired = False
        self._last = 0.0
        self._sent: Dict[str, int] = {}
        self._lock = threading.Lock()  # a live message and the final view never interleave
        self._handle = None
        self.widget = _widget()(
            uid=f"kmem-{os.getpid()}-{next(_uids)}", meta={"rows": _rows(self.devices)},
            header_html=html.header(escape(title), self.devices), facts_html="")
        self.widget.on_msg(self._on_msg)

    # ------------------------------------------------------------------ main thread
    def show(self, placeholder: str = "%%gpumem: measuring…") -> None:
        """Display the panel, with ``placeholder`` for frontends without widgets."""
        from IPython.display import display

        # (in Colab, anywidget has enabled the custom widget manager when the widget was made)
        self._handle = display(self._bundle({"text/plain": placeholder}), raw=True,
                               display_id=True)

    def finish(self, record: CellRecord, summary: Optional[str] = None, status: str = "",
               note_gpu: bool = True) -> None:
        """Switch to the final view of ``record`` and update the displayed bundle in place
        (``note_gpu`` False: without the reason there is no GPU, said once per kernel)."""
        self.record = record
        self.static = {"text/html": html.static(record, note_gpu),
                       "text/plain": summary or text.summary(record)}
        final = {"elapsed": max(record.wall_s, timeline_elapsed(record.timeline)),
                 "series": {}, "sources": {}, "peaks": [],
                 "marks": [[t, str(m)] for t, m in record.timeline.marks[:200]]}
        for key, series in record.timeline.series.items():
            t, v = downsample(series.t_s, series.values)
            if t:
                final["series"][key] = [[round(x, 4) for x in t], v]
                final["sources"][key] = _source(series)
        for device, figures in [(d.index, record.figures(d.index)) for d in record.devices] + \
                [(None, record.host)]:
            for source, peak in figures.peak.items():
                series = record.timeline.find(source, device)
                if peak.exact and peak.bytes is not None and series is not None and \
                        series.key in final["series"]:
                    when = series.argmax_t()
                    final["peaks"].append({"key": series.key, "v": peak.bytes,
                                           "t": record.wall_s if when is None else when})
        if record.devices and not self.devices:  # found after the panel was made (late NVML)
            self.devices = list(record.devices)
            self.widget.meta = {"rows": _rows(self.devices)}
        with self._lock, self.widget.hold_sync():
            self.widget.header_html = html.header(escape(text.title(record)), self.devices)
            self.widget.facts_html = (html.final_stats(record, note_gpu) + html.job(record)
                                      + html.postmortem(record) + html.step_bars(record)
                                      + html.suggestions(record.suggestions)
                                      + html.who(record))
            self.widget.final = final
            self.widget.status = status
            self.widget.actions = ["save", "history"] + (
                ["clear"] if "keras" in sys.modules else [])
        self._show(self._bundle(self.static))

    def fail(self, why: str) -> None:
        """End the panel without a record (kmem itself failed): its output becomes ``why``,
        and its widget is closed (it has nothing left to show or do)."""
        self.static = {"text/plain": f"%%gpumem: {why}", "text/html": f"<i>{escape(why)}</i>"}
        with self._lock:
            self.widget.final = {"elapsed": 0, "series": {}, "sources": {}}
        self._show(dict(self.static))
        self.retire(replace=False)

    def retire(self, replace: bool = True) -> None:
        """Close the widget and forget the record; with ``replace``, the output becomes the
        static fallbacks first (its figures, suggestions and curves stay visible)."""
        if self.retired:
            return
        self.retired = True
        if replace and self._handle is not None and self.static is not None:
            self._handle.update(self.static, raw=True)
        with self._lock:
            layout = self.widget.layout  # a model of its own, which close() leaves open
            self.widget.close()
            layout.close()
        self.record = None

    def _show(self, bundle: dict) -> None:
        if self._handle is None:
            from IPython.display import display

            self._handle = display(bundle, raw=True, display_id=True)
        else:
            self._handle.update(bundle, raw=True)

    def _bundle(self, fallbacks: dict) -> dict:
        view = {"version_major": 2, "version_minor": 0, "model_id": self.widget.model_id}
        return {WIDGET_VIEW: view, **fallbacks}

    # ------------------------------------------------------------------ sampler thread
    def on_sample(self, timeline: Timeline) -> None:
        """Send the points since the last message, at most every ``refresh_s`` (called by the
        sampler after each tick)."""
        now = time.perf_counter()
        if not self.live or now - self._last < self.refresh_s:
            return
        self._last = now
        self.send_points(timeline, timeline_elapsed(timeline))

    def send_points(self, timeline: Timeline, elapsed_s: float) -> dict:
        """One live message: for each curve its new points and, the first time, its name and
        colour. Returns the message (tests read it)."""
        points, sources, replace = {}, {}, False
        for key, series in list(timeline.series.items()):
            count = len(series.t_s)
            sent = self._sent.get(key)
            if sent is None:
                sources[key] = _source(series)
                sent = 0
            if count < sent:  # the sampler thinned its series: send them anew
                replace, sent = True, 0
            if count > sent:
                points[key] = packed(series.t_s[sent:count], series.values[sent:count])
            self._sent[key] = count
        message = {"points": points, "sources": sources, "elapsed_ms": round(elapsed_s * 1000)}
        if replace:
            self._sent.clear()
            return self.send_points(timeline, elapsed_s) | {"replace": True}
        with self._lock:
            if self.widget.final or self.retired:
                return message
            self.widget.send(message)
        return message

    # ------------------------------------------------------------------ buttons
    def _on_msg(self, _widget, content, _buffers) -> None:
        action = content.get("action") if isinstance(content, dict) else None
        if self.actions is None or action not in ("clear", "save", "history"):
            return
        try:
            self._act(action)
        except Exception as error:  # a button's exception would be silent: say it
            self.widget.status = f"{action} failed: {error!r}"

    def _act(self, action: str) -> None:
        if action == "clear":
            self.widget.status = self.actions.clear_session()
        elif action == "history":
            self.widget.history_html = "" if self.widget.history_html else \
                self.actions.history_strip()
        elif self.record is not None:
            self.widget.status = self.actions.save(self.record)


def timeline_elapsed(timeline: Timeline) -> float:
    """The time of the newest sample in ``timeline``, in seconds."""
    return max((s.t_s[-1] for s in list(timeline.series.values()) if s.t_s), default=0.0)


class Actions:
    """What the panel's buttons do; kept apart so that tests and the line magic can call it."""

    def __init__(self, measure_now: Callable[[], dict], folder: Optional[str] = None,
                 history: Callable[[], Sequence[CellRecord]] = tuple) -> None:
        self.measure_now = measure_now
        self.folder = folder
        self.history = history

    def history_strip(self) -> str:
        """Memory across every measured cell so far, as an SVG (``%gpumem history --plot``)."""
        from .history import strip

        records = list(self.history())
        return strip(records) if records else "<i>no cell measured yet</i>"

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
        parts, freed = [], 0
        for key in before:
            if before[key] is None or after.get(key) is None:
                parts.append(f"{key}: unknown")
            else:
                freed = max(freed, before[key] - after[key])
                parts.append(f"{key}: {format_bytes(before[key] - after[key])} freed")
        why = (" Nothing worth naming was freed: what the frameworks hold is kept by your own "
               "variables (del them first), or is their pool, which the next cell reuses."
               if freed < 2**20 else " Memory freed by the allocator stays in its pool for "
               "reuse, so the device figure usually does not drop.")
        return ("Cleared the Keras session (the global dtype policy is reset too). "
                + "; ".join(parts) + "." + why)

    def save(self, record: CellRecord) -> str:
        """Write the plot (PNG) and the timeline (CSV) next to the notebook, never overwriting."""
        from .plot import png

        folder = self.folder or os.getcwd()
        try:
            stem = export.save(record, png(record, dpi=180), folder)
        except OSError as error:  # said in the panel: a button's exception would be silent
            return f"Could not save in {folder}: {error.strerror or error}"
        return f"Saved {os.path.basename(stem)}.png and .csv in {folder}"
