"""Before training under a ``keras.distribution`` layout: what each device will hold, and which
weights stayed replicated on every device because no layout rule matched them.

>>> check = kmem_magic.sharding(model, batch_size=256)               # doctest: +SKIP
>>> print(check)                                                     # doctest: +SKIP

A ``LayoutMap`` rule is a regular expression on a variable's path
(``sequential/embedding/embeddings``); one that matches nothing leaves the variable whole on
every device, which the user finds out as an out-of-memory error in ``fit``. The weights' bytes
per device are read from where the framework placed each variable (exact); the optimizer's
slots follow their weights' layout, and the activations the batch axis (both from the
planning estimate, :func:`kmem_magic.estimate`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Tuple

from .. import backends
from ..sizes import format_bytes, nbytes
from .estimator import estimate


@dataclass(frozen=True)
class Placed:
    """One variable: its bytes, its bytes on each device that holds it, its partition spec."""

    path: str
    bytes: int
    per_device_bytes: int
    spec: str
    replicated: bool
    on_mesh: bool = True  # False: on fewer devices than the mesh has (built before the layout)


@dataclass(frozen=True)
class ShardingCheck:
    """What each device holds of a model under its distribution (see the module's doc)."""

    devices: int
    mesh: str
    batch_shards: int
    weights_bytes: int
    weights_per_device: int
    variables: Tuple[Placed, ...] = ()
    batch_size: Optional[int] = None
    peak_per_device: Optional[int] = None  # the planning estimate of one step, per device
    layout_rules: int = 0

    @property
    def off_mesh(self) -> Tuple[Placed, ...]:
        """The variables not laid out on the mesh (on fewer of its devices), largest first:
        the model was built before ``set_distribution``."""
        return tuple(sorted((v for v in self.variables if not v.on_mesh),
                            key=lambda v: -v.bytes))

    @property
    def replicated(self) -> Tuple[Placed, ...]:
        """The variables whole on every device, largest first (with a layout map, those no
        rule matched)."""
        return tuple(sorted((v for v in self.variables if v.replicated),
                            key=lambda v: -v.bytes))

    def __str__(self) -> str:
        lines = [f"under {self.mesh} ({self.devices} devices): weights "
                 f"{format_bytes(self.weights_per_device)} per device of "
                 f"{format_bytes(self.weights_bytes)}"]
        if self.peak_per_device is not None:
            lines[0] += (f"; a training step at batch {self.batch_size} peaks near "
                         f"{format_bytes(self.peak_per_device)} per device (planning estimate)")
        off = self.off_mesh
        if self.devices > 1 and off:
            lines.append(f"{len(off)} of {len(self.variables)} variables "
                         f"({format_bytes(sum(v.bytes for v in off))}) are not laid out on the "
                         "mesh: the model was built before set_distribution; build (and "
                         "compile) it after, or inside distribution.scope()")
            lines += [f"  {v.path}  {format_bytes(v.bytes)}" for v in off[:5]]
        big = [v for v in self.replicated if v.bytes >= 0.01 * self.weights_bytes]
        if self.devices > 1 and big:
            why = "no layout rule matched its path" if self.layout_rules else \
                "the distribution shards only the batch"
            lines.append(f"replicated on every device ({why}):")
            lines += [f"  {v.path}  {format_bytes(v.bytes)}" for v in big[:10]]
        return "\n".join(lines)

    def _repr_pretty_(self, printer, cycle) -> None:
        printer.text(str(self))


def sharding(model: Any, batch_size: Optional[int] = None) -> ShardingCheck:
    """What each device holds of ``model`` under the current ``keras.distribution`` (its
    weights exactly, where the framework placed them; with ``batch_size``, a training step's
    peak per device, estimated), and the variables left whole on every device. Raises
    ``ValueError`` when no distribution is set (the model then trains on one device)."""
    import keras

    distribution = keras.distribution.distribution()
    if distribution is None:
        raise ValueError("no keras.distribution is set: the model trains on one device "
                         "(set one with keras.distribution.set_distribution)")
    mesh = distribution.device_mesh
    axes = dict(zip(mesh.axis_names, mesh.shape))
    batch_axis = getattr(distribution, "batch_dim_name", None) or \
        (mesh.axis_names[0] if mesh.axis_names else None)
    framework = backends.by_name(keras.config.backend())
    placed = []
    for variable in model.variables:
        size = nbytes(variable.shape, variable.dtype)
        found = framework.placement(variable.value) if framework is not None else None
        per_device, spec = (size, "") if found is None else found[:2]
        # whole on more than one device: a copy on each
        copies = found is not None and found[2] > 1 and per_device >= size
        on_mesh = found is None or found[2] >= mesh.devices.size
        placed.append(Placed(variable.path, size, per_device, spec, copies, on_mesh))
    total = sum(v.bytes for v in placed)
    each = sum(v.per_device_bytes for v in placed)
    rules = len(getattr(getattr(distribution, "_layout_map", None), "_layout_map", {}) or {})
    check = ShardingCheck(
        devices=int(mesh.devices.size), batch_shards=axes.get(batch_axis, 1),
        mesh=" x ".join(f"{name} {size}" for name, size in axes.items()),
        weights_bytes=total, weights_per_device=each, variables=tuple(placed),
        batch_size=batch_size, layout_rules=rules)
    if batch_size is None:
        return check
    est = estimate(model, batch_size)
    state = est.weights_bytes + est.gradients_bytes + est.optimizer_bytes
    share = each / total if total else 1.0
    per_batch = est.per_sample_bytes * batch_size
    peak = est.total_bytes - state * (1 - share) - per_batch * (1 - 1 / check.batch_shards)
    return ShardingCheck(**{**check.__dict__, "peak_per_device": int(max(peak, each))})


__all__ = ["Placed", "ShardingCheck", "sharding"]
