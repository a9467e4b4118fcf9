"""The ledger: one small record per kmem kernel in a folder the kernels share, so that each knows
who else holds the GPU, by notebook and user, even where NVML hides process IDs.

>>> import tempfile
>>> book = Ledger(tempfile.mkdtemp())
>>> me = Identity.here()
>>> book.write(Entry.of(me, policy="growth"))
True
>>> [e.notebook for e in book.read()[0]] == [me.notebook]
True
>>> book.remove()

A record says who (process id, host, user, notebook, kernel start time), how (backend, policy,
limit) and how much (per GPU, by UUID: the allocators' in-use and peak, the pools, the process's
NVML figure when the driver gives one, and host RSS). It never holds the kernel's environment
or code. Records are written atomically (a private temporary file renamed over the record),
readable by exactly the users who can enter the folder, removed at exit; a record whose process
is gone (its pid dead, or reused by a process that started at another time) is ignored and
removed. The folder is the only channel: no network call, no daemon.

The folder: ``GpuMem.ledger`` or ``$KMEM_LEDGER`` (a hub points every kernel at one folder;
``off`` turns it off), else :func:`default_folder`, one per machine. kmem creates a missing
folder like ``/tmp`` (sticky, everyone may add their own records) when it is the default, and
group-shared and sticky (``3770``) when it is named; a host who wants the ledger private to a
workshop creates it first: ``install -d -m 3770 -g students /srv/kmem-ledger``. A folder others
may write to without the sticky bit is refused, and a record is believed only from the user it
names (the file's owner).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import secrets
import socket
import stat
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import psutil

from . import _nvml
from .record import CellRecord, Device, GpuShare, Job, JobDevice, Peer, Sharing
from .sizes import MAX_BYTES, SHARE_RESERVE, parse_limit

VERSION = 1
ENV = "KMEM_LEDGER"
OFF = ("off", "none", "no", "false", "0")
MAX_RECORD_BYTES = 64 * 1024
WRITE_EVERY_S = 5.0  # while a cell runs, a record is rewritten at most this often
GONE_AFTER_S = 24 * 3600  # another host's or container's record, not updated for a day: gone
SAME_START_S = 2.0  # a live pid whose start time differs more than this is a reused pid


class LedgerError(Exception):
    """The ledger folder cannot be used (the message says why, in one line)."""


def default_folder() -> str:
    """The machine's ledger folder, under the system's temporary folder."""
    return os.path.join(tempfile.gettempdir(), "kmem-ledger")


def chosen_folder(setting: str = "") -> Optional[str]:
    """The folder a setting (``GpuMem.ledger``, else ``$KMEM_LEDGER``) names, None when off."""
    value = (setting or os.environ.get(ENV, "")).strip()
    if value.lower() in OFF:
        return None
    return os.path.abspath(os.path.expanduser(value)) if value else default_folder()


# ------------------------------------------------------------------------------ who I am
def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as handle:
            return handle.read().strip()
    except OSError:
        return f"boot-{psutil.boot_time():.0f}"


def _pid_namespace() -> str:
    """What makes a pid mean this process: the pid namespace (containers each have their own)."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def _user() -> str:
    """The hub's user name, else the login's; never the user database (with LDAP or SSSD
    that lookup is a network call)."""
    for name in ("JUPYTERHUB_USER", "LOGNAME", "USER", "LNAME", "USERNAME"):
        if os.environ.get(name):
            return os.environ[name]
    return f"uid {os.getuid()}" if hasattr(os, "getuid") else "unknown"


_KERNEL_FILE = re.compile(r"kernel-([0-9A-Za-z-]+)\.json$")


def _kernel_id() -> Optional[str]:
    """The Jupyter kernel id, from the connection file ipykernel was started with."""
    for i, arg in enumerate(sys.argv):
        path = sys.argv[i + 1] if arg == "-f" and i + 1 < len(sys.argv) else \
            arg[3:] if arg.startswith("-f=") else None
        found = _KERNEL_FILE.search(path or "")
        if found:
            return found.group(1)
    return None


