"""Small real ONNX models built with onnx.helper, one per consumer kind and weight location."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

_rng = [np.random.default_rng(1234)]


def weight(*shape: int, dtype=np.float32) -> np.ndarray:
    return (_rng[0].normal(size=shape) * 0.2).astype(dtype)


def make_model(nodes, inputs, outputs, inits=(), opset: int = 17, ir: int = 8) -> onnx.ModelProto:
    _rng[0] = np.random.default_rng(1234)  # the next model's weights do not depend on call order
    graph = helper.make_graph(
        nodes,
        "test",
        [helper.make_tensor_value_info(n, t, s) for n, t, s in inputs],
        [helper.make_tensor_value_info(n, t, s) for n, t, s in outputs],
        [numpy_helper.from_array(a, name) for name, a in inits],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = ir
    return model


F = TensorProto.FLOAT


def matmul(opset: int = 17, ir: int = 8):
    return make_model(
        [helper.make_node("MatMul", ["x", "W"], ["y"])],
        [("x", F, ["batch", 48])],
        [("y", F, ["batch", 40])],
        [("W", weight(48, 40))],
        opset=opset,
        ir=ir,
    )


def matmul_chain(
    first: str,
    first_shape: tuple[int, int],
    second: str,
    second_shape: tuple[int, int],
    activation: str | None = None,
    opset: int = 17,
):
    """x @ first @ second, for tests about two weights of different shapes; with `activation`,
    that op between the two (opset 21 and later: IR 10)."""
    nodes = [helper.make_node("MatMul", ["x", first], ["h"])]
    if activation is not None:
        nodes.append(helper.make_node(activation, ["h"], ["a"]))
    nodes.append(helper.make_node("MatMul", ["a" if activation else "h", second], ["y"]))
    return make_model(
        nodes,
        [("x", F, ["batch", first_shape[0]])],
        [("y", F, ["batch", second_shape[1]])],
        [(first, weight(*first_shape)), (second, weight(*second_shape))],
        opset=opset,
        ir=10 if opset >= 21 else 8,
    )


def gemm(trans_b: int):
    w = weight(40, 48) if trans_b else weight(48, 40)
    return make_model(
        [helper.make_node("Gemm", ["x", "W", "b"], ["y"], transB=trans_b, alpha=0.7, beta=1.3)],
        [("x", F, ["batch", 48])],
        [("y", F, ["batch", 40])],
        [("W", w), ("b", weight(40))],
    )


def conv():
    return make_model(
        [helper.make_node("Conv", ["x", "W", "b"], ["y"], pads=[1, 1, 1, 1], strides=[2, 2])],
        [("x", F, [1, 8, 12, 12])],
        [("y", F, [1, 16, 6, 6])],
        [("W", weight(16, 8, 3, 3)), ("b", weight(16))],
    )


def conv_transpose():
    return make_model(
        [helper.make_node("ConvTranspose", ["x", "W"], ["y"], strides=[2, 2])],
        [("x", F, [1, 16, 5, 5])],
        [("y", F, ["n", "c", "h", "w"])],
        [("W", weight(16, 12, 3, 3))],
    )


def embedding():
    return make_model(
        [helper.make_node("Gather", ["E", "ids"], ["y"], axis=0)],
        [("ids", TensorProto.INT64, ["batch", "seq"])],
        [("y", F, ["batch", "seq", 24])],
        [("E", weight(300, 24))],
    )


def columns_table(rows: int = 8192, seed: int = 11) -> tuple[onnx.ModelProto, np.ndarray]:
    """An embedding table whose 6 columns span scales 1e-3 to 1 (long enough, at 8192 rows, for
    codebooks per column: planning/candidates.LONG_CHANNEL), and the table itself."""
    rng = np.random.default_rng(seed)
    table = (rng.standard_t(4, size=(rows, 6)) * np.logspace(-3, 0, 6)).astype(np.float32)
    model = make_model(
        [helper.make_node("Gather", ["E", "ids"], ["y"], axis=0)],
        [("ids", TensorProto.INT64, ["batch", "seq"])],
        [("y", F, ["batch", "seq", 6])],
        [("E", table)],
    )
    return model, table


def lstm():
    hidden, inp = 16, 12
    return make_model(
        [helper.make_node("LSTM", ["x", "W", "R", "B"], ["y", "h"], hidden_size=hidden)],
        [("x", F, [5, 2, inp])],
        [("y", F, [5, 1, 2, hidden]), ("h", F, [1, 2, hidden])],
        [("W", weight(1, 4 * hidden, inp)), ("R", weight(1, 4 * hidden, hidden)), ("B", weight(1, 8 * hidden))],
    )


def gru():
    hidden, inp = 16, 12
    return make_model(
        [helper.make_node("GRU", ["x", "W", "R"], ["y", "h"], hidden_size=hidden)],
        [("x", F, [5, 2, inp])],
        [("y", F, [5, 1, 2, hidden]), ("h", F, [1, 2, hidden])],
        [("W", weight(1, 3 * hidden, inp)), ("R", weight(1, 3 * hidden, hidden))],
    )


def elementwise_and_einsum():
    return make_model(
        [
            helper.make_node("Mul", ["x", "S"], ["a"]),
            helper.make_node("Add", ["a", "S"], ["b"]),  # S is shared by two consumers: decoded once
            helper.make_node("Einsum", ["b", "W"], ["y"], equation="bij,jk->bik"),
        ],
        [("x", F, [2, 30, 40])],
        [("y", F, [2, 30, 24])],
        [("S", weight(30, 40)), ("W", weight(40, 24))],
    )


def constant_node():
    """Weights kept in Constant nodes, with no initializers at all (as Paddle exports do)."""
    w = weight(48, 40)
    const = helper.make_node("Constant", [], ["W"], value=numpy_helper.from_array(w, "W"))
    return make_model([const, helper.make_node("MatMul", ["x", "W"], ["y"])], [("x", F, [3, 48])], [("y", F, [3, 40])])


def if_branch():
    """A main-graph weight read only inside both branches of an If."""
    then_g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["t"])], "then", [], [helper.make_tensor_value_info("t", F, [3, 40])]
    )
    else_g = helper.make_graph(
        [helper.make_node("Mul", ["x", "s"], ["xs"]), helper.make_node("MatMul", ["xs", "W"], ["e"])],
        "else",
        [],
        [helper.make_tensor_value_info("e", F, [3, 40])],
    )
    return make_model(
        [helper.make_node("If", ["cond"], ["y"], then_branch=then_g, else_branch=else_g)],
        [("cond", TensorProto.BOOL, []), ("x", F, [3, 48])],
        [("y", F, [3, 40])],
        [("W", weight(48, 40)), ("s", np.array([2.0], dtype=np.float32))],
    )


def if_branch_constants():
    """Each branch of an If holds its own weight in a Constant node inside it, as the If-branch
    form of silero's voice detector does (16 kHz and 8 kHz branches)."""

    def branch(name: str, seed: int) -> onnx.GraphProto:
        w = np.random.default_rng(seed).normal(size=(48, 40)).astype(np.float32)
        const = helper.make_node("Constant", [], [f"W_{name}"], value=numpy_helper.from_array(w, f"W_{name}"))
        matmul = helper.make_node("MatMul", ["x", f"W_{name}"], [f"{name}_y"])
        return helper.make_graph([const, matmul], name, [], [helper.make_tensor_value_info(f"{name}_y", F, [3, 40])])

    return make_model(
        [helper.make_node("If", ["cond"], ["y"], then_branch=branch("then", 1), else_branch=branch("else", 2))],
        [("cond", TensorProto.BOOL, []), ("x", F, [3, 48])],
        [("y", F, [3, 40])],
    )


