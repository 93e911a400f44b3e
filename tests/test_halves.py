"""float16 weights are read from one table of every finite float16 value (folded at load from
3 KB of constants), with no Cast: their positions in two bytes become INT32 by a MatMulInteger,
then Gather reads the table. The weight onnxruntime folds must be the float16 values to the bit."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort
import pytest
from decoded import substitute_decoded
from models import conv, constant_node, feed_for, if_branch, if_branch_constants, loop_body, make_model, matmul_chain, weight
from onnx import TensorProto, helper

from onnxcompress.graph.decode import IDENTITY_MAX
from onnxcompress.graph.halves import FINITE_HALVES, HALF_BASE, build_half_decoder, half_table
from onnxcompress.graph.rewrite import rewrite_graph
from onnxcompress.io.select import select_weights
from onnxcompress.options import SelectOptions

FINITE = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16)
FINITE = FINITE[np.isfinite(FINITE)]


def decoded(half: np.ndarray, dtype=np.float32) -> np.ndarray:
    nodes, table = half_table(np.dtype(dtype), "levels")
    out = gs.Variable("W", dtype=dtype, shape=list(half.shape))
    nodes += build_half_decoder(half, table, "W", out)
    assert "Cast" not in [n.op for n in nodes]
    model = gs.export_onnx(gs.Graph(nodes=nodes, outputs=[out], opset=17))
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {})[0]


def assert_same_bits(got: np.ndarray, half: np.ndarray, dtype=np.float32) -> None:
    want = half.astype(dtype)
    assert got.shape == want.shape and got.dtype == want.dtype
    uint = np.uint32 if dtype == np.float32 else np.uint64
    np.testing.assert_array_equal(got.view(uint), want.view(uint))  # -0.0 stays -0.0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_every_finite_float16_value_comes_back(dtype):
    """The brute-force oracle: all 63,488 finite float16 values (both zeros, subnormals,
    +-65504) in one weight, so the positions reach the top of 255 * high + low."""
    assert FINITE.size == FINITE_HALVES <= HALF_BASE * 256
    half = np.random.default_rng(0).permutation(FINITE).reshape(248, 256)
    assert_same_bits(decoded(half, dtype), half, dtype)


@pytest.mark.parametrize(
    "shape", [(13, 11), (5, IDENTITY_MAX), (5, IDENTITY_MAX + 1), (6, 5, 1, 1), (3, 2, 1, 17), (IDENTITY_MAX + 1,), (3,), ()]
)
def test_any_shape_decodes_exactly(shape):
    half = np.random.default_rng(len(shape)).choice(FINITE, size=shape).astype(np.float16)
    assert_same_bits(decoded(half), half)


def halves_of(model: onnx.ModelProto) -> list:
    sites = select_weights(model, SelectOptions(min_elements=16)).weights
    return [(s, s.array.astype(np.float16)) for s in sites]


def run(model: onnx.ModelProto, feed: dict) -> np.ndarray:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)[0]


@pytest.mark.parametrize("make", [lambda: matmul_chain("A", (64, 48), "B", (48, 24)), conv])
def test_weights_share_one_table_and_no_cast(make):
    """The model's outputs are those of the same model with its weights rounded to float16."""
    model = make()
    halves = halves_of(model)
    rewritten, stored = rewrite_graph(model, [], halves=halves)
    onnx.checker.check_model(rewritten, full_check=True)
    assert set(stored.values()) == {"table"} and len(stored) == len(halves)
    ops = [n.op_type for n in rewritten.graph.node]
    assert "Cast" not in ops and ops.count("MatMulInteger") == len(halves) and ops.count("Reshape") == 1  # one table
    rounded = onnx.ModelProto()
    rounded.CopyFrom(model)
    for t in rounded.graph.initializer:
        t.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(t).astype(np.float16).astype(np.float32), t.name))
    x = {
        i.name: np.random.default_rng(1).normal(size=[d.dim_value or 2 for d in i.type.tensor_type.shape.dim]).astype(np.float32)
        for i in model.graph.input
    }
    np.testing.assert_array_equal(run(rewritten, x), run(rounded, x))


