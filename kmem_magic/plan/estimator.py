"""Predict the GPU memory one training step of a Keras model needs, before it runs.

>>> est = kmem_magic.estimate(model, batch_size=256)                 # doctest: +SKIP
>>> est.total_bytes, est.per_sample_bytes                            # doctest: +SKIP
>>> est                                                              # doctest: +SKIP
estimate for batch 256 (jax, float32): --limit 1.36 GiB trains it (allocated peak 1.21 GiB)
  weights ... gradients ... optimizer slots ... activations ... allocator reserve ...
  CUDA context ... (outside the limit, on the device)

Nothing runs and nothing is allocated: the figures come from the model's layer graph (the
shape of every layer's output), its variables and its optimizer. What the backward pass keeps
per layer depends on the backend: torch runs eagerly and keeps what each op saved (the
indices of a max pooling, both ends of a GELU, the normalized input of a batch norm); jax and
TensorFlow compile the step and keep less. The peak is found by walking the backward pass:
at layer k the activations of layers 1..k are still alive, the weight gradients of layers
k..n already exist, and layer k's own gradient temporaries come on top; the optimizer phase
(all gradients plus the update's temporaries) is the other candidate.

The widely copied "parameters + layer outputs x batch" formula leaves out gradients, optimizer
slots, temporaries and the saved intermediates; ``benchmarks/estimate_zoo.py`` measures both
against the allocator on a GPU (``docs/benchmarks.md``).
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from .. import sizes
from ..sizes import MiB, format_bytes

# Slot variables per trainable variable, by optimizer class (the option that adds one).
_SLOTS = {
    "SGD": 0, "Adam": 2, "AdamW": 2, "Adamax": 2, "Nadam": 2, "Adadelta": 2, "Adagrad": 1,
    "RMSprop": 1, "Lion": 1, "Ftrl": 2, "Lamb": 2, "Muon": 2, "ScheduleFreeAdamW": 2,
}
# Activations whose derivative needs the input (kept besides the output), and those whose
# derivative is computed from the output alone.
_SAVED_TWICE = {"gelu", "silu", "swish", "elu", "selu", "mish", "softplus", "hard_silu"}
_READS_OUTPUT = {"relu", "relu6", "sigmoid", "tanh", "softmax", "exponential", "leaky_relu"}
# Layers whose backward step reads their input: matrix products need it for the weight
# gradient, normalizations for the statistics, max pooling to route the gradient.
_READS_INPUT = {"Dense", "EinsumDense", "LayerNormalization", "BatchNormalization",
                "GroupNormalization", "UnitNormalization", "Multiply", "MultiHeadAttention",
                "LSTM", "GRU", "SimpleRNN", "Attention"}
_READS_INPUT_PREFIX = ("Conv", "DepthwiseConv", "SeparableConv", "MaxPooling")
_GATES = {"LSTM": 4, "GRU": 3, "SimpleRNN": 1}
_VIEWS = {"InputLayer", "Flatten", "Reshape", "Identity", "Masking", "ActivityRegularization"}
# torch's Adam family updates with foreach ops whose intermediates (the squared gradients,
# sqrt(v) + eps, m * step) are each as large as all the gradients together.
_TORCH_UPDATE = {"Adam": 3.0, "AdamW": 3.0, "Adamax": 3.0, "Nadam": 3.0, "SGD": 1.0}
# What the allocator holds beyond the step's tensors, measured on an H200: torch draws its
# cuBLAS workspaces (one per thread: forward and autograd) from it; under jax, XLA's
# workspaces and the allocator's rounding came to about as much.
_WORKSPACE = {"torch": 64 * MiB, "jax": 64 * MiB}
# The smallest hard limit under which a step trains is more than its allocated peak: the
# allocator maps memory in pages and segments that free blocks leave partly used, and a first
# step's library workspaces (cuDNN's algorithm search) come on top. Fitted as (share of the
# peak, fixed bytes) to the smallest working limits of the zoo's seven calibration models on
# torch with expandable segments (kmem's policy; benchmarks/limit_zoo.py, H200), three models
# held out. jax takes the same pair, checked safe there but not fitted: under a limit XLA
# recompiles into less than its uncapped peak. TensorFlow's was never checked on a GPU.
_RESERVE = {"torch": (0.105, 28 * MiB), "jax": (0.105, 28 * MiB),
            "tensorflow": (0.105, 28 * MiB)}
# What a process holds on the device outside every framework limit: the CUDA context and the
# runtime's modules (NVML's figure for the process less the framework's pool, H200, driver
# 580: torch 2.11 and jax 0.11). Read live from the running process where NVML can.
_CONTEXT = {"torch": 758 * MiB, "jax": 630 * MiB, "tensorflow": 600 * MiB}
CALIBRATED = ("torch", "jax")


def largest_where(fits: Callable[[int], bool], ceiling: int) -> int:
    """The largest batch size in [1, ceiling] for which ``fits`` holds (memory grows with the
    batch, so ``fits`` is monotone); 0 if not even 1 does."""
    if ceiling < 1 or not fits(1):
        return 0
    low, high = 1, 2
    while high <= ceiling and fits(high):
        low, high = high, high * 2
    high = min(high, ceiling + 1)
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if fits(middle) else (low, middle)
    return low


def limit_for(peak_bytes: float, backend: str) -> int:
    """The smallest hard limit (``--limit``) under which a step whose allocated peak is
    ``peak_bytes`` trains on ``backend``: the peak plus the allocator's reserve."""
    share, fixed = _RESERVE.get(backend, _RESERVE["torch"])
    return math.ceil(peak_bytes * (1 + share) + fixed)  # rounded up: a limit never falls short


