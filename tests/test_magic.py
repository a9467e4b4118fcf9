"""Invariant 2, in a real IPython shell: a %%gpumem cell behaves exactly like the bare cell."""

import dataclasses
import os
import threading

import pytest
from IPython.core.error import UsageError

import kmem_magic

from conftest import gpu


def run(ip, source):
    return ip.run_cell(source, store_history=True)


def test_cell_prints_returns_its_last_expression_and_fills_out(ip, capsys):
    result = run(ip, "%%gpumem\nprint('hello from the cell')\nanswer = 6 * 7\nanswer")
    out = capsys.readouterr().out
    assert result.success and result.result == 42
    assert "hello from the cell" in out
    assert ip.user_ns["answer"] == 42
    assert ip.user_ns["Out"][result.execution_count] == 42
    assert ip.user_ns["_"] == 42


def test_trailing_semicolon_silences_the_value_like_a_plain_cell(ip, capsys):
    result = run(ip, "%%gpumem --quiet\n7 * 6;")
    assert result.result is None
    assert result.execution_count not in ip.user_ns["Out"]


def test_cell_without_expression_returns_nothing(ip):
    result = run(ip, "%%gpumem --quiet\nx = [1, 2, 3]")
    assert result.success and result.result is None and ip.user_ns["x"] == [1, 2, 3]


def test_an_exception_fails_the_cell_with_the_users_error_and_line(ip, capsys):
    result = run(ip, "%%gpumem\nok = 1\nraise ValueError('boom')\nnever = 2")
    out = capsys.readouterr().out
    assert isinstance(result.error_in_exec, ValueError)
    assert not result.success
    assert ip.user_ns["ok"] == 1 and "never" not in ip.user_ns
    assert "----> 3 raise ValueError('boom')" in out, "traceback points at the cell's own line 3"
    assert "failed (ValueError)" in out, "the report still comes, and says the cell failed"


def test_keyboard_interrupt_interrupts_and_stops_the_sampler(ip, capsys):
    result = run(ip, "%%gpumem --interval 0.01\nimport time\ntime.sleep(0.05)\nraise KeyboardInterrupt")
    assert isinstance(result.error_in_exec, KeyboardInterrupt)
    assert "interrupted" in capsys.readouterr().out
    assert not [t for t in threading.enumerate() if t.name == "kmem-sampler"]


def test_line_magics_and_shell_escapes_inside_the_cell_still_work(ip, capsys):
    result = run(ip, "%%gpumem --quiet\n%time y = 3\nfiles = !echo listed\nfiles[0]")
    assert result.result == "listed"
    assert ip.user_ns["y"] == 3


def test_syntax_error_changes_nothing_not_even_the_policy(ip, capsys):
    result = run(ip, "%%gpumem --no-policy\ndef broken(:")
    assert isinstance(result.error_in_exec, SyntaxError)
    assert ip.magics_manager.registry["GpuMem"].configurator.policy.mode == "growth"
    assert "policy none" not in capsys.readouterr().out


@pytest.mark.parametrize("line, message", [
    ("--interval -1", "invalid interval"),
    ("status", "is a line magic"),
    ("--bogus", "unrecognized arguments"),
])
def test_bad_cell_options_are_one_line_usage_errors_before_the_cell_runs(ip, line, message):
    result = run(ip, f"%%gpumem {line}\nran = True")
    assert isinstance(result.error_in_exec, UsageError)
    assert message in str(result.error_in_exec)
    assert "ran" not in ip.user_ns


def test_report_is_one_bundle_with_the_figures_as_text_and_html(ip):
    shown = []
    ip.display_pub.publish = lambda data, metadata=None, **kw: shown.append(data)
    try:
        run(ip, "%%gpumem\nblock = bytearray(64 * 2**20)")
    finally:
        del ip.display_pub.publish
    assert len(shown) == 1
    bundle = shown[0]
    assert set(bundle) == {"text/plain", "text/html"}
    assert "host RSS" in bundle["text/plain"]
    page = bundle["text/html"]
    assert "<svg" in page and "<polyline" in page, "the curves, as a picture"
    assert "peak" in page and "left behind" in page, "the figures, as text"


