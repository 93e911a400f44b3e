"""Sensitivity from calibration inputs: the element weights match what the consumer's input
activations say, and weighting k-means by them lowers the error that reaches the outputs."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from models import ALL, F, conv_with, gemm_full, make_model, weight
from onnx import TensorProto, helper

import onnxcompress as oc
from onnxcompress.encoding.codebook import encode_codebook
from onnxcompress.io.select import select_weights
from onnxcompress.options import CodebookOptions, SelectOptions
from onnxcompress.runtime.calibrate import calibrate, importances


def weights_of(model, feeds):
    """Importances in each weight's full shape (calibrate keeps them per feature where it can)."""
    sel = select_weights(model, SelectOptions(min_elements=64))
    sites = {w.name: w for w in sel.weights}
    return {n: np.broadcast_to(v, sites[n].array.shape) for n, v in importances(model, sel.weights, feeds).items()}, sites


def test_matmul_rows_weigh_the_mean_square_of_their_input_feature():
    model = ALL["matmul"]()  # x [batch, 48] @ W [48, 40]
    rng = np.random.default_rng(0)
    scale = np.linspace(0.1, 3.0, 48).astype(np.float32)
    feeds = [{"x": (rng.normal(size=(50, 48)) * scale).astype(np.float32)} for _ in range(3)]
    sel = select_weights(model, SelectOptions(min_elements=64))
    x = np.concatenate([f["x"] for f in feeds]).astype(np.float64)
    want = (x**2).mean(axis=0)
    got = importances(model, sel.weights, feeds)["W"]
    assert got.shape == (48, 1)  # one number per input feature, not one per element
    np.testing.assert_allclose(got[:, 0], want / want.mean(), rtol=1e-5)


def test_a_floor_lifts_quiet_features_and_keeps_the_mean_at_one():
    """The planner's floor (plan.FEATURE_FLOOR): (E[x_i^2] / mean + f) / (1 + f), so a feature
    silent on the calibration inputs still counts."""
    model = ALL["matmul"]()
    x = np.random.default_rng(0).normal(size=(80, 48)).astype(np.float32) * np.linspace(0.1, 3.0, 48).astype(np.float32)
    x[:, :5] = 0.0
    sel = select_weights(model, SelectOptions(min_elements=64))
    got = calibrate(model, sel.weights, [{"x": x}], covariances=False, floor=0.1).importance["W"][:, 0]
    ms = (x.astype(np.float64) ** 2).mean(axis=0)
    np.testing.assert_allclose(got, (ms / ms.mean() + 0.1) / 1.1, rtol=1e-5)
    assert got[:5].min() == pytest.approx(0.1 / 1.1) and got.mean() == pytest.approx(1.0)


def test_an_intermediate_activation_is_captured_through_onnxruntime():
    """x -> Relu -> MatMul(W): the importance comes from the Relu's output, not from x."""
    model = make_model(
        [helper.make_node("Relu", ["x"], ["h"]), helper.make_node("MatMul", ["h", "W"], ["y"])],
        [("x", F, ["batch", 48])],
        [("y", F, ["batch", 40])],
        [("W", weight(48, 40))],
    )
    x = np.random.default_rng(1).normal(size=(64, 48)).astype(np.float32)
    x[:, :10] = -np.abs(x[:, :10])  # features 0..9 are always negative: Relu zeroes them
    imp, _ = weights_of(model, [{"x": x}])
    assert np.all(imp["W"][:10] == 0) and np.all(imp["W"][10:] > 0)


@pytest.mark.parametrize("trans_a,trans_b", [(0, 0), (1, 1)])
def test_gemm_weighs_the_reduction_index(trans_a, trans_b):
    model = gemm_full(trans_a, trans_b, True)
    rng = np.random.default_rng(2)
    a = rng.normal(size=(30, 96)) * np.linspace(0.1, 2, 96)
    x = (a.T if trans_a else a).astype(np.float32)
    imp, _ = weights_of(model, [{"x": x}])
    per_k = (a**2).mean(axis=0)
    got = imp["W"][0, :] if trans_b else imp["W"][:, 0]
    np.testing.assert_allclose(got, per_k / per_k.mean(), rtol=1e-5)