def peak_under(limit_bytes: float, backend: str) -> int:
    """The largest allocated peak that trains under a hard limit of ``limit_bytes``: the
    inverse of :func:`limit_for`, the one model the finder and the advice share."""
    share, fixed = _RESERVE.get(backend, _RESERVE["torch"])
    return max(0, int((limit_bytes - fixed) / (1 + share) + 1e-6))


@dataclass
class Estimate:
    """What one training step needs, predicted, with what it is made of (bytes).

    ``limit_bytes`` is the ``--limit`` under which the step is predicted to train: the
    allocated peak ``total_bytes`` plus ``reserve_bytes``, what the allocator holds beyond it.
    ``context_bytes`` (the CUDA context) is outside every framework limit; ``device_bytes``
    adds it. The parts of the peak do not simply add up: gradients and activations are never
    all alive at once, so ``total_bytes`` is at most their sum. ``fixed_bytes`` does not
    depend on the batch (weights, optimizer slots, the framework's workspaces);
    ``per_sample_bytes`` is what one more sample adds; :meth:`at` and :meth:`limit_at`
    predict another batch size.
    """

    batch_size: int
    backend: str
    compute_dtype: str
    weights_bytes: int
    gradients_bytes: int
    optimizer_bytes: int
    activations_bytes: int
    temporary_bytes: int
    batch_bytes: int
    total_bytes: int
    per_sample_bytes: float
    fixed_bytes: int
    layers: List[Tuple[str, int]] = field(default_factory=list, repr=False)
    _peak_at: Optional[Callable[[int], int]] = field(default=None, repr=False, compare=False)
    workspace_bytes: int = 0
    reserve_bytes: int = 0
    limit_bytes: int = 0
    context_bytes: int = 0
    context_source: str = "typical"
    dtype_policy: str = ""

    @property
    def device_bytes(self) -> int:
        """What the device must have free: the limit to set plus the CUDA context, which
        every framework's limit leaves out."""
        return self.limit_bytes + self.context_bytes

    @property
    def calibrated(self) -> bool:
        """Whether this backend's figures were checked against training under real limits on
        a GPU (TensorFlow's were not: it does not install on the GPU machine)."""
        return self.backend in CALIBRATED

    def at(self, batch_size: int) -> int:
        """The predicted allocated peak at another batch size (same model, optimizer, policy)."""
        return self._peak_at(batch_size) if self._peak_at else self.total_bytes

    def limit_at(self, batch_size: int) -> int:
        """The predicted smallest ``--limit`` under which a step at ``batch_size`` trains."""
        return limit_for(self.at(batch_size), self.backend)

    def largest_batch(self, limit_bytes: int, ceiling: int = 1 << 24) -> int:
        """The largest batch size predicted to train under a hard limit of ``limit_bytes``
        (the allocator's reserve included; 0 if none does)."""
        fits = peak_under(limit_bytes, self.backend)
        return largest_where(lambda batch: self.at(batch) <= fits, ceiling)

    def rows(self) -> List[Tuple[str, int]]:
        """The parts of the allocated peak, by name (they overlap in time: see the class)."""
        return [("weights", self.weights_bytes), ("gradients", self.gradients_bytes),
                ("optimizer slots", self.optimizer_bytes),
                ("activations kept for backward", self.activations_bytes),
                ("largest temporary", self.temporary_bytes), ("input batch", self.batch_bytes),
                ("workspace", self.workspace_bytes)]

    def __str__(self) -> str:
        policy = self.dtype_policy or self.compute_dtype
        lines = [f"estimate for batch {self.batch_size} ({self.backend}, {policy}): "
                 f"--limit {format_bytes(self.limit_bytes)} trains it (allocated peak "
                 f"{format_bytes(self.total_bytes)})"]
        lines += [f"  {name:<30} {format_bytes(size):>11}" for name, size in self.rows()]
        lines.append(f"  {'allocator reserve':<30} {format_bytes(self.reserve_bytes):>11}")
        lines.append(f"  {'= limit to set':<30} {format_bytes(self.limit_bytes):>11}")
        lines.append(f"  {'CUDA context':<30} {format_bytes(self.context_bytes):>11}  "
                     f"(outside the limit, on the device; {self.context_source})")
        lines.append(f"  {'= device memory needed':<30} {format_bytes(self.device_bytes):>11}")
        lines.append(f"  {'per extra sample':<30} {format_bytes(int(self.per_sample_bytes)):>11}")
        if self.layers:
            top = ", ".join(f"{name} {format_bytes(size)}" for name, size in self.layers[:3])
            lines.append(f"  largest activations: {top}")
        if not self.calibrated:
            lines.append(f"  ({self.backend}'s figures were never checked on a GPU: rough)")
        return "\n".join(lines)

    def _repr_pretty_(self, printer, cycle) -> None:
        printer.text(str(self))