def test_host_peak_is_exact_even_for_a_spike_between_samples(ip, capsys):
    # The block lives for a few milliseconds; the sampler wakes only every 5 s. It is sized to
    # set a new high for the process: the kernel's high-water mark is then the cell's peak.
    from kmem_magic import _host

    spike = _host.peak() - _host.host_rss() + 300 * 2**20
    run(ip, f"%%gpumem --interval 5\nspike = bytearray({spike})\n"
        "spike[::4096] = b'x' * len(spike[::4096])\ndel spike")
    record = kmem_magic.history(ip)[-1]
    peak = record.peak("host")
    assert peak.exact, "read from the kernel's high-water mark, not from samples"
    assert peak.bytes - record.host.before["host"] >= spike - 10 * 2**20
    assert record.left_behind("host") < 100 * 2**20


def test_the_process_high_water_mark_is_never_reset(ip):
    from kmem_magic import _host

    mark = _host.peak()
    run(ip, "%%gpumem\nsmall = bytearray(2**20)")
    assert _host.peak() >= mark, "getrusage and other tools keep the process's real peak"
    peak = kmem_magic.history(ip)[-1].peak("host")
    assert not peak.exact and "below the process's earlier high-water mark" in peak.note


def test_no_gpu_means_host_memory_only_and_says_so_once(ip, fake_nvml, capsys):
    fake_nvml([], missing=True)
    run(ip, "%%gpumem\nz = 1")
    out = capsys.readouterr().out
    assert "no GPU: no NVIDIA driver found" in out
    assert "host RSS" in out
    run(ip, "%%gpumem\nz = 2")
    again = capsys.readouterr().out
    assert "host RSS" in again and "no GPU" not in again, "said once per kernel, not each cell"
    assert kmem_magic.history(ip)[-1].gpu_note, "the record still knows why"


def test_gpu_figures_come_from_nvml_and_unknown_stays_unknown(ip, fake_nvml, capsys):
    # NVML lists a host PID that does not exist here: the kernel runs in a container.
    fake_nvml([gpu(0, used=5 * 2**30, procs=[(999_999_999, 2**30)])])
    run(ip, "%%gpumem\nz = 1")
    out = capsys.readouterr().out
    record = kmem_magic.history(ip)[-1]
    assert record.peak("device", 0).bytes == 5 * 2**30
    assert record.peak("process", 0).bytes is None
    assert "this process (NVML)" in out and "unknown" in out
    assert "PIDs from outside this container" in out


def test_this_process_is_found_by_pid(ip, fake_nvml):
    fake_nvml([gpu(0, used=5 * 2**30, procs=[(os.getpid(), 3 * 2**30)])])
    run(ip, "%%gpumem\nz = 1")
    record = kmem_magic.history(ip)[-1]
    assert record.peak("process", 0).bytes == 3 * 2**30
    assert record.left_behind("process", 0) == 0


def test_history_keeps_every_measured_cell(ip):
    before = len(kmem_magic.history(ip))
    run(ip, "%%gpumem --quiet\na = 1")
    run(ip, "%%gpumem --quiet\nb = 2")
    assert len(kmem_magic.history(ip)) == before + 2


def test_output_option_stores_the_cells_record_in_a_variable(ip):
    result = run(ip, "%%gpumem --quiet -o rec\nblock = bytearray(8 * 2**20)\n5")
    record = ip.user_ns["rec"]
    assert result.result == 5, "the cell's own value is unchanged"
    assert record is kmem_magic.history(ip)[-1]
    assert record.execution_count == result.execution_count and "bytearray" in record.source
    with pytest.raises(dataclasses.FrozenInstanceError):
        record.wall_s = 0  # the record is data: what the views read cannot change


