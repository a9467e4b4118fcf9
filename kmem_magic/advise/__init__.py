"""Advice: rules (:mod:`.rules`, pure functions: record in, suggestions out), who holds memory
(:mod:`.holders`) and the measured comparison of two dtype policies (:mod:`.compare`).

:func:`suggest` is what a cell's measurement calls: it gathers what the rules may know from
the user's namespace (lazily: the holders scan runs only when a rule asks) and runs them.
"""

from __future__ import annotations

import sys
from typing import Any, Dict, Sequence, Tuple

from ..record import CellRecord, Suggestion
from .holders import keras_dtype_policy, keras_state, scan
from .rules import Context, advise


def suggest(record: CellRecord, history: Sequence[CellRecord], namespace: Dict[str, Any],
            value: Any = None) -> Tuple[Suggestion, ...]:
    """The suggestions for ``record``, a cell run in ``namespace`` whose result is ``value``
    (which IPython is about to keep in ``Out``); ``history`` holds the earlier records."""
    shown: Dict[str, Any] = {}
    if value is not None:
        shown[f"Out[{record.execution_count}]"] = value
    context = Context(
        live_objects=lambda: scan({**shown, **namespace}, getattr(sys, "last_traceback", None)),
        dtype_policy=keras_dtype_policy(), keras_state=lambda: keras_state(namespace))
    return tuple(advise(record, history, context))


__all__ = ["Context", "advise", "scan", "suggest"]
