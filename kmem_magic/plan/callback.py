""":class:`MemoryCallback`: a Keras callback that records memory per batch.

>>> callback = MemoryCallback()                                      # doctest: +SKIP
>>> model.fit(x, y, callbacks=[callback])                            # doctest: +SKIP
>>> callback.history[-1]["allocator_bytes"], callback.plot()         # doctest: +SKIP

Each row holds the time, the phase (train, test, predict), the batch index, the bytes the
framework allocators have handed out (summed over GPUs; None before a framework has started or
without a GPU), NVML's device memory used, and host RSS. Inside a ``%%gpumem`` cell the epochs are
also marked on the panel's time axis.

The row of batch ``b`` is taken on the training loop's own thread as batch ``b + 1`` begins (the
last one as the epoch, evaluation or prediction ends). On jax, Keras runs batch-end hooks on a
worker thread, and JAX's ``memory_stats()`` called from a second thread while the loop dispatches
steps stalls both (on an H200, one read took 250 ms with 40 steps queued; reading every batch
that way slowed a convnet's fit 1.5x), where on the loop's thread it takes about 20 us and does
not wait for the GPU. The hooks only read counters and never touch ``self.model`` (with JAX that
forces a state sync).
"""

from __future__ import annotations

import csv
import io
import time
from typing import Any, Dict, List, Optional, Tuple

from .. import _host, _nvml, backends, measure

try:  # the base class, when Keras is installed; importing this module imports Keras
    from keras.callbacks import Callback as _Base
except ImportError:  # pragma: no cover - a clear error on use instead of on import
    _Base = object


# NVML and host RSS in rows the budget chooses: at most this often once the allocator is known.
# Both calls give up the GIL, and inside a fit each waits to get it back from Keras' worker
# thread: about 100 us each on an H200, ten times their cost outside a fit, where the
# allocator counter, which keeps the GIL, costs 20 us.
FULL_ROWS_EVERY_S = 0.5


