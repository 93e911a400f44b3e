"""Notebook widgets (the `notebook` extra): `CompressionExplorer` to try settings on a model and
see what they do, `compare_widget` for two models that already exist.

Every view is a plain ipywidgets value (HTML text, PNG images), so the widgets render in
JupyterLab, VS Code and nbconvert alike, and tests can read what they show without a browser.
"""

from __future__ import annotations

import html
import os
import time
from pathlib import Path
from typing import Any

import ipywidgets as w
import numpy as np
import onnx

from .api import compress, run_models
from .errors import CompressError, OnnxCompressError
from .io.load import load_model
from .io.save import check_output_path, save_model
from .io.select import select_weights
from .options import METHODS, METRIC_NAMES, SelectOptions
from .pipeline.report import Report, human, output_rows
from .pipeline.stages import ModelSource, calibration_feeds
from .plots import outputs_figure, png, weight_error_figure, weight_histogram_figure
from .runtime.verify import Comparison, session

Feeds = str | os.PathLike | dict | list[dict] | None

_TABLE_CSS = "border-collapse:collapse;font-family:var(--jp-code-font-family,monospace);font-size:12px;margin:4px 0 8px 0"
_CELL_CSS = "padding:2px 10px;border-bottom:1px solid #ddd;white-space:nowrap"


def html_table(header: list[str] | None, rows: list[list[str]], numeric_from: int = 1) -> str:
    """A small HTML table (no header row when `header` is None); columns from `numeric_from`
    on are right-aligned."""

    def cell(tag: str, text: str, j: int) -> str:
        align = "right" if j >= numeric_from else "left"
        return f'<{tag} style="{_CELL_CSS};text-align:{align}">{html.escape(str(text))}</{tag}>'

    head = "<thead><tr>" + "".join(cell("th", h, j) for j, h in enumerate(header)) + "</tr></thead>" if header else ""
    body = "".join("<tr>" + "".join(cell("td", c, j) for j, c in enumerate(row)) + "</tr>" for row in rows)
    return f'<table style="{_TABLE_CSS}">{head}<tbody>{body}</tbody></table>'


def _choose(dropdown: w.Dropdown, options: list[str], keep: str | None) -> bool:
    """New options for a dropdown, keeping its choice where it still exists. True when the
    choice changed, so that its observers have drawn already."""
    before = dropdown.value
    dropdown.options = options
    dropdown.value = keep if keep in options else (options[0] if options else None)
    return dropdown.value != before


def _message(text: str, kind: str = "info") -> str:
    colour = {"info": "#333", "ok": "#2a7a2a", "error": "#b00020"}[kind]
    return f'<span style="color:{colour}">{html.escape(text)}</span>'


class OutputsView(w.VBox):
    """Original against compressed outputs: the table of differences per output and, for the
    chosen output, a scatter of the values and a histogram of their differences."""

    def __init__(self) -> None:
        self.table = w.HTML()
        self.choice = w.Dropdown(description="output", options=[], layout=w.Layout(width="360px"))
        self.chart = w.Image(format="png")
        self.comparison: Comparison | None = None
        self.figure: Any = None  # the matplotlib Figure behind `chart`
        self.choice.observe(lambda _: self._draw(), names="value")
        super().__init__([self.table, self.choice, self.chart])

    def show(self, comparison: Comparison) -> None:
        self.comparison = comparison
        self.table.value = html_table(*output_rows(comparison.diffs), numeric_from=2)  # name and kind are text
        names = list(comparison.names)
        if not _choose(self.choice, names, self.choice.value):
            self._draw()

    def _draw(self) -> None:
        if self.comparison is None or self.choice.value is None:
            return
        original, compressed = self.comparison.output(self.choice.value)
        self.figure = outputs_figure(original, compressed, self.choice.value)
        self.chart.value = png(self.figure)