@dataclass(frozen=True)
class Identity:
    """Who this kernel is, as the ledger names it."""

    pid: int
    host: str
    user: str
    uid: Optional[int]
    notebook: str
    kernel_id: Optional[str]
    started: float
    boot: str
    pidns: str

    @classmethod
    def here(cls, user_ns: Optional[dict] = None) -> "Identity":
        """This process: the notebook is ``$JPY_SESSION_NAME`` (Jupyter sets it), VS Code's
        notebook file, else the kernel id, else "pid N" (a terminal IPython)."""
        kernel = _kernel_id()
        vscode = (user_ns or {}).get("__vsc_ipynb_file__")
        notebook = os.environ.get("JPY_SESSION_NAME") or (
            vscode if isinstance(vscode, str) else "") or (
            f"kernel {kernel}" if kernel else f"pid {os.getpid()}")
        return cls(pid=os.getpid(), host=socket.gethostname(), user=_user(),
                   uid=os.getuid() if hasattr(os, "getuid") else None, notebook=notebook,
                   kernel_id=kernel, started=psutil.Process().create_time(), boot=_boot_id(),
                   pidns=_pid_namespace())


# ------------------------------------------------------------------------------ a record
@dataclass(frozen=True)
class GpuUse:
    """What one kernel holds on one GPU (bytes; None where unknown)."""

    uuid: str
    index: int
    in_use: Optional[int] = None  # the frameworks' allocators have handed out
    peak: Optional[int] = None  # the highest in use kmem saw in this kernel
    pool: Optional[int] = None  # the frameworks' pools: in use plus their caches
    process: Optional[int] = None  # NVML's figure for this process (None in containers)
    limit: Optional[int] = None  # the policy's limit on this GPU


@dataclass(frozen=True)
class Entry(Identity):
    """One kernel's record in the ledger: who (its :class:`Identity`), how and how much."""

    backend: Optional[str] = None
    policy: str = ""
    updated: float = 0.0
    last_cell: Optional[float] = None  # when the last measured cell ended
    running: bool = False  # a measured cell is running
    host_rss: Optional[int] = None
    gpus: Tuple[GpuUse, ...] = ()
    cells: int = 0  # measured cells so far
    job: str = ""  # the multi-process job it is one process of ("" alone)
    process: Optional[int] = None
    processes: Optional[int] = None
    job_devices: Tuple[JobDevice, ...] = ()  # its local devices (any platform)

    @classmethod
    def of(cls, me: Identity, **figures: Any) -> "Entry":
        """``me``'s entry with ``figures`` (any field; ``updated`` defaults to now)."""
        return cls(**{**dataclasses.asdict(me), "updated": time.time(), **figures})

    def to_json(self) -> str:
        return json.dumps({"kmem_ledger": VERSION, **dataclasses.asdict(self)})

    @classmethod
    def from_json(cls, text: str) -> "Entry":
        """The entry in ``text``; raises ``ValueError`` for anything that is not one."""
        data = json.loads(text)
        if not isinstance(data, dict) or data.pop("kmem_ledger", None) != VERSION:
            raise ValueError("not a kmem ledger record")
        gpus, devices = data.pop("gpus", []), data.pop("job_devices", [])
        if not isinstance(gpus, list) or not isinstance(devices, list):
            raise ValueError("gpus")
        entry = cls(**data, gpus=tuple(GpuUse(**g) for g in gpus),
                    job_devices=tuple(JobDevice(**d) for d in devices))
        for item in (entry,) + entry.gpus + entry.job_devices:
            _check_types(item)
        return entry


def _check_types(item: Any) -> None:
    """Raise ``ValueError`` when a field does not hold the type its annotation names, or a
    value no kernel writes (a pid below 1, a size beyond any device, a time that is not one):
    a record is read from a folder others can write to."""
    for f in dataclasses.fields(item):
        value, kind = getattr(item, f.name), str(f.type)
        if f.name in ("gpus", "job_devices"):
            continue
        allowed = tuple(t for name, t in (("int", int), ("float", (int, float)), ("str", str),
                                          ("bool", bool)) if name in kind)
        if value is None and "Optional" in kind:
            continue
        if not isinstance(value, allowed) or (isinstance(value, bool) and "bool" not in kind):
            raise ValueError(f"{f.name}: {value!r}")
        if isinstance(value, str) and len(value) > 4096:
            raise ValueError(f"{f.name}: too long")
        if isinstance(value, (int, float)) and not isinstance(value, bool) and not (
                (1 if f.name == "pid" else 0) <= value <= MAX_BYTES and (
                    isinstance(value, int) or math.isfinite(value))):
            raise ValueError(f"{f.name}: {value!r}")


