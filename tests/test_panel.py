"""The panel, driven as the magic drives it (the widget's comm is ipywidgets' dummy one outside a
kernel; what it would send to the browser is caught at ``widget.send``)."""

import dataclasses
import os
import time

import pytest

pytest.importorskip("anywidget")

from kmem_magic import _host, _nvml  # noqa: E402
from kmem_magic.measure import Measurement  # noqa: E402
from kmem_magic.measure.cell import limited  # noqa: E402
from kmem_magic.record import Suggestion  # noqa: E402
from kmem_magic.show.panel import WIDGET_VIEW, Actions, Panel  # noqa: E402
from kmem_magic.sizes import parse_limit  # noqa: E402
from conftest import gpu  # noqa: E402


def measured(fake_nvml, seconds=0.3, refresh_s=0.05):
    fake_nvml([gpu(0, used=2 * 2**30, procs=[(os.getpid(), 2**30)])])
    devices = _nvml.devices()
    panel = Panel("%%gpumem cell-1", limited(devices, parse_limit("4GiB")), refresh_s=refresh_s,
                  actions=Actions(dict))
    sent = []
    panel.widget.send = sent.append  # the comm to the browser: what it would receive
    m = Measurement(interval_s=0.02, on_sample=panel.on_sample).start()
    # a new high for the process, so that the host peak is exact (the kernel's high-water mark)
    block = bytearray(_host.peak() - _host.host_rss() + 50 * 2**20)
    block[::4096] = b"x" * len(block[::4096])
    time.sleep(seconds)
    del block
    return panel, m.finish(), sent


def test_live_messages_carry_each_new_point_once_and_each_source_once(fake_nvml):
    panel, record, sent = measured(fake_nvml)
    assert len(sent) >= 3
    assert set(sent[0]["sources"]) >= {"gpu0.device", "host"}
    assert sent[0]["sources"]["gpu0.device"]["row"] == "GPU 0"
    assert all(not message["sources"] for message in sent[1:]), "names and colours sent once"
    times = [t for message in sent for t in message["points"].get("host", [[]])[0]]
    assert times == sorted(set(times)), "no point is sent twice"
    host = record.timeline.find("host")
    assert len(times) >= len(host.t_s) - 10, "every point up to the last message was sent"
    kib = sent[-1]["points"]["host"][1][-1]
    assert abs(kib * 1024 - host.values[len(times) - 1]) < 1024, "values travel in KiB"


def test_live_messages_are_throttled_to_the_refresh_interval(fake_nvml):
    _, _, sent = measured(fake_nvml, seconds=0.3, refresh_s=10)
    assert len(sent) <= 1


def test_final_view_carries_the_downsampled_curves_peaks_and_figures(fake_nvml):
    from kmem_magic.show.points import BUDGET

    panel, record, _ = measured(fake_nvml)
    panel.finish(record)
    final = panel.widget.final
    assert set(final["series"]) >= {"gpu0.device", "gpu0.process", "host"}
    assert all(len(t) <= BUDGET for t, _ in final["series"].values())
    assert [p["key"] for p in final["peaks"]] == ["host"], "exact peaks only are marked"
    facts = panel.widget.facts_html
    assert "peak" in facts and "left behind" in facts and "exact" in facts
    assert "limit 4.00 GiB" in panel.widget.header_html
    assert "save" in panel.widget.actions


def test_long_cells_stay_within_the_point_budget_and_keep_their_spike(fake_nvml):
    from kmem_magic.show.points import BUDGET, downsample

    t = [i * 0.1 for i in range(50_000)]
    v = [2**30] * 50_000
    v[31_337] = 5 * 2**30
    small_t, small_v = downsample(t, v)
    assert len(small_t) <= BUDGET and max(small_v) == 5 * 2**30
    assert small_t == sorted(small_t)


def test_suggestions_are_shown_escaped(fake_nvml):
    panel, record, _ = measured(fake_nvml, 0.05)
    advice = Suggestion("left-behind", "The cell left <1 GiB> behind", "why",
                        "keras.utils.clear_session()")
    panel.finish(dataclasses.replace(record, suggestions=(advice,)))
    assert "clear_session" in panel.widget.facts_html
    assert "&lt;1 GiB&gt;" in panel.widget.facts_html, "the suggestion's text is escaped"
    assert "&lt;1 GiB&gt;" in panel.static["text/html"], "and in the static fallback"


def test_kmems_own_faults_are_said_in_the_panel_and_its_fallback(fake_nvml):
    panel, record, _ = measured(fake_nvml, 0.05)
    faults = ("nvml after: NVMLError('<driver hiccup>')", "rule near_limit: ValueError('x')")
    panel.finish(dataclasses.replace(record, faults=faults))
    for page in (panel.widget.facts_html, panel.static["text/html"]):
        assert "1 fault(s) while measuring (those figures are unknown), the first: nvml " \
            "after: NVMLError(&#x27;&lt;driver hiccup&gt;&#x27;)" in page, "escaped"
        assert "1 advice rule(s) failed (their suggestions are left out)" in page
    panel, record, _ = measured(fake_nvml, 0.05)
    panel.finish(record)
    assert "fault" not in panel.widget.facts_html, "a cell without faults says none"


