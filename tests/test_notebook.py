"""Invariant 2 in real Jupyter kernels (nbclient): a %%gpumem cell fails, prints and returns
exactly like the same cell without the magic, so "Run All" and CI behave the same."""

import pytest

nbformat = pytest.importorskip("nbformat")
NotebookClient = pytest.importorskip("nbclient").NotebookClient
CellExecutionError = pytest.importorskip("nbclient.exceptions").CellExecutionError

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
    assert len(report) == 1 and {"image/png", "text/plain"} <= set(report[0].data)
    assert "host RSS" in report[0].data["text/plain"]


WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"


def test_executed_notebook_holds_widget_state_png_and_text(tmp_path):
    nb, error = execute("%load_ext kmem_magic",
                        "%%gpumem\nimport time\nblock = bytearray(100 * 2**20)\ntime.sleep(1.2)")
    assert error is None
    report = outputs_of(nb.cells[1], "display_data")
    assert len(report) == 1, "one bundle, updated in place"
    data = report[0].data
    assert {WIDGET_VIEW, "image/png", "text/plain"} <= set(data)
    assert "host RSS" in data["text/plain"]
    state = nb.metadata.widgets[WIDGET_STATE]["state"]
    assert data[WIDGET_VIEW]["model_id"] in state, "the panel's state is saved with the notebook"
    models = {m["model_name"] for m in state.values()}
    assert {"VBoxModel", "ImageModel", "HTMLModel", "ButtonModel"} <= models
    image = next(m for m in state.values() if m["model_name"] == "ImageModel")
    assert image["buffers"][0]["data"] == data["image/png"], "final view shows the same PNG"
    texts = " ".join(m["state"].get("value", "") for m in state.values()
                     if m["model_name"] == "HTMLModel")
    assert "peak" in texts and "left behind" in texts

    path = tmp_path / "executed.ipynb"
    nbformat.write(nb, path)
    from nbconvert import HTMLExporter

    with_state, _ = HTMLExporter().from_notebook_node(nb)
    # (the state's JSON escapes "/" in the HTML, so compare a stretch without one)
    stretch = data["image/png"][:200].split("/")[0]
    assert len(stretch) > 40 and stretch in with_state, "the PNG travels in the widget state"
    del nb.metadata["widgets"]
    without_state, _ = HTMLExporter().from_notebook_node(nb)
    assert f"data:image/png;base64,{data['image/png'][:200]}" in without_state, \
        "without widget state, static renderers fall back to the PNG"


def test_quiet_prints_one_line_and_no_live_shows_only_the_final_view():
    nb, error = execute("%load_ext kmem_magic", "%%gpumem --quiet\nx = 1",
                        "%%gpumem --no-live\nimport time\ntime.sleep(1)")
    assert error is None
    quiet = nb.cells[1]
    assert not outputs_of(quiet, "display_data")
    assert outputs_of(quiet, "stream")[0].text.startswith("%%gpumem cell-2: peak")
    final = outputs_of(nb.cells[2], "display_data")
    assert len(final) == 1 and "image/png" in final[0].data
    state = nb.metadata.widgets[WIDGET_STATE]["state"]
    curves = [m for m in state.values()
              if m["model_name"] == "HTMLModel" and "<svg" in m["state"].get("value", "")]
    assert not curves, "--no-live never drew live curves"
