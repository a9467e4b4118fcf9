"""The panel in a real browser: JupyterLab on 127.0.0.1, headless Chromium driven by Playwright.

Debian's ``chromium`` is used through ``executable_path`` (``playwright install`` cannot download
browsers here). In CI (``CI`` set) a missing browser fails the test instead of skipping it.
"""

from __future__ import annotations

import os
import shutil
import time

import pytest

from labdriver import CHROMIUM, jupyterlab, notebook_page, write_notebook

pytestmark = pytest.mark.browser

CELL = """%%gpumem --interval 0.1
import time
blocks = []
for step in range(10):
    blocks.append(bytearray(40 * 2**20))
    for i in range(0, len(blocks[-1]), 4096):
        blocks[-1][i] = 1
    time.sleep(0.5)
len(blocks)"""


def _require(condition: bool, why: str) -> None:
    if condition:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{why} (required in CI: .ci/run installs it)")
    pytest.skip(why)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    _require(os.path.exists(CHROMIUM), "Debian's chromium is not installed (apt-get install chromium)")
    for module in ("playwright", "jupyterlab"):
        try:
            __import__(module)
        except ImportError:
            _require(False, f"{module} is not installed")
    root = tmp_path_factory.mktemp("lab")
    write_notebook(root / "panel.ipynb", ["%load_ext kmem_magic", CELL])
    with jupyterlab(root) as url:
        yield url


def test_panel_is_live_while_the_cell_runs_and_final_after(lab, tmp_path):
    with notebook_page(lab, "panel.ipynb") as (page, started):
        page.wait_for_selector(".kmem-panel", timeout=60_000)
        page.wait_for_selector(".kmem-curves path.kmem-curve", state="attached", timeout=30_000)
        first_paint_s = time.time() - started
        seen = []
        while not page.locator(".kmem-final").count() and time.time() - started < 60:
            curves = page.locator(".kmem-curves")
            if curves.count():
                html = curves.first.inner_html()
                if not seen or seen[-1] != html:
                    seen.append(html)
            time.sleep(0.2)
        page.wait_for_selector(".kmem-final", timeout=30_000)
        panel = page.locator(".kmem-panel").first
        text = panel.inner_text()
        shot = tmp_path / "panel.png"
        panel.screenshot(path=str(shot))
        if os.environ.get("KMEM_SCREENSHOT"):
            shutil.copy(shot, os.environ["KMEM_SCREENSHOT"])
        curves_ok = page.evaluate(
            "() => document.querySelectorAll('.kmem-panel.kmem-done path.kmem-curve').length")
    print(f"first paint {first_paint_s:.2f} s after run-all; {len(seen)} distinct live curves")
    assert len(seen) >= 3, f"the curve changed only {len(seen) - 1} times while the cell ran"
    assert "peak" in text and "left behind" in text
    assert "host RSS" in text
    assert curves_ok >= 1, "the final view draws the curves"
    assert shot.stat().st_size > 10_000