def test_readings_that_fail_while_sampling_are_reported_not_hidden(ip, fake_nvml, capsys):
    fake = fake_nvml([gpu(0)])
    fake.failing_reads = {2, 3}  # the sampler's first and last sample; the edges read fine
    result = run(ip, "%%gpumem --interval 0.01\nimport time\ntime.sleep(0.05)\n1")
    record = kmem_magic.history(ip)[-1]
    assert result.success and result.result == 1
    assert record.faults and "driver hiccup" in record.faults[0]
    out = capsys.readouterr().out
    assert "kmem: 2 fault(s) while measuring (those figures are unknown), the first: NVML memory: " \
        "RuntimeError('driver hiccup')" in out
    device, host = record.timeline.find("device", 0), record.timeline.find("host")
    assert None in device.values, "a failed reading is a gap (unknown), never a made-up value"
    assert len(host.t_s) == len(device.t_s), "the other sources are read in every sample"


def test_nvml_failing_at_the_cells_start_never_stops_the_cell(ip, fake_nvml, capsys):
    fake = fake_nvml([gpu(0)])
    fake.failing_reads = set(range(1, 10_000))  # every `used` read raises, the first included
    result = run(ip, "%%gpumem\nprint('body ran')\n6 * 7")
    out = capsys.readouterr().out
    record = kmem_magic.history(ip)[-1]
    assert result.success and result.result == 42 and "body ran" in out
    assert record.peak("device", 0).bytes is None, "unknown, never 0"
    assert record.faults[0] == "NVML memory: RuntimeError('driver hiccup')"
    assert "device used (NVML)     peak     unknown (sampled, no reading succeeded)" in out
    assert "fault(s) while measuring (those figures are unknown), the first: NVML memory" in out
    assert record.peak("host").bytes > 0, "one failing source does not stop the others"


def test_top_level_await_is_a_one_line_usage_error_and_runs_nothing(ip):
    result = run(ip, "%%gpumem\nimport asyncio\nran = True\nawait asyncio.sleep(0)")
    assert isinstance(result.error_in_exec, UsageError)
    assert "top-level await cannot be measured yet" in str(result.error_in_exec)
    assert "ran" not in ip.user_ns


def test_a_real_syntax_error_stays_a_syntax_error(ip):
    result = run(ip, "%%gpumem\nawait = (")
    assert isinstance(result.error_in_exec, SyntaxError)


def test_history_keeps_at_most_history_size_records_the_newest(ip):
    magics = ip.magics_manager.registry["GpuMem"]
    before = magics.history_size
    try:
        run(ip, "%config GpuMem.history_size = 2")
        for n in range(3):
            run(ip, f"%%gpumem --quiet\nn = {n}")
        assert [r.source.strip() for r in kmem_magic.history(ip)] == ["n = 1", "n = 2"]
    finally:
        magics.history_size = before


def test_history_size_below_one_is_refused_and_the_old_value_kept(ip):
    before = ip.magics_manager.registry["GpuMem"].history_size
    run(ip, "%config GpuMem.history_size = 0")  # %config prints the TraitError
    assert ip.magics_manager.registry["GpuMem"].history_size == before


def test_export_errors_are_one_line_usage_errors_and_write_nothing(ip, tmp_path):
    run(ip, "%%gpumem --quiet\nx = 1")
    missing = tmp_path / "no-such-folder" / "cells.csv"
    result = run(ip, f"%gpumem export {missing}")
    assert isinstance(result.error_in_exec, UsageError)
    assert "cannot write" in str(result.error_in_exec) and "No such file" in str(
        result.error_in_exec)
    outside = tmp_path / "outside.csv"
    (tmp_path / "link.csv").symlink_to(outside)  # dangling: it points at nothing yet
    result = run(ip, f"%gpumem export {tmp_path / 'link.csv'}")
    assert isinstance(result.error_in_exec, UsageError) and "exists" in str(result.error_in_exec)
    assert not outside.exists(), "never written through a symbolic link"
    result = run(ip, f"%gpumem export {tmp_path / 'cells.json'}")
    assert result.error_in_exec is None and (tmp_path / "cells.json").read_text().startswith("[")


