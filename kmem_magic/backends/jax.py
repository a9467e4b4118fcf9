"""JAX: no preallocation (or a memory fraction), the allocator's counters, XLA's step sizes.

By default JAX preallocates 75 % of each GPU when its backend starts (the first ``jax.devices()``
or operation, not ``import jax``). It reads ``XLA_PYTHON_CLIENT_PREALLOCATE`` and the memory
fraction at that moment, so environment variables are all kmem needs. ``jax.devices()`` and
``Device.memory_stats()`` start the backend themselves: they are only called once
:meth:`Jax.is_initialized` says the user's code has started it.

JAX has no way to reset its peak counter, so a cell's allocator peak is exact only when the
cell set a new lifetime record; otherwise the sampled maximum is reported as a lower bound.
For the same reason a training step's memory is read from XLA's buffer assignment of the
compiled step (:meth:`Jax.step_bytes`): the first step at a new shape also holds the
autotuner's scratch buffers, which XLA takes only when free.
"""

from __future__ import annotations

import math
import os
import re
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from ..record import Device, Peak
from ..sizes import total_nbytes
from ._base import SIZE_PATTERN, Backend, Report, Setup, amount, loaded, too_late

PREALLOCATE_ENV = "XLA_PYTHON_CLIENT_PREALLOCATE"
# jaxlib reads the newer XLA_CLIENT_MEM_FRACTION first and raises if both are set, so kmem sets
# the older spelling, which every jaxlib reads, and only when the user set neither.
FRACTION_ENVS = ("XLA_CLIENT_MEM_FRACTION", "XLA_PYTHON_CLIENT_MEM_FRACTION")


# What Keras' jax trainer passes through a step, by the number of parts of its ``state``.
_STATE_KEYS = {4: ("trainable_variables", "non_trainable_variables", "optimizer_variables",
                   "metrics_variables"),
               3: ("trainable_variables", "non_trainable_variables", "metrics_variables"),
               2: ("trainable_variables", "non_trainable_variables")}
_STATEFUL = ("fit", "evaluate", "predict")


def _tracer(jax) -> tuple:
    tracer = getattr(getattr(jax, "core", None), "Tracer", None)
    return (tracer,) if isinstance(tracer, type) else ()


