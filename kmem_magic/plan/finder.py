"""Find the largest batch size that trains under a memory limit, without crashing.

>>> found = kmem_magic.find_batch_size(model, x, y)                  # doctest: +SKIP
>>> found.batch_size, found                                          # doctest: +SKIP

How: the estimate (:mod:`kmem_magic.plan.estimator`) predicts the largest batch that trains
under the limit, allocator reserve included; a real training step there is the first probe.
What it measured corrects the estimate (its error scales the prediction; two measured steps
give a line), and at most two more steps move to where the corrected prediction says the limit
ends. Under a hard limit (the policy's ``--limit``, or the device's free memory) a probe that
trains, leaving beside its peak 9 % of the step's own allocations (torch,
TensorFlow; jax: nothing) for the allocator's fragmentation, which the fit that follows needs
(measured, see ``_FRAGMENTATION``), is the proof that its batch trains; under a smaller
``budget`` a probe fits when its allocated peak leaves the allocator's reserve inside the
budget. On jax under a hard limit the step that trained is the whole proof: XLA's plan of a
step's buffers is no bound there (on the H200 batches trained under a 1.27 GiB pool whose plan
said 2.5-3.9 GiB, see ``docs/benchmarks.md``), so after the first step the search doubles the
batch until one runs out of memory, then halves the gap. The answer is a batch that a probe
trained, or (under a hard limit) one below a batch that trained too near the limit, read from
the line through the two probes around it. A probe that runs out of memory is caught and its
memory given back; the model's weights, optimizer state and metrics are restored afterwards:
probing never trains the model. Each probe, and the fit after the search, starts with the
garbage of the fits before it collected (reference cycles that hold a step's tensors).
"""

from __future__ import annotations

import gc
import traceback
from dataclasses import dataclass, field
from typing import Any, List, Optional, Sequence, Tuple

from .. import _nvml, backends
from ..sizes import format_bytes, parse_limit
from .probe import recover, step_peak
from .estimator import estimate, largest_where, peak_under


@dataclass(frozen=True)
class Probe:
    """One measured training step: its batch size, its allocator peak and the outcome;
    ``room_bytes`` is the highest peak that would have fitted, judged when it ran (under a
    hard limit: the limit less the fragmentation margin, which on jax no probe is held to;
    under a budget: the peak its reserve leaves; None for a step that ran out)."""

    batch_size: int
    peak_bytes: Optional[int]
    # "fits" (on jax, "fits (trained under the limit; XLA planned more)"), "over budget",
    # "trained, too near the limit" or "out of memory"
    outcome: str
    room_bytes: Optional[int] = None


@dataclass
class BatchSize:
    """What :func:`find_batch_size` found: ``batch_size``, a batch a probe step trained (or,
    when ``interpolated``, one below a batch that trained too near a hard limit, with its peak
    read from the line through two measured steps), and how it got there. ``margin_bytes`` is
    what that step left of the budget (its allocated peak against the budget);
    ``estimated_batch`` is what the estimate predicted first."""

    batch_size: int
    budget_bytes: int
    peak_bytes: Optional[int]
    estimate_bytes: Optional[int]
    probes: List[Probe] = field(default_factory=list)
    limited_by: str = "memory"
    capped: bool = False
    hard: bool = False
    estimated_batch: Optional[int] = None
    interpolated: bool = False
    # jax under a hard limit: what XLA planned for the step when that is above the limit
    # (the step trained, so its real peak was within it; jax cannot reset its peak to read it)
    planned_bytes: Optional[int] = None

    def __int__(self) -> int:
        return self.batch_size

    @property
    def margin_bytes(self) -> Optional[int]:
        return None if self.peak_bytes is None else self.budget_bytes - self.peak_bytes

    def __str__(self) -> str:
        kind = "limit" if self.hard else "budget"
        budget = kind + (" (capped at what this process may use)" if self.capped else "")
        guess = "" if self.estimated_batch is None else \
            f", the estimate said {self.estimated_batch or 'none fits'}"
        peaked = "would peak (the line through the probes; a larger batch trained) at" \
            if self.interpolated else "peaked at"
        count = len(self.probes)
        how = [f"{count} probe{'s' if count != 1 else ''}, each of {PROBE_STEPS} fit steps{guess}"]
        if self.limited_by == "data":
            how.append("limited by the data")
        if self.peak_bytes is None:
            how.insert(0, "jax cannot reset its peak to read the step's own")
            head = (f"batch size {self.batch_size} trains: its step ran within the "
                    f"{format_bytes(self.budget_bytes)} {budget}, though XLA planned "
                    f"{format_bytes(self.planned_bytes)} of buffers for it")
        else:
            head = (f"batch size {self.batch_size} trains: its step {peaked} "
                    f"{format_bytes(self.peak_bytes)} of the {format_bytes(self.budget_bytes)} "
                    f"{budget}, {format_bytes(self.margin_bytes)} to spare")
        head += f" ({'; '.join(how)})"
        rows = [f"  {p.batch_size:>7}  {format_bytes(p.peak_bytes):>11}  {p.outcome}"
                for p in self.probes]
        return "\n".join([head] + rows)

    def _repr_pretty_(self, printer, cycle) -> None:
        printer.text(str(self))


