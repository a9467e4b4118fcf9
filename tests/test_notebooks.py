"""The notebooks in notebooks/, the demo that executes the quickstart, and the Binder layout.

Committed notebooks carry no outputs and no widget metadata (GitHub renders them, and diffs stay
small); executed notebooks carry complete widget state plus a PNG fallback in every panel.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
NotebookClient = pytest.importorskip("nbclient").NotebookClient

pytestmark = pytest.mark.notebook
ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"


def execute(path, tmp_path, backend):
    nb = nbformat.read(path, as_version=4)
    env = {"KERAS_BACKEND": backend}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        NotebookClient(nb, timeout=600, kernel_name="python3",
                       resources={"metadata": {"path": str(tmp_path)}}).execute()
    finally:
        for key, value in old.items():
            os.environ.pop(key, None)
            if value is not None:
                os.environ[key] = value
    return nb


def text_of(cell):
    parts = []
    for output in cell.outputs:
        parts.append(output.get("text", ""))
        parts.append(output.get("data", {}).get("text/plain", ""))
    return "\n".join(parts)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_notebooks_are_clean_and_render_on_github(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert "widgets" not in nb.metadata, "no widget metadata without its state (GitHub refuses)"
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")
    assert "google.colab" in nb.cells[1].source, "the first code cell installs kmem in Colab"


@pytest.mark.parametrize("backend", ["tensorflow", "jax", "torch"])
def test_quickstart_runs_on_every_backend(backend, tmp_path):
    pytest.importorskip(backend)
    nb = execute(ROOT / "notebooks" / "quickstart.ipynb", tmp_path, backend)
    cells = {c.source.splitlines()[0] if c.source else "": c for c in nb.cells
             if c.cell_type == "code"}
    fit = next(c for c in nb.cells if "model.fit" in c.source)
    panel = [o for o in fit.outputs if o.output_type == "display_data"][0]
    assert {WIDGET_VIEW, "text/html", "text/plain"} <= set(panel.data)
    assert f"keras backend {backend}" in panel.data["text/plain"]
    state = nb.metadata.widgets[WIDGET_STATE]["state"]
    assert panel.data[WIDGET_VIEW]["model_id"] in state
    left = next(c for c in nb.cells if "keras.ops.ones" in c.source)
    assert "The cell left" in text_of(left) and "Out[" in text_of(left)
    history = text_of(cells["%gpumem history"])
    assert history.count("cell-") >= 2
    plan = text_of(next(c for c in nb.cells
                        if c.cell_type == "code" and "kmem_magic.estimate" in c.source))
    assert f"estimate for batch 128 ({backend}, float32): --limit " in plan and "CUDA context" in plan
    assert "optimizer slots" in plan and "activations kept for backward" in plan


def test_workshop_reproduces_each_pain_and_kmem_diagnoses_it(tmp_path):
    pytest.importorskip("tensorflow")
    nb = execute(ROOT / "notebooks" / "workshop.ipynb", tmp_path, "tensorflow")
    texts = [text_of(c) for c in nb.cells if c.cell_type == "code"]
    every = "\n".join(texts)
    assert "RuntimeError: Virtual devices cannot be modified after being initialized" in every
    assert "tensorflow  already started" in every
    assert "predictions keeps what every run adds" in every, "the list, not predict()"
    assert "Out of memory (ResourceExhaustedError)" in every
    assert nb.cells[-1].outputs and "(64, 1024)" in text_of(nb.cells[-1]), \
        "the cell after the out-of-memory one runs in the same kernel"


def test_demo_command_writes_the_executed_notebook_and_html_with_the_figures(tmp_path):
    pytest.importorskip("tensorflow")
    out = tmp_path / "demo"
    done = subprocess.run([sys.executable, "-m", "kmem_magic.demo", "--out", str(out)],
                          capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert f"wrote {out / 'quickstart.html'}" in done.stdout
    page = (out / "quickstart.html").read_text()
    executed = nbformat.read(out / "quickstart.ipynb", as_version=4)
    fit = next(c for c in executed.cells if "model.fit" in c.source)
    panel = [o for o in fit.outputs if o.output_type == "display_data"][0].data
    assert "kmem-static" in panel["text/html"] and "kmem-static" in page, \
        "the HTML page shows the panel's static fallback"
    assert "<svg" in page and "left behind" in page and "peak" in page
    assert "The cell left" in page, "the suggestions travel as text, with no script to run"
    assert executed.metadata.widgets[WIDGET_STATE]["state"]


@pytest.mark.binder
def test_binder_files_parse_and_install_into_a_fresh_environment(tmp_path):
    from packaging.requirements import Requirement

    runtime = (ROOT / "binder" / "runtime.txt").read_text().strip()
    assert re.fullmatch(r"python-3\.(1[1-9])", runtime), "IPython 9 needs Python >= 3.11"
    lines = [line.strip() for line in (ROOT / "binder" / "requirements.txt").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert lines[0] == ".", "with a binder/ folder, repo2docker installs the repo only if asked"
    names = {Requirement(line).name for line in lines[1:]}
    assert {"tensorflow-cpu", "keras"} <= names
    venv = tmp_path / "binder-env"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q",
           "--disable-pip-version-check"]
    # repo2docker runs pip from the repository root; its base image brings Jupyter.
    subprocess.run(pip + ["-r", "binder/requirements.txt", "ipykernel", "nbclient", "nbconvert"],
                   check=True, cwd=ROOT, timeout=1200)
    out = tmp_path / "out"
    done = subprocess.run([str(venv / "bin" / "python"), "-m", "kmem_magic.demo", "--out", str(out),
                           "--notebook", str(ROOT / "notebooks" / "quickstart.ipynb")],
                          capture_output=True, text=True, cwd=tmp_path, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert json.loads((out / "quickstart.ipynb").read_text())["cells"]


def test_workshop_host_shows_every_student_kernel_and_one_that_left(tmp_path):
    nb = execute(ROOT / "notebooks" / "workshop-host.ipynb", tmp_path, "jax")
    who = [text_of(c) for c in nb.cells if c.cell_type == "code" and "%gpumem who" in c.source]
    assert len(who) == 2
    for name in ("students/ada.ipynb", "students/grace.ipynb"):
        assert name in who[0]
    assert "(this kernel)" in who[0] and "3 kmem kernels" in who[0]
    assert "students/ada.ipynb" in who[1] and "students/grace.ipynb" not in who[1]
    assert "2 kmem kernels" in who[1]
