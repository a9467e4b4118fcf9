"""Plain-text views: a cell's report, its one-line form, the history table, and the status.

>>> from kmem_magic.record import CellRecord
>>> one_line(CellRecord(4, "", 0.25, None, "growth", 0.1))
'%%gpumem cell-4: peak unknown (host RSS, host), left behind unknown, 0.25 s'
"""

from __future__ import annotations

import os
from typing import Any, List, Sequence

from .. import _nvml, backends
from ..backends import label
from ..ledger import exceeds
from ..record import HOLDERS_FAULT, HOST, UNKNOWN, CellRecord, Figures, Suggestion
from ..sizes import format_bytes


def title(record: CellRecord) -> str:
    """``%%gpumem cell-3 · 2.10 s · keras jax · policy growth`` (and the error, if any)."""
    text = f"%%gpumem {record.name} · {record.wall_s:.2f} s"
    if record.backend:
        text += f" · keras {record.backend}"
    text += f" · policy {record.policy}"
    if record.error_kind:
        text += f" · {record.error_kind}: {record.error}"
    return text


def summary(record: CellRecord, note_gpu: bool = True) -> str:
    """The compact report: one header line, then per device the peak and what was left;
    ``note_gpu`` False leaves out why there is no GPU (said once per kernel)."""
    head = [f"%%gpumem {record.name}", f"{record.wall_s:.2f} s"]
    head.append(f"keras backend {record.backend}" if record.backend else "keras not imported")
    head.append(f"policy {record.policy}")
    if record.error_kind:
        head.append({"oom": "OUT OF MEMORY", "interrupt": "interrupted"}.get(
            record.error_kind, "failed") + f" ({record.error})")
    lines = [" · ".join(head)]
    for device in record.devices:
        limit = f", limit {format_bytes(device.limit_bytes)}" if device.limit_bytes else ""
        total = format_bytes(device.total_bytes)
        lines.append(f"{device.label} {device.name} ({total}{limit})")
        figures = record.figures(device.index)
        lines += _figure_lines(figures)
        if record.process_note and figures.peak.get("process", UNKNOWN).bytes is None:
            lines.append(f"  this process: unknown, {record.process_note}")
    if record.gpu_note and note_gpu:
        lines.append(f"no GPU: {record.gpu_note}; host memory only (said once per kernel)")
    lines.append("host")
    lines += _figure_lines(record.host)
    if record.holders:
        lines.append(holders_line(record))
    lines += job_lines(record) + postmortem_lines(record) + plan_lines(record)
    lines += fault_lines(record)
    if record.suggestions:
        lines.append("suggestions")
        lines += [line for s in record.suggestions for line in suggestion_lines(s)]
    return "\n".join(lines)


def fault_lines(record: CellRecord) -> List[str]:
    """What went wrong inside kmem on this cell: a line for the measuring faults, one for the
    advice rules that failed, one for the holders scan (none when all went well)."""
    measuring, advising, holders = record.split_faults()
    lines = []
    if measuring:
        lines.append(f"kmem: {len(measuring)} fault(s) while measuring (those figures are "
                     f"unknown), the first: {measuring[0]}")
    if advising:
        lines.append(f"kmem: {len(advising)} advice rule(s) failed (their suggestions are "
                     f"left out), the first: {advising[0]}")
    if holders:
        lines.append(f"kmem: the holders scan failed (no holders are named): "
                     f"{holders[0][len(HOLDERS_FAULT):]}")
    return lines


def job_lines(record: CellRecord) -> List[str]:
    """Every device of the multi-process job the cell ran in (process 0's report), the one
    that peaked highest marked; empty for a process on its own."""
    job = record.job
    if job is None:
        return []
    lines = [f"job ({job.key}): {job.processes} processes, {len(job.devices)} devices, "
             "from each process's ledger record"]
    for d in job.devices:
        mark = "  <- peaked highest" if d.process == job.highest and d.peak is not None and \
            d.peak == max(x.peak for x in job.devices if x.peak is not None) else ""
        lines.append(f"  process {d.process} device {d.id} ({d.platform} {d.kind}): "
                     f"in use {format_bytes(d.in_use)}, peak since it started "
                     f"{format_bytes(d.peak)}{mark}")
    if job.missing:
        lines.append(f"  not reported in time: process "
                     f"{', '.join(str(p) for p in job.missing)} (its figures are unknown)")
    return lines


def holders_line(record: CellRecord) -> str:
    """``held by: model (Keras Sequential, 1.20 GiB), Out[3] (...), unaccounted (...)``: who
    holds what the cell left behind, the rest included (never hidden)."""
    return "held by: " + ", ".join(f"{h.name} ({h.kind}, {format_bytes(h.bytes)})"
                                   for h in record.holders[:8])


