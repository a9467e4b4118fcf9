"""Suggestions backed by measurements: records in, ranked suggestions with their evidence out.

Every rule is a pure function of the cell's :class:`~kmem_magic.record.CellRecord`, the earlier
records and a :class:`Context` (what lives in the user's namespace, the dtype policy). A rule
speaks only when its numbers say so, gives the numbers that made it speak, the expected saving
(and whether that was measured or estimated) and the code to apply. A healthy cell gets nothing.
A new rule is one function here, added to :data:`RULES`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence, Tuple

from .. import backends
from ..plan.breakdown import BATCH_SIZE, literal_batch_sizes
from ..plan.estimator import peak_under, typical_context
from ..plan.finder import fit_line, room_under
from ..record import HOST, RULE_FAULT, CellRecord, Suggestion
from ..sizes import GiB, MiB, format_bytes
from .holders import LiveObject


@dataclass
class Context:
    """What the rules may know beside the records. What costs a walk over the user's namespace
    (``live``, and the Keras sizes when ``keras_state`` is given) is computed only when a rule
    asks, so that a cell no rule fires on pays nothing for a large namespace."""

    live_objects: Callable[[], List[LiveObject]] = list
    dtype_policy: Optional[str] = None
    keras_weights_bytes: int = 0
    keras_optimizer_bytes: int = 0
    keras_state: Optional[Callable[[], Tuple[int, int]]] = field(default=None, repr=False)
    # what failed on this record, a line each: a rule ("rule near_limit: ValueError(...)"),
    # the holders scan ("holders: RecursionError(...)")
    faults: List[str] = field(default_factory=list)
    _live: Optional[List[LiveObject]] = field(default=None, repr=False)
    _live_error: Optional[BaseException] = field(default=None, repr=False)

    @property
    def live(self) -> List[LiveObject]:
        """The holders in the user's namespace, scanned once; a scan that failed fails
        again for every rule that asks, without walking the namespace again."""
        if self._live_error is not None:
            raise self._live_error
        if self._live is None:
            try:
                self._live = list(self.live_objects())
            except Exception as error:
                self._live_error = error
                raise
        return self._live

    def keras(self) -> Tuple[int, int]:
        """Bytes of the Keras models' weights and of their optimizer state."""
        if self.keras_state is not None:
            self.keras_weights_bytes, self.keras_optimizer_bytes = self.keras_state()
            self.keras_state = None
        return self.keras_weights_bytes, self.keras_optimizer_bytes


# --------------------------------------------------------------------------- helpers
def _allocator(record: CellRecord, device: int) -> Optional[tuple]:
    """(framework, peak bytes, exact) with the largest allocator peak on ``device``."""
    figures = record.figures(device)
    best = None
    for name in backends.NAMES:
        peak = figures.peak.get(name)
        if peak is not None and peak.bytes is not None and (best is None or peak.bytes > best[1]):
            best = (name, peak.bytes, peak.exact)
    return best


def _framework_left(record: CellRecord) -> Optional[tuple]:
    """What the cell left behind in framework memory, and where it was measured: the
    allocators on the GPUs, else (no GPU, and Keras running) the host, where the frameworks
    then keep it."""
    if not record.devices and not record.backend:
        return None  # host memory without a framework is not the frameworks'
    return record.left_in_frameworks()


def _identifier(name: str) -> bool:
    return name.isidentifier()


def _batch_size(source: str) -> Optional[int]:
    found = literal_batch_sizes(source)
    return found[0] if found else None


def _template(source: str) -> str:
    return BATCH_SIZE.sub("batch_size=?", source.strip())


# --------------------------------------------------------------------------- rules
def preallocation(record: CellRecord, history: Sequence[CellRecord], ctx: Context):
    """The process holds far more GPU memory than its allocator ever needed."""
    for device in record.devices:
        held = record.figures(device.index).after.get("process")
        alloc = _allocator(record, device.index)
        if held is None or alloc is None:
            continue
        name, peak, _ = alloc
        excess = held - peak
        if excess < max(2 * GiB, 0.2 * device.total_bytes):
            continue
        code = f"# restart the kernel first ({name} has started: its pool is fixed now), then:\n"
        code += f"%load_ext kmem_magic   # first cell, before anything imports {name}"
        code += f"\n# or, before starting Jupyter: export {backends.by_name(name).growth_env()}"
        return Suggestion(
            "preallocation",
            f"{name} holds {format_bytes(held)} of GPU {device.index} but needed at most "
            f"{format_bytes(peak)}",
            f"this process holds {format_bytes(held)} (NVML) while the {name} allocator's peak "
            f"was {format_bytes(peak)}: the rest is a preallocated pool that other work "
            "cannot use.",
            code, excess, "measured")
    return None