def fit_line(points: Sequence[Tuple[int, int]]) -> Optional[Tuple[float, float]]:
    """``(fixed, per_sample)``: the least-squares line through measured ``(batch, peak)``
    points (the fixed part is weights, optimizer state, workspace); None unless two batch
    sizes were measured and memory grows with the batch."""
    if len({b for b, _ in points}) < 2:
        return None
    n = len(points)
    mean_b = sum(b for b, _ in points) / n
    mean_p = sum(p for _, p in points) / n
    slope = sum((b - mean_b) * (p - mean_p) for b, p in points) / \
        sum((b - mean_b) ** 2 for b, _ in points)
    if slope <= 0:
        return None
    return mean_p - slope * mean_b, slope


def _capacity() -> Optional[int]:
    """What this process may allocate on GPU 0: the framework's cap if it has one, else what
    its allocator holds plus what the device has free."""
    framework = backends.by_name(backends.keras_backend())  # None on numpy or openvino
    held = 0
    if framework is not None:
        cap = framework.cap_bytes(0)
        if cap is not None:
            return cap
        held = framework.held_bytes(0) or 0
    devices = _nvml.devices()
    if not devices:
        return None
    used = _nvml.memory_used(devices[0])
    if used is None:
        return None
    return held + devices[0].total_bytes - used


def _budget(budget: Any, headroom: float) -> Tuple[int, bool, bool]:
    """``(bytes, capped, hard)``: the budget asked for, capped at what this process may use;
    ``hard`` when it is that cap itself, so that a step over it runs out of memory."""
    if budget is not None and not isinstance(budget, str) and (
            isinstance(budget, bool) or not isinstance(budget, (int, float)) or budget <= 0):
        raise ValueError(f"budget must be bytes (an int), a size like '4GiB' or a share like "
                         f"'80%', not {budget!r}")
    limit = parse_limit(budget) if isinstance(budget, str) else None
    capacity = _capacity()
    if budget is None:
        if capacity is None:
            raise ValueError("no GPU memory to read the budget from: pass budget= (e.g. '4GiB')")
        return int(capacity * (1 - headroom)), False, headroom == 0
    if limit is not None and limit.fraction is not None:
        if capacity is None:
            raise ValueError(f"budget={budget!r} needs the GPU's memory, which is unknown "
                             "here: give bytes (e.g. '4GiB')")
        return int(limit.fraction * capacity), False, limit.fraction >= 1
    if limit is not None and limit.share is not None:
        devices = _nvml.devices()
        if not devices:
            raise ValueError(f"budget={budget!r} needs the GPU's memory, which is unknown "
                             "here: give bytes (e.g. '4GiB')")
        limit = parse_limit(str(limit.bytes_of(devices[0].total_bytes)))
    asked = limit.bytes if limit is not None else int(budget)
    if capacity is not None and asked >= capacity:
        return capacity, asked > capacity, True  # more than the cap or the free memory
    return asked, False, False


def _take(keras: Any, data: Any, size: int, count: int) -> Any:
    import numpy as np

    if size <= count:  # a view: no copy of the user's data
        return keras.tree.map_structure(lambda a: a[:size], data)
    index = np.arange(size) % count  # repeat the data when the batch is larger than it
    return keras.tree.map_structure(lambda a: np.asarray(a)[index], data)


def _snapshot(model: Any) -> List[Tuple[Any, Any]]:
    import numpy as np

    variables = list(model.variables) + list(model.optimizer.variables)
    return [(v, np.array(v.numpy(), copy=True)) for v in variables]