def test_grouped_conv_weighs_each_filter_by_its_own_groups_channels():
    model = conv_with(2, group=3)  # 12 input channels in 3 groups, 24 filters
    x = np.zeros((2, 12, 13, 11), np.float32)
    x[:, 4:8] = 1.0  # only group 1 has signal
    imp, _ = weights_of(model, [{"x": x}])
    w = imp["W"]
    assert w.shape == (24, 4, 3, 3)
    assert np.all(w[8:16] > 0) and np.all(w[:8] == 0) and np.all(w[16:] == 0)


def test_embedding_rows_weigh_their_lookup_counts_with_a_floor():
    model = ALL["embedding"]()  # E [300, 24]
    ids = np.array([[0, 0, 0, 5], [5, 7, 0, 0]], np.int64)
    imp, _ = weights_of(model, [{"ids": ids}])
    rows = imp["E"][:, 0]
    assert rows[0] > rows[5] > rows[7] > rows[1] > 0
    assert rows[1] == rows[299]  # never looked up: the floor


def test_unmodelled_consumers_weigh_every_element_the_same():
    model = ALL["lstm"]()
    feeds = [{"x": np.random.default_rng(0).normal(size=(5, 2, 12)).astype(np.float32)}]
    imp, sites = weights_of(model, feeds)
    assert imp["B"].shape == sites["B"].array.shape and np.allclose(imp["B"], 1.0)  # a bias


@pytest.mark.parametrize("op", ["lstm", "gru"])
def test_recurrent_weights_weigh_their_input_and_hidden_features(op):
    """W meets x_t feature by feature along its last axis; R meets h_(t-1), measured as the
    Y output (LSTM; GRU's R meets r * h and stays uniform)."""
    model = ALL[op]()
    x = (np.random.default_rng(1).normal(size=(5, 2, 12)) * np.linspace(0.1, 3, 12)).astype(np.float32)
    imp, _ = weights_of(model, [{"x": x}])
    want = (x.astype(np.float64) ** 2).reshape(-1, 12).mean(axis=0)
    np.testing.assert_allclose(imp["W"][0, 0], want / want.mean(), rtol=1e-5)
    y = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    h = (y.astype(np.float64) ** 2).reshape(-1, 16).mean(axis=0)
    if op == "lstm":
        np.testing.assert_allclose(imp["R"][0, 3], h / h.mean(), rtol=1e-5)
    else:
        assert np.allclose(imp["R"], 1.0)


def test_sensitivity_weighting_lowers_the_output_error():
    """Inputs whose features differ 100x in scale, and the rows they meet hold small values:
    clustering for the output error, not the weight's own, keeps those rows' levels."""
    model = ALL["matmul"]()
    w = onnx.numpy_helper.to_array(model.graph.initializer[0]).copy()
    w[:6] *= 0.05
    model.graph.initializer[0].CopyFrom(onnx.numpy_helper.from_array(w, "W"))
    rng = np.random.default_rng(3)
    scale = np.where(np.arange(48) < 6, 10.0, 0.1)
    x = (rng.normal(size=(200, 48)) * scale).astype(np.float32)
    want = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]

    def output_error(**kw):
        r = oc.compress(model, bits=2, min_elements=64, calibration={"x": x}, **kw)
        got = ort.InferenceSession(r.model.SerializeToString()).run(None, {"x": x})[0]
        return np.linalg.norm(got - want) / np.linalg.norm(want), r.report

    plain, plain_report = output_error(sensitivity=False)
    weighted, report = output_error()
    assert report.settings["sensitivity_weighted"] and not plain_report.settings["sensitivity_weighted"]
    assert weighted < 0.5 * plain
    # and the weight's own error went up: the codebook spent its levels where it matters
    assert report.tensors[0].rel_error > plain_report.tensors[0].rel_error


def test_weighted_codebook_is_optimal_for_the_weighted_error():
    """Against the unweighted codebook, the weighted one never has a larger weighted SSE."""
    rng = np.random.default_rng(4)
    w = rng.normal(size=(64, 32)).astype(np.float32)
    imp = rng.uniform(0, 5, size=w.shape).astype(np.float32)
    for bits in (1, 2, 3):
        opts = CodebookOptions(bits=bits, kmeans="exact")
        weighted = encode_codebook(w, opts, 0, imp).decoded()
        plain = encode_codebook(w, opts, 0).decoded()
        assert np.sum(imp * (weighted - w) ** 2) <= np.sum(imp * (plain - w) ** 2) * (1 + 1e-9)