_FORGOTTEN = ("_", "__", "___", "the last traceback")


def _forgotten(holder: LiveObject) -> bool:
    """A holder the user did not mean to keep: a displayed value or the last traceback."""
    return holder.name.startswith("Out[") or holder.name in _FORGOTTEN


def _freeing_code(holders: Sequence[LiveObject]) -> List[str]:
    """The lines that free what ``holders`` keep alive, and nothing more."""
    lines = []
    names = [h.name for h in holders if _identifier(h.name) and h.name not in _FORGOTTEN]
    if names:
        lines.append(f"del {', '.join(names[:5])}")
    if any(h.name.startswith("Out[") or h.name in ("_", "__", "___") for h in holders):
        lines.append("%reset -f out            # displayed values kept in Out[] and _")
    if any(h.name == "the last traceback" for h in holders):
        lines.append("import sys; sys.last_traceback = sys.last_value = None")
    return lines + ["import gc; gc.collect()"]


def left_behind(record: CellRecord, history: Sequence[CellRecord], ctx: Context):
    """The cell left framework memory behind that something forgotten keeps alive.

    Evidence needed: at least 128 MiB more in the allocators after the cell, and a forgotten
    holder (``Out[]``, ``_``, the last traceback) or no holder of the user's that accounts for
    half of it. Silent when the user's own variables hold what stayed (a model just built)."""
    left = _framework_left(record)
    if left is None or left[0] < 128 * MiB:
        return None
    delta, where = left
    # Only what could explain a real part of it: not the 1 MiB training data next to 2 GiB.
    holders = [h for h in ctx.live if h.bytes >= 0.1 * delta]
    forgotten = [h for h in holders if _forgotten(h)]
    accounted = sum(h.bytes for h in ctx.live)
    if not forgotten and accounted >= 0.5 * delta:
        return None  # what stayed is what the user's variables hold, on purpose
    shown = ", ".join(f"{h.name} ({h.kind}, {format_bytes(h.bytes)})" for h in holders[:5])
    evidence = f"{format_bytes(delta)} more in {where} after the cell than before."
    if not holders:
        return Suggestion(
            "left-behind", f"The cell left {format_bytes(delta)} behind, held by none of your "
            "objects", evidence + " kmem found no model, tensor or array of yours holding it: "
            "the framework keeps it (compiled steps, its pool, Keras' global state), and "
            "reuses it when the cell runs again.",
            "# if it grows on every run, see the suggestion for that; to give it back:\n"
            "import gc, keras\nkeras.utils.clear_session()  # also resets a mixed-precision "
            "policy\ngc.collect()")
    # the saving: what the named holders keep, sized from their shapes and dtypes
    freed = sum(h.bytes for h in holders)
    return Suggestion("left-behind", f"The cell left {format_bytes(delta)} behind",
                      evidence + f" Largest holders: {shown}.",
                      "\n".join(_freeing_code(holders)), min(freed, delta),
                      "estimated from the holders' sizes")


def _grown_holders(ctx: Context, growth: int) -> List[LiveObject]:
    """The user's own objects (not displayed values, not models) big enough to account for
    ``growth``: what a loop that keeps its results piles up."""
    return [h for h in ctx.live if not _forgotten(h) and not h.kind.startswith("Keras ")
            and h.bytes >= 0.5 * growth]


