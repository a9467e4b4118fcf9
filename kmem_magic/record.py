"""What one ``%%gpumem`` cell measured: a :class:`CellRecord` with its :class:`Timeline`.

A record is plain data, built once by the measurement and the advice, and never changed after:
the text, the HTML, the panel, the plot and the exports (``kmem_magic.show``) only read it.
Every figure carries its source, so nothing is shown without saying what it counts:

==============  ===========================================================================
``device``      memory used on the GPU by every process (NVML, as nvidia-smi shows it)
``process``     memory this process holds on the GPU (NVML per-process; unknown in containers)
``tensorflow``,
``jax``,
``torch``       bytes the framework's allocator has handed out (its pool can be far larger)
``host``        this process's resident memory (RSS) in RAM
==============  ===========================================================================

Unknown values are ``None`` and print as "unknown", never as 0.

>>> record = CellRecord.from_json(CellRecord(3, "", 0.1, None, "growth", 0.1).to_json())
>>> record.name, record.suggestions
('cell-3', ())
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Tuple

# The sources that are not a framework's allocator (those are named after their backend).
NVML_SOURCES = ("device", "process")
HOST = "host"
# How a fault of an advice rule starts (``f"{RULE_FAULT}{rule name}: {error!r}"``), and one of
# the holders scan; every other fault is one of measuring.
RULE_FAULT = "rule "
HOLDERS_FAULT = "holders: "


@dataclass(frozen=True)
class Device:
    """A GPU as the frameworks see it: ``index`` is its CUDA ordinal (``cuda:N``, ``GPU:N``,
    ``gpu:N``), and ``limit_bytes`` the policy's limit on it when a measurement knows one."""

    index: int
    name: str
    uuid: str
    total_bytes: int
    limit_bytes: Optional[int] = None

    @property
    def label(self) -> str:
        """``GPU 1 · GPU-5f0c2a1e``: its CUDA ordinal and the start of its UUID, which names
        the physical card whatever ``CUDA_VISIBLE_DEVICES`` reorders."""
        return f"GPU {self.index} · {self.uuid[:12]}" if self.uuid else f"GPU {self.index}"


@dataclass(frozen=True)
class Peak:
    """A peak and how far to trust it.

    ``exact`` is True when it comes from an allocator's own peak counter (no spike is missed);
    False for sampled values, which are lower bounds: a spike between two samples is not seen.
    """

    bytes: Optional[int]
    exact: bool
    note: str = ""


UNKNOWN = Peak(None, False)


@dataclass
class Series:
    """One curve: a source on one device (``device`` None for host memory), sampled over time.
    The sampler appends to it while the cell runs; afterwards it is only read."""

    source: str
    device: Optional[int] = None
    t_s: List[float] = field(default_factory=list)
    values: List[Optional[int]] = field(default_factory=list)

    @property
    def key(self) -> str:
        return self.source if self.device is None else f"gpu{self.device}.{self.source}"

    def append(self, t_s: float, value: Optional[int]) -> None:
        self.t_s.append(t_s)
        self.values.append(value)

    def max(self) -> Optional[int]:
        known = [v for v in self.values if v is not None]
        return max(known) if known else None

    def argmax_t(self) -> Optional[float]:
        best = None
        for t, v in zip(self.t_s, self.values):
            if v is not None and (best is None or v > best[1]):
                best = (t, v)
        return None if best is None else best[0]


@dataclass
class Timeline:
    """All curves of one cell, keyed by :attr:`Series.key`; times in seconds from the cell start."""

    series: Dict[str, Series] = field(default_factory=dict)
    # Events on the time axis, e.g. ("epoch 2" at 3.1 s) from a MemoryCallback.
    marks: List[list] = field(default_factory=list)

    def get(self, source: str, device: Optional[int] = None) -> Series:
        """The series for ``source`` on ``device``, created empty on first use."""
        probe = Series(source, device)
        return self.series.setdefault(probe.key, probe)

    def find(self, source: str, device: Optional[int] = None) -> Optional[Series]:
        return self.series.get(Series(source, device).key)


@dataclass(frozen=True)
class Figures:
    """Before, after and peak per source for one device (or for the host)."""

    before: Dict[str, Optional[int]] = field(default_factory=dict)
    after: Dict[str, Optional[int]] = field(default_factory=dict)
    peak: Dict[str, Peak] = field(default_factory=dict)

    def left_behind(self, source: str) -> Optional[int]:
        """What the cell left behind: after minus before (None when either is unknown)."""
        before, after = self.before.get(source), self.after.get(source)
        if before is None or after is None:
            return None
        return after - before

    def sources(self) -> List[str]:
        seen = list(self.peak)
        seen += [s for s in list(self.before) + list(self.after) if s not in seen]
        return seen