def test_binned_path_takes_weights_too():
    rng = np.random.default_rng(5)
    w = rng.normal(size=300_000).astype(np.float32)
    imp = np.where(w > 0, 10.0, 0.1).astype(np.float32)
    opts = CodebookOptions(bits=3, kmeans="binned")
    weighted = encode_codebook(w, opts, 0, imp)
    plain = encode_codebook(w, opts, 0)
    assert weighted.method == "binned"
    # more levels among the heavily weighted positive values
    assert np.sum(weighted.centroids[0] > 0) > np.sum(plain.centroids[0] > 0)


def test_binned_weighted_codebook_is_near_the_exact_optimum_with_light_weights():
    """Clusters whose total weight is below 1 once got their centroid pulled towards zero
    (the sum divided by max(weight, 1)): the weighted SSE was 22x the optimum on a MiniLM
    projection. Weights here are small, as mean-normalized importances of rare inputs are."""
    rng = np.random.default_rng(6)
    w = rng.normal(size=(300, 300)).astype(np.float32)
    imp = np.ones(w.shape, dtype=np.float32)
    w[0, :60] = rng.uniform(6, 30, size=60) * rng.choice([-1, 1], size=60)  # sparse outliers on a quiet input
    imp[0] = 0.05
    exact = encode_codebook(w, CodebookOptions(bits=8, kmeans="exact"), 0, imp)
    binned = encode_codebook(w, CodebookOptions(bits=8, kmeans="binned"), 0, imp)
    sse = [float(np.sum(imp * (cb.decoded() - w) ** 2)) for cb in (exact, binned)]
    assert binned.method == "binned"
    assert sse[0] <= sse[1] <= sse[0] * 1.01


def test_bad_calibration_inputs_are_a_clear_error():
    with pytest.raises(oc.CompressError, match="calibration must be"):
        oc.compress(ALL["matmul"](), min_elements=64, calibration=[])
    with pytest.raises(oc.CompressError, match="check the --inputs file"):
        oc.compress(ALL["matmul"](), min_elements=64, calibration={"nope": np.zeros((2, 48), np.float32)})


def test_calibration_does_not_need_float_outputs_everywhere():
    """A model whose activation feeding the weight is an integer tensor cast to float."""
    model = make_model(
        [
            helper.make_node("Cast", ["ids"], ["f"], to=TensorProto.FLOAT),
            helper.make_node("MatMul", ["f", "W"], ["y"]),
        ],
        [("ids", TensorProto.INT64, ["batch", 48])],
        [("y", F, ["batch", 40])],
        [("W", weight(48, 40))],
    )
    onnx.checker.check_model(model)
    ids = np.random.default_rng(0).integers(0, 5, size=(10, 48))
    imp, _ = weights_of(model, [{"ids": ids}])
    assert imp["W"].shape == (48, 40) and np.isclose(imp["W"].mean(), 1.0)


@pytest.mark.parametrize("granularity", ["tensor", "channel", "scaled", "group:40", "group:12"])
def test_inputs_that_are_always_zero_leave_their_rows_plainly_clustered(granularity):
    """Digits' corner pixels are zero in every image: their rows of W weigh nothing, so a group
    made only of such rows once failed. Such groups are clustered unweighted."""
    model = ALL["matmul"]()  # x [batch, 48] @ W [48, 40]
    x = np.random.default_rng(0).normal(size=(64, 48)).astype(np.float32)
    x[:, :6] = 0.0  # W's first 6 rows (240 values) never matter
    result = oc.compress(model, min_elements=64, bits=3, granularity=granularity, calibration={"x": x})
    assert result.report.settings["sensitivity_weighted"] and result.report.tensors[0].rel_error < 0.3
    if granularity == "tensor":  # every input zero: nothing to weigh by, plain k-means
        zero = {"x": np.zeros_like(x)}
        plain = oc.compress(model, min_elements=64, bits=3, calibration=zero, verify=False)
        assert plain.report.tensors[0].rel_error == pytest.approx(
            oc.compress(model, min_elements=64, bits=3).report.tensors[0].rel_error
        )


