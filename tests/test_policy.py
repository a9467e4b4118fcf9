"""The memory policy as a user meets it: %load_ext, options, configuration, environment, unload."""

import importlib.util
import os
import sys
import textwrap

import pytest
from IPython.core.error import UsageError

from conftest import gpu
from kmem_magic.policy._import_hooks import PostImportHooks
from kmem_magic.sizes import parse_size


def test_load_prints_one_line_per_backend_and_sets_growth_variables(shell, capsys):
    shell.run_line_magic("load_ext", "kmem_magic")
    try:
        out = capsys.readouterr().out
        assert out.startswith("kmem_magic: policy growth")
        for backend in ("tensorflow", "jax", "torch"):
            assert sum(line.split()[0] == backend for line in out.splitlines()[1:]) == 1
        assert os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false"
        if importlib.util.find_spec("torch") is not None:
            assert "expandable_segments:True" in (
                os.environ.get("PYTORCH_ALLOC_CONF", "")
                + os.environ.get("PYTORCH_CUDA_ALLOC_CONF", "")
            )
        else:
            assert "torch       not installed" in out
    finally:
        shell.run_line_magic("unload_ext", "kmem_magic")
    assert "XLA_PYTHON_CLIENT_PREALLOCATE" not in os.environ
    assert "PYTORCH_ALLOC_CONF" not in os.environ and "PYTORCH_CUDA_ALLOC_CONF" not in os.environ


def test_a_users_own_variable_is_kept_and_reported(shell, capsys):
    os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] = "true"
    shell.run_line_magic("load_ext", "kmem_magic")
    shell.run_line_magic("unload_ext", "kmem_magic")
    out = capsys.readouterr().out
    assert "XLA_PYTHON_CLIENT_PREALLOCATE=true (yours, kept)" in out
    assert os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] == "true"


def test_loading_twice_is_harmless_and_unload_removes_the_magics(shell, capsys):
    shell.run_line_magic("load_ext", "kmem_magic")
    shell.run_line_magic("load_ext", "kmem_magic")
    out = capsys.readouterr().out
    assert out.count("kmem_magic: policy") == 1
    assert "gpumem" in shell.magics_manager.magics["cell"]
    shell.run_line_magic("unload_ext", "kmem_magic")
    shell.run_line_magic("unload_ext", "kmem_magic")
    assert "gpumem" not in shell.magics_manager.magics["cell"]
    assert "gpumem" not in shell.magics_manager.magics["line"]
    assert not any(type(c).__name__ == "GpuMem" for c in shell.configurables)
    assert not any(isinstance(f, PostImportHooks) for f in sys.meta_path)


def test_reload_applies_the_policy_again(shell, capsys):
    shell.run_line_magic("load_ext", "kmem_magic")
    shell.run_line_magic("reload_ext", "kmem_magic")
    assert os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false"
    shell.run_line_magic("unload_ext", "kmem_magic")
    assert capsys.readouterr().out.count("kmem_magic: policy") == 2


def test_limit_on_the_line_magic_becomes_a_jax_fraction_of_the_gpu(ip, fake_nvml, capsys):
    fake_nvml([gpu(0, total=80 * 2**30)])
    ip.run_line_magic("gpumem", "--limit 4GiB")
    out = capsys.readouterr().out
    assert "policy limit 4.00 GiB" in out
    assert os.environ["XLA_PYTHON_CLIENT_MEM_FRACTION"] == "0.050000"
    assert os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false"
    ip.run_line_magic("gpumem", "--growth")
    assert "XLA_PYTHON_CLIENT_MEM_FRACTION" not in os.environ, "a new policy replaces the limit"


def test_a_limit_in_bytes_reaches_jax_within_a_mebibyte_and_never_above(ip, fake_nvml):
    total = 143_771 * 2**20  # an H200: four digits of a fraction would be 14 MiB steps
    fake_nvml([gpu(0, total=total)])
    for limit in ("2GiB", "300MiB", "1234567890"):
        ip.run_line_magic("gpumem", f"--limit {limit}")
        granted = float(os.environ["XLA_PYTHON_CLIENT_MEM_FRACTION"]) * total
        asked = parse_size(limit)
        assert asked - 2**20 < granted <= asked, (limit, granted)


def test_no_policy_changes_nothing(ip, capsys):
    ip.run_line_magic("gpumem", "--no-policy")
    assert "policy none (measure only)" in capsys.readouterr().out
    assert "XLA_PYTHON_CLIENT_PREALLOCATE" not in os.environ


def test_config_trait_applies_a_limit(ip, fake_nvml, capsys):
    fake_nvml([gpu(0, total=10 * 2**30)])
    ip.run_line_magic("config", 'GpuMem.limit = "60%"')
    try:
        assert os.environ["XLA_PYTHON_CLIENT_MEM_FRACTION"] == "0.600000"
        assert "policy limit 60%" in capsys.readouterr().out
    finally:
        ip.run_line_magic("config", 'GpuMem.limit = ""')


def test_workshop_environment_variable_sets_the_limit(shell, fake_nvml, capsys):
    fake_nvml([gpu(0, total=16 * 2**30)])
    os.environ["KMEM_LIMIT"] = "8GiB"
    shell.run_line_magic("load_ext", "kmem_magic")
    shell.run_line_magic("unload_ext", "kmem_magic")
    assert "policy limit 8.00 GiB" in capsys.readouterr().out


def test_bad_environment_limit_is_one_line_error_and_changes_nothing(shell):
    os.environ["KMEM_LIMIT"] = "lots"
    with pytest.raises(UsageError, match="KMEM_LIMIT|not a size"):
        shell.extension_manager.load_extension("kmem_magic")
    assert "gpumem" not in shell.magics_manager.magics["cell"]
    assert "XLA_PYTHON_CLIENT_PREALLOCATE" not in os.environ
    assert not any(type(c).__name__ == "GpuMem" for c in shell.configurables), \
        "no half-registered configurable left behind"