def postmortem_lines(record: CellRecord) -> List[str]:
    """The out-of-memory post-mortem: the failed request, where, what was live, what came
    back (empty for a cell that did not run out of memory)."""
    pm = record.postmortem
    if pm is None:
        return []
    lines = ["out of memory: post-mortem"]
    if pm.request_bytes is not None:
        limit = f" under a limit of {format_bytes(pm.limit_bytes)}" if pm.limit_bytes else ""
        shape = f" (shape {pm.request_shape})" if pm.request_shape else ""
        lines.append(f"  failed request   {format_bytes(pm.request_bytes)}{shape}{limit}")
    if pm.where:
        lines.append(f"  where            {pm.where}")
    if pm.in_use_bytes is not None:
        lines.append(f"  in use then      {format_bytes(pm.in_use_bytes)} ({label(pm.source)})")
        lines += [f"    {format_bytes(h.bytes):>11}  {h.name} ({h.kind})" for h in pm.live]
    if pm.in_use_after_bytes is not None:
        lines.append(f"  after release    {format_bytes(pm.in_use_after_bytes)} in use "
                     f"({format_bytes(max(pm.released_bytes or 0, 0))} came back when kmem "
                     "released the failed frames)")
    if pm.note:
        lines.append(f"  repaired         {pm.note}")
    return lines


def plan_lines(record: CellRecord) -> List[str]:
    """Where the training step's peak goes, from the planning model (estimated), beside the
    measured peak."""
    plan = record.step_plan
    if plan is None:
        return []
    lines = [f"where a training step's peak goes (planning estimate: model '{plan.model}', "
             f"batch {plan.batch_size}, {plan.backend}, {plan.dtype})",
             f"  predicted peak {format_bytes(plan.predicted_bytes)} · measured peak "
             f"{measured_peak(record)}"]
    return lines + [f"    {format_bytes(p.bytes):>11}  {p.name}"
                    + (f" ({p.kind})" if p.kind == "activations" else "") for p in plan.parts]


def measured_peak(record: CellRecord) -> str:
    """The cell's headline peak, and ``(sampled)`` when it is no allocator's exact count."""
    peak = record.headline()[0]
    return format_bytes(peak.bytes) + ("" if peak.exact else " (sampled)")


def saving(suggestion: Suggestion) -> str:
    """``saves about 1.20 GiB, measured``, or empty when the rule names no saving."""
    if not suggestion.saving_bytes:
        return ""
    return f"saves about {format_bytes(suggestion.saving_bytes)}, {suggestion.saving_kind}"


def suggestion_lines(suggestion: Suggestion) -> List[str]:
    """A suggestion as indented text: title (and saving), evidence, code."""
    extra = f" ({saving(suggestion)})" if suggestion.saving_bytes else ""
    lines = [f"  * {suggestion.title}{extra}", f"    {suggestion.evidence}"]
    return lines + [f"      {line}" for line in suggestion.code.splitlines()]


def _figure_lines(figures: Figures) -> List[str]:
    lines = []
    for source in figures.sources():
        peak = figures.peak.get(source, UNKNOWN)
        how = "exact" if peak.exact else "sampled"
        if peak.note:
            how += f", {peak.note}"
        lines.append(
            f"  {label(source):<22} peak {format_bytes(peak.bytes):>11} ({how})"
            f"   left behind {format_bytes(figures.left_behind(source), signed=True)}"
        )
    return lines


def one_line(record: CellRecord) -> str:
    """A single line: the largest exact peak (or sampled, if none), left behind, time."""
    peak, source, device, left = record.headline()
    where = HOST if device is None else f"GPU {device}"
    return (
        f"%%gpumem {record.name}: peak {format_bytes(peak.bytes)} ({label(source)}, {where}), "
        f"left behind {format_bytes(left, signed=True)}, {record.wall_s:.2f} s"
    )


def quiet_line(record: CellRecord) -> str:
    """What ``--quiet`` prints: :func:`one_line` and the titles of the suggestions."""
    if not record.suggestions:
        return one_line(record)
    return (f"{one_line(record)} · {len(record.suggestions)} suggestion(s): "
            + "; ".join(s.title for s in record.suggestions))


def history_table(records: Sequence[CellRecord]) -> str:
    """Every measured cell: number, peak, left behind, wall time, suggestions."""
    if not records:
        return "no cell measured yet: run one with %%gpumem"
    lines = [f"{'cell':<9} {'wall':>8}  {'peak':<36} {'left behind':>13}  suggestions"]
    for record in records:
        peak, source, _, left = record.headline()
        lines.append(
            f"{record.name:<9} {record.wall_s:>7.2f}s  "
            f"{format_bytes(peak.bytes) + ' (' + label(source) + ')':<36} "
            f"{format_bytes(left, signed=True):>13}  "
            + ("; ".join(s.title for s in record.suggestions) or "-"))
    return "\n".join(lines)


