"""A workshop on one machine: real Jupyter kernels (nbclient) sharing a ledger folder list each
other by notebook; a killed kernel leaves the list; a record that claims a live pid of another
start time, and a corrupt or partial record, are passed over without a traceback."""

import contextlib
import json
import os
import signal

import pytest

nbformat = pytest.importorskip("nbformat")
NotebookClient = pytest.importorskip("nbclient").NotebookClient

pytestmark = pytest.mark.notebook

NOTEBOOKS = ("intro/alpha.ipynb", "beta.ipynb", "gamma.ipynb")


class Kernel:
    """One notebook's kernel: cells run in it one at a time, their text output returned."""

    def __init__(self, stack, notebook, folder, **client):
        self.notebook = notebook
        self.nb = nbformat.v4.new_notebook()
        self.client = NotebookClient(self.nb, timeout=120, kernel_name="python3", **client)
        env = {**os.environ, "JPY_SESSION_NAME": notebook, "KMEM_LEDGER": folder}
        stack.enter_context(self.client.setup_kernel(env=env))

    def run(self, source):
        cell = nbformat.v4.new_code_cell(source)
        self.nb.cells.append(cell)
        self.client.execute_cell(cell, len(self.nb.cells) - 1)
        errors = [o for o in cell.outputs if o.output_type == "error"]
        assert not errors, errors[0].traceback
        return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")


def listed(text):
    return [n for n in NOTEBOOKS if f"  {n}" in text]


def test_kernels_sharing_a_ledger_know_each_other_and_a_killed_one_leaves(tmp_path):
    folder = str(tmp_path / "ledger")
    with contextlib.ExitStack() as stack:
        kernels = [Kernel(stack, name, folder) for name in NOTEBOOKS]
        for kernel in kernels:
            kernel.run("%load_ext kmem_magic")
            kernel.run("%%gpumem --quiet\nblock = bytearray(32 * 2**20)")
        for kernel in kernels:
            text = kernel.run("%gpumem who")
            assert listed(text) == list(NOTEBOOKS), text
            assert f"{kernel.notebook} (this kernel)" in text
            assert "3 kmem kernels" in text

        # a record that claims alpha's pid but was written by a process that started earlier
        # (a reused pid), and two broken ones
        records = [json.load(open(os.path.join(folder, n))) for n in os.listdir(folder)]
        alpha = next(r for r in records if r["notebook"] == "intro/alpha.ipynb")
        reused = dict(alpha, notebook="ghost.ipynb", started=alpha["started"] - 600)
        with open(os.path.join(folder, "ghost.json"), "w") as handle:
            json.dump(reused, handle)
        with open(os.path.join(folder, "partial.json"), "w") as handle:
            handle.write(json.dumps(alpha)[:50])

        # gamma's kernel dies without a word: no atexit, its record stays behind
        gamma = next(r for r in records if r["notebook"] == "gamma.ipynb")
        os.kill(gamma["pid"], signal.SIGKILL)

        text = kernels[0].run("%gpumem who")
        assert listed(text) == ["intro/alpha.ipynb", "beta.ipynb"], text
        assert "ghost.ipynb" not in text and "2 kmem kernels" in text
        assert "1 unreadable record(s) skipped" in text and "Traceback" not in text
        left = sorted(n for n in os.listdir(folder) if not n.startswith("."))
        assert "ghost.json" not in left and len(left) == 3, "dead and reused records removed"
        assert kernels[1].run("%gpumem who").count("  beta.ipynb (this kernel)") == 1


def test_a_kernel_that_ends_normally_takes_its_record_with_it(tmp_path):
    folder = str(tmp_path / "ledger")
    with contextlib.ExitStack() as outer:
        stayer = Kernel(outer, "stays.ipynb", folder)
        stayer.run("%load_ext kmem_magic")
        with contextlib.ExitStack() as inner:
            leaver = Kernel(inner, "leaves.ipynb", folder)
            leaver.run("%load_ext kmem_magic")
            assert "leaves.ipynb" in stayer.run("%gpumem who")
        # the kernel was shut down (a shutdown request, as Jupyter sends): atexit removed it
        records = [n for n in os.listdir(folder) if n.endswith(".json")]
        assert len(records) == 1
        assert "leaves.ipynb" not in stayer.run("%gpumem who")


def test_a_kernel_jupyter_gave_no_notebook_is_named_by_its_kernel_id(tmp_path):
    from jupyter_client import KernelManager

    folder = str(tmp_path / "ledger")
    # the connection file is named as Jupyter's server names it: kernel-<id>.json
    km = KernelManager(kernel_name="python3",
                       connection_file=str(tmp_path / "kernel-5f0c2a1e-77d3.json"))
    with contextlib.ExitStack() as stack:
        kernel = Kernel(stack, "", folder, km=km)
        text = kernel.run("%load_ext kmem_magic\n%gpumem who")
        assert "kernel 5f0c2a1e-77d3 (this kernel)" in text, text
