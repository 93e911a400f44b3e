"""Low rank: the SVD and rank choice against brute force, and every pair rewrite checked in
onnxruntime against the original op with the factored weight substituted."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from decoded import encoded_weights, substitute_decoded
from hypothesis import given, settings
from hypothesis import strategies as st
from models import ALL, FACTORABLE, F, conv_with, feed_for, low_rank_weight, make_model
from onnx import helper

import onnxcompress as oc
from onnxcompress.encoding.lowrank import (
    break_even_rank,
    encode_lowrank,
    factor_kind,
    rank_for_energy,
    singular_values,
    truncated_svd,
)
from onnxcompress.io.select import select_weights
from onnxcompress.options import CodebookOptions, LowRankOptions, SelectOptions


def run(model: onnx.ModelProto, feed):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feed)


def reference(model, method, **options):
    """The original graph, its weights replaced by what the compressed model computes."""
    opts = {"rank": None, "rank_ratio": None, "energy": None, "svd": "auto"}
    low = LowRankOptions(**{k: options.pop(k, v) for k, v in opts.items()})
    sel = select_weights(model, SelectOptions(min_elements=64))
    encoded = encoded_weights(sel.weights, method, CodebookOptions(**options), low)
    return substitute_decoded(model, [(e.site, e) for e in encoded])


def assert_close(got, want, rtol):
    for g, w in zip(got, want, strict=True):
        g, w = g.astype(np.float64), w.astype(np.float64)
        assert g.shape == w.shape
        assert np.linalg.norm(g - w) <= rtol * max(np.linalg.norm(w), 1e-12), np.abs(g - w).max()


# -- rank choice and the SVD ---------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.floats(0, 1e3, allow_nan=False), min_size=1, max_size=40),
    st.floats(0.01, 1.0),
)
def test_rank_for_energy_is_the_smallest_rank_holding_the_energy(values, energy):
    s = np.sort(np.array(values))[::-1]
    total = float(np.sum(s**2))
    got = rank_for_energy(s, total, energy)
    brute = next((r for r in range(1, len(s) + 1) if np.sum(s[:r] ** 2) >= energy * total * (1 - 1e-12)), None)
    assert got == brute


@pytest.mark.parametrize("rows,cols", [(1, 1), (2, 3), (100, 100), (30522, 384), (7, 1000)])
def test_break_even_rank(rows, cols):
    r = break_even_rank(rows, cols)
    assert r * (rows + cols) < rows * cols <= (r + 1) * (rows + cols)


@pytest.mark.parametrize("shape", [(300, 200), (64, 1500)])
def test_truncation_error_is_the_tail_of_the_spectrum(shape):
    rng = np.random.default_rng(0)
    w = rng.normal(size=shape).astype(np.float32)
    s = np.linalg.svd(w.astype(np.float64), compute_uv=False)
    pair = encode_lowrank(w, "matrix", LowRankOptions(rank=20, svd="full"))
    assert pair.rank == 20 and pair.left.shape == (shape[0], 20) and pair.right.shape == (20, shape[1])
    tail = np.sqrt(np.sum(s[20:] ** 2) / np.sum(s**2))
    assert pair.rel_error == pytest.approx(tail, rel=1e-4)
    # energy: the smallest rank that holds it, and its error is within the promise
    pair = encode_lowrank(w, "matrix", LowRankOptions(energy=0.8, svd="full"))
    held = np.cumsum(s**2) / np.sum(s**2)
    assert pair.rank == int(np.argmax(held >= 0.8)) + 1
    assert pair.rel_error <= np.sqrt(0.2) * (1 + 1e-4)


@pytest.mark.parametrize("target", [{"rank": 12}, {"energy": 0.95}])
def test_randomized_svd_is_as_accurate_as_the_full_one(target):
    """A decaying spectrum like trained weights have: the sketch finds the same rank and an
    error within 1% of the optimal truncation."""
    rng = np.random.default_rng(3)
    u, _ = np.linalg.qr(rng.normal(size=(1500, 200)))
    v, _ = np.linalg.qr(rng.normal(size=(1200, 200)))
    w = ((u * (0.8 ** np.arange(200))) @ v.T).astype(np.float32)
    full = encode_lowrank(w, "matrix", LowRankOptions(svd="full", **target))
    fast = encode_lowrank(w, "matrix", LowRankOptions(svd="randomized", **target))
    assert fast.svd == "randomized" and full.svd == "full"
    assert fast.rank == full.rank
    assert fast.rel_error <= full.rel_error * 1.01 + 1e-7


def test_randomized_falls_back_to_full_when_the_rank_is_most_of_the_matrix():
    w = np.random.default_rng(0).normal(size=(200, 150)).astype(np.float32)
    *_, how = truncated_svd(w, None, 0.99, "randomized")
    assert how == "full"


# -- which weights can be factored ------------------------------------------------------------


@pytest.mark.parametrize(
    "model,reason",
    [
        (lambda: conv_with(2, group=3), "grouped or depthwise"),
        (ALL["if_branch"], "If/Loop/Scan"),
        (ALL["lstm"], "LSTM input 1"),
        (ALL["conv_transpose"], "ConvTranspose input 1"),
        (ALL["mul_add_einsum"], "Einsum"),
    ],
)
def test_weights_no_pair_can_replace_are_left_alone_with_the_reason(model, reason):
    sel = select_weights(model(), SelectOptions(min_elements=64))
    whys = [factor_kind(site)[1] for site in sel.weights]
    assert any(reason in why for why in whys), whys
    with pytest.raises(oc.CompressError, match="nothing to compress") if all(whys) else _nothing():
        oc.compress(model(), method="lowrank", rank=2, min_elements=64, verify=False)


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_mixed_methods_hand_other_weights_to_the_codebook_and_say_so():
    result = oc.compress(ALL["lstm"](), method="lowrank+kmeans", min_elements=64, verify=False)
    assert {t.encoding for t in result.report.tensors} == {"codebook"}
    assert all("LSTM" in t.note for t in result.report.tensors)


# -- each rewrite against the original op with the factored weight -------------------------------


@pytest.mark.parametrize("kind", sorted(FACTORABLE))
def test_pair_matches_the_op_with_the_factored_weight(kind):
    model = FACTORABLE[kind]()
    onnx.checker.check_model(model, full_check=True)
    result = oc.compress(model, method="lowrank", rank=4, min_elements=64, verify=False)
    out = result.model
    onnx.checker.check_model(out, full_check=True)
    assert [t.encoding for t in result.report.tensors] == ["lowrank"]
    assert result.report.tensors[0].rank == 4
    assert not any(i.name == result.report.tensors[0].name for i in out.graph.initializer)
    want_model = reference(model, "lowrank", rank=4)
    for seed in (0, 1):
        feed = feed_for(model, seed)
        fp16 = out.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
        assert_close(run(out, feed), run(want_model, feed), 5e-3 if fp16 else 1e-5)


@pytest.mark.parametrize("kind", ["matmul_3d", "gemm_transB", "conv_same_upper", "embedding"])
def test_factors_as_codebooks_match_the_decoded_product(kind):
    model = FACTORABLE[kind]()
    result = oc.compress(model, method="lowrank+kmeans", rank=8, bits=8, min_elements=64, verify=False)
    onnx.checker.check_model(result.model, full_check=True)
    t = result.report.tensors[0]
    assert (t.encoding, t.rank, t.bits) == ("lowrank+kmeans", 8, 8)
    meta = json.loads({p.key: p.value for p in result.model.metadata_props}["onnxcompress.tensors"])
    assert meta[t.name]["rank"] == 8 and len(meta[t.name]["factors"]) == 2
    want_model = reference(model, "lowrank+kmeans", rank=8, bits=8)
    feed = feed_for(model, 0)
    assert_close(run(result.model, feed), run(want_model, feed), 1e-5)


def test_gemm_and_matmul_pairs_against_numpy():
    """Independent of onnxruntime's own Gemm: alpha, beta, transA, transB and bias by hand."""
    for trans_a, trans_b, bias in [(0, 0, True), (1, 1, True), (0, 1, False)]:
        from models import gemm_full

        model = gemm_full(trans_a, trans_b, bias)
        result = oc.compress(model, method="lowrank", rank=5, min_elements=64, verify=False)
        inits = {i.name: onnx.numpy_helper.to_array(i) for i in result.model.graph.initializer}
        left, right = inits["W::lowrank_left"].astype(np.float64), inits["W::lowrank_right"].astype(np.float64)
        w = left @ right
        x = feed_for(model, 0)["x"].astype(np.float64)
        a = x.T if trans_a else x
        want = 0.7 * a @ (w.T if trans_b else w)
        if bias:
            want = want + 1.3 * onnx.numpy_helper.to_array(model.graph.initializer[1]).astype(np.float64)
        (got,) = run(result.model, {"x": x.astype(np.float32)})
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_report_counts_rank_bytes_error_and_multiply_adds():
    model = low_rank_weight()
    result = oc.compress(model, method="lowrank", energy=0.999, min_elements=64, verify=True)
    (t,) = [t for t in result.report.tensors if t.name == "W"]
    assert t.rank == 6 and t.full_rank == 192
    assert t.bytes_before == 256 * 192 * 4 and t.bytes_after == 6 * (256 + 192) * 4
    assert t.rel_error < 0.01
    assert (t.macs_before, t.macs_after) == (256 * 192, 6 * (256 + 192))
    assert result.report.outputs[0].rel_l2 < 0.01
    settings_ = result.report.settings
    assert settings_["method"] == "lowrank" and settings_["energy"] == 0.999


