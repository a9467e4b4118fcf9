"""An out-of-memory error, read as a post-mortem while its frames are still alive.

>>> pm = examine(error, record, shell.user_ns, code.filename)       # doctest: +SKIP
>>> pm.where, pm.request_bytes, pm.limit_bytes                        # doctest: +SKIP
("layer 'wide' (Dense, output (None, 1048576))", 4398046511104, 2147483648)

:func:`examine` runs when the cell's error leaves it, before IPython shows the traceback and
before kmem releases the failed frames; :func:`released` completes it afterwards with what the
allocator had in use once they were gone. What it reads:

* the failed request, from the framework's message (``backends.oom_request``);
* where: the innermost Keras layer whose frame is in the traceback (torch's module frames
  keep it), else the layer Keras' error note names (``Exception encountered when calling
  Dense.call()`` and the input's shape), else the layer whose output is the failed request,
  else, inside a compiled step (jax, TensorFlow), the planning model's largest layer, said as
  an estimate; else the cell's own line;
* what was live: the allocator's in-use bytes at the failure, split into the model's weights
  and optimizer slots, the tensors the failed frames held, the other arrays of the namespace,
  and the rest, which no name holds (the failed step's activations and temporaries).

Reading only: nothing is freed here (``_cell.release_after_traceback`` does that).
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
from typing import Any, Dict, List, Optional, Tuple

import psutil

from .. import backends
from ..plan.breakdown import literal_batch_sizes, plan_of
from ..record import HOST, CellRecord, Holder, PostMortem, StepPlan
from ..sizes import total_nbytes
from .holders import scan

_CALLED = re.compile(r"Exception encountered when calling (\w+)\.call\(\)")
_INPUT_SHAPE = re.compile(r"inputs=\S*?\(shape=(?:torch\.Size\(\[|\()([\d, ]+)")
_TF_SHAPE = re.compile(r"shape\s*\[([\d,\s]*)\]")
SIZE_MATCH = 0.01  # a layer's output is the request if within 1 % (messages round: "2.26 GiB")


def examine(error: BaseException, record: CellRecord, namespace: Dict[str, Any],
            cell_filename: str = "") -> Tuple[PostMortem, Optional[StepPlan]]:
    """The post-mortem of ``error``, an out-of-memory error leaving a cell run in
    ``namespace`` (``record`` is the cell's measurement, taken with the frames still alive),
    and the failed step's :class:`StepPlan` when the planning model can read its model."""
    message = _text(error) or record.error_message
    source, in_use = _in_use(record, error)
    frames = _frames(error.__traceback__)
    model = _model(frames, namespace, record.source)
    layer, how, batch = _layer(frames, message, model)
    batch = batch or _batch(frames, record.source)
    est = _estimate(model, batch)
    request = backends.oom_request(message)
    if layer is None and model is not None and request is not None and batch:
        layer, how = _by_size(model, batch, request), "size"
    where, layer_name = "", ""
    if layer is not None:
        layer_name = layer.name
        where = f"layer '{layer.name}' ({type(layer).__name__}, output {_output_shape(layer)})"
    elif model is not None and _compiled(model):
        how = "estimate"
        where = (f"inside the compiled training step of model '{model.name}' (the framework "
                 "runs the step as one program, so no layer is in the traceback)")
        if est is not None and est.layers and est.layers[0][1] > 0:
            layer_name = est.layers[0][0]
            where += f"; its largest activation is layer '{layer_name}' (planning estimate)"
    else:
        where, how = _cell_line(frames, cell_filename), "line"
    shape = _TF_SHAPE.search(message)
    # host RSS is no allocator's count (untouched pages of a huge failed buffer are not in it,
    # the interpreter is): only an allocator's in-use bytes are split
    live = _split(in_use, model, frames, namespace) if in_use is not None and \
        source != HOST else ()
    limits = [d.limit_bytes for d in record.devices if d.limit_bytes]
    limit = limits[0] if limits else None
    pm = PostMortem(source=source, request_bytes=request,
                    request_shape=f"({shape.group(1)})" if shape else "", limit_bytes=limit,
                    where=where, how=how, layer=layer_name,
                    model=getattr(model, "name", "") or "", batch_size=batch,
                    in_use_bytes=in_use, live=live,
                    batch_that_fits=_batch_that_fits(est, record, limit, live))
    return pm, plan_of(est, model.name) if est is not None else None


def _estimate(model: Any, batch: Optional[int]) -> Any:
    """The planning model's estimate of the failed step (None where it cannot read it)."""
    from ..plan.estimator import estimate

    if model is None or not batch:
        return None
    try:
        return estimate(model, batch)
    except Exception:  # the plan is an extra: a model it cannot read costs only the plan
        return None


def _batch_that_fits(est: Any, record: CellRecord, limit: Optional[int],
                     live: Tuple[Holder, ...]) -> Optional[int]:
    """The largest batch the planning model predicts to train under the limit (else the
    device less its CUDA context, else the host's memory) beside the namespace's other arrays,
    the allocator's reserve included (:meth:`Estimate.largest_batch`)."""
    if est is None:
        return None
    if limit:
        ceiling = limit
    elif record.devices:
        ceiling = record.devices[0].total_bytes - est.context_bytes
    else:
        ceiling = psutil.virtual_memory().total
    others = sum(h.bytes for h in live if h.name == "other arrays")
    return est.largest_batch(int(ceiling) - others) or None


def released(record: CellRecord) -> CellRecord:
    """``record`` once kmem has released the failed frames: the allocators' and host figures
    after the cell read again (what the cell really left behind), and the post-mortem's
    ``in_use_after_bytes``. NVML's figures stay as read: the frameworks keep what they free in
    their pools, so the device figures do not change."""
    from .._host import host_rss

    gpu = {}
    for device in record.devices:
        figures = record.figures(device.index)
        gpu[device.index] = dataclasses.replace(figures, after=dict(figures.after))
    for name in record.frameworks:
        backend = backends.by_name(name)
        for index, used in backend.in_use().items():
            if index in gpu and name in gpu[index].after:
                gpu[index].after[name] = used
    host = dataclasses.replace(record.host, after={HOST: host_rss()})
    record = dataclasses.replace(record, gpu=gpu, host=host)
    pm = record.postmortem
    if pm is not None:
        after = host.after[HOST] if pm.source == HOST else _summed(record, pm.source)
        record = dataclasses.replace(
            record, postmortem=dataclasses.replace(pm, in_use_after_bytes=after))
    return record


def _summed(record: CellRecord, source: str) -> Optional[int]:
    values = [record.figures(d.index).after.get(source) for d in record.devices]
    return sum(v or 0 for v in values) if any(v is not None for v in values) else None


# --------------------------------------------------------------------------- reading
def _frames(tb) -> List[Any]:
    """The failed call's frames, outermost first: :func:`kmem_magic._cell.failed_frames`."""
    from .._cell import failed_frames

    return failed_frames(tb)


def _text(error: BaseException) -> str:
    """The error's text: Keras' note (the layer and its input's shape) comes after the
    framework's message, which can be long."""
    try:
        return str(error)[:50_000]
    except Exception:
        return ""


def _in_use(record: CellRecord, error: BaseException) -> Tuple[str, Optional[int]]:
    """The allocator that failed and what it had in use at the failure (read by the cell's
    measurement before anything was released); host RSS where there is no GPU."""
    if not record.devices:
        return HOST, record.host.after.get(HOST)
    # the framework whose message it is first, then any that ran
    names = sorted(record.frameworks, key=lambda name: (
        not backends.by_name(name).is_oom(error), name != backends.keras_backend()))
    for name in names:
        values = [record.figures(d.index).after.get(name) for d in record.devices]
        if any(v is not None for v in values):
            return name, sum(v or 0 for v in values)
    return (names[0] if names else HOST), None


def _is(value: Any, names: Tuple[str, ...]) -> bool:
    """Whether ``value``'s class derives from a Keras class called one of ``names``."""
    try:
        return any(c.__name__ in names and c.__module__.startswith("keras")
                   for c in type(value).__mro__)
    except Exception:
        return False


def _model(frames: List[Any], namespace: Dict[str, Any], source: str) -> Any:
    """The outermost Keras model in the traceback (what the user called ``fit`` on: Keras'
    traceback filter keeps its ``error_handler`` frame, whose first argument it is), else the
    one model the cell names."""
    for frame in frames:
        args = frame.f_locals.get("args")
        first = args[:1] if isinstance(args, tuple) else ()
        for candidate in (frame.f_locals.get("self"), *first):
            if _is(candidate, ("Model",)):
                return candidate
    keras = sys.modules.get("keras")
    if keras is None:
        return None
    named = {n for n in re.findall(r"\b([A-Za-z_]\w*)\.(?:fit|predict|evaluate|train_on_batch|"
                                   r"__call__)\(", source)}
    models = [namespace[n] for n in named if isinstance(namespace.get(n), keras.Model)]
    return models[0] if len(models) == 1 else None


def _layer(frames: List[Any], message: str, model: Any) -> Tuple[Any, str, Optional[int]]:
    """``(layer, how, batch)``: the innermost Keras layer (not a model) in the traceback,
    else the one Keras' error note names; ``(None, "", batch)`` when neither does."""
    for frame in reversed(frames):
        layer = frame.f_locals.get("self")
        if _is(layer, ("Layer",)) and not _is(layer, ("Model",)):
            return layer, "traceback", _leading(frame.f_locals.get("inputs"))
    called, shape = _CALLED.search(message), _INPUT_SHAPE.search(message)
    dims = [int(d) for d in shape.group(1).replace(" ", "").split(",") if d] if shape else []
    batch = dims[0] if dims else None
    if called is None or model is None:
        return None, "", batch
    candidates = [layer for layer in _layers(model) if type(layer).__name__ == called.group(1)]
    if dims and len(candidates) > 1:
        candidates = [c for c in candidates if _input_dims(c) == dims[1:]] or candidates
    return (candidates[0], "message", batch) if candidates else (None, "", batch)


def _layers(model: Any) -> List[Any]:
    """Every layer of ``model``, nested models opened."""
    found = []
    for layer in getattr(model, "layers", []):
        found += _layers(layer) if getattr(layer, "layers", None) else [layer]
    return found


def _input_dims(layer: Any) -> Optional[List[int]]:
    try:
        return [int(d) for d in layer.input.shape[1:]]
    except Exception:
        return None


def _output_shape(layer: Any) -> str:
    try:
        return str(tuple(layer.output.shape))
    except Exception:
        return "unknown"


def _leading(tensor: Any) -> Optional[int]:
    try:
        return int(tensor.shape[0])
    except Exception:
        return None


def _batch(frames: List[Any], source: str) -> Optional[int]:
    """The batch size ``fit`` was given: its keyword in the traceback, else in the cell."""
    for frame in frames:
        kwargs = frame.f_locals.get("kwargs")
        if isinstance(kwargs, dict) and isinstance(kwargs.get("batch_size"), int):
            return kwargs["batch_size"]
    found = set(literal_batch_sizes(source))
    return found.pop() if len(found) == 1 else None


def _by_size(model: Any, batch: int, request: int) -> Any:
    """The layer whose output at ``batch`` is the failed request (within the message's
    rounding), if exactly one is."""
    from ..plan.estimator import _tensor_bytes

    matches = []
    for layer in _layers(model):
        try:
            size = _tensor_bytes(layer.output, batch, None)
        except Exception:
            continue
        if abs(size - request) <= SIZE_MATCH * request:
            matches.append(layer)
    return matches[0] if len(matches) == 1 else None


def _compiled(model: Any) -> bool:
    """Whether the step ran compiled (jax always jits it; TensorFlow unless run eagerly)."""
    backend = backends.keras_backend()
    return backend in ("jax", "tensorflow") and not getattr(model, "run_eagerly", False)


def _cell_line(frames: List[Any], filename: str) -> str:
    """``line 3: big = ...``, the innermost line of the cell in the traceback."""
    import linecache

    for frame in reversed(frames):
        if frame.f_code.co_filename == filename:
            text = linecache.getline(filename, frame.f_lineno).strip()
            return f"line {frame.f_lineno} of the cell: {text}" if text else \
                f"line {frame.f_lineno} of the cell"
    return "the cell"


# --------------------------------------------------------------------------- the split
def _split(in_use: int, model: Any, frames: List[Any],
           namespace: Dict[str, Any]) -> Tuple[Holder, ...]:
    """An allocator's ``in_use`` split into what kmem can name; the rest is never hidden."""
    parts: List[Holder] = []
    owned: set = set()
    if model is not None:
        variables = list(getattr(model, "variables", []))
        slots = list(getattr(getattr(model, "optimizer", None), "variables", None) or [])
        variables = [v for v in variables if _value(v) is not None]
        slots = [v for v in slots if _value(v) is not None]
        owned = {id(_value(v)) for v in variables + slots}
        parts.append(Holder("weights", f"model '{model.name}'", total_nbytes(variables)))
        parts.append(Holder("optimizer slots", f"model '{model.name}'", total_nbytes(slots)))
    # the namespace's own tensors are "other arrays": clearing the frames does not free them
    named = {id(v) for v in list(namespace.values())}
    parts.append(Holder("the failed frames' tensors", "their locals, cleared by kmem",
                        _frame_tensors(frames, owned | named)))
    others = sum(h.bytes for h in scan(namespace)
                 if not h.kind.startswith("Keras ") and _on_gpu(h.kind))
    # an array whose own allocation failed (jax dispatches asynchronously: the name exists,
    # its buffer never did) is not in use: never more than what the allocator has left
    if others <= in_use - sum(p.bytes for p in parts):
        parts.append(Holder("other arrays", "in the namespace", others))
    rest = in_use - sum(p.bytes for p in parts)
    parts.append(Holder("no name", "the failed step's activations, gradients and temporaries",
                        max(rest, 0)))
    return tuple(p for p in parts if p.bytes > 0)


def _on_gpu(kind: str) -> bool:
    """Whether a holder's kind is memory on a device (not numpy's, not a torch CPU tensor)."""
    kind = kind.lower()
    return "(host)" not in kind and "(cpu)" not in kind


_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _value(variable: Any) -> Any:
    """The array a Keras variable holds, without ``.value`` (which, on a variable Keras' jax
    trainer emptied, runs the initializer: a new full-size array right after an OOM)."""
    return getattr(variable, "_value", variable)


def _frame_tensors(frames: List[Any], owned: set) -> int:
    """Bytes of the framework tensors the failed frames' locals hold (one level into lists,
    tuples and dicts, each tensor once), leaving out the model's own variables."""
    seen, total = set(owned), 0
    for frame in frames:
        if frame.f_locals is frame.f_globals or frame.f_code.co_filename.startswith(_PACKAGE):
            continue  # the cell's own frame is the namespace; kmem's frames hold no tensors
        for value in list(frame.f_locals.values()):
            items = value if isinstance(value, (list, tuple)) else \
                list(value.values()) if isinstance(value, dict) else [value]
            for item in list(items)[:1000]:
                for leaf in (item if isinstance(item, (list, tuple)) else [item]):
                    if id(leaf) in seen:
                        continue
                    found = backends.sizeof(leaf)
                    if found is not None and _on_gpu(found[0]):
                        seen.add(id(leaf))
                        total += found[1]
    return total