@dataclass(frozen=True)
class Suggestion:
    """One piece of advice: what, why (the numbers), how much it should save, and the code."""

    rule: str
    title: str
    evidence: str
    code: str
    saving_bytes: Optional[int] = None
    saving_kind: str = "estimated"  # "measured" or "estimated"


@dataclass(frozen=True)
class Holder:
    """A name that keeps memory alive after the cell, what it is, and how much it holds."""

    name: str
    kind: str
    bytes: int


@dataclass(frozen=True)
class PostMortem:
    """What an out-of-memory error was, read while its frames were still alive.

    ``request_bytes`` is the allocation that failed (from the framework's message) and
    ``limit_bytes`` the limit it hit; ``where`` says where it failed, in words, and ``how``
    how kmem knows (``"traceback"``: a Keras layer's frame; ``"message"``: the layer the error
    names; ``"size"``: the request is that layer's output; ``"estimate"``: inside a compiled
    step, the planning model's largest layer; ``"line"``: the cell's line). ``live`` splits
    what the allocator had in use at the failure (``in_use_bytes``) into the model's weights,
    its optimizer slots, the failed frames' tensors, other arrays and the rest; after kmem
    released the failed frames, ``in_use_after_bytes`` was in use. ``batch_that_fits`` is the
    largest batch the planning model predicts to fit the limit (an estimate)."""

    source: str  # the allocator (a backend's name), or "host" without a GPU
    request_bytes: Optional[int] = None
    request_shape: str = ""
    limit_bytes: Optional[int] = None
    where: str = ""
    how: str = ""
    layer: str = ""
    model: str = ""
    batch_size: Optional[int] = None
    in_use_bytes: Optional[int] = None
    live: Tuple["Holder", ...] = ()
    in_use_after_bytes: Optional[int] = None
    batch_that_fits: Optional[int] = None
    note: str = ""  # what kmem repaired (a Keras model given back its weights)

    @property
    def released_bytes(self) -> Optional[int]:
        """What came back once kmem released the failed frames (None when unknown)."""
        if self.in_use_bytes is None or self.in_use_after_bytes is None:
            return None
        return self.in_use_bytes - self.in_use_after_bytes


@dataclass(frozen=True)
class StepPart:
    """One bar of where a training step's peak goes: ``kind`` is weights, gradients,
    optimizer, activations (of the layer ``name``), batch or temporary."""

    name: str
    kind: str
    bytes: int


@dataclass(frozen=True)
class StepPlan:
    """The planning model's view of one Keras training step the cell ran: its largest parts
    and predicted peak (estimated, never measured), beside which the views put the measured
    peak."""

    model: str
    batch_size: int
    backend: str
    dtype: str
    predicted_bytes: int
    parts: Tuple[StepPart, ...] = ()


@dataclass(frozen=True)
class Peer:
    """One kmem kernel on this machine as its ledger record shows it (``%gpumem who``), on one
    GPU (``device``, a CUDA ordinal of this process; None for a kernel's host-only row).

    ``holds`` is what the kernel holds on the GPU and ``holds_source`` where that figure comes
    from: ``"NVML"`` (the driver's figure for its process) or ``"allocator pool (ledger)"``
    where NVML names no process (containers), which leaves out its CUDA context.
    ``elsewhere``: the record comes from another host or container, whose process this kernel
    cannot check, so it is listed as last seen ``age_s`` ago."""

    notebook: str
    user: str
    pid: int
    host: str
    backend: Optional[str] = None
    policy: str = ""
    device: Optional[int] = None
    limit_bytes: Optional[int] = None
    in_use: Optional[int] = None
    peak: Optional[int] = None
    pool: Optional[int] = None
    holds: Optional[int] = None
    holds_source: str = ""
    host_rss: Optional[int] = None
    age_s: float = 0.0
    last_cell_age_s: Optional[float] = None
    running: bool = False
    me: bool = False
    same_user: bool = True
    elsewhere: bool = False
    over_share: bool = False


@dataclass(frozen=True)
class GpuShare:
    """Who holds one GPU: its kmem kernels (in :attr:`Sharing.peers`), the processes NVML lists
    that no kmem kernel accounts for (``others``: pid, name or None, bytes or None) and what
    neither accounts for (``unaccounted``: device used less both; None when unknown)."""

    index: int
    uuid: str
    name: str
    total_bytes: int
    used_bytes: Optional[int] = None
    others: Tuple[tuple, ...] = ()
    unaccounted: Optional[int] = None
    nvml_lists: bool = True  # False where NVML names no process (a container hides them)
    share_bytes: Optional[int] = None  # the fair share in force (share:N), if any