def _keras():
    keras = sys.modules.get("keras")
    if keras is None:
        import keras  # noqa: F811 - estimate is only called by Keras users
    return keras


def _elements(shape: Sequence, batch: int) -> int:
    count = 1
    for i, dim in enumerate(shape):
        if dim is None:
            if i != 0:
                raise ValueError(f"a layer output has the shape {tuple(shape)}: estimate needs "
                                 "every dimension but the batch fixed (Input(shape=...))")
            dim = batch
        count *= int(dim)
    return count


def _slot_bytes(optimizer: Any, trainable) -> int:
    """Bytes of the optimizer's state: counted from its variables once built, else from
    the per-optimizer slot table (and the options that add a slot)."""
    inner = getattr(optimizer, "inner_optimizer", None)
    if inner is not None:  # LossScaleOptimizer: a few scalars around the real one
        return _slot_bytes(inner, trainable)
    if getattr(optimizer, "built", False) and optimizer.variables:
        return sizes.total_nbytes(optimizer.variables)
    kind = type(optimizer).__name__
    if kind == "Adafactor":  # a velocity, and for matrices a factored row and column
        total = 0
        for v in trainable:
            shape = [int(d) for d in v.shape]
            total += 4 * _elements(shape, 1)
            if len(shape) >= 2:
                total += 4 * (_elements(shape[:-1], 1) + _elements(shape[:-2] + shape[-1:], 1))
        return total
    slots = _SLOTS.get(kind, 2)
    config = optimizer.get_config()
    if config.get("amsgrad"):
        slots += 1
    if kind in ("SGD", "RMSprop") and config.get("momentum"):
        slots += 1
    if config.get("centered"):
        slots += 1
    if config.get("use_ema"):
        slots += 1
    return slots * sizes.total_nbytes(trainable)


def _nodes(model: Any) -> List[Tuple[Any, list, list]]:
    """``(layer, inputs, outputs)`` for every call of every layer, nested models opened."""
    found = []
    for layer in model.layers:
        if hasattr(layer, "layers") and layer.layers and getattr(layer, "_inbound_nodes", None):
            found.extend(_nodes(layer))
            continue
        for node in getattr(layer, "_inbound_nodes", []):
            found.append((layer, list(node.input_tensors), list(node.output_tensors)))
    return found


def _bytes_of(tensors, batch: int, itemsize: Optional[int]) -> int:
    return sum(_tensor_bytes(t, batch, itemsize) for t in tensors)


def _tensor_bytes(tensor: Any, batch: int, itemsize: Optional[int]) -> int:
    size = sizes.itemsize(tensor.dtype)
    if itemsize is not None and "float" in str(tensor.dtype):
        size = itemsize
    return _elements(tensor.shape, batch) * size


def _kind(layer: Any) -> str:
    return type(layer).__name__