def _restore(saved: List[Tuple[Any, Any]]) -> None:
    """Put the saved values back. A variable's new value is allocated before its old one is
    freed, which a tight limit can refuse (seen on jax, a 195 MiB embedding table): then
    what the probes left in the caches is given back and the variable tried once more."""
    import keras

    failed = []
    for variable, value in saved:
        try:
            variable.assign(value)
        except Exception as error:
            _give_back(error)
            if keras.config.backend() == "jax":
                # drop the probes' value first: jax arrays are immutable, so the new one is
                # allocated beside it
                variable._value = None
            try:
                variable.assign(value)
            except Exception as again:
                _give_back(again)
                failed.append(variable.path)
    if failed:
        raise RuntimeError(f"find_batch_size could not put back {len(failed)} variables "
                           f"({', '.join(failed[:3])}): out of memory; the model's weights are "
                           "not as they were, reload or rebuild it")


# Under a hard limit a torch (or TensorFlow) allocator must also find room for each block of a
# step: on the H200 batches whose probe steps trained with 5.5-6.1 % of the step's own
# allocations (its peak less what was in use before it) left below the limit then ran out in the
# fit that followed (the zoo's cnn, lstm and two_inputs, the GPU test's convnet), and the LSTM,
# whose step's peak moves 1 % between runs, ran out once after a probe left 7.5 % of its whole
# peak (batch 518; at most that of its own allocations). So a probe fits only when its peak plus
# _FRAGMENTATION of the step's own allocations is within the limit. Gradients and optimizer
# temporaries fragment too: with the margin on the batch's allocations only, the zoo's MLP
# (Adam's temporaries are 4x its weights) trained at batch 893 with 2.7 % of the limit to spare
# and ran out in the fit after (in fresh processes under that limit 893 fails 12 of 12 times, as
# do 7 other batches from 896 to 1792, while 1024 trains 4 of 4 and 2048 8 of 8: near a limit,
# training is not monotone in the batch). Weights allocated once do not fragment: they are
# what was in use before.
# With the probes' garbage collected (see _Search.probe) the margin still matters: at 5 % and at
# 3 % the LSTM found 538 and 543, above its true largest batch; its probes trained and the fits
# after them ran out. jax's pool needs none: every found batch trained in its fit.
# TensorFlow's figure is torch's, not measured on a GPU. (docs/benchmarks.md, "Which limit,
# which batch trains".)
_FRAGMENTATION = {"torch": 0.09, "tensorflow": 0.09, "jax": 0.0}


def room_under(limit_bytes: int, before_bytes: int, backend: str) -> int:
    """The highest allocated peak of a step that proves, by training under a hard limit of
    ``limit_bytes``, that a fit at its batch trains too: its peak plus the allocator's
    fragmentation margin (:data:`_FRAGMENTATION` of the step's own allocations, its peak less
    ``before_bytes``, what was in use before it) within the limit. The finder and the advice
    share it."""
    share = _fragmentation(backend)
    return int((limit_bytes + share * before_bytes) / (1 + share))


def _fragmentation(backend: str) -> float:
    """The share of a step's own allocations a probe must leave under a hard limit (a backend
    not measured gets torch's)."""
    return _FRAGMENTATION.get(backend, _FRAGMENTATION["torch"])


# A probe runs as many steps as the truth it is measured against (docs/benchmarks.md: "trains"
# is three steps of a fit): with two, a torch transformer's probe at batch 129 trained with 12 %
# of its allocations to spare and the fit after it ran out of memory at its third step.
PROBE_STEPS = 3


def _refill(saved: List[Tuple[Any, Any]]) -> None:
    """Give values back to the variables a failed step left empty: Keras' jax trainer takes
    them out of the variables for the step (``_value`` None) and puts them back only after a
    step that succeeded, so the next probe's ``fit`` would find a model without weights. The
    probes' values do not matter (the search restores the saved ones at the end)."""
    for variable, value in saved:
        if getattr(variable, "_value", 0) is None:
            variable.assign(value)