@dataclass(frozen=True)
class Sharing:
    """Every kmem kernel on this machine beside this one, from the shared ledger folder."""

    folder: str
    peers: Tuple[Peer, ...] = ()
    gpus: Tuple[GpuShare, ...] = ()
    skipped: int = 0  # records that could not be read (corrupt, partial, too large)
    share: str = ""  # "share:4" when a fair share is in force

    def on(self, device: Optional[int]) -> Tuple[Peer, ...]:
        """The kernels' rows on GPU ``device`` (host-only rows when None)."""
        return tuple(p for p in self.peers if p.device == device)

    def gpu(self, device: int) -> Optional[GpuShare]:
        return next((g for g in self.gpus if g.index == device), None)


@dataclass(frozen=True)
class JobDevice:
    """One device of a multi-process job, as its process reported it (bytes None where the
    device does not count them, such as a CPU)."""

    process: int
    id: int
    platform: str
    kind: str = ""
    in_use: Optional[int] = None
    peak: Optional[int] = None


@dataclass(frozen=True)
class Job:
    """Every device of a multi-process job (``jax.distributed``), gathered by process 0 from
    the other processes' ledger records after the cell: ``missing`` are the processes that had
    not reported this cell in time, ``highest`` the process whose device peaked highest."""

    key: str
    processes: int
    devices: Tuple[JobDevice, ...] = ()
    missing: Tuple[int, ...] = ()
    highest: Optional[int] = None