def loop_body():
    """A main-graph weight read only inside a Loop body: v <- v @ W, three times."""
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]), helper.make_node("MatMul", ["v_in", "W"], ["v_out"])],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_in", F, [3, 40]),
        ],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []), helper.make_tensor_value_info("v_out", F, [3, 40])],
    )
    return make_model(
        [helper.make_node("Loop", ["trips", "", "x"], ["y"], body=body)],
        [("x", F, [3, 40])],
        [("y", F, [3, 40])],
        [("trips", np.array(3, dtype=np.int64)), ("W", weight(40, 40) * 0.5)],
    )


def float16_and_double():
    return make_model(
        [
            helper.make_node("MatMul", ["x16", "W16"], ["y16"]),
            helper.make_node("MatMul", ["x64", "W64"], ["y64"]),
        ],
        [("x16", TensorProto.FLOAT16, [3, 48]), ("x64", TensorProto.DOUBLE, [3, 48])],
        [("y16", TensorProto.FLOAT16, [3, 40]), ("y64", TensorProto.DOUBLE, [3, 40])],
        [("W16", weight(48, 40, dtype=np.float16)), ("W64", weight(48, 40, dtype=np.float64))],
    )


def matmul_3d(dtype=np.float32):
    t = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    return make_model(
        [helper.make_node("MatMul", ["x", "W"], ["y"])],
        [("x", t, ["batch", "seq", 96])],
        [("y", t, ["batch", "seq", 80])],
        [("W", weight(96, 80, dtype=dtype))],
    )


def matmul_left():
    """W @ x: the weight is MatMul's first input."""
    return make_model(
        [helper.make_node("MatMul", ["W", "x"], ["y"])],
        [("x", F, [96, "n"])],
        [("y", F, [80, "n"])],
        [("W", weight(80, 96))],
    )