def find_batch_size(model: Any, x: Any, y: Any = None, budget: Any = None,
                    headroom: float = 0.0, max_batch_size: Optional[int] = None,
                    max_probes: int = 3) -> BatchSize:
    """The largest batch size whose training step of ``model`` on ``x``/``y`` trains within
    ``budget``, found with at most ``max_probes`` probes, the first where the estimate says.

    ``budget``: bytes, a size (``"4GiB"``) or a share of the GPU (``"80%"``); by default what
    this process may use on GPU 0 (the policy's ``--limit``, else what is free), less
    ``headroom`` (a share, default none: the allocator's reserve is already planned for). A
    budget above what this process may use is capped at it. ``max_batch_size`` defaults to the
    number of samples in ``x``. Each probe is three steps of a real ``fit`` at its batch size.
    The batch returned is one a probe trained, or one below a batch that trained too near a
    hard limit (``interpolated``); the model is left as it was (weights, optimizer state,
    metrics). When no probe fits within ``max_probes``, the search goes on halving the batch
    until one does, and when the one that fits is below a quarter of the smallest that did
    not, it halves down from that one up to twice more (``probes`` lists them all).
    """
    import keras

    if not isinstance(model, keras.Model) or not getattr(model, "compiled", False):
        raise ValueError("find_batch_size needs a compiled Keras model (model.compile(...))")
    if not 0 <= headroom < 1:
        raise ValueError(f"headroom must be in [0, 1), not {headroom!r}")
    if isinstance(max_probes, bool) or not isinstance(max_probes, int) or max_probes < 1:
        raise ValueError(f"max_probes must be a positive integer, not {max_probes!r}")
    if max_batch_size is not None and (isinstance(max_batch_size, bool) or
                                       not isinstance(max_batch_size, int) or max_batch_size < 1):
        raise ValueError(f"max_batch_size must be a positive integer, not {max_batch_size!r}")
    leaves = keras.tree.flatten(x)
    if not leaves or not hasattr(leaves[0], "shape") or not len(leaves[0]):
        raise ValueError("x must be an array (or a list/dict of arrays) with samples in it")
    budget_bytes, capped, hard = _budget(budget, headroom)
    backend = keras.config.backend()
    ceiling = max_batch_size or len(leaves[0])
    try:
        guess = estimate(model, 1)
        predicted = guess.largest_batch(budget_bytes, ceiling)
    except (ValueError, TypeError):  # a subclassed model: no graph, start from probes alone
        guess, predicted = None, min(64, ceiling)
    if not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
    saved = _snapshot(model)
    search = _Search(keras, model, x, y, budget_bytes, ceiling,
                     peak_under(budget_bytes, backend), hard, saved, guess)
    try:
        search.run(max(1, predicted), max_probes)
    finally:
        try:
            _restore(saved)
            model.reset_metrics()
        finally:
            # the fit that follows gets the room the probes had: a probe's garbage is
            # collected and its cached blocks given back (see _Search.probe)
            recover()
    low, probes = search.low, search.probes
    below = search.below_trained()
    if below is not None:
        low = below[0]
    if low == 0:
        why = probes[-1].outcome
        if why == "over budget":
            why += (f" (its peak {format_bytes(probes[-1].peak_bytes)} leaves less than the "
                    "allocator's reserve that kmem_magic.estimate plans for)")
        elif why.startswith("trained"):
            why += (f" (its peak {format_bytes(probes[-1].peak_bytes)} leaves the allocator "
                    f"less than {_fragmentation(backend):.0%} of the step's own allocations, "
                    "which a fit after it needs)")
        raise RuntimeError(f"even a batch of {min(b.batch_size for b in probes)} does not fit "
                           f"in {format_bytes(budget_bytes)}: {why}")
    peak = below[1] if below is not None else max(
        p.peak_bytes for p in probes if p.batch_size == low and p.peak_bytes is not None)
    planned = None
    if peak > budget_bytes:  # jax: XLA's plan, which the step that trained did not need
        peak, planned = None, peak
    return BatchSize(low, budget_bytes, peak,
                     guess.at(low) if guess is not None else None, probes,
                     "data" if low >= search.ceiling else "memory", capped, hard,
                     predicted if guess is not None else None, below is not None, planned)