def status(configurator: Any) -> str:
    """The policy, each backend's state, and the devices, as text (``%gpumem status``)."""
    policy = configurator.policy
    lines = [f"kmem_magic policy: {policy if policy else 'not applied'}"]
    reports = {r.backend: r for r in configurator.reports}
    for backend in backends.BACKENDS:
        state = ("started" if backend.is_initialized() else
                 "imported" if backend.is_imported() else
                 "installed" if backend.is_installed() else "not installed")
        report = reports.get(backend.name)
        lines.append(f"  {backend.name:<11} {state:<13} "
                     f"{report.message if report else ''}".rstrip())
    lines.append(f"keras backend: {backends.keras_backend() or 'keras not imported'}")
    devices = _nvml.devices()
    if not devices:
        lines.append(f"no GPU: {_nvml.unavailable_reason()}")
    held = [b.in_use() for b in backends.started()]
    for device in devices:
        used = _nvml.memory_used(device)
        mine, why = _nvml.process_used(device, ours=sum(h.get(device.index) or 0 for h in held))
        lines.append(
            f"GPU {device.index}: {device.name} {device.uuid} "
            f"used {format_bytes(used)} of {format_bytes(device.total_bytes)}, "
            f"this process {format_bytes(mine)}" + (f" ({why})" if why else "")
        )
    if _nvml.order_note():
        lines.append(f"device order: {_nvml.order_note()}")
    if configurator.env.names:
        lines.append("set by kmem: " + ", ".join(
            f"{name}={os.environ.get(name)}" for name in configurator.env.names))
    return "\n".join(lines)


def _age(seconds) -> str:
    if seconds is None:
        return "no cell yet"
    if seconds < 90:
        return f"{seconds:.0f} s ago"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


def who_rows(sharing: Any, device) -> List[List[str]]:
    """The rows of GPU ``device`` (host-only rows when None) in :func:`who_table`, header
    first: one per kmem kernel, then the processes no kernel accounts for."""
    gpu = sharing.gpu(device) if device is not None else None
    rows = [["", "notebook", "user", "backend", "limit", "in use", "peak", "holds",
             "last cell"] if device is not None else
            ["", "notebook", "user", "backend", "policy", "host RSS", "last cell"]]
    for p in sharing.on(device):
        name = p.notebook + (" (this kernel)" if p.me else "") + \
            (f" (on {p.host}, seen {_age(p.age_s)})" if p.elsewhere else "")
        when = "running now" if p.running else _age(p.last_cell_age_s)
        flag = "!" if p.over_share else "*" if p.me else ""
        if device is None:
            rows.append([flag, name, p.user, p.backend or "-", p.policy or "-",
                         format_bytes(p.host_rss), when])
            continue
        holds = format_bytes(p.holds) + (f" ({p.holds_source})" if p.holds_source else "")
        rows.append([flag, name, p.user, p.backend or "-",
                     format_bytes(p.limit_bytes) if p.limit_bytes else "none",
                     format_bytes(p.in_use), format_bytes(p.peak), holds, when])
    for pid, name, used in gpu.others if gpu else ():
        over = exceeds(used, gpu.share_bytes)
        rows.append(["!" if over else "", f"not kmem: pid {pid} ({name or 'hidden'})", "", "",
                     "", "", "", f"{format_bytes(used)} (NVML)", ""])
    return rows


def _columns(rows: List[List[str]]) -> List[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]


def who_table(sharing: Any) -> str:
    """``%gpumem who``: every kmem kernel on this machine's GPUs (notebook, user, backend,
    limit, in use, peak, what it holds, its last cell), the processes no kmem kernel accounts
    for, and what nobody accounts for."""
    lines = []
    for gpu in sharing.gpus:
        share = f" · fair share {sharing.share}: {format_bytes(gpu.share_bytes)} each" \
            if gpu.share_bytes else ""
        lines.append(f"GPU {gpu.index} {gpu.name} ({gpu.uuid[:12]}): "
                     f"{format_bytes(gpu.used_bytes)} used of {format_bytes(gpu.total_bytes)}"
                     f" (NVML){share}")
        lines += ["  " + line for line in _columns(who_rows(sharing, gpu.index))]
        if gpu.unaccounted is not None:
            lines.append(f"  not accounted for by any kernel or process listed: "
                         f"{format_bytes(gpu.unaccounted)}")
        if not gpu.nvml_lists:
            lines.append("  NVML names no process on this GPU (a container hides them): the "
                         "kernels' figures are their own allocator pools from the ledger, "
                         "without their CUDA contexts")
    if not sharing.gpus:
        lines.append("kmem kernels on this machine (no GPU visible: host memory)")
        lines += ["  " + line for line in _columns(who_rows(sharing, None))]
    if any(p.over_share for p in sharing.peers) or any(
            exceeds(u, g.share_bytes) for g in sharing.gpus for _, _, u in g.others):
        lines.append("! holds more than the fair share (and its CUDA context)")
    kernels = len({(p.host, p.pid) for p in sharing.peers})
    lines.append(f"ledger {sharing.folder}: {kernels} kmem kernel{'s' if kernels != 1 else ''}"
                 + (f"; {sharing.skipped} unreadable record(s) skipped" if sharing.skipped
                    else ""))
    return "\n".join(lines)