class Jax(Backend):
    name = "jax"
    package = "jax"
    color = "#2ca02c"
    resettable_peak = False

    _devices: Optional[List[Any]] = None

    def is_initialized(self) -> bool:
        bridge = loaded("jax._src.xla_bridge") if loaded("jax") else None
        return bridge is not None and bool(bridge.backends_are_initialized())

    def _gpu_devices(self) -> List[Any]:
        """The started backend's GPUs (cached: a backend's devices never change)."""
        if self._devices is None:
            import jax

            try:
                self._devices = [d for d in jax.local_devices() if d.platform == "gpu"]
            except RuntimeError:
                return []
        return self._devices

    def growth_env(self) -> str:
        return f"{PREALLOCATE_ENV}=false"

    def _configure(self, policy: Any, setup: Setup, devices: Sequence[Device]) -> Report:
        if self.is_initialized():
            if not self._gpu_devices():
                return Report(self.name, "already started, on the CPU only")
            what = "no preallocation" if policy.mode == "growth" else f"a {policy.limit} limit"
            return Report(self.name, too_late("jax", what, self.growth_env()))
        _, env_text = setup.offer(PREALLOCATE_ENV, "false")
        if policy.mode == "growth":
            return Report(self.name, f"no preallocation ({env_text})")
        users = [name for name in FRACTION_ENVS if setup.is_users(name)]
        if users:
            return Report(self.name, f"no preallocation ({env_text}); your "
                          f"{users[0]}={os.environ[users[0]]} kept as the limit")
        totals = [d.total_bytes for d in devices]
        fraction = policy.limit.fraction_of(min(totals) if totals else None)
        if fraction is None:
            return Report(self.name, f"no preallocation ({env_text}): a {policy.limit} limit "
                          "needs the GPU's total, and NVML cannot tell it")
        # six digits, rounded down: four would move a limit by up to 14 MiB on an H200
        fraction = math.floor(fraction * 1e6 + 1e-6) / 1e6
        _, fraction_text = setup.offer(FRACTION_ENVS[1], f"{fraction:.6f}")
        return Report(self.name, f"no preallocation, capped at {policy.limit} "
                      f"({env_text}, {fraction_text})")

    # ------------------------------------------------------------------ allocator counters
    def stats(self) -> Dict[int, dict]:
        """Each GPU's ``memory_stats()`` (bytes_in_use, peak_bytes_in_use, bytes_limit, ...)
        by CUDA ordinal; empty until the user's code has started JAX."""
        if not self.is_initialized():
            return {}
        found = {}
        for device in self._gpu_devices():
            stats = device.memory_stats()
            if stats:
                index = getattr(device, "local_hardware_id", None)
                found[device.id if index is None else index] = stats
        return found

    def in_use(self) -> Dict[int, int]:
        return {i: int(s.get("bytes_in_use", 0)) for i, s in self.stats().items()}

    def reset_peak(self) -> Any:
        return {i: int(s.get("peak_bytes_in_use", 0)) for i, s in self.stats().items()}

    def read_peak(self, state: Any, sampled_max: Dict[int, int]) -> Dict[int, Peak]:
        peaks = {}
        for index, stats in self.stats().items():
            lifetime = int(stats.get("peak_bytes_in_use", 0))
            if index not in state:
                peaks[index] = Peak(lifetime, True, "started in this cell")
            elif lifetime > state[index]:
                peaks[index] = Peak(lifetime, True, "a new lifetime peak")
            else:
                bound = max(sampled_max.get(index, 0), int(stats.get("bytes_in_use", 0)))
                peaks[index] = Peak(bound, False, "lower bound: jax cannot reset its peak")
        return peaks

    def held_bytes(self, index: int = 0) -> Optional[int]:
        stats = self.stats().get(index)
        if stats is None:
            return None
        # the BFC allocator's pool (XLA reports it as pool_bytes), else what is in use
        return int(stats.get("pool_bytes") or stats.get("bytes_in_use", 0))

    def cap_bytes(self, index: int = 0) -> Optional[int]:
        limit = self.stats().get(index, {}).get("bytes_limit")
        return int(limit) if limit else None

    def tensor_types(self) -> tuple:
        jax = loaded("jax")
        return (jax.Array,) if jax is not None else ()

    def sizeof(self, value: Any) -> Optional[Tuple[str, int]]:
        jax = loaded("jax")
        if jax is not None and isinstance(value, jax.Array):
            if isinstance(value, _tracer(jax)):  # a traced value while compiling: no memory
                return None
            try:
                if value.is_deleted():  # donated to a step, or deleted: holds nothing
                    return None
            except Exception:
                pass
            return "jax array", int(value.nbytes)
        return None

    def placement(self, value: Any) -> Optional[Tuple[int, str, int]]:
        jax = loaded("jax")
        sharding = getattr(value, "sharding", None) if jax is not None else None
        if sharding is None or not hasattr(sharding, "shard_shape"):
            return None
        shard = sharding.shard_shape(tuple(value.shape))
        count = 1
        for dim in shard:
            count *= int(dim)
        spec = getattr(sharding, "spec", None)
        return (count * value.dtype.itemsize, str(tuple(spec)) if spec is not None else "",
                len(sharding.device_set))

    def restore_keras_state(self, frames: List[Any]) -> List[str]:
        """Give back to each Keras model its variables' values that Keras' jax trainer took
        out for a step that then failed: ``fit``/``evaluate``/``predict`` purge the variables
        and keep the values only in the step's ``state``, and their own sync (``finally:
        jax_state_sync()``) restores them only after a step that succeeded, so an error in
        the first step leaves a model with no weights. ``frames`` are the failed call's
        frames (``_cell.failed_frames``); returns the names of the models restored."""
        restored = []
        for frame in frames:
            model, state = frame.f_locals.get("self"), frame.f_locals.get("state")
            if frame.f_code.co_name not in _STATEFUL or not isinstance(state, tuple) or \
                    len(state) not in _STATE_KEYS or not hasattr(model, "jax_state_sync"):
                continue
            purged = [v for v in getattr(model, "variables", []) if getattr(v, "_value", 0)
                      is None]
            if not purged or any(getattr(a, "is_deleted", lambda: False)()
                                 for part in state for a in part):
                continue
            model._jax_state = dict(zip(_STATE_KEYS[len(state)], state))
            model._jax_state_synced = False
            model.jax_state_sync()
            model._jax_state = None
            restored.append(model.name)
        return restored

    def oom_request(self, message: str) -> Optional[int]:
        # XLA on a GPU: "while trying to allocate 518.00MiB"; on the CPU: "allocating N bytes"
        found = re.search(r"(?:trying to allocate|Out of memory allocating) " + SIZE_PATTERN,
                          message)
        return amount(*found.groups()) if found else None

    def job(self) -> Optional[dict]:
        """A ``jax.distributed`` job (Keras' ``keras.distribution.initialize``), read from the
        distributed client the user's code started; never starts one."""
        if not self.is_initialized():
            return None
        state = getattr(loaded("jax._src.distributed"), "global_state", None)
        if state is None or getattr(state, "client", None) is None:
            return None
        import jax

        count = jax.process_count()
        if count < 2:
            return None
        devices = []
        for device in jax.local_devices():
            stats = device.memory_stats() or {}
            devices.append(dict(id=int(device.id), platform=device.platform,
                                kind=str(device.device_kind),
                                in_use=stats.get("bytes_in_use"),
                                peak=stats.get("peak_bytes_in_use")))
        return dict(key=f"jax {state.coordinator_address} x{count}",
                    process=int(jax.process_index()), processes=int(count), devices=devices)

    def is_oom(self, error: BaseException) -> bool:
        return self.is_imported() and "RESOURCE_EXHAUSTED" in str(error)[:2000]

    # ------------------------------------------------------------------ compiled steps
    def step_bytes(self, model: Any, x: Any, y: Any) -> Optional[int]:
        """Bytes XLA assigns to one compiled ``model.train_step`` on ``(x, y)`` beyond the
        model's donated state (None where Keras' or JAX's internals differ)."""
        try:
            state = model._get_jax_state(trainable_variables=True, non_trainable_variables=True,
                                         optimizer_variables=True, metrics_variables=True)
            return xla_step_bytes(model.train_step, state, (x, y, None))
        except Exception:  # a Keras or JAX version whose internals differ: no figure
            return None

    def trace_steps(self, models: Sequence[Any]) -> list:
        traced = []
        for model in models:
            seen: Dict[str, Any] = {}
            original = model.train_step

            def train_step(state, data, _original=original, _seen=seen):
                _seen.setdefault("args", _abstract((state, data)))  # tracers have shapes
                return _original(state, data)

            model.train_step = train_step
            traced.append((original, seen))
        return traced

    def traced_step_bytes(self, traced: list) -> Optional[int]:
        """The largest traced step: its state, batch, temporaries and outputs."""
        sizes = []
        for train_step, seen in traced:
            if "args" in seen:
                state, data = seen["args"]
                try:
                    sizes.append(state_bytes(state) + xla_step_bytes(train_step, state, data))
                except Exception:  # JAX internals differ: the caller keeps its own figure
                    return None
        return max(sizes) if sizes else None


def _abstract(tree: Any) -> Any:
    import jax
    import numpy as np

    def leaf(a):
        dtype = a.dtype if hasattr(a, "dtype") else np.asarray(a).dtype
        return jax.ShapeDtypeStruct(np.shape(a), jax.dtypes.canonicalize_dtype(dtype))

    return jax.tree_util.tree_map(leaf, tree)


def xla_step_bytes(train_step: Callable, state: Any, data: Any) -> int:
    """Bytes XLA assigns to one compiled ``train_step(state, data)`` beyond its donated
    state: the batch, the temporaries and the outputs that do not reuse an input's buffer.
    ``state`` and ``data`` may be arrays or shapes (``jax.ShapeDtypeStruct``)."""
    import jax

    state, data = _abstract(state), _abstract(data)
    compiled = jax.jit(train_step, donate_argnums=0).lower(state, data).compile()
    analysis = compiled.memory_analysis()
    return int(state_bytes(data) + analysis.temp_size_in_bytes + analysis.output_size_in_bytes
               - analysis.alias_size_in_bytes)


def state_bytes(state: Any) -> int:
    """Bytes of a (possibly abstract) JAX state tree."""
    import jax

    return total_nbytes(jax.tree_util.tree_leaves(state))