class _Search:
    """The probes of one search: the largest batch a probe trained (``low``), the smallest
    that did not fit (``high``), and the allocated peak that fits (``target``); ``guess`` is
    the estimate (None for a model it cannot read)."""

    def __init__(self, keras: Any, model: Any, x: Any, y: Any, budget_bytes: int,
                 ceiling: int, target: int, hard: bool,
                 saved: Optional[List[Tuple[Any, Any]]] = None, guess: Any = None) -> None:
        self.keras, self.model, self.x, self.y = keras, model, x, y
        self.saved = saved or []
        self.count = len(keras.tree.flatten(x)[0])
        self.budget_bytes, self.ceiling = budget_bytes, ceiling
        self.target, self.hard = target, hard
        # what a probe's peak may reach under a hard limit (see _FRAGMENTATION): set by every
        # measured step, from what was in use before it
        self.backend = keras.config.backend()
        self.room = self._room(0)
        self.jax = self.backend == "jax"
        self.probes: List[Probe] = []
        self.fits: List[Tuple[int, int]] = []
        self.low, self.high = 0, ceiling + 1
        self.guess = guess

    def run(self, predicted: int, max_probes: int) -> None:
        """Probe where the estimate says, then where the measured steps say, until the
        answer is within 1 % or ``max_probes`` steps ran; then, if nothing fitted, halve, and
        if what fitted is below a quarter of a batch that ran out, halve down from that."""
        size = max(1, min(predicted, self.ceiling))
        while size:
            self.probe(size)
            if len(self.probes) >= max_probes:
                break
            size = self._next()
        while self.low == 0 and self.high > 1:
            self.probe(max(1, self.high // 2))
        # an answer far below the smallest batch that did not fit (the H200's MLP: batch 1
        # trained, 3571 and, near its limit by chance, 1786 ran out) and none read below one
        # that trained too near the limit: halve down from it, twice at most
        for _ in range(2):
            if not self.low or self.high > self.ceiling or 4 * self.low >= self.high or \
                    self.below_trained():
                break
            self.probe(self.high // 2)

    def _next(self) -> int:
        """The next batch to probe (0: stop), strictly between what fitted and what did not."""
        low, high = self.low, self.high
        line, aim = fit_line(self.fits), self._aim()
        if self.jax and self.hard and low:
            # XLA's plan is no bound under the limit (it may say more than a step that ran):
            # double until a batch runs out of memory, then halve the gap; never below where
            # the plan's line reaches the limit (the plan says more than the step needs)
            planned = int((aim - line[0]) / line[1]) if line else 0
            if high > self.ceiling:
                nxt = max(planned, 2 * low)
            else:  # a plan's line beyond a batch that ran out says nothing here
                nxt = int((low * high) ** 0.5)
                nxt = max(nxt, planned) if planned < high else nxt
            nxt = min(nxt, high - 1, self.ceiling)
            return 0 if nxt <= low * 1.01 else nxt
        if line:
            fixed, slope = line
            nxt = int((aim - fixed) / slope)
        elif self.fits and self.guess is not None:
            # one measured step: the estimate's shape scaled by its error there, or, where
            # the error is in the fixed part (large weights, a fixed part the estimate put
            # above the limit), the estimate's slope from the measured peak: the farther
            batch, peak = self.fits[-1]
            guess = self.guess
            scale = peak / max(guess.at(batch), 1)
            nxt = largest_where(lambda b: scale * guess.at(b) <= aim, self.ceiling)
            slope = (guess.at(2 * batch) - guess.at(batch)) / batch
            if slope > 0 and peak < aim:
                nxt = max(nxt, batch + int((aim - peak) / slope))
        elif self.fits:
            nxt = low * 2
        else:
            # only failures: the estimate was optimistic by an unknown amount
            nxt = int(high * 0.8)
        if high <= self.ceiling and nxt >= high:
            nxt = (low + high) // 2  # the line says more than a size that failed: bisect
        nxt = min(max(nxt, 1), high - 1, self.ceiling)
        if nxt <= low or (low and nxt <= low * 1.01) or \
                nxt in {p.batch_size for p in self.probes}:
            return 0
        return nxt

    def _room(self, before: int) -> int:
        """The highest peak that leaves the fragmentation margin of a step that starts with
        ``before`` bytes in use (:func:`room_under`)."""
        return room_under(self.budget_bytes, before, self.backend)

    def below_trained(self) -> Optional[Tuple[int, int]]:
        """``(batch, peak)`` above the largest batch that fitted, when a larger one trained too
        near a hard limit and the line through the measured steps puts ``batch`` within the
        room: the step is proven below a batch that trained, its peak below the margin by two
        measurements (None otherwise)."""
        near = [p.batch_size for p in self.probes if p.outcome.startswith("trained")]
        if not near or not self.low:
            return None
        # the line through the two steps around the answer, not through every probe: a
        # probe far away says less of the step's shape here
        up = min(near)
        line = fit_line([(b, p) for b, p in self.fits if b in (self.low, up)])
        if line is None:
            return None
        fixed, slope = line
        # below every batch that trained too near the limit or ran out of memory
        batch = min(min(near) - 1, self.high - 1, int((self.room - fixed) / slope),
                    self.ceiling)
        if batch <= self.low:
            return None
        return batch, int(fixed + slope * batch)

    def _aim(self) -> float:
        """The allocated peak the next probe aims at. Under a budget: the budget less the
        estimate's allocator reserve. Under a hard limit a probe that trains is the proof, and
        the reserve is often smaller than planned (a model of large weights needs little), so
        the aim is halfway between that and the limit, and above any step that trained."""
        if not self.hard:
            return self.target
        aim = (min(self.target, self.room) + self.room) / 2
        trained = [peak for size, peak in self.fits if size <= self.low]
        if trained:
            aim = max(aim, (max(trained) + self.room) / 2)
        return aim

    def probe(self, size: int) -> None:
        """Real fit steps at ``size`` (:data:`PROBE_STEPS`); an out-of-memory error is caught
        and given back. The
        peak recorded on jax includes the next batch, which Keras' jax fit keeps on the GPU."""
        # steps of a real fit: its data pipeline holds what one train_on_batch does not
        samples = PROBE_STEPS * size
        batch_x = _take(self.keras, self.x, samples, self.count)
        batch_y = None if self.y is None else _take(self.keras, self.y, samples, self.count)
        # A fit leaves reference cycles that hold its step's tensors until the cyclic garbage
        # collector runs (Keras' torch tree helpers, keras-team/keras#23110: on the H200 a
        # search left up to 772 MiB (resnet) more in use than a plain fit, and a transformer's
        # fit after one ran out at the batch its probe had trained at): each probe starts, as
        # the fit after the search does, with them collected.
        gc.collect()
        # Keras' traceback filter drops its own frames from the error, but the frames it
        # keeps still link to them (f_back): a failed step's activations would stay alive
        # beside the next probe (torch: 0.5-2 GiB on the H200) unless every frame is cleared
        filtering = self.keras.config.is_traceback_filtering_enabled()
        self.keras.config.disable_traceback_filtering()
        try:
            measured = step_peak(self.model, batch_x, batch_y, steps=PROBE_STEPS)
        except Exception as error:
            _give_back(error)
            _refill(self.saved)
            self.probes.append(Probe(size, None, "out of memory"))
            self.high = min(self.high, size)
            return
        finally:
            if filtering:
                self.keras.config.enable_traceback_filtering()
        if measured.peak_bytes is None:
            raise ValueError(f"the step's peak cannot be measured here ({measured.source}): "
                             "find_batch_size needs a GPU")
        # under a hard limit the step that trained is the proof; under a smaller budget the
        # allocator's reserve must fit beside the step's peak. Keras' jax trainer holds the
        # next batch on the GPU during fit, which a single probe step does not
        peak = measured.peak_bytes + (_nbytes(self.keras, (batch_x, batch_y)) // PROBE_STEPS
                                      if self.jax else 0)
        if measured.before_bytes is not None:
            self.room = self._room(min(measured.before_bytes, peak))
        # jax under a hard limit: the step ran in XLA's pool, which needs no margin (every
        # batch found so trained in its fit), and XLA's plan may say more than it needed
        fitted = (self.jax and self.hard) or peak <= (self.room if self.hard else self.target)
        outcome = "fits" if fitted else "trained, too near the limit" if self.hard else \
            "over budget"
        if fitted and peak > self.budget_bytes:
            outcome = "fits (trained under the limit; XLA planned more)"
        self.probes.append(Probe(size, peak, outcome,
                                 self.room if self.hard else self.target))
        self.fits.append((size, peak))
        if fitted:
            self.low = max(self.low, size)
        else:
            self.high = min(self.high, size)


def _nbytes(keras: Any, data: Any) -> int:
    return sum(getattr(a, "nbytes", 0) for a in keras.tree.flatten(data) if a is not None)


def _give_back(error: BaseException) -> None:
    """Re-raise ``error`` unless it is out of memory; else release its frames' tensors and
    what the allocators cached, so that the next step can have the memory."""
    if not backends.is_oom(error):
        raise error
    seen = set()
    while error is not None and id(error) not in seen:  # the errors it chains hold frames too
        seen.add(id(error))
        traceback.clear_frames(error.__traceback__)
        error = error.__cause__ or error.__context__
    recover()