def test_a_bad_config_value_is_refused_and_later_config_still_applies(ip, capsys):
    magics = ip.magics_manager.registry["GpuMem"]
    ip.run_cell('%config GpuMem.limit = "lots"')  # %config reports the TraitError itself
    assert magics.limit == ""
    ip.run_cell('%config GpuMem.policy = "none"')
    assert str(magics.configurator.policy).startswith("none")


def test_a_quoted_limit_with_a_space_is_accepted(ip):
    result = ip.run_cell('%gpumem --limit "4 GiB"')
    assert result.error_in_exec is None
    assert ip.magics_manager.registry["GpuMem"].configurator.policy.limit.bytes_of(0) == 4 * 2**30


@pytest.mark.parametrize("line, message", [
    ("--limit 4XB", "argument --limit: not a size: '4XB'"),
    ("--limit " + "9" * 400, "a size must be at most 1024.00 TiB"),
    ("--limit 4", "a limit of 4 bytes is surely not meant: give a unit"),
    ("--limit 4GiB --no-policy", "choose one"),
    ("--interval 0", "--interval applies to the cell magic %%gpumem"),
    ("statsu", "invalid choice"),
])
def test_bad_options_are_a_usage_error_and_change_nothing(ip, line, message, capsys):
    before = dict(os.environ)
    result = ip.run_cell(f"%gpumem {line}")
    assert isinstance(result.error_in_exec, UsageError)
    assert message in str(result.error_in_exec)
    assert dict(os.environ) == before


def test_status_shows_policy_backends_and_devices(ip, fake_nvml, capsys):
    fake_nvml([gpu(0, used=3 * 2**30, procs=[(os.getpid(), 2**30)])])
    capsys.readouterr()
    ip.run_line_magic("gpumem", "status")
    out = capsys.readouterr().out
    assert "kmem_magic policy: growth" in out
    assert "GPU 0: NVIDIA H100 80GB HBM3 GPU-00000000" in out
    assert "used 3.00 GiB of 80.00 GiB, this process 1.00 GiB" in out


# --------------------------------------------------------------------------- import hooks
@pytest.fixture
def fake_package(tmp_path, monkeypatch):
    (tmp_path / "kmem_fake_fw").mkdir()
    (tmp_path / "kmem_fake_fw" / "__init__.py").write_text("STARTED = False\nVALUE = 41\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "kmem_fake_fw"
    sys.modules.pop("kmem_fake_fw", None)


def test_hook_runs_right_after_the_users_import(fake_package):
    seen = []
    hooks = PostImportHooks()
    hooks.add(fake_package, lambda module: seen.append(module.VALUE))
    hooks.install()
    try:
        module = __import__(fake_package)
    finally:
        hooks.uninstall()
    assert seen == [41]
    assert type(module.__loader__).__name__ != "_HookedLoader", "the real loader is handed back"


def test_a_failing_hook_never_breaks_the_import(fake_package):
    errors = []
    hooks = PostImportHooks(on_error=lambda name, error: errors.append((name, str(error))))
    hooks.add(fake_package, lambda module: 1 / 0)
    hooks.install()
    try:
        module = __import__(fake_package)
    finally:
        hooks.uninstall()
    assert module.VALUE == 41
    assert errors == [(fake_package, "division by zero")]


def test_hook_for_an_imported_package_runs_at_once(fake_package):
    __import__(fake_package)
    seen = []
    PostImportHooks().add(fake_package, lambda module: seen.append(module.__name__))
    assert seen == [fake_package]


# --------------------------------------------------------------------------- TensorFlow
@pytest.mark.tensorflow
def test_tensorflow_limit_is_set_as_logical_device_before_the_runtime_starts(fresh):
    pytest.importorskip("tensorflow")
    result = fresh(textwrap.dedent("""
        import sys
        sys.path.insert(0, "tests")
        from conftest import FakeNvml, gpu
        sys.modules["pynvml"] = FakeNvml([gpu(0, total=16 * 2**30)])
        import tensorflow as tf
        calls = []
        fake_gpu = tf.config.PhysicalDevice("/physical_device:GPU:0", "GPU")
        tf.config.list_physical_devices = lambda kind=None: [fake_gpu] if kind == "GPU" else []
        tf.config.set_logical_device_configuration = lambda d, c: calls.append(
            ("limit", d.name, [x.memory_limit for x in c]))
        tf.config.experimental.set_memory_growth = lambda d, v: calls.append(("growth", d.name, v))
        tf.config.experimental.get_memory_growth = lambda d: None
        ip.run_line_magic("load_ext", "kmem_magic")
        ip.run_line_magic("gpumem", "--limit 4GiB")
        RESULT["calls"] = calls
        RESULT["env"] = os.environ.get("TF_FORCE_GPU_ALLOW_GROWTH")
        tf.constant(1.0)  # the user's code starts the runtime
        from kmem_magic.backends.tensorflow import TensorFlow
        RESULT["started"] = TensorFlow().is_initialized()
        ip.run_line_magic("gpumem", "--limit 2GiB")
    """))
    assert ["limit", "/physical_device:GPU:0", [4096]] in result["calls"]
    assert result["env"] == "true"
    assert result["started"] is True
    late = result["_stdout"].split("policy limit 2.00 GiB")[1]
    assert "tensorflow  already started before kmem_magic was loaded" in late
    assert "Fix: restart the kernel and run %load_ext kmem_magic" in late
