"""The panel in a real browser: JupyterLab on 127.0.0.1, headless Chromium driven by Playwright,
in the light and the dark theme.

Debian's ``chromium`` is used through ``executable_path`` (``playwright install`` cannot download
browsers here). In CI (``CI`` set) a missing browser fails the test instead of skipping it.
With ``KMEM_SCREENSHOTS=DIR`` the final panel of each theme is saved there (docs/ holds them).
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

THEMES = {"light": "JupyterLab Light", "dark": "JupyterLab Dark"}

# the luminance (0 dark .. 1 light) of a computed CSS colour such as "rgb(12, 34, 56)"
LUMINANCE = """(css) => { const [r, g, b] = css.match(/[\\d.]+/g).map(Number);
  return (0.2126 * r + 0.7152 * g + 0.0722 * b) / 255; }"""


def _require(condition: bool, why: str) -> None:
    if condition:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{why} (required in CI: .ci/run installs it)")
    pytest.skip(why)


@pytest.fixture(scope="module", params=list(THEMES))
def lab(request, tmp_path_factory):
    _require(os.path.exists(CHROMIUM), "Debian's chromium is not installed (apt-get install chromium)")
    for module in ("playwright", "jupyterlab"):
        try:
            __import__(module)
        except ImportError:
            _require(False, f"{module} is not installed")
    root = tmp_path_factory.mktemp(f"lab-{request.param}")
    write_notebook(root / "panel.ipynb", ["%load_ext kmem_magic", CELL])
    with jupyterlab(root, THEMES[request.param]) as url:
        yield request.param, url


def _box(page, selector):
    return page.evaluate(f"() => {{ const r = document.querySelector('{selector}')"
                         ".getBoundingClientRect(); return [r.width, r.height]; }")


def test_panel_is_live_then_final_same_size_hover_and_theme(lab, tmp_path):
    theme, url = lab
    with notebook_page(url, "panel.ipynb") as (page, started):
        page.wait_for_selector(".kmem-panel", timeout=60_000)
        page.wait_for_selector(".kmem-curves path.kmem-curve", state="attached", timeout=30_000)
        first_paint_s = time.time() - started
        live_size = _box(page, ".kmem-curves")
        seen = []
        while not page.locator(".kmem-panel.kmem-done").count() and time.time() - started < 60:
            path = page.locator(".kmem-curves path.kmem-curve")
            if path.count():
                d = path.first.get_attribute("d")
                if not seen or seen[-1] != d:
                    seen.append(d)
            time.sleep(0.2)
        page.wait_for_selector(".kmem-panel.kmem-done .kmem-final", timeout=30_000)
        final_size = _box(page, ".kmem-curves")
        panel = page.locator(".kmem-panel").first
        text = panel.inner_text()
        # hover in the middle of the host row: the tooltip gives the time and a value
        row = page.locator(".kmem-curves svg.kmem-row").last.bounding_box()
        page.mouse.move(row["x"] + row["width"] * 0.6, row["y"] + row["height"] * 0.5)
        page.wait_for_selector(".kmem-tooltip", state="visible", timeout=5_000)
        tip = page.locator(".kmem-tooltip").inner_text()
        ink = page.evaluate(f"() => ({LUMINANCE})(getComputedStyle("
                            "document.querySelector('.kmem-row .kmem-row-title')).fill)")
        ground = page.evaluate(f"() => ({LUMINANCE})(getComputedStyle("
                               "document.querySelector('.jp-Notebook')).backgroundColor)")
        page.mouse.move(0, 0)
        page.locator(".kmem-panel .kmem-button", has_text="History").first.click()
        page.wait_for_selector(".kmem-panel .kmem-history svg", timeout=10_000)
        strip = page.locator(".kmem-panel .kmem-history").first.inner_text()
        page.locator(".kmem-panel .kmem-button", has_text="History").first.click()
        shot = tmp_path / f"panel-{theme}.png"
        panel.screenshot(path=str(shot))
        if os.environ.get("KMEM_SCREENSHOTS"):
            shutil.copy(shot, os.path.join(os.environ["KMEM_SCREENSHOTS"], shot.name))
    print(f"{theme}: first paint {first_paint_s:.2f} s after run-all; {len(seen)} distinct live "
          f"curves; live {live_size}, final {final_size}; tooltip {tip!r}")
    assert len(seen) >= 3, f"the curve changed only {len(seen) - 1} times while the cell ran"
    assert "peak" in text and "left behind" in text and "host RSS" in text
    assert abs(live_size[0] - final_size[0]) <= 2 and abs(live_size[1] - final_size[1]) <= 2, \
        "the curves keep their size from the live to the final view"
    assert " s" in tip and "host RSS:" in tip and "MiB" in tip, tip
    assert abs(ink - ground) > 0.4, f"text {ink:.2f} on background {ground:.2f}: unreadable"
    assert (ground < 0.5) == (theme == "dark"), "the panel sits in the theme it was given"
    assert shot.stat().st_size > 10_000
    assert "host RSS" in strip, "the History button draws memory across the measured cells"


POSTMORTEM_SETUP = """import os
os.environ["KERAS_BACKEND"] = "torch"
import numpy as np, keras
model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, name="narrow"),
                          keras.layers.Dense(2**20, activation="relu", name="wide"),
                          keras.layers.Dense(1, name="head")], name="m")
model.compile("adam", "mse")
x = np.zeros((2**20, 8), "float32"); y = np.zeros((2**20, 1), "float32")"""
POSTMORTEM_CELL = "%%gpumem\nmodel.fit(x, y, batch_size=2**20, epochs=1, verbose=0)"


def test_an_out_of_memory_panel_shows_the_post_mortem_below_the_curves(tmp_path):
    """A real out-of-memory error (torch's CPU allocator refuses 4 TiB in layer 'wide'): the
    panel's final view names the layer and the request, and shows where the step's peak goes."""
    _require(os.path.exists(CHROMIUM), "Debian's chromium is not installed (apt-get install chromium)")
    for module in ("playwright", "jupyterlab", "torch"):
        try:
            __import__(module)
        except ImportError:
            _require(False, f"{module} is not installed")
    root = tmp_path / "lab"
    root.mkdir()
    write_notebook(root / "oom.ipynb", ["%load_ext kmem_magic", POSTMORTEM_SETUP,
                                        POSTMORTEM_CELL])
    with jupyterlab(root, THEMES["light"]) as url:
        with notebook_page(url, "oom.ipynb") as (page, _):
            page.wait_for_selector(".kmem-panel.kmem-done .kmem-postmortem", timeout=120_000)
            panel = page.locator(".kmem-panel").last
            text = panel.inner_text()
            assert "Out of memory: post-mortem" in text
            assert "layer 'wide' (Dense, output (None, 1048576))" in text
            assert "failed request   4.00 TiB" in text
            assert "Where the step's peak goes" in text and "planning estimate" in text
            bars = panel.locator(".kmem-step .kmem-bar")
            assert bars.count() >= 5, "one bar per part of the step"
            # the traceback is still there, above the report: the error itself is not hidden
            assert page.locator(".jp-OutputArea-output[data-mime-type="
                                "'application/vnd.jupyter.stderr']").count() >= 1
            shot = tmp_path / "panel-postmortem.png"
            panel.screenshot(path=str(shot))
            if os.environ.get("KMEM_SCREENSHOTS"):
                shutil.copy(shot, os.path.join(os.environ["KMEM_SCREENSHOTS"], shot.name))