class CompressionExplorer(w.VBox):
    """Try compression settings on a model: pick a method, bits, granularity, rank or energy,
    or a max error for the planner; press Compress; read the summary, the per-tensor table,
    the weight error per tensor, a tensor's histogram with its codebook, and the outputs of
    both models side by side; Save the result.

    `model`: a path or a ModelProto (never modified). `inputs`: an .npz path, one feed or a
    list of feeds; they calibrate the compression and are what both models are compared on
    (without them, inputs are synthesized from the model's input types). `options`: fixed
    keyword arguments for `compress()` the controls do not set, such as min_elements=1024.
    """

    def __init__(self, model: ModelSource, inputs: Feeds = None, **options: Any) -> None:
        loaded = load_model(model)
        self._source: ModelSource = loaded.path if loaded.path is not None else loaded.model
        self._input_path = loaded.path
        self._original = loaded.model
        self._file_bytes = loaded.file_bytes
        self._calibration = calibration_feeds(inputs) if inputs is not None else None
        self._fixed = options
        session(loaded.path if loaded.path is not None else loaded.model, "the model")  # fails here, not at the first click
        self._arrays: dict[str, np.ndarray] | None = None  # the original weights, read on first use
        self.result: Any = None  # the latest CompressResult
        self.comparison: Comparison | None = None
        self.figures: dict[str, Any] = {}  # the matplotlib Figures behind the charts

        def narrow() -> w.Layout:  # one Layout per control: hiding one must not hide the others
            return w.Layout(width="300px")

        self.method = w.Dropdown(options=list(METHODS), value="codebook", description="method", layout=narrow())
        self.bits = w.IntSlider(value=8, min=1, max=8, description="bits", layout=narrow())
        self.granularity = w.Dropdown(
            options=["tensor", "channel", "group"], value="tensor", description="granularity", layout=narrow()
        )
        self.group_size = w.BoundedIntText(value=64, min=2, max=1 << 24, description="group size", layout=narrow())
        self.rank_by = w.ToggleButtons(options=["energy", "rank"], value="energy", description="rank by")
        self.rank_by.style.button_width = "70px"
        self.energy = w.FloatSlider(
            value=0.99, min=0.5, max=1.0, step=0.001, readout_format=".3f", description="energy", layout=narrow()
        )
        self.rank = w.BoundedIntText(value=32, min=1, max=1 << 20, description="rank", layout=narrow())
        self.use_target = w.Checkbox(
            value=False, description="plan for a max error", tooltip="the planner picks each tensor's storage", indent=False
        )
        self.max_error = w.BoundedFloatText(value=0.01, min=0.0, max=1e9, step=0.001, description="max error", layout=narrow())
        self.metric = w.Dropdown(options=list(METRIC_NAMES), value="task", description="metric", layout=narrow())
        self.max_ram = w.Text(
            value="",
            placeholder="no bound",
            description="max RAM",
            tooltip="MB, or 30% of the original's weights",
            layout=narrow(),
        )
        self.compress_button = w.Button(description="Compress", button_style="primary", icon="compress")
        self.progress = w.IntProgress(value=0, min=0, max=1, description="", layout=w.Layout(width="300px"))
        self.status = w.HTML(_message("Choose settings and press Compress."))

        self.summary = w.HTML()
        self.tensor_table = w.HTML()
        self.error_chart = w.Image(format="png")
        self.tensor_choice = w.Dropdown(description="tensor", options=[], layout=w.Layout(width="420px"))
        self.histogram = w.Image(format="png")
        self.outputs = OutputsView()
        self.save_path = w.Text(value=self._default_output(), description="save as", layout=w.Layout(width="420px"))
        self.overwrite = w.Checkbox(value=False, description="replace an existing file", indent=False)
        self.save_button = w.Button(description="Save", icon="save", disabled=True)
        self.save_status = w.HTML()

        self.tabs = w.Tab(
            [
                self.summary,
                self.tensor_table,
                self.error_chart,
                w.VBox([self.tensor_choice, self.histogram]),
                self.outputs,
                w.VBox([w.HBox([self.save_path, self.save_button]), self.overwrite, self.save_status]),
            ]
        )
        for i, title in enumerate(("Summary", "Tensors", "Weight error", "Histogram", "Outputs", "Save")):
            self.tabs.set_title(i, title)

        self.compress_button.on_click(lambda _: self.run())
        self.save_button.on_click(lambda _: self.save())
        self.tensor_choice.observe(lambda _: self._draw_histogram(), names="value")
        for control in (self.method, self.granularity, self.rank_by, self.use_target):
            control.observe(lambda _: self._update_controls(), names="value")
        self._update_controls()

        codebook_box = w.VBox([self.bits, self.granularity, self.group_size])
        rank_box = w.VBox([self.rank_by, self.energy, self.rank])
        target_box = w.VBox([self.use_target, self.max_error, self.metric, self.max_ram])
        controls = w.HBox([w.VBox([self.method, codebook_box]), rank_box, target_box])
        super().__init__([controls, w.HBox([self.compress_button, self.progress, self.status]), self.tabs])

    # -- settings -------------------------------------------------------------------------------

    def options(self) -> dict[str, Any]:
        """The keyword arguments for compress() that the controls say."""
        if self.use_target.value:
            ram = {"max_ram": self.max_ram.value.strip()} if self.max_ram.value.strip() else {}
            return {"max_error": float(self.max_error.value), "metric": self.metric.value, **ram, **self._fixed}
        method = self.method.value
        opts: dict[str, Any] = {"method": method}
        if method != "lowrank":
            granularity = self.granularity.value
            opts["bits"] = int(self.bits.value)
            opts["granularity"] = f"group:{self.group_size.value}" if granularity == "group" else granularity
        if method in ("lowrank", "lowrank+kmeans"):
            if self.rank_by.value == "rank":
                opts["rank"] = int(self.rank.value)
            else:
                opts["energy"] = float(self.energy.value)
        return {**opts, **self._fixed}

    def _update_controls(self) -> None:
        planned = self.use_target.value
        method = self.method.value
        factored = method in ("lowrank", "lowrank+kmeans")
        self.method.disabled = planned
        for c in (self.bits, self.granularity, self.group_size):
            c.disabled = planned or method == "lowrank"
        for c in (self.rank_by, self.energy, self.rank):
            c.disabled = planned or not factored
        self.max_error.disabled = self.metric.disabled = self.max_ram.disabled = not planned
        self.group_size.layout.display = None if self.granularity.value == "group" else "none"
        self.energy.layout.display = None if self.rank_by.value == "energy" else "none"
        self.rank.layout.display = None if self.rank_by.value == "rank" else "none"

    def _default_output(self) -> str:
        if self._input_path is None:
            return "model.compressed.onnx"
        return str(Path.cwd() / f"{self._input_path.stem}.compressed.onnx")

    # -- compress -------------------------------------------------------------------------------

    def run(self) -> None:
        """What the Compress button does: compress with the current settings, then show it all."""
        self.compress_button.disabled = True
        self.save_button.disabled = True
        self.save_status.value = ""
        self.progress.value, self.progress.bar_style = 0, ""
        self.status.value = _message("compressing ...")
        started = time.perf_counter()
        try:
            # verified always: the verification's outputs are what the Outputs tab shows
            options = {**self.options(), "verify": True}
            result = compress(
                self._source, calibration=self._calibration, progress=self._on_progress, keep_outputs=True, **options
            )
            self.comparison = result.comparison
        except OnnxCompressError as e:
            self.progress.bar_style = "danger"
            self.status.value = _message(str(e), "error")
            return
        finally:
            self.compress_button.disabled = False
        self.result = result
        self.progress.value, self.progress.bar_style, self.progress.description = self.progress.max, "success", ""
        self.status.value = _message(f"done in {time.perf_counter() - started:.1f} s", "ok")
        self._show(result.report)
        self.save_button.disabled = False

    def _on_progress(self, stage: str, done: int, total: int) -> None:
        self.progress.max = max(total, 1)
        self.progress.value = done
        self.progress.description = stage

    def _show(self, report: Report) -> None:
        self.summary.value = _summary_html(report, self.comparison)
        header, rows = report.tensor_rows()
        self.tensor_table.value = html_table(header, rows, numeric_from=5) + (
            f"<b>Left alone ({len(report.skipped)})</b>" + html_table(*report.skipped_rows(), numeric_from=9)
            if report.skipped
            else ""
        )
        self.figures["weight error"] = weight_error_figure(report)
        self.error_chart.value = png(self.figures["weight error"])
        names = [r.name for r in sorted(report.tensors, key=lambda r: -r.bytes_before)]
        if not _choose(self.tensor_choice, names, self.tensor_choice.value):
            self._draw_histogram()
        assert self.comparison is not None
        self.outputs.show(self.comparison)

    def _draw_histogram(self) -> None:
        name = self.tensor_choice.value
        if self.result is None or name is None:
            return
        if self._arrays is None:
            sites = select_weights(self._original, SelectOptions(min_elements=1)).weights
            self._arrays = {s.name: s.array for s in sites}
        row = next(r for r in self.result.report.tensors if r.name == name)
        centroids = self.result.centroids.get(name)
        note = f"{row.describe()}, weight error {row.rel_error:.2e}"
        if centroids is None:
            note += " (factored: no codebook of its own)" if row.rank is not None else ""
        self.figures["histogram"] = weight_histogram_figure(self._arrays[name], centroids, name, note)
        self.histogram.value = png(self.figures["histogram"])

    # -- save -----------------------------------------------------------------------------------

    def save(self) -> Path | None:
        """What the Save button does: write the latest result atomically to the path given."""
        if self.result is None:
            self.save_status.value = _message("nothing to save yet: press Compress first", "error")
            return None
        path = Path(self.save_path.value).expanduser()
        try:
            check_output_path(path, self._input_path, bool(self.overwrite.value))
            size = save_model(self.result.model, path)
        except CompressError as e:
            self.save_status.value = _message(str(e), "error")
            return None
        self.save_status.value = _message(f"wrote {path} ({human(size)})", "ok")
        return path