def _activation(layer: Any) -> str:
    return getattr(getattr(layer, "activation", None), "__name__", "") or ""


def _needs_input(layer: Any) -> bool:
    """Whether the layer's backward step reads its input (so the input stays alive)."""
    kind = _kind(layer)
    if kind == "Activation":
        return _activation(layer) in _SAVED_TWICE
    return kind in _READS_INPUT or any(kind.startswith(p) for p in _READS_INPUT_PREFIX)


def _needs_output(layer: Any) -> bool:
    """Whether the layer's backward step reads its own output (relu, sigmoid, softmax...)."""
    return _activation(layer) in _READS_OUTPUT or _kind(layer) in ("Softmax", "ReLU")


def _internal(layer: Any, inputs, outputs, batch: int, backend: str,
              itemsize: Optional[int]) -> int:
    """Bytes a layer keeps for its backward step beyond its input and output tensors."""
    kind = _kind(layer)
    out = _bytes_of(outputs, batch, itemsize)
    elements = sum(_elements(t.shape, batch) for t in outputs)
    half = itemsize == 2 or any(sizes.itemsize(t.dtype) == 2 for t in outputs)
    extra = 0
    if _activation(layer) in _SAVED_TWICE and kind != "Activation":
        extra += out  # the pre-activation, which the derivative needs
    if kind.startswith(("Conv", "DepthwiseConv", "SeparableConv")):
        if backend == "torch":  # Keras is channels-last, torch convolves a channels-first copy
            extra += _bytes_of(inputs, batch, itemsize)
        elif _activation(layer) not in ("", "linear") and _activation(layer) not in _SAVED_TWICE:
            extra += out  # XLA keeps the pre-activation of a fused convolution
    elif kind == "BatchNormalization" and backend != "jax":
        # the centred input and the statistics' intermediates, in float32 (measured on
        # torch: 2.5 copies), and under float16 the float32 copy of the input on top
        extra += int((2.5 + half) * 4 * elements)
    elif kind == "LayerNormalization" and half and backend != "jax":
        extra += 4 * elements  # computed on a float32 copy
    elif kind.startswith("MaxPooling") and backend == "torch":
        # the int64 argmax indices, and the channels-first copy of the input
        extra += 8 * elements + _bytes_of(inputs, batch, itemsize)
    elif "Dropout" in kind and getattr(layer, "rate", 0):
        extra += elements  # the mask, a byte per element
    elif kind == "MultiHeadAttention":
        extra += _attention(layer, inputs, batch, backend,
                            itemsize or sizes.itemsize(outputs[0].dtype))
    elif kind in _GATES:
        extra += _recurrent(layer, inputs, batch, backend,
                            itemsize or sizes.itemsize(outputs[0].dtype))
    return extra


def _attention(layer, inputs, batch, backend, size) -> int:
    heads, key_dim = layer.num_heads, layer.key_dim
    value_dim = layer.value_dim or key_dim
    t_query = _elements(inputs[0].shape[1:-1], batch)
    t_key = _elements((inputs[1] if len(inputs) > 1 else inputs[0]).shape[1:-1], batch)
    head = batch * heads * size
    projections = head * (t_query * key_dim + t_key * key_dim + t_key * value_dim)
    # torch's fused attention reads contiguous copies of the projected query, key and value
    kept = projections * (2 if backend == "torch" else 1)
    kept += head * t_query * value_dim  # the attention output, before the output projection
    if backend != "torch" or getattr(layer, "dropout", 0):
        # without torch's fused attention the scores and their softmax are kept
        kept += 2 * head * t_query * t_key
    return int(kept)


def _recurrent(layer, inputs, batch, backend, size) -> int:
    steps = _elements(inputs[0].shape[1:-1], 1)
    width = layer.units if hasattr(layer, "units") else layer.cell.units
    # what one time step keeps, in units of the layer's width per gate (measured on an
    # H200): torch runs LSTMs through cuDNN, which keeps the gates and states, and other
    # cells step by step, keeping every op's inputs; jax runs LSTMs through cuDNN's RNN,
    # whose reserve space is larger, and other cells through a scan
    kind = _kind(layer)
    if backend == "torch":
        per_unit = _GATES[kind] * (2.4 if kind == "LSTM" else 5.5)
    else:
        per_unit = _GATES[kind] * (9 if kind == "LSTM" else 3.7)
    return int(steps * batch * per_unit * width * size)


