"""The demo: a small Keras model trained under ``%%gpumem``.

Run ``python -m kmem_magic.demo [--out DIR]``. It needs no GPU and no download: the data are
random numbers, the model is a small MLP, and it runs on whatever Keras backend is configured
(``KERAS_BACKEND``), on the GPU where there is one.

From a checkout it executes ``notebooks/quickstart.ipynb`` headless in a real Jupyter kernel and
writes the executed notebook (with the panel's widget state and PNG fallbacks) and a static HTML
page of it to ``DIR``. With ``--shell`` (or without the notebook, e.g. from a wheel) it runs the
same training in an IPython shell and writes the cell's report (text), plot (PNG), record (JSON)
and timeline (CSV). Either way it prints where the files are.
"""

from __future__ import annotations

import argparse
import os
import sys

SETUP = """\
import numpy as np
import keras

rng = np.random.default_rng(0)
x = rng.random((4096, 64), dtype="float32")
y = rng.integers(0, 10, 4096)
model = keras.Sequential([
    keras.Input((64,)),
    keras.layers.Dense(256, activation="relu"),
    keras.layers.Dense(256, activation="relu"),
    keras.layers.Dense(10),
])
model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True),
              metrics=["accuracy"])
"""

TRAIN = """\
%%gpumem
history = model.fit(x, y, batch_size=128, epochs=3, verbose=0)
f"final loss {history.history['loss'][-1]:.3f}"
"""


QUICKSTART = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          "notebooks", "quickstart.ipynb")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kmem_magic.demo",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="demo-output",
                        help="folder for the files (default: %(default)s)")
    parser.add_argument("--notebook", default=QUICKSTART, help="notebook to execute")
    parser.add_argument("--shell", action="store_true",
                        help="run in an IPython shell instead of executing the notebook")
    args = parser.parse_args(argv)
    if not args.shell and os.path.exists(args.notebook):
        return run_notebook(args.notebook, args.out)
    return run_shell(args.out)


def run_notebook(path: str, out: str) -> int:
    """Execute the notebook in a fresh kernel; write it executed, and as static HTML."""
    import copy

    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError
    from nbconvert import HTMLExporter

    os.makedirs(out, exist_ok=True)
    nb = nbformat.read(path, as_version=4)
    name = os.path.splitext(os.path.basename(path))[0]
    print(f">>> executing {path} in a fresh Jupyter kernel "
          f"(keras backend: {os.environ.get('KERAS_BACKEND', 'tensorflow (default)')})")
    client = NotebookClient(nb, timeout=1200, kernel_name="python3",
                            resources={"metadata": {"path": os.path.abspath(out)}})
    failed = None
    try:
        client.execute()
    except CellExecutionError as error:
        failed = error
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            if output.get("output_type") == "stream" and "%%gpumem" in output.get("text", ""):
                print(output["text"].rstrip())
            elif "%%gpumem" in output.get("data", {}).get("text/plain", ""):
                print(output["data"]["text/plain"])
    executed = os.path.join(out, f"{name}.ipynb")
    nbformat.write(nb, executed)
    # The HTML page is static: without a kernel the widgets are dead, so it shows each panel's
    # static fallback (its figures, suggestions and an SVG of its curves) instead.
    static = copy.deepcopy(nb)
    static.metadata.pop("widgets", None)
    page, _ = HTMLExporter().from_notebook_node(static)
    html_path = os.path.join(out, f"{name}.html")
    with open(html_path, "w", encoding="utf-8") as handle:
        handle.write(page)
    print(f"\nwrote {os.path.abspath(executed)} (with the panels' widget state)")
    print(f"wrote {os.path.abspath(html_path)} (static page: the panels' figures and curves)")
    if failed is not None:
        print(f"the notebook failed: {failed}")
        return 1
    return 0


def run_shell(out_dir: str) -> int:
    """The same training in an in-process IPython shell; writes text, PNG, JSON and CSV."""
    from IPython.core.interactiveshell import InteractiveShell

    import kmem_magic

    from .show import text
    from .show.export import timeline_csv
    from .show.plot import png

    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "kmem_magic")
    print(">>> setting up a small Keras model on random data")
    if not shell.run_cell(SETUP).success:
        return 1
    print(">>> " + TRAIN.replace("\n", "\n... ").rstrip(". \n"))
    result = shell.run_cell(TRAIN, store_history=True)
    if not result.success:
        return 1
    record = kmem_magic.history(shell)[-1]
    os.makedirs(out_dir, exist_ok=True)
    files = {
        "summary.txt": text.summary(record) + "\n",
        "memory.png": png(record),
        "record.json": record.to_json(),
        "timeline.csv": timeline_csv(record),
    }
    for name, content in files.items():
        mode = "wb" if isinstance(content, bytes) else "w"
        with open(os.path.join(out_dir, name), mode) as handle:
            handle.write(content)
    print(f"\nwrote {', '.join(files)} to {os.path.abspath(out_dir)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