def gemm_full(trans_a: int, trans_b: int, bias: bool, opset: int = 17):
    k, n = 96, 80
    w = weight(n, k) if trans_b else weight(k, n)
    x_shape = [k, "m"] if trans_a else ["m", k]
    inputs = ["x", "W"] + (["b"] if bias else [])
    inits = [("W", w)] + ([("b", weight(n))] if bias else [])
    return make_model(
        [helper.make_node("Gemm", inputs, ["y"], transA=trans_a, transB=trans_b, alpha=0.7, beta=1.3)],
        [("x", F, x_shape)],
        [("y", F, ["m", n])],
        inits,
        opset=opset,
    )


def conv_with(spatial: int = 2, bias: bool = True, kernel_shape_attr: bool = True, group: int = 1, **attrs):
    cin, cout, k = 12, 24, 3
    size = {1: [20], 2: [13, 11], 3: [7, 6, 5]}[spatial]
    if kernel_shape_attr:
        attrs["kernel_shape"] = [k] * spatial
    inputs = ["x", "W"] + (["b"] if bias else [])
    inits = [("W", weight(cout, cin // group, *([k] * spatial)))] + ([("b", weight(cout))] if bias else [])
    return make_model(
        [helper.make_node("Conv", inputs, ["y"], group=group, **attrs)],
        [("x", F, ["batch", cin, *size])],
        [("y", F, ["batch", cout] + ["s"] * spatial)],
        inits,
    )


def gather_scalar():
    """Gather with a scalar index: one row, rank 1."""
    return make_model(
        [helper.make_node("Gather", ["E", "i"], ["y"], axis=0)],
        [("i", TensorProto.INT64, [])],
        [("y", F, [24])],
        [("E", weight(300, 24))],
    )


def low_rank_weight(rows: int = 256, cols: int = 192, rank: int = 6, noise: float = 1e-3):
    """x @ W where W is rank `rank` plus a little noise: what low rank is for."""
    rng = np.random.default_rng(7)
    w = (rng.normal(size=(rows, rank)) @ rng.normal(size=(rank, cols)) / np.sqrt(rank)).astype(np.float32)
    w += (noise * rng.normal(size=w.shape)).astype(np.float32)
    model = make_model(
        [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("MatMul", ["h", "V"], ["y"])],
        [("x", F, ["batch", rows])],
        [("y", F, ["batch", 64])],
        [("W", w), ("V", weight(cols, 64))],
    )
    return model


# Models whose weights a low-rank pair can replace, one per rewrite.
FACTORABLE = {
    "matmul": matmul,
    "matmul_3d": matmul_3d,
    "matmul_left": matmul_left,
    "matmul_fp16": lambda: matmul_3d(np.float16),
    "gemm": lambda: gemm_full(0, 0, True),
    "gemm_transB": lambda: gemm_full(0, 1, True),
    "gemm_transA_transB_nobias": lambda: gemm_full(1, 1, False),
    "gemm_transA_opset9": lambda: gemm_full(1, 0, True, opset=9),
    "gemm_nobias_opset11": lambda: gemm_full(0, 1, False, opset=11),
    "conv": conv,
    "conv_dilated_padded": lambda: conv_with(2, strides=[2, 1], pads=[1, 0, 2, 1], dilations=[2, 1]),
    "conv_same_upper": lambda: conv_with(2, auto_pad="SAME_UPPER", strides=[2, 2]),
    "conv1d_nobias_no_kernel_attr": lambda: conv_with(1, bias=False, kernel_shape_attr=False, strides=[3]),
    "conv3d": lambda: conv_with(3, pads=[1] * 6),
    "embedding": embedding,
    "gather_scalar": gather_scalar,
    "constant_node": constant_node,
}


ALL = {
    "matmul": matmul,
    "gemm_transB": lambda: gemm(1),
    "gemm": lambda: gemm(0),
    "conv": conv,
    "conv_transpose": conv_transpose,
    "embedding": embedding,
    "lstm": lstm,
    "gru": gru,
    "mul_add_einsum": elementwise_and_einsum,
    "constant_node": constant_node,
    "if_branch": if_branch,
    "if_branch_constants": if_branch_constants,
    "loop_body": loop_body,
    "float16_float64": float16_and_double,
}


def feed_for(model: onnx.ModelProto, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feed = {}
    for inp in model.graph.input:
        tt = inp.type.tensor_type
        shape = [d.dim_value if d.dim_value > 0 else 3 for d in tt.shape.dim]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)
        if dtype == np.bool_:
            feed[inp.name] = np.array(bool(seed % 2))
        elif dtype.kind == "i":
            feed[inp.name] = rng.integers(0, 300, size=shape).astype(dtype)
        else:
            feed[inp.name] = rng.normal(size=shape).astype(dtype)
    return feed
