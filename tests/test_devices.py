"""Several GPUs in one process: each is labelled by its CUDA ordinal and its UUID, in the order
the frameworks number them (``CUDA_VISIBLE_DEVICES="1,0"`` puts physical card 1 first), and one
GPU filling while the others sit idle is a suggestion of its own. NVML is faked at its
boundary; the shell, the measurement and the views are real."""

import kmem_magic
from conftest import advise, gpu

from kmem_magic import _nvml
from kmem_magic.advise import Context
from kmem_magic.record import CellRecord, Device, Figures, Job, Peak, Timeline
from kmem_magic.show import html, text
from kmem_magic.sizes import GiB, MiB



def test_gpus_follow_cuda_order_and_are_labelled_by_uuid(ip, fake_nvml, monkeypatch):
    fake_nvml([gpu(0, used=1 * GiB), gpu(1, used=5 * GiB)])
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,0")
    _nvml.reset_for_tests()
    assert ip.run_cell("%%gpumem --quiet\nx = 1").success
    record = kmem_magic.history(ip)[-1]
    assert [d.uuid[:12] for d in record.devices] == ["GPU-00000001", "GPU-00000000"]
    assert [d.index for d in record.devices] == [0, 1]
    assert record.gpu[0].after["device"] == 5 * GiB, "CUDA's GPU 0 is physical card 1"
    summary = text.summary(record)
    assert "GPU 0 · GPU-00000001 NVIDIA" in summary and "GPU 1 · GPU-00000000 NVIDIA" in summary
    assert "GPU 0 · GPU-00000001: NVIDIA" in html.header("t", record.devices)


def cell(peaks, total=80 * GiB, backend="jax", others=None, job=None):
    devices = tuple(Device(i, "NVIDIA H200", f"GPU-{i:08d}-x", total) for i in range(len(peaks)))
    gpu_figures = {i: Figures(before={backend: 0}, after={backend: 0},
                              peak={backend: Peak(p, True)}) for i, p in enumerate(peaks)}
    return CellRecord(3, "", 2.0, backend, "growth", 0.1, devices=devices, gpu=gpu_figures,
                      timeline=Timeline(), others=others or {}, job=job)


def test_one_gpu_filling_while_the_others_sit_idle_is_said_with_the_fix():
    [s] = [s for s in advise(cell([30 * GiB, 100 * MiB, 90 * MiB]), [], Context())
           if s.rule == "one-device"]
    assert "Only GPU 0 worked: 30.00 GiB there, at most 100.00 MiB on GPU 1, GPU 2" == s.title
    assert "GPU 0 · GPU-00000000" in s.evidence and "38% of its memory" in s.evidence
    assert "keras.distribution.DataParallel()" in s.code
    torch = [s for s in advise(cell([30 * GiB, 0], backend="torch"), [], Context())
             if s.rule == "one-device"]
    assert torch and "torch.distributed" in torch[0].code


def test_balanced_or_small_work_on_several_gpus_is_not_flagged():
    for peaks in ([30 * GiB, 28 * GiB], [500 * MiB, 0], [30 * GiB, 4 * GiB]):
        assert "one-device" not in [s.rule for s in advise(cell(peaks), [], Context())]
    assert "one-device" not in [s.rule for s in advise(cell([30 * GiB]), [], Context())]


def test_gpus_that_other_processes_worked_on_were_not_idle():
    """One rank per GPU: each process sees every GPU, but its allocator counts only its own;
    NVML shows the other ranks on theirs (or another user's job fills them)."""
    ranks = {1: ((5001, "python3", 29 * GiB),), 2: ((5002, "python3", 28 * GiB),)}
    record = cell([30 * GiB, 100 * MiB, 90 * MiB], others=ranks)
    assert "one-device" not in [s.rule for s in advise(record, [], Context())]
    job = Job("host:1234", 3)
    record = cell([30 * GiB, 100 * MiB, 90 * MiB], job=job)
    assert "one-device" not in [s.rule for s in advise(record, [], Context())]
    # a small process elsewhere does not make the idle GPUs busy
    record = cell([30 * GiB, 100 * MiB, 90 * MiB], others={1: ((5003, "python3", GiB),)})
    assert "one-device" in [s.rule for s in advise(record, [], Context())]
