"""Where a Keras training step's peak goes, from the planning model: the bars of the panel.

>>> plan = step_plan(model, batch_size=256)                           # doctest: +SKIP
>>> [(p.name, p.kind) for p in plan.parts][:3]                        # doctest: +SKIP
[('weights', 'weights'), ('dense_1', 'activations'), ('optimizer slots', 'optimizer')]

Every figure here is an estimate (:func:`kmem_magic.estimate`), never a measurement; the views
show the measured peak beside it and say which is which. :func:`trained_model` finds the model
a cell trained and its batch size from the cell's own code and namespace.
"""

from __future__ import annotations

import re
import sys
from typing import Any, Dict, List, Optional, Tuple

from ..record import StepPart, StepPlan

TOP_LAYERS = 5  # layers with a bar of their own; the others share one
_CALL = re.compile(r"\b([A-Za-z_]\w*)\.fit\(")
# ``batch_size=VALUE`` as a keyword (not ``validation_batch_size=``); VALUE as written
BATCH_SIZE = re.compile(r"(?<![\w.])batch_size\s*=\s*([^\s,)]+)")
KERAS_DEFAULT_BATCH = 32  # what Model.fit uses for arrays when no batch_size is given


def step_plan(model: Any, batch_size: int) -> Optional[StepPlan]:
    """The planned parts of one training step of ``model`` at ``batch_size``, largest first
    (None for a model the planning model cannot read: subclassed, or not built)."""
    from .estimator import estimate

    try:
        return plan_of(estimate(model, batch_size), model.name)
    except (TypeError, ValueError):
        return None


def plan_of(est: Any, model_name: str) -> StepPlan:
    """The :class:`StepPlan` of an :class:`~kmem_magic.plan.Estimate` already made."""
    parts = [StepPart("weights", "weights", est.weights_bytes),
             StepPart("gradients", "gradients", est.gradients_bytes),
             StepPart("optimizer slots", "optimizer", est.optimizer_bytes),
             StepPart("input batch", "batch", est.batch_bytes),
             StepPart("largest temporary", "temporary", est.temporary_bytes)]
    layers = [(name, size) for name, size in est.layers if size > 0]
    parts += [StepPart(name, "activations", size) for name, size in layers[:TOP_LAYERS]]
    rest = sum(size for _, size in layers[TOP_LAYERS:])
    if rest:
        parts.append(StepPart(f"{len(layers) - TOP_LAYERS} other layers", "activations", rest))
    parts = sorted((p for p in parts if p.bytes > 0), key=lambda p: -p.bytes)
    return StepPlan(model_name, est.batch_size, est.backend, est.compute_dtype, est.total_bytes,
                    tuple(parts))


def literal_batch_sizes(source: str) -> List[int]:
    """The ``batch_size=N`` keywords of ``source`` whose value is a number, in order."""
    return [int(value) for value in BATCH_SIZE.findall(source) if value.isdigit()]


def trained_model(source: str, namespace: Dict[str, Any]) -> Optional[Tuple[Any, int]]:
    """``(model, batch size)`` of the Keras model the cell's code trains with ``name.fit(``,
    with the ``batch_size=`` it passes, else Keras' default; None when the cell trains none,
    several, or with several batch sizes."""
    keras = sys.modules.get("keras")
    if keras is None:
        return None
    names = set(_CALL.findall(source))
    models = [namespace[n] for n in names if isinstance(namespace.get(n), keras.Model)]
    batches = set(BATCH_SIZE.findall(source))
    if len(models) != 1 or len(batches) > 1:
        return None
    if not batches:
        return models[0], KERAS_DEFAULT_BATCH
    given = batches.pop()
    value = int(given) if given.isdigit() else namespace.get(given)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        return None  # an expression kmem does not evaluate: no plan rather than a wrong one
    return models[0], value