def regrowth(record: CellRecord, history: Sequence[CellRecord], ctx: Context):
    """The same cell leaks each time it runs, or memory rises cell after cell.

    Evidence needed: this cell's earlier runs (or the last three cells) each left at least 32
    MiB in the allocators. The loop patterns are named only when no object of the user's
    accounts for the growth; when one does, it is named instead, with the line that frees it."""
    left = _framework_left(record)
    if left is None or left[0] < 32 * MiB:
        return None
    same = [r for r in history if r.source.strip() and r.source.strip() == record.source.strip()]
    earlier = [(_framework_left(r) or (0, ""))[0] for r in same[-2:]]
    rerun = len(earlier) >= 1 and all(e >= 32 * MiB for e in earlier)
    streak = [(_framework_left(r) or (0, ""))[0] for r in history[-3:]]
    rising = len(streak) == 3 and all(s >= 32 * MiB for s in streak)
    if not (rerun or rising):
        return None
    runs = len(same) + 1 if rerun else 4
    what = "this cell" if rerun else "the last 4 cells"
    growth = left[0] * runs  # what the runs left, added up
    evidence = (f"{what} left memory behind on each of {runs} runs "
                f"({format_bytes(left[0])} this time, in {left[1]}).")
    grown = _grown_holders(ctx, growth)
    if grown:
        names = ", ".join(f"{h.name} ({h.kind}, {format_bytes(h.bytes)})" for h in grown[:3])
        return Suggestion(
            "regrowth", f"{grown[0].name} keeps what every run adds",
            evidence + f" It is held by your own objects: {names}.",
            "\n".join([f"{h.name}.clear()   # or keep only the last run's results"
                       if "list of" in h.kind or "dict of" in h.kind else f"del {h.name}"
                       for h in grown[:3] if _identifier(h.name)] + ["import gc; gc.collect()"]),
            sum(h.bytes for h in grown[:3]), "estimated from the holders' sizes")
    source = record.source
    loop = re.search(r"^\s*(for|while)\b", source, re.M)
    if loop and re.search(r"keras\.(Sequential|Model)\(|\.clone_model\(|build_model\(", source) \
            and "clear_session" not in source:
        return Suggestion(
            "regrowth", "Models built in a loop pile up in Keras' global state",
            evidence + " No object of yours holds it: Keras' global state keeps every model "
            "the loop built.",
            "for ...:\n    keras.utils.clear_session()   # first line of each iteration\n"
            "    model = ...")
    if loop and ".predict(" in source:
        return Suggestion(
            "regrowth", "predict() in a loop grows memory",
            evidence + " No object of yours holds it: each predict() call in the loop builds "
            "and keeps a new function.",
            "y = model(x, training=False)     # or model.predict_on_batch(x), inside loops")
    return Suggestion(
        "regrowth", "Memory grows every time this cell runs",
        evidence + " No model, tensor or array of yours holds it: the framework keeps it "
        "(compiled steps, its allocator pool), and clearing Keras' session may free none of it.",
        "%gpumem history      # does it keep growing, or settle after a few runs?")