def estimate(model: Any, batch_size: int, optimizer: Any = None,
             dtype_policy: Optional[str] = None) -> Estimate:
    """What one training step of ``model`` at ``batch_size`` needs: the limit to set, the
    allocated peak with a breakdown, and the CUDA context beside them (:class:`Estimate`).

    ``model`` is a built Sequential or functional Keras model (subclassed models have no layer
    graph to read). ``optimizer`` defaults to the model's compiled one (else Adam);
    ``dtype_policy`` (``"mixed_float16"``, ...) predicts the step under another policy
    without rebuilding the model: activations take its compute dtype, except the model's
    outputs, which mixed-precision models keep in float32.
    """
    keras = _keras()
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, not {batch_size!r}")
    if not isinstance(model, keras.Model):
        raise TypeError(f"estimate needs a Keras model, not {type(model).__name__}")
    if not model.built or not getattr(model, "_inbound_nodes", None) and not _has_graph(model):
        raise ValueError("estimate needs a built Sequential or functional model: give it an "
                         "Input (or call model.build(shape)); subclassed models have no layer "
                         "graph to read")
    if dtype_policy is not None:
        compute = keras.dtype_policies.get(dtype_policy).compute_dtype
        itemsize: Optional[int] = sizes.itemsize(compute)
    else:
        compute = model.dtype_policy.compute_dtype
        itemsize = None
    optimizer = optimizer if optimizer is not None else getattr(model, "optimizer", None)
    if isinstance(optimizer, str):
        optimizer = keras.optimizers.get(optimizer)
    if optimizer is None:
        optimizer = keras.optimizers.Adam()
    step = _Step(model, keras.config.backend(), str(compute), itemsize, optimizer)
    _, activations, temporary, gradients, named = step.parts(batch_size)
    total = step.peak_at(batch_size)
    # the memory that grows with the batch, per sample (where activations dominate)
    per_sample = (step.peak_at(2 * batch_size) - total) / batch_size
    named.sort(key=lambda item: item[1], reverse=True)
    limit = limit_for(total, step.backend)
    context, source = _context(step.backend)
    policy = dtype_policy or model.dtype_policy.name
    return Estimate(batch_size, step.backend, str(compute), step.weights, gradients, step.slots,
                    activations, temporary, step.data_bytes(batch_size), int(total), per_sample,
                    int(step.fixed), named, step.peak_at,
                    workspace_bytes=_WORKSPACE.get(step.backend, 0),
                    reserve_bytes=limit - int(total), limit_bytes=limit,
                    context_bytes=context, context_source=source, dtype_policy=policy)


def typical_context(backend: Optional[str]) -> int:
    """The CUDA context's bytes as measured on an H200 for ``backend`` (torch's if unknown)."""
    return _CONTEXT.get(backend or "torch", _CONTEXT["torch"])


def _context(backend: str) -> Tuple[int, str]:
    """``(bytes, where from)``: the CUDA context of this process, read as NVML's figure for it
    less what the framework's pool holds, when both can be read; else the typical figure."""
    from .. import _nvml, backends

    typical = typical_context(backend)
    try:
        framework = backends.by_name(backend)
        devices = _nvml.devices() if framework is not None and framework.is_initialized() \
            else []
        pool = framework.held_bytes(0) if devices else None
        used = _nvml.process_used(devices[0])[0] if pool else None
    except Exception:  # NVML or a framework's counter failed: the typical figure will do
        used = None
    if used and pool and 0 < used - pool < 4 * typical:
        return used - pool, "measured in this process"
    return typical, "typical on an H200"


