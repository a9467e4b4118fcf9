"""The panel in a real browser: JupyterLab on 127.0.0.1, headless Chromium driven by Playwright.

Debian's ``chromium`` is used through ``executable_path`` (``playwright install`` cannot download
browsers here). In CI (``CI`` set) a missing browser fails the test instead of skipping it.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]
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
    nb = {"cells": [{"cell_type": "code", "execution_count": None, "id": f"c{i}", "metadata": {},
                     "outputs": [], "source": source}
                    for i, source in enumerate(["%load_ext kmem_magic", CELL])],
          "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3",
                                      "language": "python"}},
          "nbformat": 4, "nbformat_minor": 5}
    (root / "panel.ipynb").write_text(json.dumps(nb))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--no-browser", f"--port={port}",
         "--ip=127.0.0.1", "--allow-root", "--ServerApp.token=", "--ServerApp.password=",
         "--ServerApp.disable_check_xsrf=True", "--expose-app-in-browser",
         f"--ServerApp.root_dir={root}", "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
        stdout=subprocess.DEVNULL, stderr=open(root / "server.log", "w"), cwd=root)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while True:
        try:
            urllib.request.urlopen(f"{url}/api/status", timeout=2)
            break
        except OSError:
            if time.time() > deadline or server.poll() is not None:
                server.kill()
                pytest.fail("JupyterLab did not start:\n" + (root / "server.log").read_text()[-3000:])
            time.sleep(0.5)
    yield url, root
    server.terminate()
    server.wait(timeout=20)


def test_panel_is_live_while_the_cell_runs_and_final_after(lab, tmp_path):
    from playwright.sync_api import sync_playwright

    url, root = lab
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        page = browser.new_page(viewport={"width": 1200, "height": 1100})
        page.goto(f"{url}/lab/tree/panel.ipynb")
        page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
        page.wait_for_function("window.jupyterapp && window.jupyterapp.serviceManager", timeout=60_000)
        accept = page.locator(".jp-Dialog .jp-mod-accept")
        if accept.count():
            accept.first.click()
        page.wait_for_selector(".jp-Notebook-ExecutionIndicator, .jp-KernelStatus", timeout=60_000)
        time.sleep(2)  # let the kernel connect
        started = time.time()
        # Not awaited: the command's promise resolves only when every cell has run.
        page.evaluate("() => { window.jupyterapp.commands.execute('notebook:run-all-cells'); }")

        page.wait_for_selector(".kmem-panel", timeout=60_000)
        page.wait_for_selector(".kmem-curves polyline", state="attached", timeout=30_000)
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
        image_ok = page.evaluate(
            "() => { const i = document.querySelector('.kmem-panel img');"
            " return !!i && i.naturalWidth > 100; }")
        browser.close()
    print(f"first paint {first_paint_s:.2f} s after run-all; {len(seen)} distinct live curves")
    assert len(seen) >= 3, f"the curve changed only {len(seen) - 1} times while the cell ran"
    assert "peak" in text and "left behind" in text
    assert "host RSS" in text
    assert image_ok, "the final view shows the plot"
    assert shot.stat().st_size > 10_000