def climb(record: CellRecord, history: Sequence[CellRecord], ctx: Context):
    """Memory that climbs through one cell, step after step: a loop that keeps tensors (a list
    of outputs, a growing history) or retraces functions (``train_on_batch``, ``predict`` with
    new shapes).

    Evidence needed: an allocator's in-use curve that rises in each of five equal spans of the
    cell, by at least 64 MiB and a fifth of its peak in all. Silent for a fit that allocates
    once and then stays flat."""
    for device in record.devices:
        for name in backends.NAMES:
            series = record.timeline.find(name, device.index)
            if series is None:
                continue
            values = [v for v in series.values if v is not None]
            if len(values) < 10:
                continue
            spans = [values[len(values) * i // 5:len(values) * (i + 1) // 5] for i in range(5)]
            highs = [max(span) for span in spans]
            rise = highs[-1] - values[0]
            if not all(b > a for a, b in zip(highs, highs[1:])) or \
                    rise < max(64 * MiB, 0.2 * highs[-1]):
                continue
            t = series.t_s[-1] - series.t_s[0] if len(series.t_s) > 1 else record.wall_s
            grown = _grown_holders(ctx, rise)
            held = (" Your objects that hold it: " + ", ".join(
                f"{h.name} ({h.kind}, {format_bytes(h.bytes)})" for h in grown[:3]) + "."
                if grown else " No object of yours holds it: compiled functions (retracing) "
                "or the framework's state do.")
            code = "\n".join(f"{h.name}.clear()" if "list of" in h.kind else f"del {h.name}"
                             for h in grown[:3] if _identifier(h.name)) if grown else (
                "# keep shapes fixed inside the loop (pad the last batch), and call\n"
                "# model(x, training=False) or predict_on_batch instead of predict in loops")
            return Suggestion(
                "climb", f"Memory climbed through the cell: +{format_bytes(rise)} in {name}",
                f"the {name} allocator on GPU {device.index} rose in each fifth of the cell, "
                f"from {format_bytes(values[0])} to {format_bytes(highs[-1])} over {t:.1f} s."
                + held, code)
    return None


def other_processes(record: CellRecord, history: Sequence[CellRecord], ctx: Context):
    """Other processes hold a good share of the GPU: named by notebook and user where their
    kernels keep a ledger record (``%gpumem who``), with what would free it there."""
    for device in record.devices:
        sharing = record.sharing
        peers = [p for p in sharing.on(device.index) if not p.me] if sharing else []
        by_pid = {p.pid: p for p in peers if not p.elsewhere}
        named, hidden = [], []  # (bytes, text, peer or None)
        for pid, name, used in record.others.get(device.index) or []:
            if not used:
                continue
            peer = by_pid.pop(pid, None)
            if peer is not None:
                named.append((used, f"{_peer_name(peer)} holds {format_bytes(used)}", peer))
            elif name:
                named.append((used, f"pid {pid} ({name}, no kmem) holds {format_bytes(used)}",
                              None))
            else:
                hidden.append(used)
        # kernels NVML could not name for us (a container): their own figures, said as such
        unmatched = [p for p in by_pid.values()] + [p for p in peers if p.elsewhere]
        ledger_only = [(p.holds, f"{_peer_name(p)} holds {format_bytes(p.holds)} "
                        f"({p.holds_source})", p) for p in unmatched if p.holds]
        total = sum(b for b, _, _ in named) + sum(hidden)
        if not named and not hidden:
            named, total = ledger_only, sum(b for b, _, _ in ledger_only)
        if total < max(1 * GiB, 0.1 * device.total_bytes):
            continue
        named.sort(key=lambda item: -item[0])
        parts = [text for _, text, _ in named[:5]]
        if hidden:
            among = f"; among them, by the ledger: {', '.join(t for _, t, _ in ledger_only)}" \
                if ledger_only else ""
            parts.append(f"{len(hidden)} process(es) this container cannot see (NVML reports "
                         f"host PIDs) hold {format_bytes(sum(hidden))}{among}")
        used = record.figures(device.index).after.get("device")
        free = f" This kernel can use {format_bytes(device.total_bytes - used)} more now " \
            f"(free on GPU {device.index}, NVML)." if used is not None else ""
        frees = [_how_to_free(peer) for _, _, peer in named[:5] if peer is not None]
        code = "\n".join(
            ["# free it where it is held:"] + [f"#   {line}" for line in frees] +
            ["#   or restart or shut down those kernels" if not frees else
             "#   other programs give it back only when they end"] +
            ["# or run here under a limit that leaves room for them:",
             f"%gpumem --limit {max(1, int((device.total_bytes - total) * 0.9 / GiB))}GiB"])
        return Suggestion("other-processes",
                          f"Other processes hold {format_bytes(total)} of GPU {device.index}",
                          "; ".join(parts) + "." + free, code, total, "measured")
    return None


def _peer_name(peer) -> str:
    """``train.ipynb (alice, jax, limit 20.00 GiB)``: a kmem kernel as the advice names it."""
    how = [peer.user, peer.backend or "no keras"]
    how.append(f"limit {format_bytes(peer.limit_bytes)}" if peer.limit_bytes else
               peer.policy or "no policy")
    if peer.elsewhere:
        how.append(f"on {peer.host}")
    return f"{peer.notebook} ({', '.join(how)})"


def _how_to_free(peer) -> str:
    """What gives back the memory ``peer`` holds, run in its own notebook."""
    where = f"in {peer.notebook}" + ("" if peer.same_user else f" (ask {peer.user})")
    if peer.backend == "torch" and peer.pool is not None and peer.in_use is not None \
            and peer.pool > peer.in_use:
        return (f"{where}: torch.cuda.empty_cache() gives back "
                f"{format_bytes(peer.pool - peer.in_use)} cached "
                f"(in use {format_bytes(peer.in_use)}); restarting its kernel gives back all")
    keeps = f"{peer.backend} keeps its pool until the process ends" if peer.backend in (
        "jax", "tensorflow") else "its memory comes back when the kernel ends"
    return f"{where}: restart its kernel ({keeps})"


def mixed_precision(record: CellRecord, history: Sequence[CellRecord], ctx: Context):
    """A float32 model whose activations dominate the peak: mixed precision halves them."""
    if ctx.dtype_policy != "float32":
        return None
    for device in record.devices:
        alloc = _allocator(record, device.index)
        if alloc is None or not alloc[2]:
            continue
        weights, slots = ctx.keras()
        if not weights:
            return None
        fixed = 2 * weights + slots  # weights, gradients, optimizer slots
        activations = alloc[1] - fixed
        # Small activations are mostly XLA/cuDNN workspace, which the dtype hardly changes.
        if activations < max(256 * MiB, 0.5 * alloc[1]):
            continue
        return Suggestion(
            "mixed-precision", "Activations dominate: mixed precision would roughly halve them",
            f"peak {format_bytes(alloc[1])} ({alloc[0]} allocator) of which weights, gradients "
            f"and optimizer slots are about {format_bytes(fixed)}; the rest, about "
            f"{format_bytes(activations)}, is activations and temporaries in float32.",
            "keras.mixed_precision.set_global_policy('mixed_float16')  # before building\n"
            "# keep the last layer in float32: Dense(..., dtype='float32')",
            activations // 2, "estimated")
    return None


def near_limit(record: CellRecord, history: Sequence[CellRecord], ctx: Context):
    """The peak came within 10 % of the limit or the device: say which batch size fits.

    Silent on a cell that ran out of memory: the out-of-memory suggestion says what fits there,
    and the cell's peak is then only what succeeded before the failed request (a "3 % of the
    limit" beside "out of memory" would contradict it)."""
    if record.error_kind == "oom":
        return None
    for device in record.devices:
        ceiling = device.limit_bytes or device.total_bytes
        alloc = _allocator(record, device.index)
        peak = alloc[1] if alloc else record.peak("process", device.index).bytes
        if peak is None or peak < 0.9 * ceiling:
            continue
        code, evidence = _batch_fit(record, history, device.index, ceiling)
        what = "the limit" if device.limit_bytes else "the device"
        return Suggestion(
            "near-limit", f"The peak reached {100 * peak / ceiling:.0f} % of {what}",
            f"peak {format_bytes(peak)} of {format_bytes(ceiling)} on GPU {device.index}. "
            + evidence, code)
    return None


def _batch_fit(record, history, device: int, ceiling: int):
    """``(code, evidence)``: the batch size measured to fit (:func:`_measured_fit`), else half
    the cell's, else a general hint."""
    measured = _measured_fit(record, history, device, ceiling)
    if measured is not None:
        return measured
    batch = _batch_size(record.source)
    if batch:
        return (f"batch_size={max(1, batch // 2)}   # half; measure twice to get the exact fit",
                "Run the cell with two batch sizes and kmem computes the largest that fits.")
    return ("# use a smaller batch size, mixed precision, or a higher --limit",
            "No batch size was seen in the cell to compute one that fits.")


def _measured_fit(record, history, device: int, ceiling: int) -> Optional[Tuple[str, str]]:
    """The largest batch size that trains under ``ceiling``, from the exact allocator peaks
    of this cell run with two or more batch sizes (None with fewer), with the estimate's model
    of what the allocator needs beyond a peak (:func:`~kmem_magic.plan.estimator.peak_under`)."""
    points, befores, backend = {}, {}, None
    for r in list(history) + [record]:
        b = _batch_size(r.source)
        alloc = _allocator(r, device)
        if b and alloc and alloc[2] and r.error_kind is None and \
                _template(r.source) == _template(record.source):
            points[b], backend = alloc[1], alloc[0]
            befores[b] = r.figures(device).before.get(alloc[0]) or 0
    line = fit_line(list(points.items()))
    if line is None:
        return None
    fixed, slope = line
    limited = any(d.index == device and d.limit_bytes for d in record.devices)
    # a whole device also holds the CUDA context, which no framework's limit counts
    room = ceiling if limited else ceiling - typical_context(backend)
    fits = int((peak_under(room, backend) - fixed) / slope + 1e-9)
    sizes = ", ".join(str(b) for b in sorted(points))
    what = f"the {format_bytes(ceiling)} limit" if limited else \
        f"the {format_bytes(ceiling)} device, beside the CUDA context"
    # under a hard limit a batch that trained is the proof, whatever the model plans, when it
    # left the allocator's fragmentation margin (find_batch_size's rule: a torch batch that
    # trained with less ran out in the fit after)
    proven = [b for b, peak in points.items()
              if peak <= room_under(ceiling, befores[b], backend)]
    if limited and proven and max(proven) >= fits:
        return (f"batch_size={max(proven)}   # the largest that trained under {what}",
                f"Measured {format_bytes(slope)} per sample from batch sizes {sizes}; the "
                "allocator's planned reserve would leave less, but this batch trained with "
                "the allocator's margin to spare.")
    return (f"batch_size={max(1, fits)}   # trains under {what}",
            f"Measured {format_bytes(slope)} per sample from batch sizes {sizes}; "
            f"the fixed part is {format_bytes(fixed)}; the allocator's reserve beyond the "
            "peak is planned as in kmem_magic.estimate.")


def out_of_memory(record: CellRecord, history: Sequence[CellRecord], ctx: Context):
    """The cell ran out of memory: the request that failed, where, what was live, what came
    back once kmem released the failed frames, and one next step computed from those numbers."""
    if record.error_kind != "oom":
        return None
    pm = record.postmortem
    device = record.devices[0] if record.devices else None
    ceiling = (device.limit_bytes or device.total_bytes) if device else None
    request = pm.request_bytes if pm else backends.oom_request(record.error_message)
    facts = []
    if request is not None:
        facts.append(f"the request that failed: {format_bytes(request)}"
                     + (f" (shape {pm.request_shape})" if pm and pm.request_shape else "")
                     + (f", under a limit of {format_bytes(device.limit_bytes)}"
                        if device and device.limit_bytes else ""))
    title = f"Out of memory ({record.error})"
    if pm is not None and pm.where:
        if pm.how in ("traceback", "message", "size"):
            title = f"Out of memory in {pm.where}"
            if pm.how == "size":
                facts.append(f"{pm.layer}'s output at batch {pm.batch_size} is the request")
        else:
            facts.append(f"where: {pm.where}")
    facts.append(_live_at_failure(record, pm))
    if pm is not None and pm.note:
        facts.append(pm.note)
    code, fit = _next_step(record, history, pm, request, ceiling)
    code += "\n# the failed cell's frames were released: this kernel can go on, no restart"
    return Suggestion("out-of-memory", title, "; ".join(f for f in facts if f) + ". " + fit,
                      code)


def _live_at_failure(record: CellRecord, pm) -> str:
    """What the allocator had in use at the failure, what of it kmem can name, and what came
    back once the failed frames were released."""
    if pm is None or pm.in_use_bytes is None:
        parts = []
        for device in record.devices:
            alloc = _allocator(record, device.index)
            if alloc:
                parts.append(f"GPU {device.index}: {alloc[0]} allocator peak "
                             f"{format_bytes(alloc[1])}")
        return "; ".join(parts) or "no allocator figures"
    where = backends.label(pm.source)
    text = f"in use at the failure ({where}): {format_bytes(pm.in_use_bytes)}"
    if pm.live:
        text += ": " + ", ".join(f"{h.name} {format_bytes(h.bytes)} ({h.kind})" for h in pm.live)
    if pm.released_bytes is not None:
        text += (f"; after kmem released the failed frames: {format_bytes(pm.in_use_after_bytes)}"
                 f" in use ({format_bytes(max(pm.released_bytes, 0))} came back"
                 + (", though host memory freed stays in the process's heap" if pm.source == HOST
                    else "") + ")")
    return text


def _next_step(record: CellRecord, history: Sequence[CellRecord], pm, request: Optional[int],
               ceiling: Optional[int]) -> Tuple[str, str]:
    """One next step, from the numbers: a batch size measured to fit (two earlier runs), else
    the planning model's, else the limit the failed request needed at least."""
    device = record.devices[0] if record.devices else None
    measured = _measured_fit(record, history, device.index, ceiling) if device else None
    if measured is not None:
        return measured
    if pm is not None and pm.batch_that_fits and pm.batch_size and \
            pm.batch_that_fits < pm.batch_size:
        model = pm.model if _identifier(pm.model) else "model"
        what = "the limit" if device and device.limit_bytes else "the device" if device else \
            "the host's memory"
        return (f"batch_size={pm.batch_that_fits}   # planning estimate, allocator reserve "
                "included: check it"
                f"\nkmem_magic.find_batch_size({model}, x, y)   # proves the largest batch "
                "with real steps",
                f"The planning model predicts batch {pm.batch_that_fits} (of {pm.batch_size}) "
                f"to fit {what}; an estimate, which find_batch_size checks.")
    needed = pm.in_use_bytes + request if request is not None and pm is not None and \
        pm.in_use_bytes is not None else None
    if needed is not None and device and device.limit_bytes and \
            device.limit_bytes < needed < device.total_bytes:
        return (f"%gpumem --limit {-(-needed // MiB)}MiB   # at the least",
                f"This step needed at least {format_bytes(needed)} (what was in use plus the "
                f"request), more than the limit of {format_bytes(device.limit_bytes)}; its "
                "later allocations come on top, so raise it further or use a smaller batch.")
    return _batch_fit(record, history, device.index, ceiling) if device else \
        ("# use a smaller batch size", "")


def one_device_busy(record: CellRecord, history: Sequence[CellRecord], ctx: Context):
    """One GPU filled while the others stayed idle: the work ran on one device (Keras trains
    on the first unless a distribution spreads it; a keras.distribution layout whose rules
    matched nothing replicates everything there)."""
    peaks = []
    for device in record.devices:
        alloc = _allocator(record, device.index)
        peaks.append((alloc[1] if alloc else None, device))
    known = [(peak, device) for peak, device in peaks if peak is not None]
    if len(record.devices) < 2 or len(known) < len(record.devices):
        return None
    busiest, device = max(known, key=lambda item: item[0])
    room = device.limit_bytes or device.total_bytes
    if not room:
        return None
    idle = [(peak, d) for peak, d in known if d is not device]
    if busiest < max(GiB, 0.25 * room) or any(peak > 0.1 * busiest for peak, _ in idle):
        return None
    # a device another process worked on was not idle: one rank per GPU of a job (each
    # process sees every GPU, its allocator only its own), or other users' work
    if record.job is not None and record.job.processes > 1 or any(
            sum(used or 0 for _, _, used in record.others.get(d.index) or ()) > 0.1 * busiest
            for _, d in idle):
        return None
    quiet = max(peak for peak, _ in idle)
    others = ", ".join(f"GPU {d.index}" for _, d in idle)
    code = {
        "jax": "# spread each batch over every GPU (Keras on jax):\n"
               "import keras\n"
               "keras.distribution.set_distribution(keras.distribution.DataParallel())\n"
               "# with a ModelParallel layout: check that its rules match the variables'\n"
               "# paths (kmem_magic.sharding(model) lists what stays replicated)",
        "tensorflow": "# spread each batch over every GPU (Keras on TensorFlow):\n"
                      "import tensorflow as tf\n"
                      "with tf.distribute.MirroredStrategy().scope():\n"
                      "    model = build_and_compile_model()",
    }.get(record.backend or "", "# Keras on torch trains on one GPU; for several, run one "
                                "process per GPU (torch.distributed)\n# or use the jax "
                                "backend's keras.distribution.DataParallel()")
    return Suggestion(
        "one-device", f"Only GPU {device.index} worked: {format_bytes(busiest)} there, "
        f"at most {format_bytes(quiet)} on {others}",
        f"the allocator peak on {device.label} was {format_bytes(busiest)} "
        f"({busiest / room:.0%} of its {'limit' if device.limit_bytes else 'memory'}), while "
        f"{others} peaked at {format_bytes(quiet)} or less: the other devices sat idle.",
        code, None, "measured")


RULES = (out_of_memory, preallocation, other_processes, left_behind, regrowth, climb,
         mixed_precision, near_limit, one_device_busy)


def advise(record: CellRecord, history: Sequence[CellRecord], ctx: Optional[Context] = None
           ) -> List[Suggestion]:
    """Every rule's suggestion for ``record``, the out-of-memory one first, then the largest
    saving first. ``history`` holds the earlier records, oldest first. A rule that fails is
    left out and named in ``ctx.faults``."""
    ctx = ctx or Context()
    found = []
    for rule in RULES:
        try:
            suggestion = rule(record, history, ctx)
        except Exception as error:  # one rule's fault costs its suggestion, not the others'
            ctx.faults.append(f"{RULE_FAULT}{rule.__name__}: {error!r}")
            continue
        if suggestion is not None:
            found.append(suggestion)
    first = [s for s in found if s.rule == "out-of-memory"]
    rest = sorted((s for s in found if s.rule != "out-of-memory"),
                  key=lambda s: -(s.saving_bytes or 0))
    return first + rest
