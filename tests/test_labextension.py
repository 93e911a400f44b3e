"""The JupyterLab extension (labextension/): its committed build matches its sources, and in a
real JupyterLab (headless Debian Chromium, Playwright) a right-click on an .onnx file, or the
command palette, opens a notebook beside the model whose explorer has already run and shows
the model's tensor table. Screenshots land in the test's folder.

The browser part needs the `browser` extra and /usr/bin/chromium, as tests/test_browser.py does."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
from browser_kit import in_chromium, require, serve

ROOT = Path(__file__).resolve().parent.parent
BUILT = ROOT / "onnxcompress" / "labextension"
MODEL = ROOT / "onnxcompress" / "examples" / "digits_mlp.onnx"


def _build_script():
    spec = importlib.util.spec_from_file_location("labextension_build", ROOT / "labextension" / "build.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_committed_build_is_of_these_sources():
    """A change to labextension/ must be rebuilt (python labextension/build.py) and committed."""
    assert (BUILT / "source.sha256").read_text().strip() == _build_script().source_hash()
    built = json.loads((BUILT / "package.json").read_text())
    load = built["jupyterlab"]["_build"]["load"]
    assert (BUILT / load).is_file() and load.startswith("static/remoteEntry.")
    source = json.loads((ROOT / "labextension" / "package.json").read_text())
    assert built["name"] == source["name"] == "onnxcompress-jupyter"
    assert all(spec["requiredVersion"].startswith("^4.") or name.endswith(("coreutils", "services"))
               for name, spec in source["jupyterlab"]["sharedPackages"].items())  # fmt: skip


def _served(tmp_path_factory, app: str, module: str):
    """`app` serving a folder that holds the example model in models/, with the extension found
    where an installed wheel puts it (share/jupyter/labextensions, here through JUPYTER_PATH)."""
    require({"playwright": "browser", module: "browser"})
    root = tmp_path_factory.mktemp(app)
    (root / "models").mkdir()
    shutil.copy(MODEL, root / "models" / MODEL.name)
    data = root / "data" / "labextensions"
    data.mkdir(parents=True)
    (data / "onnxcompress-jupyter").symlink_to(BUILT, target_is_directory=True)
    with serve(root, app=app, env={"JUPYTER_PATH": str(root / "data")}) as (base, token):
        yield base, token, root


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    yield from _served(tmp_path_factory, "jupyterlab", "jupyterlab")


@pytest.fixture(scope="module")
def notebook7(tmp_path_factory):
    yield from _served(tmp_path_factory, "notebook", "notebook")


def _explorer_has_run(page, notebook: str, shot: Path) -> None:
    """The notebook `notebook` is open, and its explorer shows the model's tensors."""
    from playwright.sync_api import expect

    expect.set_options(timeout=90_000)  # the kernel starts, then the explorer compresses at 8 bits
    expect(page.locator(".lm-TabBar-tab.lm-mod-current", has_text=notebook)).to_be_visible()
    explorer = page.locator(".jp-NotebookPanel:visible .jp-OutputArea-output", has=page.locator("button", has_text="Compress"))
    expect(explorer).to_contain_text("smaller by")
    explorer.locator(".lm-TabBar-tab", has_text="Tensors").click()
    for tensor in ("fc1.weight", "fc2.weight"):
        expect(explorer.locator("td", has_text=tensor)).to_be_visible()
    expect(explorer).to_contain_text("8 tensor")
    explorer.screenshot(path=str(shot))


def test_right_click_on_a_model_opens_the_explorer_already_run(lab, tmp_path):
    base, token, root = lab

    def steps(page):
        page.goto(f"{base}/lab/tree/models?token={token}")
        item = page.locator(".jp-DirListing-item", has_text=MODEL.name)
        item.click(button="right")
        page.locator(".lm-Menu-item", has_text="Compress with onnxcompress…").click()
        _explorer_has_run(page, "digits_mlp.compress.ipynb", tmp_path / "right_click.png")

    in_chromium(tmp_path, steps)
    assert (root / "models" / "digits_mlp.compress.ipynb").is_file()  # beside the model


def test_the_command_palette_asks_for_the_model_and_never_overwrites(lab, tmp_path):
    base, token, root = lab

    def steps(page):
        page.goto(f"{base}/lab/workspaces/palette/tree/models?token={token}&reset")  # not the other test's tabs
        page.locator(".jp-DirListing-item", has_text=MODEL.name).wait_for()
        page.keyboard.press("Control+Shift+C")
        page.locator(".lm-CommandPalette-input").fill("Compress with onnxcompress")
        page.keyboard.press("Enter")
        dialog = page.locator(".jp-Dialog", has_text="Compress with onnxcompress")
        dialog.locator("select").select_option(f"models/{MODEL.name}")
        dialog.locator("button", has_text="Ok").click()
        _explorer_has_run(page, "digits_mlp.compress-1.ipynb", tmp_path / "palette.png")

    mine = root / "models" / "digits_mlp.compress.ipynb"
    mine.write_text(json.dumps({"cells": [], "metadata": {"mine": True}, "nbformat": 4, "nbformat_minor": 5}))
    before = mine.read_text()  # one there already: kept as it is
    in_chromium(tmp_path, steps)
    assert mine.read_text() == before
    assert (root / "models" / "digits_mlp.compress-1.ipynb").is_file()


def test_in_notebook_7_the_notebook_opens_in_its_own_tab_and_runs(notebook7, tmp_path):
    """Notebook 7 opens a notebook in a new browser tab: the mark left in localStorage is what
    makes that tab run it."""
    from playwright.sync_api import expect

    base, token, root = notebook7

    def steps(page):
        page.goto(f"{base}/tree/models?token={token}")
        page.locator(".jp-DirListing-item", has_text=MODEL.name).click(button="right")
        with page.context.expect_page() as opened:
            page.locator(".lm-Menu-item", has_text="Compress with onnxcompress…").click()
        notebook = opened.value
        notebook.set_default_timeout(90_000)
        expect.set_options(timeout=90_000)
        explorer = notebook.locator(".jp-OutputArea-output", has=notebook.locator("button", has_text="Compress"))
        expect(explorer).to_contain_text("smaller by")
        explorer.locator(".lm-TabBar-tab", has_text="Tensors").click()
        expect(explorer.locator("td", has_text="fc2.weight")).to_be_visible()
        explorer.screenshot(path=str(tmp_path / "notebook7.png"))

    in_chromium(tmp_path, steps)
    assert (root / "models" / "digits_mlp.compress.ipynb").is_file()