def test_auto_takes_the_pair_where_the_weight_is_low_rank_and_codebooks_elsewhere():
    model = low_rank_weight()
    result = oc.compress(model, method="auto", bits=8, min_elements=64, verify=False)
    enc = {t.name: t for t in result.report.tensors}
    assert enc["W"].encoding in ("lowrank", "lowrank+kmeans") and enc["W"].rank <= 12
    assert enc["V"].encoding == "codebook"  # a random full-rank weight
    # at most the codebook's weight error, and smaller
    alone = oc.compress(model, method="codebook", bits=8, min_elements=64, verify=False).report.tensors
    cb = {t.name: t for t in alone}["W"]
    assert enc["W"].rel_error <= cb.rel_error * (1 + 1e-6)
    assert enc["W"].bytes_after < cb.bytes_after


def test_method_options_that_do_not_fit_are_rejected():
    with pytest.raises(oc.CompressError, match="add --method lowrank"):
        oc.compress(ALL["matmul"](), rank=4, min_elements=64)
    with pytest.raises(oc.CompressError, match="--method auto sets each rank"):
        oc.compress(ALL["matmul"](), method="auto", energy=0.9, min_elements=64)
    with pytest.raises(oc.CompressError, match="lower --energy"):
        oc.compress(ALL["matmul"](), method="lowrank", energy=1.0, min_elements=64, verify=False)


