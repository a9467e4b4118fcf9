"""Who holds memory: the models, variables, tensors and arrays in the user's namespace.

>>> import numpy as np
>>> [o.name for o in scan({"big": np.zeros(2**20), "small": 3})]
['big']

Sizes are computed from shapes and dtypes, never by copying data off the device. Besides the
user's variables, the scan looks at ``Out[]`` (values the notebook displayed) and at the last
traceback, whose frames keep every local of a failed cell alive: the two places users forget.
Reading only, always: nothing is deleted here.
"""

from __future__ import annotations

import itertools
import sys
import types
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

from .. import backends
from ..backends import loaded
from ..sizes import format_bytes, nbytes, total_nbytes

MIN_BYTES = 1 << 20  # objects under 1 MiB are not worth a line


@dataclass(frozen=True)
class LiveObject:
    """A name that keeps memory alive, what it is, and how much it holds."""

    name: str
    kind: str
    bytes: int


def _keras_split(model: Any) -> Tuple[int, int]:
    """Bytes of the weights and of the optimizer state of a Keras model or layer."""
    slots = getattr(getattr(model, "optimizer", None), "variables", [])
    return total_nbytes(getattr(model, "weights", [])), total_nbytes(slots)


def measure(value: Any) -> Optional[Tuple[str, int]]:
    """``(kind, bytes)`` for a value that itself holds framework or array memory, else None
    (containers are :func:`scan`'s business)."""
    keras = loaded("keras")
    if keras is not None and isinstance(value, keras.layers.Layer):
        weights, slots = _keras_split(value)
        split = f": weights {format_bytes(weights)}" + (
            f", optimizer slots {format_bytes(slots)}" if slots else "")
        return f"Keras {type(value).__name__}{split}", weights + slots
    if keras is not None and isinstance(value, keras.Variable):
        return "Keras variable", nbytes(value.shape, value.dtype)
    found = backends.sizeof(value)
    if found is not None:
        return found
    numpy = sys.modules.get("numpy")
    if numpy is not None and isinstance(value, numpy.ndarray):
        return "numpy array (host)", int(value.nbytes)
    if isinstance(value, (bytes, bytearray)):
        return f"{type(value).__name__} (host)", len(value)
    return None


# Values that never hold memory worth naming, by exact type: most of a namespace, skipped at
# the cost of one dictionary lookup each.
_ATOMIC = frozenset({int, float, complex, bool, str, type(None), range, slice,
                     types.FunctionType, types.BuiltinFunctionType, types.MethodType,
                     types.ModuleType, type})
_CONTAINERS = frozenset({dict, list, tuple, set, frozenset})
MAX_DEPTH = 3  # a namespace entry, its items, their items: where users keep their arrays
MAX_ITEMS = 10_000  # items looked at in one container
MAX_VISITS = 200_000  # values looked at in one scan; beyond, the scan says it stopped early


class _Walk:
    """One scan's state: values seen (each counted once), values visited, whether it was cut."""

    def __init__(self) -> None:
        self.seen: set = set()
        self.visits = 0
        self.cut = False
        # what measure() can size, as one isinstance: everything else is walked or skipped
        keras, numpy = loaded("keras"), sys.modules.get("numpy")
        self.measurable = (bytes, bytearray) + backends.tensor_types() + (
            (numpy.ndarray,) if numpy is not None else ()) + (
            (keras.layers.Layer, keras.Variable) if keras is not None else ())

    def holder(self, name: str, value: Any, depth: int = 1) -> Optional[LiveObject]:
        """``value`` as a holder named ``name``: measured itself, or through what it holds."""
        size, kinds, itself = self.held(value, depth)
        return self.describe(name, value, size, kinds, itself) if size else None

    @staticmethod
    def describe(name: str, value: Any, size: int, kinds: set, itself: bool) -> LiveObject:
        """The holder's line: what it is, or what it holds."""
        if itself:
            kind = next(iter(kinds))
        elif isinstance(value, (list, tuple, set, frozenset, dict)):
            kind = f"{type(value).__name__} of {len(value)} ({', '.join(sorted(kinds))})"
        else:
            kind = f"{type(value).__name__} holding {', '.join(sorted(kinds))}"
        return LiveObject(name, kind, size)

    def held(self, value: Any, depth: int) -> Tuple[int, set, bool]:
        """Bytes ``value`` holds, itself or through its items and attributes down to
        :data:`MAX_DEPTH`; the kinds found; whether it was measured itself."""
        kind = type(value)
        if kind in _ATOMIC:
            return _NOTHING
        self.visits += 1
        if self.visits > MAX_VISITS:
            self.cut = True
            return _NOTHING
        # Containers first, on a fast path (most of a namespace): their items are looked at,
        # they are not remembered (what they hold is, so nothing counts twice).
        if kind is list or kind is tuple:
            if depth >= MAX_DEPTH:
                return _NOTHING
            items = value if len(value) <= MAX_ITEMS else value[:MAX_ITEMS]
        elif kind is dict:
            if depth >= MAX_DEPTH:
                return _NOTHING
            items = list(itertools.islice(value.values(), MAX_ITEMS))
        else:
            if id(value) in self.seen:
                return _NOTHING
            self.seen.add(id(value))
            try:  # exotic objects (proxies whose __class__ or len() raise) are skipped
                if isinstance(value, self.measurable):
                    measured = measure(value)
                    return (measured[1], {measured[0]}, True) if measured else _NOTHING
                if depth >= MAX_DEPTH:
                    return _NOTHING
                items = _children(value)
            except Exception:
                return _NOTHING
        total, kinds = 0, set()
        for child in items:
            if type(child) in _ATOMIC:  # inline: most items are numbers and strings
                continue
            size, found, _ = self.held(child, depth + 1)
            if size:
                total += size
                kinds |= found
        return (total, kinds, False) if total else _NOTHING


