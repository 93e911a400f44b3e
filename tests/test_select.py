"""Which weights are compressed, and why the others are left alone."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from models import F, make_model, matmul_chain, weight
from onnx import TensorProto, helper

from onnxcompress.io.select import select_weights
from onnxcompress.options import SelectOptions


def names(model, **opts):
    sel = select_weights(model, SelectOptions(**{"min_elements": 64, **opts}))
    return [w.name for w in sel.weights], {s.name: s.reason for s in sel.skipped}


def test_integer_bool_and_small_tensors_are_not_candidates():
    m = make_model(
        [
            helper.make_node("MatMul", ["x", "W"], ["a"]),
            helper.make_node("Add", ["a", "bias"], ["b"]),
            helper.make_node("Reshape", ["b", "shape"], ["y"]),
        ],
        [("x", F, [2, 16])],
        [("y", F, [32])],
        [("W", weight(16, 16)), ("bias", weight(16)), ("shape", np.array([32], dtype=np.int64))],
    )
    picked, skipped = names(m)
    assert picked == ["W"] and skipped == {}


def test_initializer_that_is_also_a_graph_input_is_left_alone():
    m = make_model(
        [helper.make_node("MatMul", ["x", "W"], ["y"])],
        [("x", F, [2, 16]), ("W", F, [16, 16])],
        [("y", F, [2, 16])],
        [("W", weight(16, 16))],
    )
    picked, skipped = names(m)
    assert picked == [] and "graph input" in skipped["W"]


def test_float_tensor_used_as_scales_or_quantization_parameter_is_left_alone():
    m = make_model(
        [
            helper.make_node("Resize", ["x", "", "scales"], ["r"]),
            helper.make_node("DequantizeLinear", ["q", "qscale"], ["d"]),
            helper.make_node("Add", ["r", "d"], ["y"]),
        ],
        [("x", F, [1, 1, 8, 8]), ("q", TensorProto.UINT8, [1, 1, 16, 16])],
        [("y", F, [1, 1, 16, 16])],
        [("scales", np.ones(64, np.float32)), ("qscale", np.ones(64, np.float32))],
    )
    _, skipped = names(m)
    assert "Resize" in skipped["scales"] and "DequantizeLinear" in skipped["qscale"]


def test_weight_used_both_as_data_and_as_a_non_data_input_is_left_alone():
    m = make_model(
        [helper.make_node("MatMul", ["x", "W"], ["a"]), helper.make_node("Clip", ["a", "W"], ["y"])],
        [("x", F, [2, 16])],
        [("y", F, [2, 16])],
        [("W", weight(16, 16))],
    )
    _, skipped = names(m)
    assert "Clip" in skipped["W"]


def test_custom_domain_consumers_are_left_alone():
    graph = helper.make_graph(
        [helper.make_node("Foo", ["x", "W"], ["y"], domain="com.example")],
        "g",
        [helper.make_tensor_value_info("x", F, [2])],
        [helper.make_tensor_value_info("y", F, [2])],
        [onnx.numpy_helper.from_array(weight(16, 16), "W")],
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])
    _, skipped = names(m)
    assert "com.example.Foo" in skipped["W"]


def test_threshold_and_regexes():
    m = matmul_chain("enc.W", (16, 16), "dec.W", (16, 8))
    assert names(m)[0] == ["enc.W", "dec.W"]
    assert names(m, min_elements=200)[0] == ["enc.W"]
    assert names(m, include=r"^dec")[0] == ["dec.W"]
    assert names(m, exclude=r"^dec")[0] == ["enc.W"]


def test_consumers_include_subgraph_nodes():
    from models import if_branch

    sel = select_weights(if_branch(), SelectOptions(min_elements=64))
    [w] = sel.weights
    assert w.name == "W" and all(c.in_subgraph for c in w.consumers) and len(w.consumers) == 2


def test_weights_holding_nan_or_infinity_are_kept_exact():
    """An attention mask with -inf (found by the conformance sweep): never clustered."""
    import onnxcompress as oc

    mask = np.zeros((16, 16), np.float32)
    mask[np.triu_indices(16, 1)] = -np.inf
    model = make_model(
        [helper.make_node("Add", ["x", "M"], ["y"])],
        [("x", F, [16, 16])],
        [("y", F, [16, 16])],
        [("M", mask)],
    )
    sel = select_weights(model, SelectOptions(min_elements=16))
    assert not sel.weights and "NaN or infinity" in sel.skipped[0].reason
    with pytest.raises(oc.CompressError, match="nothing to compress"):
        oc.compress(model, min_elements=16)


# Every elementwise op of one input reads it as data: a weight it consumes is a weight to compress.
UNARY_OPS = (
    "Abs Acos Acosh Asin Asinh Atan Atanh Ceil Celu Cos Cosh Elu Erf Exp Floor Gelu HardSigmoid HardSwish Hardmax "
    "Identity IsInf IsNaN LeakyRelu Log LogSoftmax Mish Neg Reciprocal Relu Round Selu Shrink Sigmoid Sign Sin Sinh "
    "Softmax Softplus Softsign Sqrt Tan Tanh ThresholdedRelu"
).split()
REDUCE_OPS = (
    "ReduceSum ReduceMean ReduceMax ReduceMin ReduceProd ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceSumSquare".split()
)


@pytest.mark.parametrize("op", UNARY_OPS + REDUCE_OPS)
def test_a_weight_read_as_data_is_selected(op):
    """The weight is the op's data input (input 0); a Reduce's axes (input 1) are not data."""
    inputs = ["W", "axes"] if op in REDUCE_OPS else ["W"]
    inits = [("W", weight(16, 16))] + ([("axes", np.array([1], dtype=np.int64))] if op in REDUCE_OPS else [])
    m = make_model([helper.make_node(op, inputs, ["y"])], [], [("y", F, None)], inits, opset=18)
    picked, skipped = names(m)
    assert picked == ["W"] and skipped == {}
