"""Advice: rules (:mod:`.rules`, pure functions: record in, suggestions out), who holds memory
(:mod:`.holders`) and the measured comparison of two dtype policies (:mod:`.compare`).

:func:`suggest` is what a cell's measurement calls: it gathers what the rules may know from
the user's namespace (lazily: the holders scan runs only when a rule asks) and runs them.
"""

from __future__ import annotations

import sys
from typing import Any, Dict, Sequence, Tuple

from ..record import HOLDERS_FAULT, CellRecord, Holder, Suggestion
from ..sizes import MiB
from .holders import keras_dtype_policy, keras_state, scan
from .rules import Context, advise

MIN_LEFT = 16 * MiB  # a cell that left less behind gets no list of holders


def suggest(record: CellRecord, history: Sequence[CellRecord], namespace: Dict[str, Any],
            value: Any = None) -> Tuple[Suggestion, ...]:
    """The suggestions for ``record``, a cell run in ``namespace`` whose result is ``value``
    (which IPython is about to keep in ``Out``); ``history`` holds the earlier records."""
    return read(record, history, namespace, value)[0]


def read(record: CellRecord, history: Sequence[CellRecord], namespace: Dict[str, Any],
         value: Any = None
         ) -> Tuple[Tuple[Suggestion, ...], Tuple[Holder, ...], Tuple[str, ...]]:
    """The suggestions for ``record``, who holds what it left behind when that is at least
    :data:`MIN_LEFT` (the namespace is scanned once for both, and only when needed), and what
    failed on it, a line each (a rule: its suggestion is left out; the holders scan: no
    holders are named, and the rules that read them fail too). The other rules' suggestions
    are kept."""
    shown: Dict[str, Any] = {}
    if value is not None:
        shown[f"Out[{record.execution_count}]"] = value
    context = Context(
        live_objects=lambda: scan({**shown, **namespace}, getattr(sys, "last_traceback", None)),
        dtype_policy=keras_dtype_policy(), keras_state=lambda: keras_state(namespace))
    suggestions = tuple(advise(record, history, context))
    try:
        holders = _holders(record, context)
    except Exception as error:  # the scan's fault costs the holders, not every suggestion
        holders = ()
        context.faults.append(f"{HOLDERS_FAULT}{error!r}")
    return suggestions, holders, tuple(context.faults)


def _holders(record: CellRecord, context: Context) -> Tuple[Holder, ...]:
    """Who holds what ``record`` left behind, largest first, with what no object accounts
    for; none when it left less than :data:`MIN_LEFT`."""
    left = record.left_in_frameworks()
    if left is None or left[0] < MIN_LEFT:
        return ()
    holders = tuple(Holder(h.name, h.kind, h.bytes) for h in context.live if h.bytes)
    rest = left[0] - sum(h.bytes for h in holders)
    if rest >= MiB:  # never hidden: what no object of the user's accounts for
        holders += (Holder("unaccounted", "no object kmem can see: the framework's pool "
                           "and caches, or Keras' global state", rest),)
    return holders


__all__ = ["Context", "advise", "read", "scan", "suggest"]
