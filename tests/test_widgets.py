"""The notebook widgets, driven from Python as a user would: set controls, click buttons, then
read what the widgets show (tables, charts' data, messages). No browser, no kernel."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

pytest.importorskip("ipywidgets", reason="the widgets need the notebook extra: pip install -e '.[test]'")

from models import matmul  # noqa: E402

from onnxcompress import compare_models, compress  # noqa: E402
from onnxcompress.demo import example_data, example_model  # noqa: E402
from onnxcompress.plots import MAX_POINTS  # noqa: E402
from onnxcompress.widgets import CompressionExplorer, compare_widget  # noqa: E402

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def digits():
    pixels, labels = example_data()
    return {"pixels": pixels}, labels


@pytest.fixture
def explorer(digits):
    return CompressionExplorer(example_model(), digits[0])


def test_compress_button_shows_summary_tables_and_charts(explorer, digits):
    explorer.compress_button.click()
    result = explorer.result
    assert result is not None and "done" in explorer.status.value
    assert explorer.progress.bar_style == "success" and explorer.progress.value == explorer.progress.max
    report = result.report
    assert f"{report.ratio:.2f}x" in explorer.summary.value and "top-1 agreement" in explorer.summary.value
    for r in report.tensors:
        assert r.name in explorer.tensor_table.value
    assert explorer.tensor_table.value.count("8 tensor") == len(report.tensors) == 3
    # the weight-error chart: one bar per tensor, largest tensor first, as long as its error
    assert bytes(explorer.error_chart.value).startswith(PNG)
    bars = explorer.figures["weight error"].axes[0].patches[: len(report.tensors)]
    by_size = sorted(report.tensors, key=lambda r: -r.bytes_before)
    assert [b.get_width() for b in bars] == pytest.approx([r.rel_error for r in by_size])
    # the histogram of the largest tensor marks each of its codebook's levels
    assert explorer.tensor_choice.value == by_size[0].name
    levels = result.centroids[by_size[0].name]
    lines = [ln for ln in explorer.figures["histogram"].axes[0].lines if ln.get_xdata()[0] == ln.get_xdata()[1]]
    assert sorted(ln.get_xdata()[0] for ln in lines) == pytest.approx(sorted(levels[0].astype(float)))
    assert bytes(explorer.histogram.value).startswith(PNG)
    # outputs: the same numbers as compare_models on the same inputs, and every value plotted
    expected = compare_models(example_model(), result.model, digits[0])
    assert explorer.comparison.diffs == expected
    assert f"{expected[0].rel_l2:.3e}" in explorer.outputs.table.value
    assert f"{expected[0].top1:.2%}" in explorer.outputs.table.value
    points = explorer.outputs.figure.axes[0].collections[0].get_offsets()
    assert len(points) == min(MAX_POINTS, digits[0]["pixels"].shape[0] * 10)
    assert not explorer.save_button.disabled


def test_controls_set_the_options_and_the_table_follows(explorer):
    assert explorer.rank.disabled and explorer.energy.disabled  # codebooks have no rank
    shown = [c for c in (explorer.method, explorer.bits, explorer.granularity, explorer.energy) if c.layout.display != "none"]
    assert len(shown) == 4 and explorer.group_size.layout.display == explorer.rank.layout.display == "none"
    explorer.bits.value, explorer.granularity.value, explorer.group_size.value = 3, "group", 32
    assert explorer.options() == {"method": "codebook", "bits": 3, "granularity": "group:32"}
    explorer.compress_button.click()
    assert explorer.tensor_table.value.count("3 group:32") == 3
    explorer.method.value = "lowrank"
    assert explorer.bits.disabled and not explorer.energy.disabled
    explorer.rank_by.value, explorer.rank.value = "rank", 16
    assert explorer.options() == {"method": "lowrank", "rank": 16}
    explorer.compress_button.click()
    assert "rank 16/" in explorer.tensor_table.value and "multiply-adds" in explorer.tensor_table.value
    # a factored tensor has no codebook: the histogram says so instead of drawing levels
    factored = [r.name for r in explorer.result.report.tensors if r.rank is not None]
    explorer.tensor_choice.value = factored[0]
    assert "no codebook of its own" in explorer.figures["histogram"].axes[0].get_title(loc="left")
    explorer.method.value, explorer.rank_by.value, explorer.energy.value = "lowrank+kmeans", "energy", 0.9
    assert explorer.options() == {"method": "lowrank+kmeans", "bits": 3, "granularity": "group:32", "energy": 0.9}


def test_choosing_a_tensor_redraws_its_histogram(explorer):
    explorer.bits.value = 2
    explorer.compress_button.click()
    titles = {}
    for name in explorer.tensor_choice.options:
        explorer.tensor_choice.value = name
        titles[name] = explorer.figures["histogram"].axes[0].get_title(loc="left")
        levels = [ln for ln in explorer.figures["histogram"].axes[0].lines if ln.get_xdata()[0] == ln.get_xdata()[1]]
        assert len(levels) == 4  # 2 bits
    assert all(title.startswith(name) for name, title in titles.items()) and len(titles) == 3


def test_progress_reports_each_stage(explorer):
    stages = []
    explorer.progress.observe(lambda change: stages.append(change.new), names="description")
    explorer.compress_button.click()
    assert stages[:2] == ["codebooks", "verify"]


def test_max_error_target_runs_the_planner(explorer):
    explorer.use_target.value = True
    assert explorer.method.disabled and explorer.bits.disabled and not explorer.max_error.disabled
    explorer.max_error.value = 0.01
    explorer.compress_button.click()
    plan = explorer.result.report.plan
    assert plan is not None and plan["measured"] <= 0.01
    assert "plan" in explorer.summary.value and f"{plan['measured']:.3g}" in explorer.summary.value
    assert explorer.comparison.diffs[0].task <= 0.01 and explorer.metric.value == "task"  # the default: changed classes


def test_max_ram_reaches_the_planner_and_its_refusal_is_one_line(explorer):
    explorer.use_target.value = True
    assert not explorer.max_ram.disabled
    explorer.max_ram.value = "50%"  # the digits net has no lookup table: every weight is float once loaded
    explorer.compress_button.click()
    assert "cannot meet --max-ram 50%" in explorer.status.value and "at least" in explorer.status.value
    explorer.max_ram.value = "lots"
    explorer.compress_button.click()
    assert "--max-ram wants megabytes" in explorer.status.value
    explorer.max_ram.value = ""
    explorer.compress_button.click()
    assert "weights in RAM once loaded" in explorer.summary.value


def test_bad_settings_give_one_line_and_keep_the_last_result(explorer):
    explorer.compress_button.click()
    good = explorer.result
    explorer.use_target.value, explorer.max_error.value = True, 0.0
    explorer.compress_button.click()
    assert "--max-error must be a number above 0" in explorer.status.value
    assert "Traceback" not in explorer.status.value and explorer.progress.bar_style == "danger"
    assert explorer.result is good and not explorer.compress_button.disabled


def test_save_writes_the_result_atomically_and_never_over_a_file(explorer, digits, tmp_path):
    explorer.save_button.click()  # before any result: disabled in the page, refused here
    explorer.compress_button.click()
    target = tmp_path / "digits.small.onnx"
    explorer.save_path.value = str(target)
    explorer.save_button.click()
    assert target.is_file() and "wrote" in explorer.save_status.value
    sess = ort.InferenceSession(str(target), providers=["CPUExecutionProvider"])
    again = ort.InferenceSession(explorer.result.model.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(sess.run(None, digits[0])[0], again.run(None, digits[0])[0])
    explorer.save_button.click()
    assert "already exists" in explorer.save_status.value
    explorer.overwrite.value = True
    explorer.save_button.click()
    assert "wrote" in explorer.save_status.value
    explorer.save_path.value = str(example_model())
    explorer.save_button.click()
    assert "is the input model" in explorer.save_status.value
    explorer.save_path.value = str(tmp_path / "missing" / "x.onnx")
    explorer.save_button.click()
    assert "does not exist" in explorer.save_status.value
    assert [p.name for p in tmp_path.iterdir()] == ["digits.small.onnx"]  # nothing half-written


def test_explorer_synthesizes_inputs_and_takes_fixed_options():
    model = matmul()
    before = model.SerializeToString()
    explorer = CompressionExplorer(model, min_elements=256)
    explorer.bits.value = 4
    explorer.compress_button.click()
    assert [r.name for r in explorer.result.report.tensors] == ["W"]
    assert explorer.comparison.diffs[0].rel_l2 < 0.2
    assert model.SerializeToString() == before  # the caller's model is never modified
    assert "model.compressed.onnx" in explorer.save_path.value


def test_compare_widget_shows_both_models(digits, tmp_path):
    small = tmp_path / "small.onnx"
    compress(example_model(), small, bits=4)
    view = compare_widget(example_model(), small, digits[0])
    expected = compare_models(example_model(), small, digits[0])
    assert view.comparison.diffs == expected
    assert "small.onnx" in view.sizes.value and "2.4 MB" in view.sizes.value
    assert f"{expected[0].max_abs:.3e}" in view.outputs.table.value
    original, compressed = view.comparison.output("probabilities")
    xy = view.outputs.figure.axes[0].collections[0].get_offsets()
    assert np.allclose(xy[:, 0], original) and np.allclose(xy[:, 1], compressed)


def test_compare_widget_on_protos_with_several_outputs():
    model = matmul()
    model.graph.node.append(onnx.helper.make_node("Relu", ["y"], ["z"]))
    model.graph.output.append(onnx.helper.make_tensor_value_info("z", onnx.TensorProto.FLOAT, ["batch", 40]))
    small = compress(model, min_elements=256, bits=2).model
    view = compare_widget(model, small)
    assert list(view.outputs.choice.options) == ["y", "z"]
    view.outputs.choice.value = "z"
    assert view.outputs.figure.axes[0].get_title(loc="left").startswith("z:")
    assert "&lt;ModelProto&gt;" in view.sizes.value


def test_each_click_runs_each_model_once(explorer, monkeypatch):
    """The Outputs tab shows the verification's own outputs: per click onnxruntime runs the
    original once (its reference outputs) and the compressed model once."""
    import onnxcompress.pipeline.stages as pipeline

    real, runs = pipeline.run, []
    monkeypatch.setattr(pipeline, "run", lambda sess, feeds, what, *a: runs.append(what) or real(sess, feeds, what, *a))
    explorer.bits.value = 4
    explorer.compress_button.click()
    assert runs == ["the original model", "the compressed model"]
    assert explorer.comparison is not None and explorer.comparison.diffs == explorer.result.report.outputs
