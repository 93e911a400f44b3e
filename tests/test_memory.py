"""What planning holds in memory (docs/planner.md, Memory): importances per feature, float32
covariances whose matrix goes once rounding needs only the factor, errors summed chunk by
chunk, lookups by the uint8 labels, and sessions that do not keep the serialized model. Each
shortcut is checked against the plain computation it replaces."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from models import ALL

import onnxcompress.encoding.codebook as codebook
from onnxcompress.encoding.codebook import encode_codebook, relative_error, weighted_sse
from onnxcompress.encoding.compensate import Covariance, compensate, output_distortion
from onnxcompress.options import CodebookOptions
from onnxcompress.runtime.verify import session


def plain_relative_error(w: np.ndarray, approx: np.ndarray) -> float:
    w64, a64 = w.astype(np.float64), approx.astype(np.float64).reshape(w.shape)
    norm = np.linalg.norm(w64)
    return float(np.linalg.norm(a64 - w64) / norm) if norm > 0 else float(np.linalg.norm(a64 - w64))


shapes = st.tuples(st.integers(1, 40), st.integers(1, 30))


@settings(max_examples=40, deadline=None)
@given(shapes, st.integers(0, 2**31 - 1), st.sampled_from([None, "rows", "cols", "full"]))
def test_chunked_weighted_sse_matches_the_plain_sum(shape, seed, weighting):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=shape).astype(np.float32)
    approx = (w + rng.normal(scale=0.01, size=shape)).astype(np.float16)
    weight = {
        None: None,
        "rows": rng.uniform(0, 2, size=(shape[0], 1)),
        "cols": rng.uniform(0, 2, size=(1, shape[1])),
        "full": rng.uniform(0, 2, size=shape),
    }[weighting]
    full = np.ones(shape) if weight is None else np.broadcast_to(weight, shape)
    a64, w64 = approx.astype(np.float64), w.astype(np.float64)
    np.testing.assert_allclose(weighted_sse(w, approx, weight), np.sum(full * (a64 - w64) ** 2), rtol=1e-10)
    np.testing.assert_allclose(weighted_sse(w, None, weight), np.sum(full * w64**2), rtol=1e-10)


def test_chunks_cover_the_whole_weight(monkeypatch):
    """Chunks far smaller than the weight: every value is still counted once."""
    monkeypatch.setattr(codebook, "CHUNK", 7)
    rng = np.random.default_rng(3)
    w = rng.normal(size=(13, 11)).astype(np.float32)
    approx = w + rng.normal(scale=0.1, size=w.shape).astype(np.float32)
    assert relative_error(w, approx) == pytest.approx(plain_relative_error(w, approx), rel=1e-12)
    weight = rng.uniform(size=(13, 1))
    assert weighted_sse(w, approx, weight) == pytest.approx(float(np.sum(weight * (approx - w).astype(np.float64) ** 2)))
    for granularity in ("tensor", "channel", "scaled", "group:16"):
        cb = encode_codebook(w, CodebookOptions(bits=3, granularity=granularity))
        assert cb.rel_error == pytest.approx(plain_relative_error(w, cb.decoded()), rel=1e-12)


@pytest.mark.parametrize("granularity", ["tensor", "channel", "scaled", "group:32"])
def test_decoding_by_uint8_labels_gives_each_labels_level(granularity, monkeypatch):
    monkeypatch.setattr(codebook, "CHUNK", 50)  # several row blocks for the grouped layouts
    w = np.random.default_rng(1).normal(size=(24, 20)).astype(np.float32)
    cb = encode_codebook(w, CodebookOptions(bits=4, granularity=granularity), axis=1)
    levels = np.take_along_axis(cb.centroids, cb.labels.astype(np.intp), axis=1)  # the direct lookup
    if cb.layout == "channel":
        want = np.moveaxis(levels.reshape(20, 24), 0, 1)
    else:
        want = levels.reshape(-1)[: w.size].reshape(w.shape)
        if cb.scale is not None:
            want = want.astype(np.float32) * cb.scale.reshape(1, -1)
    np.testing.assert_array_equal(cb.decoded(), want)


def test_a_covariance_kept_as_its_factor_rounds_the_same():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(400, 32)) @ rng.normal(size=(32, 32))
    w = rng.normal(size=(32, 24)).astype(np.float32)
    cb = encode_codebook(w, CodebookOptions(bits=3))
    full, lean = Covariance(x.T @ x / len(x), "rows", samples=len(x)), Covariance(x.T @ x / len(x), "rows", samples=len(x))
    assert full.matrix.dtype == np.float32
    before = output_distortion(w, cb.decoded(), lean)
    lean.keep_factor_only()
    assert lean.matrix is None and lean.shrinkage() == full.shrinkage()
    np.testing.assert_array_equal(compensate(w, cb, lean).labels, compensate(w, cb, full).labels)
    assert before > 0
    with pytest.raises(AssertionError):
        output_distortion(w, cb.decoded(), lean)


def test_a_session_made_from_a_model_in_memory_does_not_keep_its_bytes():
    model: onnx.ModelProto = ALL["matmul"]()
    sess = session(model, "the test model")
    assert getattr(sess, "_model_bytes", None) is None
    x = np.ones((2, 48), dtype=np.float32)
    assert sess.run(None, {"x": x})[0].shape == (2, 40)
