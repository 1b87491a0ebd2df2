"""End to end: the graph explorer in a real JupyterLab, driven by Chromium through Playwright.

Needs Debian's ``chromium`` (``apt-get install chromium``) and ``pip install playwright``; skipped
without them. Never runs ``playwright install``: the system Chromium is launched directly, and
nothing but 127.0.0.1 is contacted.
"""

import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid

import pytest

pytestmark = pytest.mark.slow

ROOT = pathlib.Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync"]

PROGRAM = """\
import torch
torch.manual_seed(0)
model = torch.nn.Linear(4, 2)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
x = torch.randn(8, 4)
for i in range(10):
    out = model(x)
    loss = out.abs().mean() if i == 6 else out.pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    last = loss.item()
"""
CELLS = [
    f'PROGRAM = """\\\n{PROGRAM}"""\n'
    "import terra_nb\n"
    "from terra_nb.widget import GraphExplorer\n"
    "s = terra_nb.Session()\n"
    "s.run_cell(PROGRAM, {'__name__': '__main__'})\n"
    "w = GraphExplorer.from_session(s)\n"
    "w",
    "print('selected:', w.selected)",
]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _write_notebook(path: pathlib.Path) -> None:
    cells = [{"cell_type": "code", "execution_count": None, "id": f"cell{i}", "metadata": {}, "outputs": [],
              "source": source} for i, source in enumerate(CELLS)]
    notebook = {"cells": cells, "nbformat": 4, "nbformat_minor": 5, "metadata": {
        "kernelspec": {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}}}
    path.write_text(json.dumps(notebook), encoding="utf-8")


@pytest.fixture
def jupyterlab(tmp_path):
    """A JupyterLab server on 127.0.0.1 with its own config, settings and workspaces; yields (url, token)."""
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} not found: apt-get install chromium")
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed: pip install playwright")
    pytest.importorskip("jupyterlab", reason="jupyterlab is not installed")
    root, config = tmp_path / "root", tmp_path / "config"
    (config / "labconfig").mkdir(parents=True)
    root.mkdir()
    # No news feed, update check or PyPI extension manager: they would reach the internet, and the
    # announcements toast would cover the page.
    (config / "labconfig" / "page_config.json").write_text(
        json.dumps({"disabledExtensions": {"@jupyterlab/apputils-extension:announcements": True}}))
    (config / "jupyter_lab_config.json").write_text(json.dumps({"LabApp": {
        "news_url": None, "extension_manager": "readonly",
        "check_for_updates_class": "jupyterlab.handlers.announcements.NeverCheckForUpdate"}}))
    _write_notebook(root / "explorer.ipynb")
    port, token = _free_port(), uuid.uuid4().hex
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(config), "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
           "JUPYTERLAB_SETTINGS_DIR": str(tmp_path / "settings"),
           "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "workspaces"),
           # The kernel inherits this: it imports the terra_nb of this checkout, installed or not.
           "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
           "PATH": os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])}
    log = open(tmp_path / "jupyterlab.log", "wb")  # noqa: SIM115 (closed below, after the server)
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1", f"--port={port}",
         "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
         "--allow-root"],
        env=env, stdout=log, stderr=subprocess.STDOUT, cwd=root)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"JupyterLab did not start:\n{(tmp_path / 'jupyterlab.log').read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=5):
                    break
            except OSError:
                time.sleep(0.5)
        yield url, token
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=10)
        log.close()
        shutil.rmtree(tmp_path / "runtime", ignore_errors=True)


def test_explorer_renders_and_clicks_in_jupyterlab(jupyterlab, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    url, token = jupyterlab
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=60_000)
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 1100})
            page.set_default_timeout(60_000)
            page.goto(f"{url}/lab/tree/explorer.ipynb?token={token}")
            page.wait_for_selector(".jp-NotebookPanel .jp-Cell .cm-content")
            page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=90_000)

            page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
            page.get_by_role("menuitem", name="Run All Cells", exact=True).click()

            explorer = page.locator(".tn-explorer")
            explorer.locator("svg.tn-svg").wait_for(timeout=180_000)  # kernel start + torch import + tracing
            nodes = explorer.locator("g.tn-node")
            assert nodes.count() >= 10, "the training loop's ops are drawn"
            assert explorer.locator(".tn-block").count() >= 3, "blocks are outlined"
            assert explorer.locator(".tn-strip rect").count() == 10, "one bar per iteration"
            expect(explorer.locator(".tn-iterations td", has_text="fallback").first).to_be_attached()

            flagged = explorer.locator("g.tn-node.tn-flagged")
            assert flagged.count() >= 1
            abs_node = flagged.filter(has=page.locator("text.tn-label", has_text="abs")).first
            expect(abs_node.locator(".tn-badge")).to_contain_text("1 fallback")
            node_id = abs_node.get_attribute("data-node-id")
            abs_node.scroll_into_view_if_needed()
            abs_node.click()
            details = explorer.locator(".tn-details")
            expect(details.locator(".tn-source")).to_have_text(
                "loss = out.abs().mean() if i == 6 else out.pow(2).mean()")
            expect(details).to_contain_text("an operation the trace has not seen here")
            expect(abs_node).to_have_class("tn-node tn-kind-op tn-flagged tn-selected")

            # The event list highlights every node of the line it names.
            explorer.locator(".tn-event[data-kind='fallback']", has_text=":8").first.click()
            assert explorer.locator("g.tn-node.tn-match").count() >= 2, "abs and mean at line 8"

            explorer.screenshot(path=str(tmp_path / "graph_explorer.png"))
            page.screenshot(path=str(tmp_path / "jupyterlab.png"))
            print(f"screenshots in {tmp_path}")

            # `selected` went back to the kernel: run the second cell, which prints it.
            second = page.locator(".jp-Notebook .jp-Cell").nth(1)
            second.locator(".cm-content").click()
            page.keyboard.press("Shift+Enter")
            expect(second.locator(".jp-OutputArea-output")).to_contain_text(f"selected: {node_id}", timeout=30_000)
        finally:
            browser.close()