class _Step:
    """One training step of a model, as the estimate models it: what does not depend on the
    batch is decided once (which outputs each layer keeps, each layer's gradient), and
    :meth:`peak_at` walks the backward pass for any batch size."""

    def __init__(self, model: Any, backend: str, compute: str, itemsize: Optional[int],
                 optimizer: Any) -> None:
        self.model, self.backend, self.itemsize = model, backend, itemsize
        trainable = model.trainable_variables
        self.weights = sizes.total_nbytes(model.variables)
        self.slots = _slot_bytes(optimizer, trainable)
        self.fixed = self.weights + self.slots + _WORKSPACE.get(backend, 0)
        self.nodes = [n for n in _nodes(model) if _kind(n[0]) != "InputLayer"]
        self.model_outputs = {id(t) for t in model.outputs}
        self.consumers: Dict[int, List[Tuple[Any, list]]] = {}
        for layer, ins, outs in self.nodes:
            for tensor in ins:
                self.consumers.setdefault(id(tensor), []).append((layer, outs))
        half = sizes.itemsize(compute) == 2
        # float16 kernel copies
        self.casts = sizes.total_nbytes(trainable) // 2 if half and backend != "jax" else 0
        self.update_factor = {"torch": _TORCH_UPDATE.get(_optimizer_kind(optimizer), 2.0),
                              "tensorflow": 1.0}.get(backend, 0.0)
        if half and "float16" in compute and "bfloat" not in compute and backend != "jax":
            self.update_factor += 1.0  # loss scaling unscales a copy of the gradients
        # a shared layer's weights get one gradient, however often the layer is called
        self.kept_outputs, self.grads, counted = [], [], set()
        for layer, _, outs in self.nodes:
            self.kept_outputs.append([] if _kind(layer) in _VIEWS else
                                     [t for t in outs if _needs_output(layer) or
                                      self._read_later(t)])
            self.grads.append(0 if id(layer) in counted else
                              sizes.total_nbytes(layer.trainable_variables))
            counted.add(id(layer))

    def _read_later(self, tensor: Any) -> bool:
        """Whether a backward step reads this tensor (through views such as Flatten)."""
        if id(tensor) in self.model_outputs:
            return True  # the loss reads the predictions
        for layer, outs in self.consumers.get(id(tensor), []):
            if _needs_input(layer) or _kind(layer) in _VIEWS and any(map(self._read_later, outs)):
                return True
        return False

    def parts(self, batch: int) -> Tuple[int, int, int, int, List[Tuple[str, int]]]:
        """``(step peak, activations kept, largest temporary, gradients, kept per layer)``."""
        kept, transient, named = [], [], []
        for (layer, ins, outs), keeps in zip(self.nodes, self.kept_outputs):
            size = None if any(id(t) in self.model_outputs for t in outs) else self.itemsize
            layer_kept = 0
            if _kind(layer) not in _VIEWS:
                layer_kept = sum(_tensor_bytes(t, batch, size) for t in keeps)
                layer_kept += _internal(layer, ins, outs, batch, self.backend, size)
            kept.append(layer_kept)
            transient.append(_bytes_of(outs, batch, size) + _bytes_of(ins, batch, size))
            named.append((layer.name, layer_kept))
        activations = sum(kept)
        peak_backward = 0
        alive_activations, grads_done = activations, 0
        for k in reversed(range(len(kept))):
            grads_done += self.grads[k]
            peak_backward = max(peak_backward, alive_activations + grads_done + transient[k])
            alive_activations -= kept[k]
        gradients = sum(self.grads)
        # XLA fuses the update into the backward pass: no gradient copies on jax
        update = int(self.update_factor * gradients)
        step_peak = max(peak_backward + self.casts, gradients + update)
        return step_peak, activations, max(transient + [0]), gradients, named

    def data_bytes(self, batch: int) -> int:
        """The batches on the device during ``fit``: Keras' jax trainer moves the next batch
        to the GPU while a step runs (``_one_batch_ahead_iterator``), so two are there."""
        one = _bytes_of(self.model.inputs, batch, None) + _target_bytes(self.model, batch)
        return one * (2 if self.backend == "jax" else 1)

    def peak_at(self, batch: int) -> int:
        return self.fixed + self.data_bytes(batch) + self.parts(batch)[0]


def _optimizer_kind(optimizer: Any) -> str:
    return type(getattr(optimizer, "inner_optimizer", None) or optimizer).__name__


def _has_graph(model: Any) -> bool:
    return bool(getattr(model, "outputs", None)) and bool(getattr(model, "layers", None))


def _target_bytes(model: Any, batch: int) -> int:
    """Labels: one integer per sample for a sparse loss, else the output's shape."""
    loss = getattr(model, "loss", None)
    name = loss if isinstance(loss, str) else type(loss).__name__ if loss is not None else ""
    if "sparse" in name.lower():
        return 4 * batch * len(model.outputs)
    return sum(_elements(t.shape, batch) * 4 for t in model.outputs)


def rule_of_thumb(model: Any, batch_size: int) -> int:
    """The widely copied ``get_model_memory_usage`` formula (parameters plus every layer's
    output times the batch, at 4 bytes), kept only to be compared against."""
    shapes = sum(_elements(outs[0].shape[1:], 1) for _, _, outs in _nodes(model) if outs)
    params = sum(_elements(v.shape, 1) for v in model.weights)
    return int(4 * (batch_size * shapes + params))