@dataclass(frozen=True)
class CellRecord:
    """Everything ``%%gpumem`` measured for one cell, and the suggestions made from it."""

    execution_count: Optional[int]
    started_at: str
    wall_s: float
    backend: Optional[str]
    policy: str
    interval_s: float
    devices: Tuple[Device, ...] = ()
    gpu: Dict[int, Figures] = field(default_factory=dict)
    host: Figures = field(default_factory=Figures)
    timeline: Timeline = field(default_factory=Timeline)
    frameworks: Tuple[str, ...] = ()
    gpu_note: Optional[str] = None
    process_note: Optional[str] = None
    error: Optional[str] = None
    error_kind: Optional[str] = None  # "exception" | "oom" | "interrupt"
    error_message: str = ""  # the error's text, its first 2,000 characters
    source: str = ""  # the cell's code, to recognise re-runs and patterns
    # Other processes on each GPU at the cell's end: (pid, name or None, bytes or None).
    others: Dict[int, Tuple[tuple, ...]] = field(default_factory=dict)
    # What went wrong inside kmem, a line each: while measuring (a failed NVML or counter
    # read, ...), in advice (those start with RULE_FAULT: "rule near_limit: ValueError()"),
    # or in the holders scan (HOLDERS_FAULT).
    faults: Tuple[str, ...] = ()
    suggestions: Tuple[Suggestion, ...] = ()
    # Who holds what the cell left behind, largest first (when it left something).
    holders: Tuple[Holder, ...] = ()
    # An out-of-memory error's post-mortem, and the planned parts of a Keras step's peak.
    postmortem: Optional[PostMortem] = None
    step_plan: Optional[StepPlan] = None
    # The other kmem kernels on this machine and who holds each GPU (the shared ledger).
    sharing: Optional[Sharing] = None
    # Every device of the multi-process job this cell ran in (process 0's record only).
    job: Optional[Job] = None

    @property
    def name(self) -> str:
        """A short name for files and titles: ``cell-12`` (or ``cell`` outside a notebook)."""
        return f"cell-{self.execution_count}" if self.execution_count else "cell"

    def figures(self, device: Optional[int] = None) -> Figures:
        """The figures of GPU ``device`` (host memory when ``device`` is None)."""
        return self.host if device is None else self.gpu.get(device) or Figures()

    def peak(self, source: str, device: Optional[int] = None) -> Peak:
        """The peak of ``source`` on GPU ``device`` (host memory when ``device`` is None)."""
        return self.figures(device).peak.get(source, UNKNOWN)

    def left_behind(self, source: str, device: Optional[int] = None) -> Optional[int]:
        return self.figures(device).left_behind(source)

    def left_in_frameworks(self) -> Optional[Tuple[int, str]]:
        """What the cell left behind where the frameworks keep it, and where that was
        measured: the allocators on the GPUs, else (no GPU) host RSS."""
        total, known = 0, False
        for figures in self.gpu.values():
            for source in figures.sources():
                if source in NVML_SOURCES:
                    continue
                left = figures.left_behind(source)
                if left is not None:
                    total, known = total + left, True
        if known:
            return total, "the framework allocators"
        if not self.devices:
            left = self.left_behind(HOST)
            if left is not None:
                return left, "host memory (no GPU)"
        return None

    def headline(self) -> Tuple[Peak, str, Optional[int], Optional[int]]:
        """``(peak, source, device, left behind)`` of the figure that best sums up the cell:
        the largest exact allocator peak on a GPU, else a sampled GPU one, else host RSS
        (``device`` None)."""
        best = None
        for device in self.devices:
            for source, peak in self.figures(device.index).peak.items():
                rank = (peak.exact, source not in NVML_SOURCES, peak.bytes or 0)
                if peak.bytes is not None and (best is None or rank > best[0]):
                    best = (rank, device.index, source, peak)
        if best is None:
            return self.peak(HOST), HOST, None, self.left_behind(HOST)
        _, index, source, peak = best
        return peak, source, index, self.left_behind(source, index)

    def split_faults(self) -> Tuple[List[str], List[str], List[str]]:
        """``(measuring, rules, holders)``: the faults that left figures unknown, those of
        advice rules (whose suggestions are left out) and of the holders scan (no holders
        are named)."""
        rules = [f for f in self.faults if f.startswith(RULE_FAULT)]
        holders = [f for f in self.faults if f.startswith(HOLDERS_FAULT)]
        return [f for f in self.faults if f not in rules and f not in holders], rules, holders

    # ----------------------------------------------------------------------------- JSON
    def to_dict(self) -> dict:
        """Everything as JSON-ready data (the timeline included)."""
        data = asdict(self)
        data["timeline"] = {
            key: {"source": s.source, "device": s.device, "t_s": s.t_s, "bytes": s.values}
            for key, s in self.timeline.series.items()
        }
        data["marks"] = [list(m) for m in self.timeline.marks]
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_dict(cls, data: dict) -> "CellRecord":
        """The record :meth:`to_dict` wrote (e.g. one measured on another machine)."""
        data = dict(data)

        def figures(raw: dict) -> Figures:
            return Figures(dict(raw["before"]), dict(raw["after"]),
                           {k: Peak(**v) for k, v in raw["peak"].items()})

        timeline = Timeline(marks=[list(m) for m in data.pop("marks", [])])
        for raw in data.pop("timeline", {}).values():
            series = timeline.get(raw["source"], raw["device"])
            series.t_s, series.values = list(raw["t_s"]), list(raw["bytes"])
        data["devices"] = tuple(Device(**d) for d in data.get("devices", ()))
        data["gpu"] = {int(k): figures(v) for k, v in data.get("gpu", {}).items()}
        data["host"] = figures(data["host"]) if "host" in data else Figures()
        data["others"] = {int(k): tuple(tuple(o) for o in v)
                          for k, v in data.get("others", {}).items()}
        data["frameworks"] = tuple(data.get("frameworks", ()))
        data["faults"] = tuple(data.get("faults", ()))
        data["suggestions"] = tuple(Suggestion(**s) for s in data.get("suggestions", ()))
        data["holders"] = tuple(Holder(**h) for h in data.get("holders", ()))
        if data.get("postmortem"):
            raw = dict(data["postmortem"])
            raw["live"] = tuple(Holder(**h) for h in raw.get("live", ()))
            data["postmortem"] = PostMortem(**raw)
        if data.get("step_plan"):
            raw = dict(data["step_plan"])
            raw["parts"] = tuple(StepPart(**p) for p in raw.get("parts", ()))
            data["step_plan"] = StepPlan(**raw)
        if data.get("sharing"):
            raw = dict(data["sharing"])
            raw["peers"] = tuple(Peer(**p) for p in raw.get("peers", ()))
            raw["gpus"] = tuple(GpuShare(**dict(g, others=tuple(tuple(o) for o in g["others"])))
                                for g in raw.get("gpus", ()))
            data["sharing"] = Sharing(**raw)
        if data.get("job"):
            raw = dict(data["job"])
            raw["devices"] = tuple(JobDevice(**d) for d in raw.get("devices", ()))
            raw["missing"] = tuple(raw.get("missing", ()))
            data["job"] = Job(**raw)
        return cls(timeline=timeline, **data)

    @classmethod
    def from_json(cls, text: str) -> "CellRecord":
        return cls.from_dict(json.loads(text))
