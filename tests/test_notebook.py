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