# ------------------------------------------------------------------------------ the folder
def _prepare(folder: str, default: bool) -> int:
    """Create ``folder`` if missing and check that it is safe; the mode its records get."""
    try:
        os.mkdir(folder, 0o700)
    except FileExistsError:
        pass
    except OSError as error:
        raise LedgerError(f"cannot create the ledger folder {folder}: "
                          f"{error.strerror or error}") from None
    else:  # mkdir obeys the umask: set the mode meant
        os.chmod(folder, 0o1777 if default else 0o3770)
    info = os.lstat(folder)
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise LedgerError(f"the ledger folder {folder} is not a folder (or is a symlink)")
    mode = stat.S_IMODE(info.st_mode)
    if mode & (stat.S_IWOTH | stat.S_IWGRP) and not mode & stat.S_ISVTX:
        raise LedgerError(f"the ledger folder {folder} is writable by others without the "
                          "sticky bit (they could remove or replace records): chmod +t it")
    # a record is readable by exactly those who may enter the folder
    return 0o600 | (0o040 if mode & stat.S_IXGRP else 0) | (0o004 if mode & stat.S_IXOTH else 0)


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text)[:40]


class Ledger:
    """This kernel's record in ``folder``, and every kernel's records there.

    Creating one prepares the folder (raises :class:`LedgerError` when it cannot be used)."""

    def __init__(self, folder: str, default: bool = False) -> None:
        self.folder = folder
        self.mode = _prepare(folder, default)
        # random per process: another user cannot take this record's name before it exists
        self.path = os.path.join(folder, f"{_safe_name(socket.gethostname())}-{os.getpid()}-"
                                         f"{secrets.token_hex(4)}.json")
        self.written_at = 0.0

    def write(self, entry: Entry, every_s: float = 0.0) -> bool:
        """Write ``entry`` as this kernel's record, atomically, unless it was written less than
        ``every_s`` ago; whether it wrote. Raises ``OSError`` when the folder refuses."""
        now = time.monotonic()
        if every_s and now - self.written_at < every_s:
            return False
        handle, temporary = tempfile.mkstemp(prefix=".kmem-", suffix=".tmp", dir=self.folder)
        try:
            with os.fdopen(handle, "w") as out:
                os.fchmod(out.fileno(), self.mode)
                out.write(entry.to_json())
            os.replace(temporary, self.path)
        except BaseException:
            _unlink(temporary)
            raise
        self.written_at = now
        return True

    def remove(self) -> None:
        """Remove this kernel's record (at exit, at ``%unload_ext``, with ``--no-ledger``)."""
        _unlink(self.path)

    def read(self) -> Tuple[List[Entry], int]:
        """Every live kernel's entry (this one's included) and how many records were skipped
        because they could not be read; removes records whose process is gone."""
        here = (socket.gethostname(), _boot_id(), _pid_namespace())
        newest: Dict[tuple, Entry] = {}
        skipped = 0
        try:
            names = sorted(os.listdir(self.folder))
        except OSError:
            return [], 0
        for name in names:
            if name.startswith(".") or not name.endswith(".json"):
                continue
            path = os.path.join(self.folder, name)
            entry = _read(path)
            if entry is None:
                skipped += 1
                continue
            alive = is_alive(entry, here)
            local = (entry.host, entry.boot, entry.pidns) == here
            if alive is False and local:
                _unlink(path)  # where the folder lets this user (the sticky bit may not)
            elif alive is not False:
                key = (entry.host, entry.boot, entry.pidns, entry.pid)
                if key not in newest or newest[key].updated < entry.updated:
                    newest[key] = entry  # one kernel, one row (a copy is not a second one)
        return list(newest.values()), skipped


