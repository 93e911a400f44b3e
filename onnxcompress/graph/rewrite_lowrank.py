"""Rewrite each consumer of a factored weight W = left @ right as a pair.

    MatMul(X, W)          -> MatMul(MatMul(X, left), right)
    MatMul(W, X)          -> MatMul(left, MatMul(right, X))
    Gemm(A, W, C)         -> Gemm(Gemm(A, left; alpha, transA), right, C; beta)      (transB = 0)
                             Gemm(Gemm(A, right; alpha, transA, transB), left, C; beta, transB)
    Conv(X, W, B)         -> Conv(Conv(X, right as r filters of Cin x k...; same strides, pads,
                             dilations, auto_pad), left as Cout 1x1 filters, B)
    Gather(W, ids)        -> MatMul(Gather(left, ids), right)

The last node keeps the consumer's output name, so nothing downstream changes. The factors
become initializers named `<weight>::lowrank_left` and `<weight>::lowrank_right`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..encoding.lowrank import LEFT, RIGHT, LowRankPair, factor_arrays
from ..io.select import WeightSite


def rewrite_pairs(model: onnx.ModelProto, pairs: list[tuple[WeightSite, LowRankPair]], opset: int) -> onnx.ModelProto:
    """A copy of `model` with every consumer of each factored weight rewritten as a pair."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    by_name = {site.name: pair for site, pair in pairs}
    nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        if node.op_type == "Constant" and node.output and node.output[0] in by_name:
            continue  # the weight itself: its factors replace it
        hits = [(i, name) for i, name in enumerate(node.input) if name in by_name]
        if not hits:
            nodes.append(node)
            continue
        ((index, name),) = hits  # factor_kind admits a weight only where one input reads it
        nodes += _pair_nodes(node, index, name, opset, by_name[name].left.dtype)
    del graph.node[:]
    graph.node.extend(nodes)

    keep = [t for t in graph.initializer if t.name not in by_name]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    for site, pair in pairs:
        left, right = factor_arrays(pair)
        graph.initializer.append(numpy_helper.from_array(left, site.name + LEFT))
        graph.initializer.append(numpy_helper.from_array(right, site.name + RIGHT))
    keep_info = [v for v in graph.value_info if v.name not in by_name]
    del graph.value_info[:]
    graph.value_info.extend(keep_info)
    return out


def _pair_nodes(node: onnx.NodeProto, index: int, weight: str, opset: int, dtype: np.dtype) -> list[onnx.NodeProto]:
    left, right = weight + LEFT, weight + RIGHT
    mid = f"{node.output[0]}::lowrank_mid"
    first_name, second_name = (f"{node.name or node.output[0]}/lowrank_{s}" for s in ("first", "second"))
    attrs: dict[str, Any] = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    x = [n for i, n in enumerate(node.input) if i != index]
    op = node.op_type

    if op == "MatMul" and index == 1:
        return [
            helper.make_node("MatMul", [x[0], left], [mid], first_name),
            helper.make_node("MatMul", [mid, right], list(node.output), second_name),
        ]
    if op == "MatMul":
        return [
            helper.make_node("MatMul", [right, x[0]], [mid], first_name),
            helper.make_node("MatMul", [left, mid], list(node.output), second_name),
        ]
    if op == "Gather":
        return [
            helper.make_node("Gather", [left, x[0]], [mid], first_name, axis=0),
            helper.make_node("MatMul", [mid, right], list(node.output), second_name),
        ]
    if op == "Gemm":
        trans_b = int(attrs.get("transB", 0))
        near, far = (right, left) if trans_b else (left, right)  # what A meets first
        a_input = node.input[0]
        bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
        extra: dict[str, Any] = {"broadcast": 1} if opset < 7 else {}
        nodes = []
        zero = None
        if opset < 11:  # C is optional only from Gemm-11
            zero = f"{node.output[0]}::lowrank_zero"
            value = numpy_helper.from_array(np.zeros([1], dtype=dtype))
            nodes.append(helper.make_node("Constant", [], [zero], f"{first_name}/zero", value=value))
        nodes.append(
            helper.make_node(
                "Gemm",
                [a_input, near] + ([zero] if zero else []),
                [mid],
                first_name,
                alpha=float(attrs.get("alpha", 1.0)),
                transA=int(attrs.get("transA", 0)),
                transB=trans_b,
                **extra,
            )
        )
        second_c = [bias] if bias else ([zero] if zero else [])
        nodes.append(
            helper.make_node(
                "Gemm",
                [mid, far] + second_c,
                list(node.output),
                second_name,
                beta=float(attrs.get("beta", 1.0)) if bias else 1.0,
                transB=trans_b,
                **extra,
            )
        )
        return nodes
    if op == "Conv":
        bias = [node.input[2]] if len(node.input) > 2 and node.input[2] else []
        spatial_attrs = {k: v for k, v in attrs.items() if k in ("auto_pad", "dilations", "pads", "strides", "kernel_shape")}
        first = helper.make_node("Conv", [node.input[0], right], [mid], first_name, **spatial_attrs)
        kernel = attrs.get("kernel_shape")
        point: dict[str, Any] = {"kernel_shape": [1] * len(kernel)} if kernel else {}
        return [first, helper.make_node("Conv", [mid, left, *bias], list(node.output), second_name, **point)]
    raise AssertionError(f"factor_kind admitted {op} input {index}")  # pragma: no cover - guarded by factor_kind
