"""What a model costs a browser tab: the RSS of Chromium's renderer process once onnxruntime-web
(wasm, one thread) has made the session, the most over the 4 s after (sampled every 0.1 s), and
at their end. In between, V8 compiles the kernels that ran hot while the decoders folded with
its optimizing tier on background threads, and gives that memory back after 1-2 s.

The page, onnxruntime-web's files and the model are served from a temporary local server, and
each measure starts a fresh headless Chromium (Debian's, driven by playwright: the `browser`
extra). Used by bench_load.py; `available()` says why it cannot run here.
"""

from __future__ import annotations

import functools
import http.server
import importlib.util
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

CHROMIUM = Path(os.environ.get("ONNXCOMPRESS_CHROMIUM", "/usr/bin/chromium"))
# the same as the browser tests': without these, Chromium keeps calling hosts that are closed here
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]  # fmt: skip
# onnxruntime-web's loader and the wasm builds it picks from (the jsep one in a browser)
DIST_FILES = ["ort.min.js", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm",
              "ort-wasm-simd-threaded.jsep.mjs", "ort-wasm-simd-threaded.jsep.wasm"]  # fmt: skip
SETTLE_S = 4.0
PAGE = f"""<html><body><script src="ort.min.js"></script><script>
ort.env.wasm.numThreads = 1;
(async () => {{
  const bytes = new Uint8Array(await (await fetch("model.onnx")).arrayBuffer());
  await ort.InferenceSession.create(bytes, {{ executionProviders: ["wasm"] }});
  document.title = "made";
  await new Promise((resolve) => setTimeout(resolve, {SETTLE_S * 1000:.0f}));
  document.title = "done";
}})().catch((e) => {{ document.title = "error: " + e; }});
</script></body></html>
"""


def available() -> str | None:
    """None when the browser column can be measured, else why not."""
    if importlib.util.find_spec("playwright") is None:
        return "playwright is not installed (pip install -e '.[browser]')"
    if not CHROMIUM.is_file():
        return f"no Chromium at {CHROMIUM} (apt-get install chromium)"
    return None


def renderer_rss_mib(model: Path, dist: Path, repeats: int = 3) -> tuple[float, float]:
    """Medians over fresh browsers of the renderer's most RSS once the session is made and of
    its RSS 4 s later, MiB."""
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for name in DIST_FILES:  # linked, not copied: 45 MB of wasm per measure otherwise
            (root / name).symlink_to((dist / name).resolve())
        (root / "model.onnx").symlink_to(Path(model).resolve())
        (root / "page.html").write_text(PAGE)
        with _serve(root) as url, sync_playwright() as pw:
            seen = [_one_tab(pw, url) for _ in range(repeats)]
    return float(np.median([most for most, _ in seen])), float(np.median([last for _, last in seen]))


def _one_tab(pw, url: str) -> tuple[float, float]:
    browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
    try:
        page = browser.new_page()
        page.goto(url)
        page.wait_for_function("document.title.length > 0", timeout=300_000)
        most = last = 0
        while page.title() == "made":
            last = _renderers_rss()
            most = max(most, last)
            time.sleep(0.1)
        if page.title() != "done":
            raise RuntimeError(f"onnxruntime-web in Chromium: {page.title()}")
        return most / 2**20, last / 2**20
    finally:
        browser.close()


def _renderers_rss() -> int:
    """The largest RSS among this process's descendants that are Chromium renderers, bytes."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            pid, ppid = int(stat.parent.name), int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(pid)
    most, todo = 0, list(children.get(os.getpid(), []))
    while todo:
        pid = todo.pop()
        todo += children.get(pid, [])
        try:
            if b"--type=renderer" in Path(f"/proc/{pid}/cmdline").read_bytes():
                rss_pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
                most = max(most, rss_pages * os.sysconf("SC_PAGE_SIZE"))
        except (OSError, ValueError):
            continue
    return most


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@contextmanager
def _serve(root: Path) -> Iterator[str]:
    """A local HTTP server for `root` while the block runs; yields the page's URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/page.html"
    finally:
        server.shutdown()
        server.server_close()
