"""Layout "scaled": one codebook per tensor over values divided by their channel's RMS, decoded
as the levels times each channel's scale. The k-means on the scaled values, weighed by the scale
squared, must minimize the weight's own squared error: checked against a brute force over every
partition of the sorted scaled values (1D k-means clusters are contiguous in sorted order)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import onnxcompress as oc
from onnxcompress.encoding.codebook import encode_codebook
from onnxcompress.options import CodebookOptions

from models import F, make_model
from oracles import ort_outputs


def best_weighted_sse(values: np.ndarray, weights: np.ndarray, k: int) -> float:
    """The least sum of w (v - c)^2 over every split of the sorted values into at most k runs."""
    order = np.argsort(values)
    v, w = values[order], weights[order]
    best = np.inf
    for cuts in itertools.combinations(range(1, len(v)), k - 1):
        total = 0.0
        for lo, hi in zip((0, *cuts), (*cuts, len(v)), strict=True):
            c = np.sum(w[lo:hi] * v[lo:hi]) / np.sum(w[lo:hi])
            total += float(np.sum(w[lo:hi] * (v[lo:hi] - c) ** 2))
        best = min(best, total)
    return best


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("axis", [0, 1])
def test_scaled_codebook_is_the_optimal_clustering_of_the_weights_error(seed, axis):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(3, 4)) * np.array([[0.01], [1.0], [30.0]]) ** (1 - axis) * np.array([0.1, 1, 3, 10]) ** axis
    cb = encode_codebook(w.astype(np.float64), CodebookOptions(bits=2, granularity="scaled", kmeans="exact"), axis)
    scale = cb.scale.astype(np.float64)
    assert cb.layout == "scaled" and scale.shape == (w.shape[axis],)
    rms = np.sqrt(np.mean(np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1) ** 2, axis=1))
    np.testing.assert_allclose(scale, rms, rtol=1e-12)
    shaped = scale.reshape([-1, 1] if axis == 0 else [1, -1])
    got = float(np.sum((cb.decoded() - w) ** 2))
    want = best_weighted_sse((w / shaped).ravel(), np.broadcast_to(shaped**2, w.shape).ravel(), 4)
    assert got == pytest.approx(want, rel=1e-9, abs=1e-18)


def test_scales_cost_their_bytes():
    w = np.random.default_rng(0).normal(size=(64, 32)).astype(np.float32)
    plain = encode_codebook(w, CodebookOptions(bits=4))
    scaled = encode_codebook(w, CodebookOptions(bits=4, granularity="scaled"), 1)
    assert scaled.stored_bytes() == plain.stored_bytes() + 32 * 4


def test_scaled_beats_one_codebook_where_channels_differ_and_runs_in_onnxruntime():
    from onnx import helper

    rng = np.random.default_rng(7)
    w = (rng.normal(size=(128, 64)) * np.logspace(-2, 1, 64)).astype(np.float32)
    model = make_model([helper.make_node("MatMul", ["x", "W"], ["y"])], [("x", F, ["b", 128])], [("y", F, ["b", 64])], [("W", w)])
    feed = [{"x": rng.normal(size=(32, 128)).astype(np.float32)}]
    want = ort_outputs(model, feed)[0][0]
    errors = {}
    for layout in ("tensor", "scaled"):
        r = oc.compress(model, min_elements=64, bits=4, granularity=layout)
        got = ort_outputs(r.model, feed)[0][0]
        errors[layout] = np.max(np.linalg.norm(got - want, axis=0) / np.linalg.norm(want, axis=0))  # worst column
        assert r.report.tensors[0].describe() == f"4 {layout}"
    assert errors["scaled"] < errors["tensor"] / 4  # 0.21 against 1.15