def test_each_float_type_gets_its_own_table():
    model = make_model(
        [helper.make_node("MatMul", ["x", "W"], ["y"]), helper.make_node("MatMul", ["x64", "W64"], ["y64"])],
        [("x", TensorProto.FLOAT, [3, 48]), ("x64", TensorProto.DOUBLE, [3, 48])],
        [("y", TensorProto.FLOAT, [3, 40]), ("y64", TensorProto.DOUBLE, [3, 40])],
        [("W", weight(48, 40)), ("W64", weight(48, 40, dtype=np.float64))],
    )
    rewritten, _ = rewrite_graph(model, [], halves=halves_of(model))
    tables = {
        t.data_type for t in rewritten.graph.initializer if t.name.startswith("onnxcompress::float16") and "scale" in t.name
    }
    assert tables == {TensorProto.FLOAT, TensorProto.DOUBLE}
    x = np.random.default_rng(3).normal(size=(3, 48))
    y, y64 = ort.InferenceSession(rewritten.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": x.astype(np.float32), "x64": x}
    )
    halves = dict((s.name, h) for s, h in halves_of(model))
    np.testing.assert_allclose(y, x @ halves["W"].astype(np.float64), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(y64, x @ halves["W64"].astype(np.float64), rtol=1e-12, atol=1e-12)


def test_before_opset_10_a_cast_reads_the_float16_values():
    model = matmul_chain("A", (64, 48), "B", (48, 24), opset=9)
    halves = halves_of(model)
    rewritten, stored = rewrite_graph(model, [], halves=halves)
    assert set(stored.values()) == {"float16"}
    assert [n.op_type for n in rewritten.graph.node].count("Cast") == len(halves)
    x = {"x": np.random.default_rng(2).normal(size=(3, 64)).astype(np.float32)}
    want = x["x"] @ halves[0][1].astype(np.float32) @ halves[1][1].astype(np.float32)
    np.testing.assert_allclose(run(rewritten, x), want, rtol=1e-5, atol=1e-5)


class Rounded:
    """A float16 weight as decoded.substitute_decoded takes it."""

    def __init__(self, half: np.ndarray) -> None:
        self.half = half

    def decoded(self) -> np.ndarray:
        return self.half.astype(np.float32)


@pytest.mark.parametrize("make", [constant_node, if_branch, if_branch_constants, loop_body])
def test_float16_weights_in_constants_branches_and_loops(make):
    """Weights in Constant nodes (in the main graph or inside If branches) and weights read
    inside If and Loop bodies: the decoder goes to the main graph, under the weight's name."""
    model = make()
    halves = halves_of(model)
    assert halves
    rewritten, stored = rewrite_graph(model, [], halves=halves)
    onnx.checker.check_model(rewritten, full_check=True)
    assert set(stored.values()) == {"table"}
    feed = feed_for(model)
    want = ort.InferenceSession(
        substitute_decoded(model, [(s, Rounded(h)) for s, h in halves]).SerializeToString(), providers=["CPUExecutionProvider"]
    ).run(None, feed)
    got = ort.InferenceSession(rewritten.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(a, b)


def test_bfloat16_weights_keep_a_cast():
    """numpy has no bfloat16 for a table: a Cast from the float16 values to bfloat16."""
    w = (np.random.default_rng(0).normal(size=(48, 40)) * 0.2).astype(np.float32)
    bits = (w.view(np.uint32) >> 16).astype(np.uint16)
    model = make_model(
        [helper.make_node("Cast", ["W"], ["Wf"], to=TensorProto.FLOAT), helper.make_node("MatMul", ["x", "Wf"], ["y"])],
        [("x", TensorProto.FLOAT, [3, 48])],
        [("y", TensorProto.FLOAT, [3, 40])],
    )
    model.graph.initializer.append(helper.make_tensor("W", TensorProto.BFLOAT16, w.shape, bits.tobytes(), raw=True))
    halves = halves_of(model)
    rewritten, stored = rewrite_graph(model, [], halves=halves)
    onnx.checker.check_model(rewritten, full_check=True)
    assert stored == {"W": "float16"}
    cast = next(n for n in rewritten.graph.node if n.output[0] == "W")
    assert cast.op_type == "Cast" and cast.attribute[0].i == TensorProto.BFLOAT16
    x = {"x": np.random.default_rng(1).normal(size=(3, 48)).astype(np.float32)}
    assert run(rewritten, x).shape == (3, 40)
