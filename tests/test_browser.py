"""The quickstart notebook in a real browser: JupyterLab served on localhost, Debian's headless
Chromium driven by Playwright (never a downloaded browser). It runs every cell, clicks Compress
in the explorer and reads what the page shows; a screenshot lands in the test's folder.

Needs the `browser` extra (jupyterlab, playwright) and /usr/bin/chromium (apt-get install
chromium). Without them the test is skipped with the reason, except under .ci/run, which
installs them and sets ONNXCOMPRESS_BROWSER=1 so that a missing piece fails instead."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from browser_kit import in_chromium, require, serve

pytestmark = [pytest.mark.browser, pytest.mark.slow]

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "01_quickstart.ipynb"


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    require({"playwright": "browser", "jupyterlab": "browser"})
    root = tmp_path_factory.mktemp("lab")
    shutil.copy(NOTEBOOK, root / NOTEBOOK.name)  # the run saves nothing into the checkout
    with serve(root) as (base, token):
        yield base, token, root


def test_quickstart_runs_in_jupyterlab_and_the_explorer_compresses(lab, tmp_path):
    base, token, _ = lab
    in_chromium(tmp_path, lambda page: _run_quickstart(page, base, token, tmp_path))


def _run_quickstart(page, base: str, token: str, tmp_path: Path) -> None:
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import expect

    page.set_default_timeout(90_000)
    expect.set_options(timeout=90_000)  # the kernel starts, then runs every cell
    page.goto(f"{base}/lab/tree/{NOTEBOOK.name}?token={token}")
    page.locator(".jp-Notebook").wait_for()
    # when the kernel specs arrive after the notebook, JupyterLab may still ask which kernel
    ask = page.locator(".jp-Dialog", has_text="Select Kernel")
    try:
        ask.wait_for(timeout=3_000)
        ask.locator("button", has_text="Select").last.click()
    except PlaywrightTimeout:
        pass
    expect(page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']").first).to_be_attached()
    page.locator(".lm-MenuBar-item", has_text="Run").first.click()
    page.locator(".lm-Menu-item[data-command='runmenu:run-all']").click()

    notebook = page.locator(".jp-Notebook")
    expect(notebook).to_contain_text("accuracy 97.78%")  # the first cell's output
    expect(notebook).to_contain_text("images whose predicted digit changed")  # the save-and-run cell
    compare_table = page.locator(".widget-html-content table", has_text="probabilities").first
    expect(compare_table).to_contain_text("top-1 agreement")

    explorer = page.locator(".jp-OutputArea-output", has=page.locator("button", has_text="Compress")).last
    explorer.scroll_into_view_if_needed()
    explorer.locator(".widget-slider", has_text="bits").locator(".widget-readout").fill("4")
    explorer.locator(".widget-slider", has_text="bits").locator(".widget-readout").press("Enter")
    explorer.locator("button", has_text="Compress").click()
    expect(explorer).to_contain_text("done in", timeout=60_000)
    expect(explorer).to_contain_text("smaller by")
    ratio = explorer.locator("tr", has_text="smaller by").locator("td").nth(1).inner_text()
    assert 7.0 < float(ratio.rstrip("x")) < 8.5  # 4 bits: about 7.8x

    explorer.locator(".lm-TabBar-tab", has_text="Tensors").click()
    expect(explorer).to_contain_text("4 tensor")
    expect(explorer.locator("td", has_text="fc2.weight")).to_be_visible()
    explorer.locator(".lm-TabBar-tab", has_text="Weight error").click()
    chart = explorer.locator("img.widget-image").first
    expect(chart).to_be_visible()
    assert chart.evaluate("img => img.naturalWidth") > 300
    explorer.locator(".lm-TabBar-tab", has_text="Outputs").click()
    expect(explorer).to_contain_text("relative L2")
    expect(explorer.locator("td", has_text="classes")).to_be_visible()  # the output's kind, from its Softmax
    outputs_chart = explorer.locator("img.widget-image:visible").last  # the Outputs tab's, not a hidden tab's
    expect(outputs_chart).to_be_visible()
    # the kernel draws the chart after the table shows: wait until the picture has arrived
    page.wait_for_function("img => img.complete && img.naturalWidth > 300", arg=outputs_chart.element_handle())
    shot = tmp_path / "quickstart_explorer.png"
    explorer.screenshot(path=str(shot))
    assert shot.stat().st_size > 10_000
    print(f"screenshot: {shot}")
