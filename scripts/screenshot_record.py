"""Screenshot of the %%gpumem panel's final view for a record measured elsewhere (e.g. on a GPU).

    python scripts/screenshot_record.py RECORD.json OUT.png

The GPU machine has no browser: the demo writes ``record.json`` there, and this script rebuilds
the panel from that record in a JupyterLab kernel here, in headless chromium, and saves it.
"""

import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from labdriver import jupyterlab, notebook_page, write_notebook  # noqa: E402

REBUILD = """
from kmem_magic.record import CellRecord
from kmem_magic.show.panel import Panel
from kmem_magic.show.plot import png
record = CellRecord.from_json(open("record.json").read())
panel = Panel("", record.devices, live=False)
panel.finish(record, png(record))
"""


def main(record_path: str, out_path: str) -> None:
    root = Path(tempfile.mkdtemp())
    shutil.copy(record_path, root / "record.json")
    write_notebook(root / "shot.ipynb", [REBUILD])
    with jupyterlab(root) as url, notebook_page(url, "shot.ipynb") as (page, _):
        page.wait_for_selector(".kmem-final", timeout=60_000)
        time.sleep(1)
        page.locator(".kmem-panel").first.screenshot(path=out_path)
    print(f"wrote {out_path}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
