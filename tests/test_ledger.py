"""The ledger: kmem kernels sharing a folder know each other by notebook and user; dead and
reused-pid records are ignored and removed; broken records are skipped without a traceback;
NVML's process table is matched to the records where it can be, and where it cannot (a
container) the records' own figures are the only source, said as such."""

import dataclasses
import json
import os
import stat
import subprocess
import sys
import time

import psutil
import pytest
from conftest import gpu

from kmem_magic import ledger
from kmem_magic.advise import rules
from kmem_magic.ledger import Entry, GpuUse, Identity, Ledger, LedgerError, Readings
from kmem_magic.record import CellRecord, Device, Figures, Peak
from kmem_magic.show import html
from kmem_magic.show.text import who_table
from kmem_magic.sizes import GiB, MiB, parse_limit

UUID = "GPU-00000000-aaaa-bbbb-cccc-000000000000"


def other_kernel(notebook="train.ipynb", user="alice", **figures):
    """A real process that lives until it is killed, and the entry its kernel would write."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    started = psutil.Process(child.pid).create_time()
    me = Identity.here()
    # another user by name; the uid stays this one, the owner of the files the test writes
    who = dataclasses.replace(me, pid=child.pid, started=started, notebook=notebook, user=user)
    return child, Entry.of(who, **figures)


def write_as_other(book, entry, name):
    with open(os.path.join(book.folder, name), "w") as handle:
        handle.write(entry.to_json())


@pytest.fixture
def book(tmp_path):
    folder = tmp_path / "ledger"
    folder.mkdir(mode=0o700)
    return Ledger(str(folder))


# --------------------------------------------------------------------------- records
def magics_of(ip):
    presence = __import__("kmem_magic")._LOADED[id(ip)].presence
    assert presence.flush(), "the writes are done"
    return presence


def test_a_record_is_readable_by_exactly_those_who_may_enter_the_folder(tmp_path):
    for mode, expected in ((0o700, 0o600), (0o3770, 0o640), (0o1777, 0o644)):
        folder = tmp_path / f"f{mode:o}"
        folder.mkdir()
        os.chmod(folder, mode)
        book = Ledger(str(folder))
        book.write(Entry.of(Identity.here(), policy="growth"))
        assert stat.S_IMODE(os.stat(book.path).st_mode) == expected
    fresh = tmp_path / "made-by-kmem"
    Ledger(str(fresh), default=True)
    assert stat.S_IMODE(os.stat(fresh).st_mode) == 0o1777, "the machine's folder is like /tmp"


def test_a_record_says_who_and_how_much_and_nothing_of_the_environment_or_code(book, ip):
    os.environ["KMEM_SECRET_TOKEN"] = "hunter2"
    try:
        book.write(Entry.of(Identity.here(), policy="limit 4.00 GiB",
                            gpus=(GpuUse(UUID, 0, in_use=GiB, peak=2 * GiB),)))
        text = open(book.path).read()
    finally:
        del os.environ["KMEM_SECRET_TOKEN"]
    data = json.loads(text)
    assert data["pid"] == os.getpid() and data["user"] and data["notebook"]
    assert data["gpus"][0]["peak"] == 2 * GiB
    assert "hunter2" not in text and "PATH" not in text
    assert set(data) == {"kmem_ledger"} | {f.name for f in dataclasses.fields(Entry)}


def test_a_dead_kernels_record_is_ignored_and_removed(book):
    child, entry = other_kernel()
    write_as_other(book, entry, "other.json")
    assert [e.pid for e in book.read()[0]] == [child.pid]
    child.kill()
    child.wait()
    assert book.read()[0] == []
    assert not os.path.exists(os.path.join(book.folder, "other.json"))


def test_a_reused_pid_is_not_taken_for_the_kernel_that_wrote_the_record(book):
    me = Identity.here()
    earlier = dataclasses.replace(me, started=me.started - 3600)  # same pid, another process
    write_as_other(book, Entry.of(earlier, notebook="gone.ipynb"), "reused.json")
    assert book.read() == ([], 0)
    assert not os.listdir(book.folder)


def test_corrupt_partial_and_foreign_records_are_skipped_without_a_traceback(book, tmp_path,
                                                                             ip, capsys):
    child, good = other_kernel("good.ipynb")  # another live kernel's record
    folder = book.folder
    fields = json.loads(good.to_json())
    broken = {"partial.json": good.to_json()[:40], "list.json": "[]",
              "types.json": json.dumps({**fields, "pid": "x"}),
              "extra.json": json.dumps({**fields, "shell": "rm -rf"}),
              "huge.json": " " * (ledger.MAX_RECORD_BYTES + 1), "binary.json": "\udcff",
              # well typed, but no kernel writes these
              "pid.json": json.dumps({**fields, "pid": -1}),
              "size.json": json.dumps({**fields, "host_rss": 10**400}),
              "time.json": json.dumps({**fields, "updated": float("inf")}),
              # a record that names another user than the file's owner
              "forged.json": json.dumps({**fields, "uid": (fields["uid"] or 0) + 1})}
    for name, text in broken.items():
        with open(os.path.join(folder, name), "w", errors="surrogateescape") as handle:
            handle.write(text)
    target = tmp_path / "elsewhere.json"
    target.write_text(good.to_json())
    os.symlink(target, os.path.join(folder, "link.json"))
    write_as_other(book, good, "good.json")
    share = json.dumps({**fields, "pid": os.getppid(), "policy": "limit share:0"})
    with open(os.path.join(folder, "share.json"), "w") as handle:
        handle.write(share)  # a broken share in a live kernel's record: read, counted as none
    entries, skipped = book.read()
    assert "good.ipynb" in [e.notebook for e in entries]
    assert skipped == len(broken) + 1
    assert ledger.share_in_force(entries) == ""
    ip.run_line_magic("config", f"GpuMem.ledger = {folder!r}")
    capsys.readouterr()
    ip.run_line_magic("gpumem", "who")
    out = capsys.readouterr()
    child.kill()
    child.wait()
    assert "good.ipynb" in out.out and f"{skipped} unreadable record(s) skipped" in out.out
    assert "Traceback" not in out.out + out.err


def test_a_record_from_another_container_is_listed_until_a_day_without_news(book):
    me = Identity.here()
    there = dataclasses.replace(me, pid=7, pidns="pid:[1]", host="hub-user-bob", user="bob")
    write_as_other(book, Entry.of(there, notebook="/home/bob/secret/plan.ipynb"), "bob.json")
    [entry], _ = book.read()
    sharing = ledger.view([entry], me, Readings(), book.folder)
    [peer] = sharing.peers
    assert peer.elsewhere and peer.notebook == "plan.ipynb", "another user's folders stay theirs"
    stale = dataclasses.replace(entry, updated=time.time() - 2 * ledger.GONE_AFTER_S)
    write_as_other(book, stale, "bob.json")
    assert book.read()[0] == []
    assert os.path.exists(os.path.join(book.folder, "bob.json")), \
        "a record this kernel cannot check is hidden, never removed"


def test_a_folder_kmem_cannot_trust_is_refused_in_one_line(tmp_path, ip, capsys):
    open_folder = tmp_path / "open"
    open_folder.mkdir()
    os.chmod(open_folder, 0o777)
    with pytest.raises(LedgerError, match="sticky"):
        Ledger(str(open_folder))
    group = tmp_path / "group"
    group.mkdir()
    os.chmod(group, 0o2770)  # a group may remove each other's records
    with pytest.raises(LedgerError, match="sticky"):
        Ledger(str(group))
    link = tmp_path / "link"
    os.symlink(tmp_path / "open", link)
    with pytest.raises(LedgerError, match="symlink"):
        Ledger(str(link))
    capsys.readouterr()
    ip.run_line_magic("config", f"GpuMem.ledger = {str(open_folder)!r}")
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "no ledger" in out and "sticky" in out
    assert ip.run_cell("%%gpumem --quiet\nx = 1").success, "the magics work without a ledger"


# --------------------------------------------------------------------------- who holds the GPU
def test_who_names_kmem_kernels_by_notebook_and_the_rest_as_not_kmem(fake_nvml, book):
    child, entry = other_kernel("/home/alice/course/train.ipynb", backend="torch",
                                policy="limit 20.00 GiB",
                                gpus=(GpuUse(UUID, 0, in_use=15 * GiB, peak=19 * GiB,
                                             pool=18 * GiB, limit=20 * GiB),))
    try:
        stranger = 4_000_000  # a pid NVML lists and no kmem kernel claims
        fake_nvml([gpu(0, used=60 * GiB, procs=[(os.getpid(), 2 * GiB),
                                                (child.pid, 20 * GiB), (stranger, 30 * GiB)])])
        write_as_other(book, entry, "alice.json")
        me = Identity.here()
        book.write(Entry.of(me, policy="growth", gpus=(GpuUse(UUID, 0, in_use=GiB),)))
        entries, _ = book.read()
        sharing = ledger.view(entries, me, Readings.now(), book.folder)
    finally:
        child.kill()
        child.wait()
    mine, alice = sharing.on(0)
    assert mine.me and mine.holds == 2 * GiB and mine.holds_source == "NVML"
    assert alice.notebook == "train.ipynb" and alice.user == "alice"
    assert alice.holds == 20 * GiB and alice.peak == 19 * GiB
    [share] = sharing.gpus
    assert [o[0] for o in share.others] == [stranger]
    assert share.unaccounted == 60 * GiB - 2 * GiB - 20 * GiB - 30 * GiB
    text = who_table(sharing)
    assert "train.ipynb" in text and "20.00 GiB (NVML)" in text and "alice" in text
    assert f"not kmem: pid {stranger}" in text and "8.00 GiB" in text


def test_in_a_container_the_ledger_figures_are_the_only_source_and_say_so(fake_nvml, book):
    fake_nvml([gpu(0, used=30 * GiB, procs=[])])  # NVML lists nobody: pids are hidden
    me = Identity.here()
    there = dataclasses.replace(me, pid=12, pidns="pid:[2]", host="c2", notebook="b.ipynb")
    write_as_other(book, Entry.of(there, backend="jax",
                                  gpus=(GpuUse(UUID, 0, in_use=8 * GiB, pool=12 * GiB),)), "b.json")
    entries, _ = book.read()
    sharing = ledger.view(entries, me, Readings.now(), book.folder)
    [peer] = sharing.on(0)
    assert peer.holds == 12 * GiB and peer.holds_source == "allocator pool (ledger)"
    assert not sharing.gpus[0].nvml_lists and sharing.gpus[0].unaccounted == 18 * GiB
    assert "NVML names no process on this GPU" in who_table(sharing)
    advice = rules.other_processes(with_sharing(sharing, others={0: ()}), [], rules.Context())
    assert advice is not None and "b.ipynb" in advice.evidence
    assert "allocator pool (ledger)" in advice.evidence and advice.saving_bytes == 12 * GiB
    # NVML lists a host pid this container cannot see: the kernel's pool is inside its bytes
    fake_nvml([gpu(0, used=30 * GiB, procs=[(4_000_123, 13 * GiB)])])
    sharing = ledger.view(entries, me, Readings.now(), book.folder)
    [hidden] = sharing.gpus[0].others
    assert hidden[1] is None and sharing.gpus[0].unaccounted == 17 * GiB, "counted once"


def test_who_marks_whoever_holds_more_than_the_fair_share(fake_nvml, book):
    fake_nvml([gpu(0, used=70 * GiB, procs=[(4_000_001, 61 * GiB)])])
    me = Identity.here()
    book.write(Entry.of(me, policy="limit share:4",
                        gpus=(GpuUse(UUID, 0, in_use=GiB, process=25 * GiB),)))
    entries, _ = book.read()
    share = ledger.share_in_force(entries)
    sharing = ledger.view(entries, me, Readings.now(), book.folder, share=share)
    each = parse_limit("share:4").bytes_of(80 * GiB)
    assert share == "share:4" and sharing.gpus[0].share_bytes == each
    assert sharing.on(0)[0].over_share, "25 GiB is over an 18.6 GiB share and its context"
    text = who_table(sharing)
    assert "fair share share:4: 18.60 GiB each" in text
    assert [line[2] for line in text.splitlines() if "not kmem" in line] == ["!"]


def with_sharing(sharing, others):
    device = Device(0, "NVIDIA H100 80GB HBM3", UUID, 80 * GiB)
    figures = Figures(after={"device": sharing.gpus[0].used_bytes}, peak={"jax": Peak(GiB, True)})
    return CellRecord(3, "", 1.0, "jax", "growth", 0.1, devices=(device,), gpu={0: figures},
                      others=others, sharing=sharing)


def test_the_other_processes_advice_names_the_notebook_and_what_frees_it_there(fake_nvml, book):
    child, entry = other_kernel("train.ipynb", backend="torch", policy="limit 20.00 GiB",
                                gpus=(GpuUse(UUID, 0, in_use=12 * GiB, pool=18 * GiB,
                                             limit=20 * GiB),))
    try:
        fake_nvml([gpu(0, used=60 * GiB, procs=[(child.pid, 18 * GiB + 200 * MiB),
                                                (4_000_002, 30 * GiB)])])
        write_as_other(book, entry, "alice.json")
        me = Identity.here()
        entries, _ = book.read()
        readings = Readings.now()
        sharing = ledger.view(entries, me, readings, book.folder)
    finally:
        child.kill()
        child.wait()
    cell = with_sharing(sharing, {0: ((child.pid, "python3", 18 * GiB + 200 * MiB),
                                      (4_000_002, "python3", 30 * GiB))})
    advice = rules.other_processes(cell, [], rules.Context())
    assert "train.ipynb (alice, torch, limit 20.00 GiB) holds 18.20 GiB" in advice.evidence
    assert "pid 4000002 (python3, no kmem) holds 30.00 GiB" in advice.evidence
    assert "This kernel can use 20.00 GiB more now" in advice.evidence
    assert "in train.ipynb (ask alice): torch.cuda.empty_cache() gives back 6.00 GiB" in advice.code
    assert advice.saving_bytes == 48 * GiB + 200 * MiB
    panel = html.static(dataclasses.replace(cell, suggestions=(advice,)))
    assert "Who holds GPU 0" in panel and "train.ipynb" in panel
    assert "not kmem: pid 4000002" in panel
    assert "Who holds" not in html.static(cell), "only beside the advice it backs"


# --------------------------------------------------------------------------- in a kernel
def records(folder):
    return [json.load(open(os.path.join(folder, n))) for n in os.listdir(folder)
            if n.endswith(".json")]


def test_gpumem_who_lists_this_kernel_and_no_ledger_takes_it_out(ip, capsys):
    folder = os.environ["KMEM_LEDGER"]
    magics_of(ip)
    assert [r["pid"] for r in records(folder)] == [os.getpid()], "%load_ext wrote the record"
    capsys.readouterr()
    ip.run_line_magic("gpumem", "who")
    assert "(this kernel)" in capsys.readouterr().out
    ip.run_line_magic("gpumem", "--no-ledger")
    assert "left the ledger" in capsys.readouterr().out
    assert records(folder) == []
    ip.run_line_magic("gpumem", "who")
    assert "other kmem kernels are not shown" in capsys.readouterr().out


def test_a_measured_cell_leaves_its_figures_in_the_record(ip):
    folder = os.environ["KMEM_LEDGER"]
    assert ip.run_cell("%%gpumem --quiet\nblock = bytearray(64 * 2**20)").success
    magics_of(ip)
    [data] = records(folder)
    assert data["last_cell"] is not None and not data["running"]
    assert data["host_rss"] > 64 * MiB
    record = __import__("kmem_magic").history(ip)[-1]
    assert record.sharing is not None and record.sharing.on(None)[0].me
    ip.run_cell("del block")


def test_leaving_at_unload_removes_the_record(shell):
    folder = os.environ["KMEM_LEDGER"]
    shell.run_line_magic("load_ext", "kmem_magic")
    magics_of(shell)
    assert len(records(folder)) == 1
    shell.run_line_magic("unload_ext", "kmem_magic")
    assert records(folder) == []


def test_a_slow_failing_ledger_while_a_cell_runs_costs_nothing_of_the_cell(ip, monkeypatch):
    from kmem_magic.measure import presence as module

    presence = magics_of(ip)
    writes = []

    def slow_full_disk(*args, **kwargs):  # a network share that answers late, then refuses
        writes.append(time.monotonic())
        time.sleep(0.3)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(module, "WRITE_EVERY_S", 0.0)  # write at every sample
    monkeypatch.setattr(presence.ledger, "write", slow_full_disk)
    result = ip.run_cell("%%gpumem --quiet --interval 0.01\nimport time; time.sleep(0.2); 6 * 7")
    assert result.success and result.result == 42
    record = __import__("kmem_magic").history(ip)[-1]
    assert record.faults == (), "the sampler and the cell's edges never waited for the folder"
    assert presence.flush() and len(writes) >= 2, "written while the cell ran, and after"
    assert "No space left on device" in presence.fault


@pytest.mark.parametrize("how", ["environment", "magic"])
def test_a_fair_share_is_a_fraction_of_each_gpu_less_the_reserve(fake_nvml, shell, capsys, how):
    fake_nvml([gpu(0, total=80 * GiB)])
    if how == "environment":  # what a hub sets once for every kernel
        os.environ["KMEM_LIMIT"] = "share:4"
    shell.run_line_magic("load_ext", "kmem_magic")
    try:
        if how == "magic":
            shell.run_line_magic("gpumem", "--limit share:4")
        out = capsys.readouterr().out
        fraction = float(os.environ["XLA_PYTHON_CLIENT_MEM_FRACTION"])
    finally:
        shell.run_line_magic("unload_ext", "kmem_magic")
    expected = (80 * GiB * 0.98 / 4 - GiB) / (80 * GiB)
    assert expected - 1e-6 <= fraction <= expected
    assert "policy limit share:4" in out and "capped at share:4" in out
