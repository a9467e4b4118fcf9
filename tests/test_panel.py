"""The panel's widgets, driven as the magic drives them (ipywidgets with its default dummy comm)."""

import dataclasses
import os
import time

import pytest

pytest.importorskip("ipywidgets")

from kmem_magic import _nvml  # noqa: E402
from kmem_magic.measure import Measurement  # noqa: E402
from kmem_magic.measure.cell import limited  # noqa: E402
from kmem_magic.record import Suggestion  # noqa: E402
from kmem_magic.show.panel import Actions, Panel  # noqa: E402
from kmem_magic.sizes import parse_limit  # noqa: E402
from conftest import gpu  # noqa: E402


def measured(fake_nvml, seconds=0.3):
    fake_nvml([gpu(0, used=2 * 2**30, procs=[(os.getpid(), 2**30)])])
    devices = _nvml.devices()
    panel = Panel("%%gpumem cell-1", limited(devices, parse_limit("4GiB")), refresh_s=0.05,
                  actions=Actions(dict))
    m = Measurement(interval_s=0.02, on_sample=panel.on_sample).start()
    block = bytearray(50 * 2**20)
    time.sleep(seconds)
    del block
    return panel, m.finish()


def test_live_view_draws_curves_and_running_figures_from_the_sampler(fake_nvml):
    panel, _ = measured(fake_nvml)
    assert "<polyline" in panel.curves.value and "GPU 0" in panel.curves.value
    assert "limit 4.00 GiB" in panel.curves.value
    assert "running" in panel.stats.value and "device used (NVML)" in panel.stats.value


def test_redraws_are_throttled_to_the_refresh_interval(fake_nvml):
    fake_nvml([gpu(0)])
    panel = Panel("t", _nvml.devices(), refresh_s=10)
    m = Measurement(interval_s=0.01).start()
    time.sleep(0.05)
    record = m.finish()
    panel.on_sample(record.timeline)
    first = panel.curves.value
    panel.on_sample(record.timeline)
    panel.curves.value = "untouched"
    panel.on_sample(record.timeline)
    assert first and panel.curves.value == "untouched"


def test_final_view_shows_the_plot_peak_and_what_was_left(fake_nvml):
    panel, record = measured(fake_nvml)
    panel.finish(record, b"\x89PNG fake")
    assert panel.image.value == b"\x89PNG fake" and panel.image.layout.display is None
    assert panel.curves.layout.display == "none"
    assert "peak" in panel.stats.value and "left behind" in panel.stats.value
    assert "host RSS" in panel.stats.value and "exact" in panel.stats.value
    assert panel.suggestions.layout.display == "none", "no suggestion: the slot stays hidden"
    assert not panel.save_button.disabled


def test_suggestion_slot_appears_when_filled(fake_nvml):
    panel, record = measured(fake_nvml, 0.05)
    advice = Suggestion("left-behind", "The cell left <1 GiB> behind", "why",
                        "keras.utils.clear_session()")
    panel.finish(dataclasses.replace(record, suggestions=(advice,)), b"png")
    assert panel.suggestions.layout.display is None
    assert "clear_session" in panel.suggestions.value
    assert "&lt;1 GiB&gt;" in panel.suggestions.value, "the suggestion's text is escaped"


def test_save_writes_png_and_csv_and_never_overwrites(fake_nvml, tmp_path):
    _, record = measured(fake_nvml, 0.05)
    actions = Actions(dict, folder=str(tmp_path))
    first = actions.save(record)
    second = actions.save(record)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["kmem-cell-1.csv", "kmem-cell-1.png", "kmem-cell.csv", "kmem-cell.png"]
    assert "Saved" in first and "-1.png" in second
    assert (tmp_path / f"kmem-{record.name}.png").read_bytes().startswith(b"\x89PNG")
    assert (tmp_path / f"kmem-{record.name}.csv").read_text().startswith("t_s,series")


def test_a_save_that_fails_says_so_in_the_panel(fake_nvml, tmp_path):
    _, record = measured(fake_nvml, 0.05)
    status = Actions(dict, folder=str(tmp_path / "gone")).save(record)
    assert status.startswith("Could not save in") and "No such file" in status


def test_clear_without_keras_says_there_is_nothing_to_clear(monkeypatch):
    import sys

    monkeypatch.delitem(sys.modules, "keras", raising=False)
    assert "Keras is not imported" in Actions(dict).clear_session()


@pytest.mark.tensorflow
def test_clear_keras_session_reports_what_was_freed_per_source(fresh):
    pytest.importorskip("tensorflow")
    result = fresh("""
        import keras
        from kmem_magic.measure import measure_now
        from kmem_magic.show.panel import Actions
        models = [keras.Sequential([keras.Input((512,)), keras.layers.Dense(512)]) for _ in range(5)]
        keras.mixed_precision.set_global_policy("mixed_float16")
        del models
        RESULT["message"] = Actions(measure_now).clear_session()
        RESULT["policy"] = keras.mixed_precision.global_policy().name
    """)
    assert result["message"].startswith("Cleared the Keras session")
    assert "host RSS:" in result["message"] and "freed" in result["message"]
    assert "dtype policy is reset" in result["message"]
    assert result["policy"] == "float32", "what the message warns about really happens"


def test_colab_gets_its_widget_manager_before_the_first_display(fake_nvml, monkeypatch):
    import sys
    import types

    calls = []
    output = types.ModuleType("google.colab.output")
    output.enable_custom_widget_manager = lambda: calls.append("enabled")
    colab = types.ModuleType("google.colab")
    colab.output = output
    google = types.ModuleType("google")
    google.colab = colab
    for name, module in (("google", google), ("google.colab", colab),
                         ("google.colab.output", output)):
        monkeypatch.setitem(sys.modules, name, module)
    fake_nvml([gpu(0)])
    shown = []
    import IPython.display

    monkeypatch.setattr(IPython.display, "display",
                        lambda *a, **k: shown.append(list(calls)) or None)
    Panel("t", _nvml.devices()).show()
    assert shown == [["enabled"]], "enabled first, then displayed"


def test_one_small_plot_per_gpu_when_there_are_several(fake_nvml):
    from kmem_magic.show.plot import svg

    fake_nvml([gpu(0), gpu(1, name="NVIDIA A100-SXM4-40GB", total=40 * 2**30)])
    m = Measurement(interval_s=0.01).start()
    record = m.finish()
    picture = svg(record.timeline, _nvml.devices(), record.wall_s)
    assert "GPU 0 (of 80.00 GiB)" in picture and "GPU 1 (of 40.00 GiB)" in picture
    assert "host RSS" in picture
