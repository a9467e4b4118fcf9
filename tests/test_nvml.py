"""The NVML layer against faked driver answers: device order, memory versions, processes."""

import os

from conftest import gpu
from kmem_magic import _nvml


def names(devices):
    """``(CUDA ordinal, NVML index)`` of each device (the fake's UUIDs end in the NVML index)."""
    return [(d.index, int(d.uuid.rsplit("-", 1)[1])) for d in devices]


def test_cuda_visible_devices_order_is_honoured(fake_nvml, monkeypatch):
    fake_nvml([gpu(0), gpu(1), gpu(2)])
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,0")
    assert names(_nvml.devices()) == [(0, 2), (1, 0)]


def test_cuda_visible_devices_by_uuid_prefix(fake_nvml, monkeypatch):
    fake_nvml([gpu(0), gpu(1)])
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-00000001")
    devices = _nvml.devices()
    assert names(devices) == [(0, 1)]
    assert devices[0].uuid.startswith("GPU-00000001")


def test_an_invalid_entry_ends_the_list_as_in_cuda(fake_nvml, monkeypatch):
    fake_nvml([gpu(0), gpu(1)])
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,7,0")
    assert names(_nvml.devices()) == [(0, 1)]


def test_empty_visible_devices_hides_every_gpu_and_says_so(fake_nvml, monkeypatch):
    fake_nvml([gpu(0)])
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert _nvml.devices() == []
    assert "CUDA_VISIBLE_DEVICES hides them all" in _nvml.unavailable_reason()


def test_mixed_models_ask_the_cuda_driver_for_its_order(fake_nvml, monkeypatch):
    gpus = [gpu(0, name="NVIDIA T400"), gpu(1, name="NVIDIA H100 80GB HBM3")]
    fake_nvml(gpus)
    # CUDA enumerates the fastest first: the driver's answer (a child process) decides.
    monkeypatch.setattr(_nvml, "_cuda_order_from_driver", lambda: [gpus[1]["uuid"], gpus[0]["uuid"]])
    assert names(_nvml.devices()) == [(0, 1), (1, 0)]
    assert _nvml.order_note() is None


def test_mixed_models_without_a_driver_answer_fall_back_and_say_so(ip, fake_nvml, monkeypatch,
                                                                    capsys):
    fake_nvml([gpu(0, name="NVIDIA T400"), gpu(1, name="NVIDIA H100 80GB HBM3")])
    monkeypatch.setattr(_nvml, "_cuda_order_from_driver", lambda: None)
    assert names(_nvml.devices()) == [(0, 0), (1, 1)]
    capsys.readouterr()
    ip.run_line_magic("gpumem", "status")
    assert "device order: CUDA device order could not be read; assumed PCI-bus order" in \
        capsys.readouterr().out, "the user sees the caveat"


def test_memory_is_read_with_the_v2_struct(fake_nvml):
    fake = fake_nvml([gpu(0, used=123)])
    assert _nvml.memory_used(_nvml.devices()[0]) == 123
    assert ("memory", 0, fake.nvmlMemory_v2) in fake.calls


def test_no_driver_means_unknown_with_a_reason(fake_nvml):
    fake_nvml([], missing=True)
    assert _nvml.devices() == []
    assert "no NVIDIA driver" in _nvml.unavailable_reason()


def test_process_memory_other_processes_and_containers(fake_nvml):
    me = os.getpid()
    parent = os.getppid()
    fake_nvml([gpu(0, procs=[(me, 700), (parent, 300)]), gpu(1, procs=[(parent, 300)]),
               gpu(2, procs=[(999_999_999, 300)]), gpu(3), gpu(4, procs=[(me, None)])])
    d = _nvml.devices()
    assert _nvml.process_used(d[0]) == (700, None)
    assert _nvml.process_used(d[1]) == (0, None), "every PID is visible: we hold nothing"
    used, why = _nvml.process_used(d[2])
    assert used is None and "outside this container" in why
    assert _nvml.process_used(d[3]) == (0, None)
    used, why = _nvml.process_used(d[4])
    assert used is None and "does not report" in why


def test_an_nvml_that_fails_to_start_means_no_gpu_figures_and_no_traceback(shell, fake_nvml,
                                                                          capsys):
    fake_nvml([gpu(0)], broken=True)
    shell.run_line_magic("load_ext", "kmem_magic")
    try:
        loaded = capsys.readouterr().out
        result = shell.run_cell("%gpumem status")
        status = capsys.readouterr().out
    finally:
        shell.run_line_magic("unload_ext", "kmem_magic")
    assert loaded.startswith("kmem_magic: policy growth") and "Traceback" not in loaded
    assert result.success and "Traceback" not in status
    assert "no GPU: NVML failed to start: OSError('libnvidia-ml.so.1: wrong ELF class')" in status


def test_an_empty_process_table_is_unknown_when_this_process_holds_memory(fake_nvml):
    fake_nvml([gpu(0, used=5 * 2**30, procs=[])])
    device = _nvml.devices()[0]
    used, why = _nvml.process_used(device, ours=4 * 2**30)
    assert used is None and "does not list this process" in why
    assert _nvml.process_used(device, ours=0) == (0, None), "holding nothing, absent is 0"
