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

import sys
import types
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

from .. import backends
from ..backends import loaded
from ..sizes import nbytes, total_nbytes

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
    """``(kind, bytes)`` for a value that holds framework or array memory, else None."""
    keras = loaded("keras")
    if keras is not None and isinstance(value, keras.layers.Layer):
        return f"Keras {type(value).__name__}", sum(_keras_split(value))
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
    if isinstance(value, (list, tuple)) and value and len(value) <= 10_000:
        sizes = [measure(item) for item in value[:10_000]]
        total = sum(size[1] for size in sizes if size)
        if total:
            kinds = {size[0] for size in sizes if size}
            return f"{type(value).__name__} of {len(value)} ({', '.join(sorted(kinds))})", total
    return None


def _skip(name: str, value: Any) -> bool:
    if name.startswith("_") and name not in ("_", "__", "___"):
        return True
    return isinstance(value, (types.ModuleType, types.FunctionType, type))


def scan(namespace: Dict[str, Any], traceback: Any = None,
         min_bytes: int = MIN_BYTES, limit: int = 8) -> List[LiveObject]:
    """The largest holders of memory in ``namespace`` (and its ``Out``), and the frames of
    ``traceback``, largest first. Each object is counted once, under its first name."""
    found: List[LiveObject] = []
    seen = set()

    def consider(name: str, value: Any) -> None:
        if id(value) in seen:
            return
        try:
            measured = measure(value)
        except Exception:  # a half-built or exotic object: skip it, never fail the cell
            return
        if measured and measured[1] >= min_bytes:
            seen.add(id(value))
            found.append(LiveObject(name, measured[0], measured[1]))

    for name, value in list(namespace.items()):
        if name == "Out" and isinstance(value, dict):
            for number, shown in list(value.items()):
                consider(f"Out[{number}]", shown)
        elif not _skip(name, value):
            consider(name, value)
    if traceback is not None:
        held = 0
        while traceback is not None:
            for value in list(traceback.tb_frame.f_locals.values()):
                try:
                    measured = measure(value)
                except Exception:
                    measured = None
                if measured and id(value) not in seen:
                    seen.add(id(value))
                    held += measured[1]
            traceback = traceback.tb_next
        if held >= min_bytes:
            found.append(LiveObject("the last traceback", "locals of the failed cell's frames",
                                    held))
    found.sort(key=lambda o: o.bytes, reverse=True)
    return found[:limit]


def keras_state(namespace: Dict[str, Any]) -> Tuple[int, int]:
    """Bytes of weights and of optimizer state of the Keras models in ``namespace``."""
    keras = loaded("keras")
    if keras is None:
        return 0, 0
    weights = optimizer = 0
    seen = set()
    for value in list(namespace.values()):
        if isinstance(value, keras.Model) and id(value) not in seen:
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