def _summary_html(report: Report, comparison: Comparison | None) -> str:
    rows = [
        ["original", human(report.file_bytes_before)],
        ["compressed", human(report.file_bytes_after)],
        ["smaller by", f"{report.ratio:.2f}x"],
        ["tensors compressed", str(len(report.tensors))],
        ["left alone", str(len(report.skipped))],
        ["time", f"{report.seconds:.1f} s"],
    ]
    if report.plan:
        rows.insert(3, ["plan", f"{report.plan['target']}: measured {report.plan['measured']:.3g}"])
    if report.tensors:
        held = sum(r.ram_after for r in report.tensors) + report.file_bytes_before - sum(r.bytes_before for r in report.tensors)
        rows.insert(3, ["weights in RAM once loaded", f"about {human(held)} (original {human(report.file_bytes_before)})"])
    if comparison is not None and comparison.diffs:
        worst = max(comparison.diffs, key=lambda d: d.rel_l2)
        rows.append(["worst output error", f"{worst.rel_l2:.3e} relative L2 ({worst.name})"])
        agreements = [d.top1 for d in comparison.diffs if d.top1 is not None]
        if agreements:
            rows.append(["top-1 agreement", f"{min(agreements):.2%}"])
    return html_table(None, rows, numeric_from=9)


class ComparisonWidget(w.VBox):
    """Two models' sizes above the outputs view; `comparison` holds what it shows."""

    def __init__(self, comparison: Comparison, sizes: list[list[str]]) -> None:
        self.comparison = comparison
        self.sizes = w.HTML(html_table(None, sizes, numeric_from=2))
        self.outputs = OutputsView()
        self.outputs.show(comparison)
        super().__init__([self.sizes, self.outputs])


def compare_widget(original: ModelSource, compressed: ModelSource, inputs: Feeds = None) -> ComparisonWidget:
    """Two models that already exist, run on the same inputs: their sizes, then the outputs
    view (table of differences, scatter, histogram of differences, top-1 agreement)."""
    comparison = run_models(original, compressed, inputs)
    sizes = [
        [what, _describe_source(src), human(load_model(src).file_bytes)]
        for what, src in (("original", original), ("compressed", compressed))
    ]
    return ComparisonWidget(comparison, sizes)


def _describe_source(source: ModelSource) -> str:
    return "<ModelProto>" if isinstance(source, onnx.ModelProto) else str(source)