class MemoryCallback(_Base):
    """Records memory after each batch of fit, evaluate and predict.

    By default it records every batch as long as recording costs at most ``overhead`` (0.2 %)
    of the elapsed time by its own clock, so very fast steps are sampled instead (each row
    names its batch); ``every=N`` records exactly every N-th batch whatever it costs. Once a
    GPU allocator is known, the budgeted rows read NVML's device used and host RSS at most
    twice a second (None in the rows in between); ``every=N`` rows and :meth:`record` read
    everything. Use :meth:`record` in hand-written ``train_on_batch`` loops.
    """

    def __init__(self, every: Optional[int] = None, overhead: float = 0.002) -> None:
        if _Base is object:
            raise ImportError("MemoryCallback needs Keras: pip install keras")
        super().__init__()
        if every is not None and (isinstance(every, bool) or not isinstance(every, int)
                                  or every < 1):
            raise ValueError(f"every must be a positive integer or None, not {every!r}")
        if not 0 < overhead <= 1:
            raise ValueError(f"overhead must be in (0, 1], not {overhead!r}")
        self.every = every
        self.overhead = overhead
        self.history: List[Dict[str, Any]] = []
        self._t0 = time.perf_counter()
        self._spent = 0.0
        self._last_full = float("-inf")
        self._pending: Optional[Tuple[str, int]] = None  # dispatched, not yet recorded
        self._devices = _nvml.devices()

    def record(self, phase: str = "train", batch: Optional[int] = None) -> Dict[str, Any]:
        """Take one row now (for ``train_on_batch`` loops) and return it."""
        return self._row(phase, batch, full=True)

    def _row(self, phase: str, batch: Optional[int], full: bool) -> Dict[str, Any]:
        """A row; unless ``full``, NVML and host RSS are skipped where the allocator is known."""
        now = time.perf_counter()
        allocated = None
        for backend in backends.started():
            in_use = backend.in_use()
            if in_use:
                allocated = (allocated or 0) + sum(in_use.values())
        device = rss = None
        if full or allocated is None or now - self._last_full >= FULL_ROWS_EVERY_S:
            self._last_full = now
            used = [_nvml.memory_used(d) for d in self._devices]
            device = None if not used or None in used else sum(used)
            rss = _host.host_rss()
        row = {
            "t_s": now - self._t0,
            "phase": phase,
            "batch": batch,
            "allocator_bytes": allocated,
            "device_used_bytes": device,
            "host_rss_bytes": rss,
        }
        self.history.append(row)
        return row

    def _after(self, phase: str, batch: int) -> None:
        """Batch ``batch`` has been dispatched: record it if ``every`` or the budget says so."""
        if self.every is not None:
            if batch % self.every == 0:
                self.record(phase, batch)
            return
        # Record while the time spent recording stays within ``overhead`` of the time
        # elapsed: every batch of a slow step, a steady sample of very fast ones. Its clock
        # sees a row's own time, not the pipeline bubble after it: on jax with GPU-bound steps
        # a fit slowed about 3x the time counted, hence a default well under 1 %.
        start = time.perf_counter()
        if self._spent <= self.overhead * (start - self._t0):
            self._row(phase, batch, full=False)
            if len(self.history) > 1:  # the first row pays one-time costs (lookups, caches)
                self._spent += time.perf_counter() - start

    def _begin(self, phase: str, batch: int) -> None:
        self._flush()
        self._pending = (phase, batch)

    def _flush(self, *_: Any, **__: Any) -> None:
        if self._pending is not None:
            self._after(*self._pending)
        self._pending = None

    def on_train_batch_begin(self, batch, logs=None):
        self._begin("train", batch)

    def on_test_batch_begin(self, batch, logs=None):
        self._begin("test", batch)

    def on_predict_batch_begin(self, batch, logs=None):
        self._begin("predict", batch)

    def on_epoch_begin(self, epoch, logs=None):
        self._flush()
        measure.mark(f"epoch {epoch + 1}")

    # the last batch of each loop, recorded as the loop ends (a validation run inside fit ends
    # the training loop of its epoch before on_epoch_end)
    on_epoch_end = on_test_begin = on_test_end = on_predict_begin = on_predict_end = _flush
    on_train_end = _flush

    def peak(self, key: str = "allocator_bytes") -> Optional[int]:
        """The highest value of ``key`` over the recorded batches (None if never known)."""
        known = [row[key] for row in self.history if row[key] is not None]
        return max(known) if known else None

    def to_csv(self) -> str:
        """The rows as CSV."""
        out = io.StringIO()
        fields = ["t_s", "phase", "batch", "allocator_bytes", "device_used_bytes",
                  "host_rss_bytes"]
        writer = csv.DictWriter(out, fieldnames=fields)
        writer.writeheader()
        writer.writerows(self.history)
        return out.getvalue()

    def plot(self):
        """A matplotlib ``Figure`` of the recorded memory per batch; a notebook shows it as the
        cell's value (``cb.plot()``), ``savefig`` writes it."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        class Shown(Figure):
            """A Figure that IPython displays without pyplot or %matplotlib (a 2x PNG)."""

            def _repr_png_(self) -> bytes:
                import io

                buffer = io.BytesIO()
                self.savefig(buffer, format="png", dpi=180)
                return buffer.getvalue()

        fig = Shown(figsize=(8, 3), dpi=90)
        FigureCanvasAgg(fig)
        ax = fig.subplots()
        for key, source, name in (("allocator_bytes", backends.keras_backend() or "jax",
                                   "allocator in use"),
                                  ("device_used_bytes", "device", "device used (NVML)"),
                                  ("host_rss_bytes", "host", "host RSS")):
            points = [(r["t_s"], r[key] / 2**20) for r in self.history if r[key] is not None]
            if points:
                t, v = zip(*points)
                ax.plot(t, v, color=backends.color(source), lw=1.2, label=name)
        ax.set_xlabel("seconds")
        ax.set_ylabel("MiB")
        ax.set_title(f"MemoryCallback: {len(self.history)} batches", fontsize=9, loc="left")
        ax.legend(fontsize=7)
        return fig