@pytest.mark.tensorflow
def test_a_counter_that_cannot_be_reset_gives_no_peak_rather_than_a_stale_one(
        ip, fake_nvml, monkeypatch):
    tf = pytest.importorskip("tensorflow")
    from kmem_magic import backends

    tf.constant(1.0)  # TensorFlow has started
    fake_nvml([gpu(0)])
    # TensorFlow's counter API on a GPU:0 whose peak cannot be reset and holds an old 9 GiB
    counters = tf.config.experimental
    monkeypatch.setattr(backends.by_name("tensorflow"), "_gpu_names", ["GPU:0"])
    monkeypatch.setattr(counters, "get_memory_info",
                        lambda name: {"current": 10 * 2**20, "peak": 9 * 2**30})

    def refuse(name):
        raise TypeError("reset refused")

    monkeypatch.setattr(counters, "reset_memory_stats", refuse)
    result = run(ip, "%%gpumem --quiet\nx = 1")
    record = kmem_magic.history(ip)[-1]
    assert result.success
    assert record.peak("tensorflow", 0).bytes is None, "not the 9 GiB of an earlier cell"
    assert "tensorflow reset_peak: TypeError('reset refused')" in record.faults


def test_output_needs_a_variable_name(ip):
    result = run(ip, "%%gpumem -o 2bad\nran = True")
    assert isinstance(result.error_in_exec, UsageError) and "not a variable name" in str(
        result.error_in_exec)
    assert "ran" not in ip.user_ns


def test_history_is_empty_where_kmem_is_not_loaded(shell):
    shell.run_line_magic("unload_ext", "kmem_magic")
    assert kmem_magic.history(shell) == ()


def test_a_failure_inside_kmem_never_replaces_the_cells_own_outcome(ip, monkeypatch, capsys):
    from kmem_magic.measure import cell as measure

    real, calls = measure._snapshot, []

    def broken_at_the_end(*args, **kwargs):
        calls.append(1)
        if len(calls) > 1:
            raise RuntimeError("injected fault")
        return real(*args, **kwargs)

    monkeypatch.setattr(measure, "_snapshot", broken_at_the_end)
    result = run(ip, "%%gpumem\nanswer = 41 + 1\nanswer")
    assert result.success and result.result == 42
    out = capsys.readouterr().out
    assert "fault(s) while measuring" in out and "RuntimeError('injected fault')" in out
    calls.clear()
    result = run(ip, "%%gpumem\nraise KeyError('mine')")
    assert isinstance(result.error_in_exec, KeyError), "the user's error, not kmem's"


def _traceback_of(ip, capsys, source):
    result = run(ip, source)
    out = capsys.readouterr().out
    return result, "\n".join(line for line in out.splitlines()
                             if not line.startswith("%%gpumem cell-"))


def test_a_traceback_reads_as_the_bare_cells_with_its_own_number(ip, capsys):
    body = "def f(a):\n    raise ValueError(a)\nf(3)"
    bare, bare_tb = _traceback_of(ip, capsys, "# %%gpumem --quiet\n" + body)
    magic, magic_tb = _traceback_of(ip, capsys, "%%gpumem --quiet\n" + body)
    number = magic.execution_count
    assert f"In[{number}]" in magic_tb or f"-{number}-" in magic_tb, magic_tb
    strip = [line for line in bare_tb.splitlines() if "In[" not in line and "input-" not in line]
    same = [line for line in magic_tb.splitlines() if "In[" not in line and "input-" not in line]
    assert same == strip, "the same frames, lines and arguments as the bare cell"
    assert "_cell.py" not in magic_tb and "_magics.py" not in magic_tb, "no kmem frame"


def _out_of_memory_cell(ip, calls):
    """A %%gpumem cell whose step() keeps a 8 MiB activation (weakly noted in ``kept``) and
    then runs out of memory as TensorFlow says it; ``calls`` is the code that calls it."""
    tf = pytest.importorskip("tensorflow")
    ip.user_ns["tf"] = tf
    run(ip, "import weakref, numpy as np\nkept = []")
    result = run(ip, "%%gpumem --quiet\ndef step(batch):\n    acts = np.ones(2**20)\n"
                     "    kept.append(weakref.ref(acts))\n"
                     "    raise tf.errors.ResourceExhaustedError(None, None, 'OOM when allocating')\n"
                     + calls)
    assert isinstance(result.error_in_exec, tf.errors.ResourceExhaustedError)
    return result


