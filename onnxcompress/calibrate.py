"""Calibration: from real inputs, how much each element of each weight matters to the outputs
of its consumers.

For Y = X @ W, an error E in W changes Y by X @ E, whose expected squared norm is
sum_i E[x_i^2] * ||E_i||^2 (cross terms averaged out): so element (i, j) of W weighs E[x_i^2],
the mean square of the input feature it multiplies. The same holds per input channel for Conv
and ConvTranspose, per column of the other operand for a weight on MatMul's left, and per
reduction index of Gemm's B. An embedding row weighs how often it is looked up (plus a floor,
so rows the calibration data never reads still count a little). Any other consumer weighs
every element the same. With these as k-means weights, the exact weighted DP minimizes the
error that reaches the consumer's output, not the weight's own.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx

from .select import WeightSite
from .verify import run, session

UNSEEN_ROW_FLOOR = 0.1  # an embedding row never looked up weighs this much of the mean row


def importances(model: onnx.ModelProto, weights: list[WeightSite], feeds: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Per weight name, non-negative element weights in the weight's shape with mean 1 (so a
    weight's sensitivity-weighted error stays comparable to its plain error)."""
    wanted = {w.name: w for w in weights}
    rules: dict[str, list[_Rule | None]] = defaultdict(list)
    for node in model.graph.node:
        for i, name in enumerate(node.input):
            if name in wanted:
                rules[name].append(_rule(node, i, wanted[name]) if node.domain in ("", "ai.onnx") else None)
    stats = _capture(model, {(r.activation, r.axis) for rs in rules.values() for r in rs if r is not None}, feeds)

    out: dict[str, np.ndarray] = {}
    for site in weights:
        parts = []
        for rule in rules.get(site.name, []):
            part = rule.finish(stats.get((rule.activation, rule.axis))) if rule is not None else None
            parts.append(np.ones([1] * site.array.ndim) if part is None else part / part.mean())
        if not parts or any(c.in_subgraph for c in site.consumers):
            parts.append(np.ones([1] * site.array.ndim))  # a reader whose sensitivity is not modelled
        total = sum(np.broadcast_to(p, site.array.shape).astype(np.float64) for p in parts) / len(parts)
        out[site.name] = np.ascontiguousarray(np.broadcast_to(total, site.array.shape), dtype=np.float32)
    return out


@dataclass
class _Rule:
    """Which activation to measure (its mean square along `axis`, or with axis None the lookup
    counts of integer ids) and how that vector becomes element weights."""

    activation: str
    axis: int | None
    finish_vector: Callable[[np.ndarray], np.ndarray | None]

    def finish(self, vector: np.ndarray | None) -> np.ndarray | None:
        if vector is None or not np.all(np.isfinite(vector)) or vector.sum() <= 0:
            return None
        return self.finish_vector(vector)


def _rule(node: onnx.NodeProto, index: int, site: WeightSite) -> _Rule | None:
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    shape = site.array.shape
    ndim = len(shape)
    op = node.op_type

    def along(axis: int, size: int):
        return lambda v: _expand(v, ndim, axis) if v.size == size else None

    if op == "MatMul" and ndim == 2 and len(node.input) == 2:
        if index == 1:  # X @ W: row i of W meets feature i of X (X's last axis)
            return _Rule(node.input[0], -1, along(0, shape[0]))
        return _Rule(node.input[1], -2, along(1, shape[1]))  # W @ X: column k meets row k of X
    if op == "Gemm" and index == 1 and ndim == 2:
        a_axis = 0 if attrs.get("transA", 0) else 1  # A' = A^T: the reduction index is A's axis 0
        w_axis = 1 if attrs.get("transB", 0) else 0
        return _Rule(node.input[0], a_axis, along(w_axis, shape[w_axis]))
    if op == "Conv" and index == 1 and ndim >= 3:
        group = int(attrs.get("group", 1))
        cout, cin = shape[:2]
        if cout % group:
            return None

        def per_filter(v: np.ndarray) -> np.ndarray | None:
            if v.size != group * cin:
                return None
            table = v.reshape(group, cin)[np.arange(cout) // (cout // group)]  # [Cout, Cin / group]
            return table.reshape(cout, cin, *([1] * (ndim - 2)))

        return _Rule(node.input[0], 1, per_filter)
    if op == "ConvTranspose" and index == 1 and ndim >= 3:
        return _Rule(node.input[0], 1, along(0, shape[0]))
    if op == "Gather" and index == 0 and int(attrs.get("axis", 0)) in (0, -ndim) and len(node.input) > 1:
        rows = shape[0]

        def lookups(counts: np.ndarray) -> np.ndarray | None:
            counts = np.pad(counts, (0, max(0, rows - counts.size)))[:rows]  # ids past the table never run
            return _expand(counts + UNSEEN_ROW_FLOOR * counts.mean(), ndim, 0)

        return _Rule(node.input[1], None, lookups)
    return None


def _expand(vector: np.ndarray, ndim: int, axis: int) -> np.ndarray:
    shape = [1] * ndim
    shape[axis] = vector.size
    return vector.reshape(shape)


def _capture(
    model: onnx.ModelProto, wanted: set[tuple[str, int | None]], feeds: list[dict[str, np.ndarray]]
) -> dict[tuple[str, int | None], np.ndarray]:
    """Mean squares along the wanted axes (or id counts) of these tensors over all feeds: fed
    inputs directly, initializers from the model, the rest as extra outputs of onnxruntime,
    reduced feed by feed so only one feed's activations are held at a time."""
    inits = {t.name: t for t in model.graph.initializer}
    names = sorted({name for name, _ in wanted})
    run_names = [n for n in names if n not in inits and not all(n in feed for feed in feeds)]
    sess = None
    if run_names:
        probe = onnx.ModelProto()
        probe.CopyFrom(model)
        existing = {o.name for o in probe.graph.output}
        probe.graph.output.extend(onnx.ValueInfoProto(name=n) for n in run_names if n not in existing)
        sess = session(probe, "the model with its activations exposed")
    sums: dict[tuple[str, int | None], np.ndarray] = {}
    counts: dict[tuple[str, int | None], int] = defaultdict(int)
    for feed in feeds:
        values = {n: feed[n] for n in names if n in feed}
        values.update({n: onnx.numpy_helper.to_array(inits[n]) for n in names if n in inits and n not in feed})
        if sess is not None:
            (outs,) = run(sess, [feed], "the model on the calibration inputs", run_names)
            values.update(zip(run_names, outs, strict=True))
        for key in wanted:
            name, axis = key
            v = np.asarray(values[name])
            if axis is None:  # lookup counts of ids
                ids = v.reshape(-1).astype(np.int64)
                part = np.bincount(ids[ids >= 0], minlength=1).astype(np.float64)
                n = 1
            else:
                if v.ndim == 0 or v.dtype.kind != "f":
                    continue
                moved = np.moveaxis(v, axis % v.ndim, 0).reshape(v.shape[axis % v.ndim], -1).astype(np.float64)
                part, n = np.einsum("ij,ij->i", moved, moved), moved.shape[1]
            if key in sums and sums[key].shape != part.shape:
                size = max(sums[key].size, part.size)
                if axis is not None:
                    continue  # the axis changed length between feeds: not a per-feature statistic
                sums[key] = np.pad(sums[key], (0, size - sums[key].size)) + np.pad(part, (0, size - part.size))
            else:
                sums[key] = sums[key] + part if key in sums else part
            counts[key] += n
    return {key: total / counts[key] for key, total in sums.items()}