def test_a_pair_is_kept_only_when_smaller():
    model = ALL["matmul"]()  # 48 x 40: a pair is smaller only below rank 21
    assert break_even_rank(48, 40) == 21
    assert oc.compress(model, method="lowrank", rank=21, min_elements=64, verify=False).report.tensors[0].rank == 21
    with pytest.raises(oc.CompressError, match="nothing to compress"):
        oc.compress(model, method="lowrank", rank=22, min_elements=64, verify=False)


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 60), st.integers(1, 60), st.integers(0, 2**31 - 1))
def test_singular_values_from_the_gram_matrix_match_lapack(rows, cols, seed):
    rng = np.random.default_rng(seed)
    a = (rng.standard_normal((rows, cols)) * np.geomspace(1, 1e-4, cols)).astype(np.float32)
    s = singular_values(a)
    expected = np.linalg.svd(a.astype(np.float64), compute_uv=False)
    assert s.shape == expected.shape and np.all(np.diff(s) <= 0)
    np.testing.assert_allclose(s, expected, rtol=0, atol=1e-6 * expected[0])
    assert float(np.sum(s**2)) == pytest.approx(float(np.sum(a.astype(np.float64) ** 2)), rel=1e-9)


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("noise", [1e-3, 1e-2])
def test_auto_is_never_worse_than_the_codebook(bits, noise):
    """Rank 8 plus noise: --method auto may take a pair only at or below the codebook's weight
    error, measured here from onnxruntime (x = I gives back the weight the model computes)."""
    rng = np.random.default_rng(7)
    w = (rng.normal(size=(256, 8)) @ rng.normal(size=(8, 192)) / np.sqrt(8)).astype(np.float32)
    w += (noise * rng.normal(size=w.shape)).astype(np.float32)
    model = make_model(
        [helper.make_node("MatMul", ["x", "W"], ["y"])], [("x", F, ["batch", 256])], [("y", F, ["batch", 192])], [("W", w)]
    )

    def weight_error(m: onnx.ModelProto) -> float:
        computed = run(m, {"x": np.eye(256, dtype=np.float32)})[0]
        return float(np.linalg.norm(computed - w) / np.linalg.norm(w))

    auto = oc.compress(model, method="auto", bits=bits, min_elements=64, verify=False)
    codebook = oc.compress(model, method="codebook", bits=bits, min_elements=64, verify=False)
    assert weight_error(auto.model) <= weight_error(codebook.model) * (1 + 1e-4)
    assert auto.report.file_bytes_after <= codebook.report.file_bytes_after


def test_randomized_svd_reaches_the_optimum_on_a_slowly_decaying_spectrum():
    """Singular values 1/sqrt(i): the sketch alone is 16% above the Eckart-Young error at rank
    24, one power iteration 1.1%, five 2e-5. The optimum comes from the built spectrum."""
    rng = np.random.default_rng(3)
    u, _ = np.linalg.qr(rng.normal(size=(900, 400)))
    v, _ = np.linalg.qr(rng.normal(size=(700, 400)))
    s = (np.arange(400) + 1.0) ** -0.5
    w = ((u * s) @ v.T).astype(np.float32)
    optimum = np.sqrt(np.sum(s[24:] ** 2) / np.sum(s**2))
    left, singular, right, how = truncated_svd(w, 24, None, "randomized")
    assert how == "randomized"
    assert np.linalg.norm(w - (left * singular) @ right) / np.linalg.norm(w) <= optimum * (1 + 1e-3)