_NOTHING: Tuple[int, set, bool] = (0, frozenset(), False)


def _children(value: Any) -> List[Any]:
    """At most :data:`MAX_ITEMS` items of a container, or the attributes of a user's object."""
    try:
        if isinstance(value, dict):
            return list(itertools.islice(value.values(), MAX_ITEMS))
        if isinstance(value, (list, tuple, set, frozenset)):
            return list(itertools.islice(value, MAX_ITEMS))
        attributes = getattr(value, "__dict__", None)
        if isinstance(attributes, dict) and not isinstance(value, type):
            return list(itertools.islice(attributes.values(), MAX_ITEMS))
    except Exception:
        pass
    return []


_UNDERSCORES = ("_", "__", "___")  # IPython's last outputs: scanned, unlike other _names


def scan(namespace: Dict[str, Any], traceback: Any = None,
         min_bytes: int = MIN_BYTES, limit: int = 8) -> List[LiveObject]:
    """The largest holders of memory in ``namespace`` (and its ``Out``), and the frames of
    ``traceback``, largest first. A holder is a name: what it holds is counted through dicts,
    lists and attributes of the user's objects down to :data:`MAX_DEPTH`, each object once,
    under its first name. Bounded: at most :data:`MAX_VISITS` values are looked at (then the
    last entry says the scan stopped early), and a namespace of plain numbers and strings
    costs one lookup a name."""
    found: List[LiveObject] = []
    walk = _Walk()
    held, atomic = walk.held, _ATOMIC
    displayed = []  # Out[] and _: after the user's own names, which an object is counted under
    # one Python call per name that can hold anything: this loop is most of a scan's time
    for name, value in list(namespace.items()):
        kind = type(value)
        if kind in atomic or (name[:1] == "_" and name not in _UNDERSCORES):
            continue
        if name in _UNDERSCORES or name.startswith("Out"):
            displayed.append((name, value))
            continue
        # a short list or dict of numbers and strings, checked in C: no call at all
        if (kind is list or kind is tuple) and len(value) <= 8 and \
                atomic.issuperset(map(type, value)):
            continue
        if kind is dict and len(value) <= 8 and atomic.issuperset(map(type, value.values())):
            continue
        size, kinds, itself = held(value, 1)
        if size >= min_bytes:
            found.append(walk.describe(name, value, size, kinds, itself))
    for name, value in displayed:
        shown = list(value.items()) if name == "Out" and type(value) is dict else [(None, value)]
        for number, item in shown:
            holder = walk.holder(name if number is None else f"Out[{number}]", item)
            if holder is not None and holder.bytes >= min_bytes:
                found.append(holder)
    if traceback is not None:
        held = 0
        while traceback is not None:
            frame = traceback.tb_frame
            if frame.f_locals is not frame.f_globals:  # a cell's own frame: the namespace
                for value in list(frame.f_locals.values()):
                    held += walk.held(value, 2)[0]
            traceback = traceback.tb_next
        if held >= min_bytes:
            found.append(LiveObject("the last traceback", "locals of the failed cell's frames",
                                    held))
    found.sort(key=lambda o: o.bytes, reverse=True)
    if walk.cut:
        found = found[:limit - 1] + [LiveObject(
            "(scan stopped early)", f"more than {MAX_VISITS:,} values in the namespace", 0)]
    return found[:limit]


def keras_state(namespace: Dict[str, Any]) -> Tuple[int, int]:
    """Bytes of weights and of optimizer state of the Keras models in ``namespace``."""
    keras = loaded("keras")
    if keras is None:
        return 0, 0
    weights = optimizer = 0
    seen = set()
    for value in list(namespace.values()):
        try:
            model = isinstance(value, keras.Model)
        except Exception:  # a proxy whose __class__ raises
            continue
        if model and id(value) not in seen:
            seen.add(id(value))
            model_weights, model_slots = _keras_split(value)
            weights += model_weights
            optimizer += model_slots
    return weights, optimizer


def keras_dtype_policy() -> Optional[str]:
    """The name of Keras' global dtype policy (``float32``, ``mixed_float16``), if Keras is
    imported."""
    keras = loaded("keras")
    return None if keras is None else getattr(keras.config.dtype_policy(), "name", None)
