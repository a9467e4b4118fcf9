"""``%%gpumem --compare mixed_float16``: measure a cell's training under two dtype policies.

After the cell has run for real, its code runs four more times for a few steps
(``keras.config.set_max_steps_per_epoch``, one epoch), alternating the current global dtype
policy and the other; each policy keeps its smaller figure. Every run happens in a copy of the
user's namespace in which every Keras model is replaced by an untrained clone built for that
policy, so the user's models, weights and optimizer state are never touched. What is compared is
the rise of the allocator's peak over what was in use before each run (host RSS where there is
no GPU), which is the memory the training itself needed. JAX cannot reset its peak counter:
there the figure is XLA's buffer assignment for each clone's compiled training step (its
state, batch, temporaries and outputs).

Limits: a cell with other side effects (writing files, appending to a list it did not create)
repeats them four times; subclassed models cannot be cloned, so a cell that trains one is not
compared.
"""

from __future__ import annotations

import sys
import warnings
from dataclasses import dataclass
from typing import Any, Dict, Optional

from .. import _cell, backends
from ..measure import Measurement
from ..record import Suggestion
from ..sizes import format_bytes


@dataclass
class Run:
    """One comparison run: the dtype policy and the memory the training needed."""

    policy: str
    needed_bytes: Optional[int]
    source: str


class CompareError(Exception):
    """The cell cannot be compared (no Keras, a model that cannot be cloned, ...)."""


def _clone(keras: Any, model: Any, policy: str) -> Any:
    """An untrained copy of ``model`` whose layers compute in ``policy``, compiled alike."""

    def rebuild(layer):
        config = layer.get_config()
        config["dtype"] = policy
        return layer.__class__.from_config(config)

    try:
        clone = keras.models.clone_model(model, clone_function=rebuild)
    except Exception as error:
        raise CompareError(f"{type(model).__name__} cannot be cloned ({error}); "
                           "--compare needs Sequential or functional models") from None
    if getattr(model, "compiled", False) and getattr(model, "optimizer", None) is not None:
        optimizer = model.optimizer.__class__.from_config(model.optimizer.get_config())
        clone.compile(optimizer=optimizer, loss=model.loss)
    return clone


def _namespace(keras: Any, namespace: Dict[str, Any], policy: str) -> Dict[str, Any]:
    copy = dict(namespace)
    for name, value in namespace.items():
        if isinstance(value, keras.Model):
            copy[name] = _clone(keras, value, policy)
    return copy


def _needed(run_record) -> tuple:
    """Rise of the peak over what was in use before: allocator on a GPU, else host RSS."""
    rises = []
    for figures in run_record.gpu.values():
        for name in backends.NAMES:
            peak = figures.peak.get(name)
            if peak is not None and peak.bytes is not None:
                rises.append(peak.bytes - (figures.before.get(name) or 0))
    if rises:
        return max(rises), "allocator"
    peak = run_record.host.peak.get("host")
    before = run_record.host.before.get("host")
    if peak is None or peak.bytes is None or before is None:
        return None, "unknown"
    return peak.bytes - before, "host RSS"


def _smallest(runs) -> Run:
    known = [r for r in runs if r.needed_bytes is not None]
    return min(known, key=lambda r: r.needed_bytes) if known else runs[0]


def compare(code: _cell.Code, namespace: Dict[str, Any], other: str = "mixed_float16",
            steps: int = 5, interval_s: float = 0.1) -> tuple:
    """Run ``code`` (a compiled cell) under the current dtype policy and under ``other`` on
    clones; returns ``(runs, suggestion or None, one line of text)``."""
    keras = sys.modules.get("keras")
    if keras is None:
        raise CompareError("--compare needs Keras imported")
    current = keras.config.dtype_policy().name
    if current == other:
        raise CompareError(f"the global dtype policy already is {other}")
    saved = (keras.config.dtype_policy(), keras.config.max_steps_per_epoch(),
             keras.config.max_epochs())
    try:
        keras.config.set_max_steps_per_epoch(steps)
        keras.config.set_max_epochs(1)
        # Twice each, alternating, keeping each policy's smaller figure: the first run of all
        # pays one-time costs (kernel caches, compilation) that must not count for either.
        runs = [_run(keras, code, namespace, policy, interval_s)
                for policy in (current, other, current, other)]
    finally:
        keras.config.set_dtype_policy(saved[0])
        keras.config.set_max_steps_per_epoch(saved[1])
        keras.config.set_max_epochs(saved[2])
    base, alt = (_smallest([r for r in runs if r.policy == p]) for p in (current, other))
    if base.needed_bytes is None or alt.needed_bytes is None:
        return runs, None, "--compare: the memory needed could not be measured here"
    saving = base.needed_bytes - alt.needed_bytes
    change = (f"{alt.policy} saves {format_bytes(saving)}" if saving > 0 else
              f"{alt.policy} needs {format_bytes(-saving)} more" if saving < 0 else "the same")
    line = (f"--compare ({steps} steps, {base.source}): {base.policy} needed "
            f"{format_bytes(base.needed_bytes)}, {alt.policy} {format_bytes(alt.needed_bytes)} "
            f"({change})")
    if saving <= 0:
        return runs, None, line
    suggestion = Suggestion(
        "mixed-precision-measured",
        f"{alt.policy} needed {format_bytes(saving)} less "
        f"({100 * saving / base.needed_bytes:.0f} %)",
        f"measured over {steps} training steps on clones of your models: {base.policy} "
        f"{format_bytes(base.needed_bytes)}, {alt.policy} {format_bytes(alt.needed_bytes)} "
        f"({base.source}, rise of the peak over what was in use before).",
        f"keras.mixed_precision.set_global_policy({alt.policy!r})  # then build the model again\n"
        "# keep the last layer in float32: Dense(..., dtype='float32')",
        saving, "measured")
    return runs, suggestion, line


def _run(keras: Any, code: _cell.Code, namespace: Dict[str, Any], policy: str,
         interval_s: float) -> Run:
    """One run of the cell under the global dtype ``policy``, on fresh clones of its models."""
    keras.config.set_dtype_policy(policy)
    scratch = _namespace(keras, namespace, policy)
    framework = backends.by_name(keras.config.backend())
    # where the peak cannot be reset (jax), size each clone's compiled step instead
    traced = [] if framework is None or framework.resettable_peak else \
        framework.trace_steps([v for v in scratch.values() if isinstance(v, keras.Model)])
    measurement = Measurement(interval_s=interval_s).start()
    error = None
    try:
        with warnings.catch_warnings():  # "Limiting steps_per_epoch to 5" and the like
            warnings.simplefilter("ignore", UserWarning)
            _cell.run(code, scratch)
    except Exception as raised:
        error = raised
    finally:
        record = measurement.finish(error)
    if error is not None:
        raise CompareError(f"the {policy} run failed: {type(error).__name__}: {error}")
    needed, source = _needed(record)
    compiled = framework.traced_step_bytes(traced) if traced else None
    if compiled is not None:
        needed, source = compiled, "XLA buffer assignment"
    return Run(policy, needed, source)