def _read(path: str) -> Optional[Entry]:
    """The entry in ``path``; None for a symlink, a file too large, partial or not a record."""
    try:
        handle = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) |
                         getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return None
    try:
        info = os.fstat(handle)
        if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_RECORD_BYTES:
            return None
        entry = Entry.from_json(os.read(handle, MAX_RECORD_BYTES + 1).decode())
        if entry.uid is not None and info.st_uid != entry.uid:
            return None  # written by another user than the one it names: not believed
        return entry
    except (OSError, ValueError, TypeError, OverflowError, UnicodeDecodeError, RecursionError):
        return None
    finally:
        os.close(handle)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def is_alive(entry: Entry, here: Tuple[str, str, str]) -> Optional[bool]:
    """Whether ``entry``'s kernel runs: True or False where its pid can be checked (same host,
    boot and pid namespace), else None while it was updated within :data:`GONE_AFTER_S` (then
    False)."""
    if (entry.host, entry.boot, entry.pidns) != here:
        return None if time.time() - entry.updated < GONE_AFTER_S else False
    try:
        process = psutil.Process(entry.pid)
        started = process.create_time()
        if process.status() == psutil.STATUS_ZOMBIE:  # killed, not yet reaped by its parent
            return False
    except psutil.NoSuchProcess:
        # /proc mounted with hidepid hides other users' processes: ask the kernel itself
        try:
            os.kill(entry.pid, 0)
        except ProcessLookupError:
            return False
        except (PermissionError, OSError):
            return None
        return None
    except (psutil.Error, ValueError, OverflowError):
        return None
    return abs(started - entry.started) < SAME_START_S


# ------------------------------------------------------------------------------ the view
@dataclass
class Readings:
    """What NVML says now, per GPU: used memory and the process table (None where unknown)."""

    devices: List[Device] = field(default_factory=list)
    used: Dict[int, Optional[int]] = field(default_factory=dict)
    tables: Dict[int, Optional[list]] = field(default_factory=dict)

    @classmethod
    def now(cls) -> "Readings":
        """NVML now (milliseconds: the process table; for ``%gpumem who``)."""
        devices = _nvml.devices()
        return cls(devices, {d.index: _nvml.memory_used(d) for d in devices},
                   {d.index: _nvml.processes(d) for d in devices})

    @classmethod
    def of(cls, record: CellRecord) -> "Readings":
        """What NVML said at the end of a measured cell (no new NVML call: a cell never waits
        for NVML beyond its deadlines)."""
        tables: Dict[int, Optional[list]] = {}
        for device in record.devices:
            others = record.others.get(device.index)
            mine = record.figures(device.index).after.get("process")
            tables[device.index] = None if others is None else \
                [(pid, used) for pid, _, used in others] + ([(os.getpid(), mine)] if mine else [])
        return cls(list(record.devices),
                   {d.index: record.figures(d.index).after.get("device") for d in record.devices},
                   tables)


def _visible(pid: int) -> bool:
    """Whether ``pid`` (from NVML, which reports the host's pids) is a process of this
    namespace; outside a container every pid is."""
    return os.path.exists(f"/proc/{pid}") if os.path.isdir("/proc") else True


def _process_name(pid: int) -> Optional[str]:
    if not _visible(pid):  # a host pid: a local process of that number is another one
        return None
    try:
        return psutil.Process(pid).name()
    except (psutil.Error, OSError):
        return None


def exceeds(holds: Optional[int], share_bytes: Optional[int]) -> bool:
    """Whether ``holds`` bytes on a GPU exceed a fair share (and the reserve beside it, for
    the CUDA context that no limit covers)."""
    return bool(share_bytes and holds is not None and holds > share_bytes + SHARE_RESERVE)


def share_in_force(entries: List[Entry], mine: str = "") -> str:
    """The fair share (``share:N``) in force: this kernel's, else the one most kernels run."""
    if mine.startswith("share:"):
        return mine
    shares = []
    for entry in entries:
        text = entry.policy.split("limit ", 1)[-1]
        try:
            if parse_limit(text).share is not None:
                shares.append(text)
        except ValueError:  # a record's policy is read as written; a broken one counts none
            pass
    return max(set(shares), key=shares.count) if shares else ""


