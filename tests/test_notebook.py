"""Invariant 2 in real Jupyter kernels (nbclient): a %%gpumem cell fails, prints and returns
exactly like the same cell without the magic, so "Run All" and CI behave the same."""

import pytest

nbformat = pytest.importorskip("nbformat")
NotebookClient = pytest.importorskip("nbclient").NotebookClient
CellExecutionError = pytest.importorskip("nbclient.exceptions").CellExecutionError
HTMLExporter = pytest.importorskip("nbconvert").HTMLExporter

pytestmark = pytest.mark.notebook


def execute(*sources):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(source) for source in sources]
    client = NotebookClient(nb, timeout=120, kernel_name="python3")
    error = None
    try:
        client.execute()
    except CellExecutionError as raised:
        error = raised
    return nb, error


def outputs_of(cell, output_type):
    return [o for o in cell.outputs if o.output_type == output_type]


def test_an_error_stops_the_notebook_exactly_like_the_bare_cell():
    with_magic, error_a = execute("%load_ext kmem_magic",
                                  "%%gpumem\nraise ValueError('boom')", "after = 1")
    bare, error_b = execute("%load_ext kmem_magic", "raise ValueError('boom')", "after = 1")
    assert error_a is not None and error_b is not None
    assert error_a.ename == error_b.ename == "ValueError"
    assert error_a.evalue == error_b.evalue == "boom"
    for nb in (with_magic, bare):
        assert outputs_of(nb.cells[1], "error")[0].ename == "ValueError"
        assert nb.cells[2].execution_count is None, "the next cell did not run"
    report = outputs_of(with_magic.cells[1], "display_data")
    assert report and "failed (ValueError)" in report[0].data["text/plain"]


def test_prints_and_last_expression_match_the_bare_cell():
    body = "print('hello')\nvalue = 6 * 7\nvalue"
    nb, error = execute("%load_ext kmem_magic", "%%gpumem\n" + body, body)
    assert error is None
    magic, bare = nb.cells[1], nb.cells[2]
    assert [o.text for o in outputs_of(magic, "stream")] == ["hello\n"]
    assert [o.text for o in outputs_of(bare, "stream")] == ["hello\n"]
    assert outputs_of(magic, "execute_result")[0].data == outputs_of(bare, "execute_result")[0].data
    assert outputs_of(magic, "execute_result")[0].data["text/plain"] == "42"
    report = outputs_of(magic, "display_data")
    assert len(report) == 1 and {"text/html", "text/plain"} <= set(report[0].data)
    assert "host RSS" in report[0].data["text/plain"]


WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"


def panels(state):
    return {k: m["state"] for k, m in state.items() if m["model_name"] == "AnyModel"}


def test_executed_notebook_holds_one_widget_and_static_fallbacks(tmp_path):
    nb, error = execute("%load_ext kmem_magic",
                        "%%gpumem\nimport time\nblock = bytearray(100 * 2**20)\ntime.sleep(1.2)")
    assert error is None
    report = outputs_of(nb.cells[1], "display_data")
    assert len(report) == 1, "one bundle, updated in place"
    data = report[0].data
    assert {WIDGET_VIEW, "text/html", "text/plain"} <= set(data)
    assert "host RSS" in data["text/plain"]
    state = nb.metadata.widgets[WIDGET_STATE]["state"]
    assert data[WIDGET_VIEW]["model_id"] in state, "the panel's state is saved with the notebook"
    assert len(state) <= 3, f"one panel, {len(state)} widget models"
    panel = panels(state)[data[WIDGET_VIEW]["model_id"]]
    assert "peak" in panel["facts_html"] and "left behind" in panel["facts_html"]
    assert "host" in panel["final"]["series"], "the final curves travel as data"

    del nb.metadata["widgets"]
    page, _ = HTMLExporter().from_notebook_node(nb)
    assert "kmem-static" in page and "<svg" in page, "without widget state: the fallback"
    assert "peak" in page and "left behind" in page, "with the figures as text"


def test_only_the_newest_twenty_panels_stay_live_and_older_ones_turn_static():
    cells = ["%load_ext kmem_magic"] + [f"%%gpumem\nx = {i}" for i in range(25)]
    nb, error = execute(*cells)
    assert error is None
    views = [outputs_of(cell, "display_data")[-1].data for cell in nb.cells[1:]]
    assert all(WIDGET_VIEW not in v and "kmem-static" in v["text/html"] for v in views[:5])
    assert all(WIDGET_VIEW in v for v in views[5:])
    # nbclient keeps the state of closed widgets too; the kernel's own count is what matters
    nb2, _ = execute(*cells, "import ipywidgets as w\nprint(len(w.Widget.widgets))")
    assert int(outputs_of(nb2.cells[-1], "stream")[0].text) == 2 * 20, "two models a panel"


def test_quiet_prints_one_line_and_no_live_shows_only_the_final_view():
    nb, error = execute("%load_ext kmem_magic", "%%gpumem --quiet\nx = 1",
                        "%%gpumem --no-live\nimport time\ntime.sleep(1)")
    assert error is None
    quiet = nb.cells[1]
    assert not outputs_of(quiet, "display_data")
    assert outputs_of(quiet, "stream")[0].text.startswith("%%gpumem cell-2: peak")
    final = outputs_of(nb.cells[2], "display_data")
    assert len(final) == 1 and "text/html" in final[0].data
    assert final[0].data[WIDGET_VIEW], "shown once, at the end, with its widget"


def test_an_executed_notebook_converts_to_an_offline_page_with_the_facts():
    # nbclient saves the widget state, and nbconvert would then draw the panel with widget
    # scripts from a CDN (blank offline); without the notebook metadata it uses the fallback.
    from traitlets.config import Config

    nb, error = execute("%load_ext kmem_magic", "%%gpumem\nblock = bytearray(8 * 2**20)")
    assert error is None and "widgets" in nb.metadata
    config = Config()
    config.ClearMetadataPreprocessor.enabled = True
    page, _ = HTMLExporter(config=config).from_notebook_node(nb)
    assert WIDGET_VIEW not in page, "no widget left to load from a CDN"
    assert "kmem-static" in page and "peak" in page and "left behind" in page and "<svg" in page