@pytest.mark.tensorflow
def test_after_out_of_memory_the_traceback_is_whole_and_the_frames_are_then_released(
        ip, capsys):
    _out_of_memory_cell(ip, "step(7)")
    out = capsys.readouterr().out
    assert "Cell In[" in out and ", in step(batch)" in out, out
    assert "failed resolving arguments" not in out and "_cell.py" not in out
    assert ip.user_ns["kept"][0]() is None, "the failed frame's activations are released"


def test_help_reads_as_plain_text_with_the_choices_and_defaults(ip):
    line = ip.find_line_magic("gpumem").__doc__
    cell = ip.find_cell_magic("gpumem").__doc__
    assert line.startswith("Usage: %gpumem [--plot] [--no-ledger] [--growth]")
    assert cell.startswith("Usage: %%gpumem")
    assert "::" not in line and "::" not in cell and "``" not in line + cell
    assert "{status,history,export,who}" in line and "share:N" in line
    assert "mixed_float16 or mixed_bfloat16" in cell and "default 0.1" in cell


def test_history_plot_draws_every_cell_as_a_band_and_marks_what_left_most(ip):
    shown = []
    ip.display_pub.publish = lambda data, metadata=None, **kw: shown.append(data)
    try:
        for i in range(4):
            run(ip, "%%gpumem --quiet\nx = 1")
        run(ip, "%%gpumem --quiet\nkept = bytearray(80 * 2**20)\nkept[::4096] = b'x' * "
                "len(kept[::4096])")
        numbers = [r.execution_count for r in kmem_magic.history(ip)[-5:]]
        run(ip, "%gpumem history --plot")
    finally:
        del ip.display_pub.publish
        ip.user_ns.pop("kept", None)
    [bundle] = shown
    picture = bundle["image/svg+xml"]
    assert picture.startswith("<svg") and "host RSS" in picture
    assert all(f">{n}</text>" in picture for n in numbers), "each cell's band is numbered"
    bands = {band.split("<title>")[1].split(":")[0]: band for band in picture.split("<rect")[1:]
             if "<title>" in band}
    assert 'fill="#d62728"' in bands[f"cell-{numbers[-1]}"], "the cell that kept 80 MiB is marked"
    assert 'fill="#d62728"' not in bands[f"cell-{numbers[0]}"], "a cell that kept ~0 is not"
    assert "cell-" in bundle["text/plain"], "the history table as text"
    result = run(ip, "%gpumem status --plot")
    assert isinstance(result.error_in_exec, UsageError)


def test_a_syntax_error_raised_while_running_shows_its_frames_like_the_bare_cell(ip, capsys):
    body = "def f():\n    eval('1 +')\nf()"
    _, bare_tb = _traceback_of(ip, capsys, "# %%gpumem --quiet\n" + body)
    _, magic_tb = _traceback_of(ip, capsys, "%%gpumem --quiet\n" + body)
    assert "line 3 in f" in magic_tb or "line 3, in f" in magic_tb, magic_tb
    # the bare cell's also shows IPython's own run_code frame (a quirk of IPython for a
    # SyntaxError raised while running); the user's frames are the same
    lines = bare_tb.splitlines()
    ipython = [i for i, line in enumerate(lines) if "interactiveshell.py" in line]
    strip = [_plain_frame(line) for i, line in enumerate(lines)
             if not any(i in (j, j + 1, j + 2) for j in ipython)]
    assert [_plain_frame(line) for line in magic_tb.splitlines()] == strip


def _plain_frame(line):
    """A traceback line without the cell's number (IPython 7: ipython-input-N-hash) and with
    IPython 7.34's name for a cell's top frame."""
    import re

    line = re.sub(r"In\[\d+\]|ipython-input-\d+-", "CELL", line)
    return line.replace("<cell line: 0>", "<module>")


@pytest.mark.tensorflow
def test_a_retry_after_out_of_memory_releases_both_attempts_frames(ip, capsys):
    _out_of_memory_cell(ip, "try:\n    step(256)\nexcept tf.errors.ResourceExhaustedError:\n"
                            "    step(128)")
    capsys.readouterr()
    assert [ref() is None for ref in ip.user_ns["kept"]] == [True, True]