def test_the_static_fallback_has_the_curves_figures_and_suggestions(fake_nvml):
    panel, record, _ = measured(fake_nvml, 0.05)
    panel.finish(record)
    page = panel.static["text/html"]
    assert "<svg" in page and "<polyline" in page
    assert "peak" in page and "left behind" in page and "GPU 0" in page
    assert "host RSS" in panel.static["text/plain"]


def test_a_retired_panel_becomes_its_static_fallback_and_closes_its_widget(fake_nvml):
    panel, record, _ = measured(fake_nvml, 0.05)
    shown = []

    class Handle:
        def update(self, bundle, raw=False):
            shown.append(bundle)

    panel._handle = Handle()
    panel.finish(record)
    assert WIDGET_VIEW in shown[-1] and "text/html" in shown[-1]
    panel.retire()
    assert WIDGET_VIEW not in shown[-1] and "<svg" in shown[-1]["text/html"]
    assert panel.widget.comm is None, "the widget is closed: no model left in the frontend"
    assert panel.widget.layout.comm is None, "and so is its layout's"
    assert panel.record is None, "the record is no longer kept alive by the panel"


def test_buttons_answer_through_the_status_line(fake_nvml, tmp_path):
    panel, record, _ = measured(fake_nvml, 0.05)
    panel.actions = Actions(dict, folder=str(tmp_path))
    panel.finish(record)
    panel._on_msg(panel.widget, {"action": "save"}, [])
    assert panel.widget.status.startswith(f"Saved kmem-{record.name}.png")
    panel._on_msg(panel.widget, {"action": "unknown"}, [])
    assert panel.widget.status.startswith("Saved"), "an unknown action changes nothing"


def test_save_writes_png_and_csv_and_never_overwrites(fake_nvml, tmp_path):
    _, record, _ = measured(fake_nvml, 0.05)
    actions = Actions(dict, folder=str(tmp_path))
    first = actions.save(record)
    second = actions.save(record)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["kmem-cell-1.csv", "kmem-cell-1.png", "kmem-cell.csv", "kmem-cell.png"]
    assert "Saved" in first and "-1.png" in second
    assert (tmp_path / f"kmem-{record.name}.png").read_bytes().startswith(b"\x89PNG")
    assert (tmp_path / f"kmem-{record.name}.csv").read_text().startswith("t_s,series")


def test_a_save_that_fails_says_so_in_the_panel(fake_nvml, tmp_path):
    _, record, _ = measured(fake_nvml, 0.05)
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


def test_one_row_per_gpu_when_there_are_several(fake_nvml):
    from kmem_magic.show.plot import svg

    fake_nvml([gpu(0), gpu(1, name="NVIDIA A100-SXM4-40GB", total=40 * 2**30)])
    m = Measurement(interval_s=0.01).start()
    record = m.finish()
    picture = svg(record)
    assert "GPU 0 (of 80.00 GiB)" in picture and "GPU 1 (of 40.00 GiB)" in picture
    assert "host RSS" in picture
    panel = Panel("t", _nvml.devices())
    assert [row["name"] for row in panel.widget.meta["rows"]] == ["GPU 0", "GPU 1", "host"]


def test_a_panel_whose_measurement_failed_still_ends_and_says_why(fake_nvml):
    fake_nvml([gpu(0)])
    panel = Panel("t", _nvml.devices())
    shown = []

    class Handle:
        def update(self, bundle, raw=False):
            shown.append(bundle)

    panel._handle = Handle()
    panel.fail("the measurement failed (RuntimeError('x'))")
    assert WIDGET_VIEW not in shown[-1], "the output is the message, not a live panel"
    assert "the measurement failed" in shown[-1]["text/plain"]
    assert "the measurement failed" in shown[-1]["text/html"]
    assert panel.retired and panel.widget.comm is None, "its widget is closed: no leak"


def test_the_history_button_shows_every_measured_cell_and_hides_it_again(fake_nvml):
    panel, record, _ = measured(fake_nvml, 0.05)
    panel.actions = Actions(dict, history=lambda: [record, record])
    panel.finish(record)
    assert "history" in panel.widget.actions
    panel._on_msg(panel.widget, {"action": "history"}, [])
    assert panel.widget.history_html.startswith("<svg") and "host RSS" in panel.widget.history_html
    panel._on_msg(panel.widget, {"action": "history"}, [])
    assert panel.widget.history_html == ""
