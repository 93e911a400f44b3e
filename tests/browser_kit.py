"""A Jupyter server (JupyterLab or Notebook 7) on localhost for the browser tests, with its
settings, config and data dirs in the test's own folder, and the Chromium they drive."""

from __future__ import annotations

import importlib.util
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

CHROMIUM = Path(os.environ.get("ONNXCOMPRESS_CHROMIUM", "/usr/bin/chromium"))
# as the machine's notes say: without these, Chromium keeps calling hosts that are closed here
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SETTINGS = (
    # render every cell, in view or not; start the notebook's kernel without asking
    ("notebook-extension/tracker", '{"windowingMode": "none", "autoStartDefaultKernel": true}'),
    ("apputils-extension/notification", '{"fetchNews": "false", "checkForUpdates": false}'),
)


def require(modules: dict[str, str]) -> None:
    """Skips (fails under .ci/run, ONNXCOMPRESS_BROWSER=1) unless these modules (name: the
    extra that installs it) and Chromium are here."""
    missing = next((f"{m} is not installed: pip install -e '.[{extra}]'" for m, extra in modules.items()
                    if importlib.util.find_spec(m) is None), None)  # fmt: skip
    if missing is None and not CHROMIUM.is_file():
        missing = f"no Chromium at {CHROMIUM}: apt-get install chromium"
    if missing:
        if os.environ.get("ONNXCOMPRESS_BROWSER") == "1":
            pytest.fail(f"the browser test must run here but {missing}")
        pytest.skip(missing)


@contextmanager
def serve(root: Path, app: str = "jupyterlab", env: dict[str, str] | None = None) -> Iterator[tuple[str, str]]:
    """(base URL, token) of `python -m <app>` serving `root` until the block ends."""
    settings = root / "settings" / "@jupyterlab"
    for plugin, values in SETTINGS:
        (settings / plugin).parent.mkdir(parents=True, exist_ok=True)
        (settings / f"{plugin}.jupyterlab-settings").write_text(values)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    token = secrets.token_hex(16)
    log_path = root / f"{app}.log"
    log = open(log_path, "w")  # noqa: SIM115 - closed below
    server = subprocess.Popen(
        [
            sys.executable, "-m", app, "--no-browser", "--allow-root", f"--port={port}", "--ip=127.0.0.1",
            f"--ServerApp.token={token}", f"--ServerApp.root_dir={root}", "--LabApp.news_url=",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=root,
        env={**os.environ, "JUPYTER_CONFIG_DIR": str(root / "config"), "JUPYTERLAB_SETTINGS_DIR": str(root / "settings"),
             **(env or {})},
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2).read()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"{app} did not start: {log_path.read_text()[-2000:]}")
                time.sleep(0.3)
        yield base, token
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def in_chromium(tmp_path: Path, steps: Callable) -> None:
    """Runs `steps(page)` in a fresh headless Chromium page (1400 x 1000, actions waiting up to
    90 s); on a failure the
    page's screenshot is saved in `tmp_path` and named in the output."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(90_000)  # a kernel starts, then cells run
            try:
                steps(page)
            except Exception:
                page.screenshot(path=str(tmp_path / "failure.png"), full_page=True)
                print(f"screenshot of the failure: {tmp_path / 'failure.png'}")
                raise
        finally:
            browser.close()
