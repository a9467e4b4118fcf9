"""TensorFlow: memory growth or a logical-device memory limit, and the allocator's counters.

TensorFlow's GPU settings are fixed when its runtime starts (the first op, tensor, or
``tf.config.list_logical_devices``), and by default it then maps nearly all GPU memory.
``TF_FORCE_GPU_ALLOW_GROWTH`` is read when the GPU allocator is created, so setting it before
the runtime starts is enough for growth. A memory limit exists only as an API call
(``set_logical_device_configuration``), made here right after the user's ``import tensorflow``.

``get_memory_info`` and ``reset_memory_stats`` start the runtime themselves: they are only called
once :meth:`TensorFlow.is_initialized` says the user's code has started it.
"""

from __future__ import annotations

import re
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..record import Device, Peak
from ..sizes import MiB, nbytes
from ._base import SIZE_PATTERN, Backend, Report, Setup, amount, loaded, too_late

# bytes per element of the type names TensorFlow's OOM message uses
_TYPE_BYTES = {"float": 4, "half": 2, "bfloat16": 2, "double": 8, "int8": 1, "uint8": 1,
               "int16": 2, "uint16": 2, "int32": 4, "uint32": 4, "int64": 8, "uint64": 8,
               "bool": 1, "complex64": 8, "complex128": 16}

GROWTH_ENV = "TF_FORCE_GPU_ALLOW_GROWTH"


class TensorFlow(Backend):
    name = "tensorflow"
    package = "tensorflow"
    color = "#ff7f0e"

    def is_initialized(self) -> bool:
        context = loaded("tensorflow.python.eager.context") if loaded("tensorflow") else None
        if context is None:
            return False
        ctx = context.context_safe()
        return ctx is not None and getattr(ctx, "_context_handle", None) is not None

    def _gpus(self) -> List[Any]:
        import tensorflow as tf

        return tf.config.list_physical_devices("GPU")  # does not start the runtime

    def growth_env(self) -> str:
        return f"{GROWTH_ENV}=true"

    def _configure(self, policy: Any, setup: Setup, devices: Sequence[Device]) -> Report:
        if self.is_initialized():
            return self._too_late(policy)
        _, env_text = setup.offer(GROWTH_ENV, "true")
        if self.is_imported():
            self._set_growth(setup)
        if policy.mode == "growth":
            return Report(self.name, f"memory growth on every GPU ({env_text})")
        limits = [policy.limit.bytes_of(d.total_bytes) for d in devices] or [policy.limit.bytes]
        if any(limit is None for limit in limits):
            return Report(self.name, f"growth only ({env_text}): a {policy.limit} limit "
                          "needs each GPU's total, and NVML cannot tell it")
        setup.after_import("tensorflow", lambda tf: self._set_limits(limits))
        when = "now" if self.is_imported() else "when TensorFlow is imported"
        return Report(self.name, f"memory growth ({env_text}), capped at "
                      f"{policy.limit} per GPU (logical device memory_limit, set {when})")

    def _set_growth(self, setup: Setup) -> None:
        # Once imported, setting the variable is still enough; the API call makes the choice
        # visible to tf.config.experimental.get_memory_growth too.
        if setup.is_users(GROWTH_ENV):
            return
        import tensorflow as tf

        for gpu in self._gpus():
            try:
                tf.config.experimental.set_memory_growth(gpu, True)
            except (ValueError, RuntimeError):
                pass  # a logical-device limit was set: it takes precedence, growth stays by env

    def _set_limits(self, limits: List[int]) -> None:
        import tensorflow as tf

        for gpu, limit in zip(self._gpus(), limits * len(self._gpus())):
            config = tf.config.LogicalDeviceConfiguration(memory_limit=max(1, limit // MiB))
            tf.config.set_logical_device_configuration(gpu, [config])

    def _too_late(self, policy) -> Report:
        import tensorflow as tf

        gpus = self._gpus()
        if not gpus:
            return Report(self.name, "already started, on the CPU only: nothing to set")
        if policy.mode == "growth" and all(
            tf.config.experimental.get_memory_growth(gpu) for gpu in gpus
        ):
            return Report(self.name, "already started, with memory growth on")
        what = "memory growth" if policy.mode == "growth" else f"a {policy.limit} limit"
        return Report(self.name, too_late("tensorflow", what, self.growth_env()))

    # ------------------------------------------------------------------ allocator counters
    _gpu_names: Optional[List[str]] = None

    def _names(self) -> List[str]:
        """``GPU:0``, ... of the started runtime (cached: they cannot change once it runs)."""
        if self._gpu_names is None:
            import tensorflow as tf

            self._gpu_names = [d.name.split("device:")[-1]
                               for d in tf.config.list_logical_devices("GPU")]
        return self._gpu_names

    def in_use(self) -> Dict[int, int]:
        if not self.is_initialized():
            return {}
        import tensorflow as tf

        found = {}
        for index, name in enumerate(self._names()):
            try:
                found[index] = int(tf.config.experimental.get_memory_info(name)["current"])
            except (ValueError, RuntimeError, tf.errors.OpError):
                pass  # e.g. cuda_malloc_async without statistics
        return found

    def reset_peak(self) -> Any:
        if not self.is_initialized():
            return {"started": False}
        import tensorflow as tf

        for name in self._names():
            try:
                tf.config.experimental.reset_memory_stats(name)
            except (ValueError, RuntimeError, tf.errors.OpError):
                pass
        return {"started": True}

    def read_peak(self, state: Any, sampled_max: Dict[int, int]) -> Dict[int, Peak]:
        if not self.is_initialized():
            return {}
        import tensorflow as tf

        note = "reset at cell start" if state and state["started"] else "started in this cell"
        peaks = {}
        for index, name in enumerate(self._names()):
            try:
                peak = int(tf.config.experimental.get_memory_info(name)["peak"])
            except (ValueError, RuntimeError, tf.errors.OpError):
                continue
            peaks[index] = Peak(peak, True, note)
        return peaks

    def tensor_types(self) -> tuple:
        tf = loaded("tensorflow")
        return (tf.Tensor, tf.Variable) if tf is not None else ()

    def sizeof(self, value: Any) -> Optional[Tuple[str, int]]:
        tf = loaded("tensorflow")
        if tf is not None and isinstance(value, (tf.Tensor, tf.Variable)):
            return "TensorFlow tensor", nbytes(value.shape, value.dtype)
        return None

    def oom_request(self, message: str) -> Optional[int]:
        found = re.search(r"OOM when allocating tensor with shape\[([\d,\s]*)\] and type (\w+)",
                          message)
        if found is None:
            found = re.search(r"trying to allocate " + SIZE_PATTERN, message)  # XLA under TF
            return amount(*found.groups()) if found else None
        elements = 1
        for dim in filter(None, (d.strip() for d in found.group(1).split(","))):
            elements *= int(dim)
        return elements * _TYPE_BYTES.get(found.group(2), 4)

    def is_oom(self, error: BaseException) -> bool:
        errors = getattr(loaded("tensorflow"), "errors", None)
        return errors is not None and isinstance(error, errors.ResourceExhaustedError)
