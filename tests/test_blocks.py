"""MatMul weights as integer blocks read by DequantizeLinear (encoding/blocks.py): the grid
against a brute-force oracle, compensation against nearest rounding, the decoder in
onnxruntime to the bit, where they are offered, and the planner keeping them packed in RAM."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from models import make_model, matmul_chain, weight
from onnx import TensorProto, helper
from test_compensate import correlated

import onnxcompress as oc
from onnxcompress.encoding.blocks import blocks_fit, compensate_blocks, encode_blocks
from onnxcompress.encoding.compensate import Covariance, output_distortion
from onnxcompress.graph.decode import build_block_decoder, blocks_stay_packed
from onnxcompress.io.select import select_weights
from onnxcompress.options import SelectOptions
from onnxcompress.pipeline.report import blocks_note


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**31 - 1), st.sampled_from([4, 8]), st.integers(1, 3), st.integers(1, 5))
def test_each_value_takes_the_nearest_point_of_its_blocks_grid(seed, bits, n_blocks, cols):
    rng = np.random.default_rng(seed)
    a = (rng.standard_t(3, size=(32 * n_blocks, cols)) * rng.uniform(1e-3, 10)).astype(np.float32)
    a[:32, 0] = 0.0  # a block of zeros decodes exactly
    b = encode_blocks(a, bits)
    top = (1 << (bits - 1)) - 1
    for j in range(n_blocks):
        block = a[32 * j : 32 * (j + 1)]
        scale = b.scale[j]
        expected = np.where(np.abs(block).max(axis=0) > 0, np.abs(block).max(axis=0) / top, 1.0).astype(np.float32)
        np.testing.assert_allclose(scale, expected, rtol=1e-6)
        grid = np.arange(-top - 1, top + 1)[:, None, None] * scale.astype(np.float64)  # every point, brute force
        nearest = np.abs(grid - block[None].astype(np.float64)).argmin(axis=0) - top - 1
        got = b.values[32 * j : 32 * (j + 1)].astype(np.int64)
        tie = np.isclose(np.abs(block / scale) % 1, 0.5, atol=1e-5)  # halfway: either neighbour is nearest
        assert np.all((got == nearest) | tie)
    assert b.decoded()[:32, 0].tolist() == [0.0] * 32
    assert b.stored_bytes() == 32 * n_blocks * cols * bits // 8 + b.scale.nbytes


def test_compensation_lowers_the_output_error_and_keeps_the_grid():
    rng = np.random.default_rng(0)
    x = correlated(rng, 512, 64)
    w = rng.normal(size=(64, 24)).astype(np.float32)
    cov = Covariance(x.T @ x / len(x), "rows", samples=len(x))
    plain = encode_blocks(w, 4)
    better = compensate_blocks(w, plain, cov)
    np.testing.assert_array_equal(better.scale, plain.scale)
    assert better.values.min() >= -8 and better.values.max() <= 7 and better.method == "absmax, compensated"
    assert output_distortion(w, better.decoded(), cov) < 0.5 * output_distortion(w, plain.decoded(), cov)


@pytest.mark.parametrize("bits", [4, 8])
def test_the_decoder_gives_the_blocks_values_in_onnxruntime(bits):
    w = np.random.default_rng(bits).normal(size=(96, 7)).astype(np.float32)
    blocks = encode_blocks(w, bits)
    out = gs.Variable("W", dtype=np.float32, shape=[96, 7])
    nodes, stored = build_block_decoder(blocks, "W", out)
    model = gs.export_onnx(gs.Graph(nodes=nodes, outputs=[out], opset=21))
    model.ir_version = 10
    onnx.checker.check_model(model, full_check=True)
    got = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {})[0]
    assert stored == f"int{bits} blocks"
    np.testing.assert_array_equal(got, blocks.decoded())


def chain(opset: int = 21, activation: str = "Sigmoid") -> onnx.ModelProto:
    """x @ W (256 x 256) -> activation -> @ V (256 x 64)."""
    return matmul_chain("W", (256, 256), "V", (256, 64), activation, opset)


X = {"x": np.random.default_rng(0).normal(size=(64, 256)).astype(np.float32)}


def test_blocks_are_offered_where_onnxruntime_keeps_them_packed():
    site = next(w for w in select_weights(chain(), SelectOptions(min_elements=64)).weights if w.name == "W")
    assert blocks_stay_packed(site, 4, 21, (1, 24, 4)) and blocks_stay_packed(site, 8, 21, (1, 32))
    assert not blocks_stay_packed(site, 8, 21, (1, 24, 4))  # 1.24.4 decodes INT8 blocks at every call
    assert not blocks_stay_packed(site, 4, 17, (1, 32))  # DequantizeLinear takes blocks from opset 21
    assert not blocks_stay_packed(site, 4, 21, (1, 16))
    added = make_model(
        [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Add", ["h", "W"], ["y"])],
        [("x", TensorProto.FLOAT, [256, 256])],
        [("y", TensorProto.FLOAT, [256, 256])],
        [("W", weight(256, 256))],
        opset=21,
        ir=10,
    )
    (shared,) = select_weights(added, SelectOptions(min_elements=64)).weights
    assert not blocks_stay_packed(shared, 4, 21, (1, 32))  # also read by an Add
    assert blocks_fit((64, 3)) and not blocks_fit((48, 3)) and not blocks_fit((64, 3, 1))


def test_max_ram_plans_blocks_that_onnxruntime_keeps_packed(tmp_path):
    r = oc.compress(chain(), min_elements=64, calibration=X, max_error=0.05, max_ram="40%", target_ort="1.32")
    plan = r.report.plan
    assert plan["measured"] <= 0.05 and plan["ram"]["estimated"] <= plan["ram"]["budget"]
    assert all(t.encoding == "blocks" and t.ram_after == t.bytes_after for t in r.report.tensors if t.name == "W")
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(r.model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    optimized = onnx.load(tmp_path / "optimized.onnx").graph
    if tuple(int(p) for p in ort.__version__.split(".")[:2]) >= (1, 32):  # where INT8 blocks fuse
        assert "MatMulNBits" in {n.op_type for n in optimized.node}
        floats = [int(np.prod(t.dims)) for t in optimized.initializer if t.data_type == TensorProto.FLOAT]
        assert max(floats) < 256 * 256 // 8  # W is not held as floats
    assert "MatMulNBits kernel" in (blocks_note(r.report.tensors) or "")
    meta = {p.key: p.value for p in r.model.metadata_props}
    assert '"W":{"bits":8,"block":32,"values":"int8 blocks"}' in meta["onnxcompress.tensors"]


NEWEST = tuple(int(p) for p in ort.__version__.split(".")[:2]) >= (1, 32)


@pytest.mark.skipif(not NEWEST, reason="INT8 blocks fuse from onnxruntime 1.32")
def test_blocks_are_offered_only_where_this_onnxruntime_fuses_them():
    """onnxruntime 1.24.4 and 1.32 leave the DequantizeLinear of a MatMul whose output a Relu
    reads unfused (it would decode at every call): the planner asks, and offers blocks there
    for V only."""
    from onnxcompress.runtime.fusion import fused_blocks

    for activation, expected in (("Sigmoid", {"W", "V"}), ("Relu", {"V"})):
        model = chain(21, activation)
        sites = select_weights(model, SelectOptions(min_elements=64)).weights
        assert fused_blocks(model, sites, 8) == expected, activation
        assert fused_blocks(model, sites, 4) == expected, activation
    assert fused_blocks(chain(21), [], 8) == set()


def test_below_opset_21_the_refusal_says_how_to_reach_blocks():
    with pytest.raises(oc.TargetError, match="pass --opset 21 --target-ort 1.32 to let MatMul weights stay packed"):
        oc.compress(chain(17), min_elements=64, calibration=X, max_error=0.05, max_ram="40%")


def test_the_confirmation_bisects_the_larger_plans_by_their_built_error():
    """Where built models measure above the probe (integer blocks' activation rounding), the
    smallest larger plan within the target is found in log2(n) builds, not one per plan, and
    the measure's last built outputs are the chosen plan's."""
    from onnxcompress.planning.ladder import Option, Plan
    from onnxcompress.planning.plan import _smallest_built_within
    from onnxcompress.recipe import AsCodebook

    plans = [Plan({"W": Option(AsCodebook(1 + i % 8, "tensor", i >= 8, i))}, bytes=100 + i, distortion=0.0) for i in range(40)]
    error_of = {i: 0.2 - 0.005 * i for i in range(40)}  # within 0.05 from plan 30 on
    measured: list[int] = []

    class Measure:
        def built(self, recipe):
            index = recipe.choices["W"].axis
            measured.append(index)
            return error_of[index]

    missed: list[float] = []
    found, error = _smallest_built_within(plans, 0.0501, Measure(), missed)
    assert found is plans[30] and error == error_of[30]
    assert len(measured) <= 7 and missed and all(e > 0.0501 for e in missed)
    assert measured[-1] == 30
    assert _smallest_built_within(plans, 0.001, Measure(), [])[0] is None