def softmax_head(axis: int = -1, extra_reader: bool = False, classes: int = 60) -> onnx.ModelProto:
    """x [batch, 3, 32] @ W [32, classes] + b -> Identity -> Softmax(axis); classes 0-4 likely."""
    rng = np.random.default_rng(11)
    w = (rng.normal(size=(32, classes)) * 0.2).astype(np.float32)
    w[:, :5] *= 5  # as in trained heads, the likely classes' columns stand out
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["z"]),
        helper.make_node("Add", ["z", "b"], ["logits"]),
        helper.make_node("Identity", ["logits"], ["l2"]),
        helper.make_node("Softmax", ["l2"], ["p"], axis=axis),
    ]
    outputs = [("p", F, ["batch", 3, classes])]
    if extra_reader:
        outputs.append(("z", F, ["batch", 3, classes]))  # the logits are an output too
    b = np.zeros(classes, dtype=np.float32)
    b[:5] = 6.0  # five likely classes; the rest rarely get any probability
    return make_model(nodes, [("x", F, ["batch", 3, 32])], outputs, [("W", w), ("b", b)])


def head_feeds(seed: int = 0, n: int = 200) -> list[dict[str, np.ndarray]]:
    return [{"x": np.random.default_rng(seed).normal(size=(n, 3, 32)).astype(np.float32)}]


def test_a_softmax_head_weighs_its_classes_by_their_mean_square_probability():
    from onnxcompress.runtime.calibrate import UNLIKELY_CLASS_FLOOR

    model = softmax_head()
    feeds = head_feeds()
    imp, sites = weights_of(model, feeds)
    x = feeds[0]["x"].astype(np.float64)
    z = x @ sites["W"].array.astype(np.float64) + onnx.numpy_helper.to_array(model.graph.initializer[1])
    p = np.exp(z - z.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    rows = (x**2).reshape(-1, 32).mean(0)
    squares = (p**2).reshape(-1, p.shape[-1]).mean(0)
    want = np.outer(rows, squares + UNLIKELY_CLASS_FLOOR * squares.mean())
    np.testing.assert_allclose(imp["W"], want / want.mean(), rtol=1e-4)
    assert imp["W"][:, :5].mean() > 20 * imp["W"][:, 5:].mean()


@pytest.mark.parametrize("case", ["other axis", "two readers"])
def test_classes_are_not_weighed_unless_the_softmax_alone_reads_the_columns(case):
    model = softmax_head(axis=1) if case == "other axis" else softmax_head(extra_reader=True)
    imp, _ = weights_of(model, head_feeds())
    np.testing.assert_allclose(imp["W"][:, 0], imp["W"][:, 7], rtol=1e-6)  # rows only


def test_class_weighting_lowers_a_classifier_heads_error_on_fresh_inputs(monkeypatch):
    """At 3 bits, weighting the head's classes cuts the probabilities' error by a third or more
    (1.7x here), on inputs calibration did not see."""
    import onnxcompress.runtime.calibrate as calibrate

    model, feeds, fresh = softmax_head(classes=600), head_feeds(0, 400), head_feeds(1, 400)

    def error(result) -> float:
        sess = ort.InferenceSession(result.model.SerializeToString(), providers=["CPUExecutionProvider"])
        ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        a, b = ref.run(None, fresh[0])[0], sess.run(None, fresh[0])[0]
        return float(np.linalg.norm(a - b) / np.linalg.norm(a))

    options = dict(bits=3, min_elements=64, calibration=feeds, compensate=False, verify=False)
    weighted = error(oc.compress(model, **options))
    monkeypatch.setattr(calibrate, "_softmax_after", lambda *args: None)
    plain = error(oc.compress(model, **options))
    assert weighted < plain / 1.5


def test_the_planner_calibrates_without_class_weights(monkeypatch):
    """Fixed bits weigh a head's classes; a plan does not (it would trust the classes the
    calibration happens to find likely), and calibrate(classes=False) then weighs rows only."""
    import onnxcompress.pipeline.stages as pipeline
    from onnxcompress.runtime.calibrate import calibrate

    model, feeds = softmax_head(), head_feeds()
    seen = []
    monkeypatch.setattr(pipeline, "calibrate", lambda *a, **k: seen.append(k["classes"]) or calibrate(*a, **k))
    oc.compress(model, bits=4, min_elements=64, calibration=feeds, verify=False)
    oc.compress(model, max_error=0.05, min_elements=64, calibration=feeds, verify=False)
    assert seen == [True, False]
    sites = {w.name: w for w in select_weights(model, SelectOptions(min_elements=64)).weights}
    rows_only = calibrate(model, list(sites.values()), feeds, covariances=False, classes=False).importance["W"]
    assert rows_only.shape[1] == 1  # rows only: nothing varies along the classes
