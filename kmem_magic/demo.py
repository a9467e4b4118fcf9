"""The demo: a small Keras model trained under ``%%gpumem`` in a real IPython shell.

Run ``python -m kmem_magic.demo [--out DIR]``. It needs no GPU and no download: the data are
random numbers, the model is a small MLP, and it runs on whatever Keras backend is configured
(``KERAS_BACKEND``), on the GPU where there is one. It writes the cell's report (text), its plot
(PNG), its record (JSON) and its timeline (CSV) to ``DIR`` and prints where they are.
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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kmem_magic.demo", description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="demo-output", help="folder for the files (default: %(default)s)")
    args = parser.parse_args(argv)
    from IPython.core.interactiveshell import InteractiveShell

    from .plot import png

    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "kmem_magic")
    print(">>> setting up a small Keras model on random data")
    if not shell.run_cell(SETUP).success:
        return 1
    print(">>> " + TRAIN.replace("\n", "\n... ").rstrip(". \n"))
    result = shell.run_cell(TRAIN, store_history=True)
    if not result.success:
        return 1
    record = shell.magics_manager.registry["GpuMem"].history[-1]
    os.makedirs(args.out, exist_ok=True)
    files = {
        "summary.txt": record.summary() + "\n",
        "memory.png": png(record),
        "record.json": record.to_json(),
        "timeline.csv": record.to_csv(),
    }
    for name, content in files.items():
        mode = "wb" if isinstance(content, bytes) else "w"
        with open(os.path.join(args.out, name), mode) as handle:
            handle.write(content)
    print(f"\nwrote {', '.join(files)} to {os.path.abspath(args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