def view(entries: List[Entry], me: Identity, readings: Readings, folder: str,
         skipped: int = 0, share: str = "") -> Sharing:
    """Who holds what, on each of this machine's GPUs: ``entries`` (the ledger) matched to
    NVML's process table by pid where the pids are this kernel's to check, else by the
    entries' own figures, labelled as such."""
    now = time.time()
    here = (me.host, me.boot, me.pidns)
    limit = parse_limit(share) if share else None
    peers, gpus = [], []
    for device in readings.devices:
        table = readings.tables.get(device.index)
        listed = {pid: used for pid, used in table or []}
        nvml_lists = bool(table)
        # NVML lists host pids this container cannot see: the kernels' own figures (pools)
        # are then part of those processes' bytes, and must not be counted twice
        hidden = any(not _visible(pid) for pid in listed)
        share_bytes = limit.bytes_of(device.total_bytes) if limit else None
        accounted = 0
        for entry in entries:
            use = next((g for g in entry.gpus if g.uuid == device.uuid), None)
            if use is None:
                continue
            local = (entry.host, entry.boot, entry.pidns) == here
            if local and entry.pid in listed:
                holds, source = listed.pop(entry.pid), "NVML"
            elif use.process is not None:
                holds, source = use.process, "NVML"
            else:
                holds, source = use.pool if use.pool is not None else use.in_use, \
                    "allocator pool (ledger)"
            if holds is not None and not (hidden and source != "NVML"):
                accounted += holds
            peers.append(_peer(entry, me, now, device.index, use, holds, source, share_bytes,
                               local))
        others = tuple((pid, _process_name(pid), used) for pid, used in listed.items()
                       if pid != me.pid)
        used = readings.used.get(device.index)
        listed_bytes = sum(u or 0 for _, _, u in others)
        unaccounted = None if used is None else max(0, used - accounted - listed_bytes)
        gpus.append(GpuShare(device.index, device.uuid, device.name, device.total_bytes, used,
                             others, unaccounted, nvml_lists, share_bytes))
    if not readings.devices:
        peers = [_peer(e, me, now, None, None, None, "", None,
                       (e.host, e.boot, e.pidns) == here) for e in entries]
    order = {id(p): i for i, p in enumerate(peers)}
    peers.sort(key=lambda p: (p.device is None, p.device, not p.me, -(p.holds or 0), order[id(p)]))
    return Sharing(folder, tuple(peers), tuple(gpus), skipped, share)


def job_view(entries: List[Entry], key: str, processes: int, cells: int) -> Job:
    """Every device of job ``key`` from its processes' entries that report at least ``cells``
    measured cells (the newest entry of each process), the processes missing, and the process
    whose device peaked highest."""
    latest: Dict[int, Entry] = {}
    for entry in entries:
        if entry.job == key and entry.process is not None and entry.cells >= cells:
            if entry.process not in latest or latest[entry.process].updated < entry.updated:
                latest[entry.process] = entry
    devices = tuple(dataclasses.replace(d, process=p)
                    for p in sorted(latest) for d in latest[p].job_devices)
    peaked = [d for d in devices if d.peak is not None]
    highest = max(peaked, key=lambda d: d.peak).process if peaked else None
    missing = tuple(p for p in range(processes) if p not in latest)
    return Job(key, processes, devices, missing, highest)


def _peer(entry: Entry, me: Identity, now: float, device: Optional[int], use: Optional[GpuUse],
          holds: Optional[int], source: str, share_bytes: Optional[int], local: bool) -> Peer:
    same_user = entry.uid == me.uid and entry.user == me.user
    # another user's notebook is named by its file, not by the folders above it
    notebook = entry.notebook if same_user else os.path.basename(entry.notebook.rstrip("/"))
    over = exceeds(holds, share_bytes)
    return Peer(
        notebook=notebook or entry.notebook, user=entry.user, pid=entry.pid, host=entry.host,
        backend=entry.backend, policy=entry.policy, device=device,
        limit_bytes=use.limit if use else None, in_use=use.in_use if use else None,
        peak=use.peak if use else None, pool=use.pool if use else None, holds=holds,
        holds_source=source, host_rss=entry.host_rss, age_s=max(0.0, now - entry.updated),
        last_cell_age_s=None if entry.last_cell is None else max(0.0, now - entry.last_cell),
        running=entry.running, me=entry.pid == me.pid and local, same_user=same_user,
        elsewhere=not local, over_share=over)


__all__ = ["Entry", "GpuUse", "Identity", "Ledger", "LedgerError", "Readings",
           "chosen_folder", "default_folder", "exceeds", "is_alive", "job_view",
           "share_in_force", "view"]
