"""Calibration: from real inputs, how much each element of each weight matters to the outputs
of its consumers.

For Y = X @ W, an error E in W changes Y by X @ E, whose expected squared norm is
sum_i E[x_i^2] * ||E_i||^2 (cross terms averaged out): so element (i, j) of W weighs E[x_i^2],
the mean square of the input feature it multiplies. The same holds per input channel for Conv
and ConvTranspose, per column of the other operand for a weight on MatMul's left, per
reduction index of Gemm's B, and per input (or hidden) feature of a one-direction LSTM, GRU or
RNN's W (or R). An embedding row weighs how often it is looked up (plus a floor,
so rows the calibration data never reads still count a little). Any other consumer weighs
every element the same. With these as k-means weights, the exact weighted DP minimizes the
error that reaches the consumer's output, not the weight's own.

A MatMul or Gemm whose output goes (through a bias Add) straight into a Softmax over its
columns also weighs column j by E[p_j^2], the mean square of that class's probability (plus a
floor): a probability changes by about p_j times its logit's error, so a classifier head's
rarely likely classes hardly matter. On the OCR model's 18,710-class head this cut the output
error at 4-6 bits 3-4x, also on lines calibration never saw. The planner goes without it
(api.compress): trusting the few classes 16 lines make likely, it took that head to 4-5 bits,
and lines with other characters then missed the target 3-4x.

The same pass measures, for weights read by MatMul, Gemm, a group-1 Conv or a recurrent op,
the whole input covariance E[x x^T] over the reduction index (for Conv, over the patches the
filters see), not just its diagonal: error-compensated rounding (compensate.py) needs the
cross terms.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx

from ..encoding.compensate import Covariance, as_rows
from ..io.select import WeightSite
from .outputs import value_readers
from .verify import run, session

UNSEEN_ROW_FLOOR = 0.1  # an embedding row never looked up weighs this much of the mean row
# A softmax class the calibration never finds likely weighs this much of the mean class (on the
# OCR model's head, 0.001-0.1 all held on held-out lines; 0.01 was best at 5-6 bits).
UNLIKELY_CLASS_FLOOR = 0.01
# Covariances over more input features than this are not taken (a d x d float64 matrix, and
# d^2 work per output column when rounding): 4096 features is 128 MB.
COVARIANCE_LIMIT = 4096
# Input vectors (or a Conv's patches, in whole output rows) are gathered this many at a time.
PATCH_CHUNK = 1 << 14


@dataclass
class Sensitivity:
    """What calibration measured, per weight name: element importances (mean 1, broadcastable
    to the weight's shape) and, where the consumers allow it, the input covariance for
    error-compensated rounding."""

    importance: dict[str, np.ndarray]
    covariance: dict[str, Covariance]


def calibrate(
    model: onnx.ModelProto,
    weights: list[WeightSite],
    feeds: list[dict[str, np.ndarray]],
    covariances: bool = True,
    classes: bool = True,
    floor: float = 0.0,
) -> Sensitivity:
    """Importances of every weight and (with `covariances`) the covariances, in one run of the
    model over the feeds; `classes`: weigh a softmax head's class columns too (the planner
    does not: see api.compress); `floor`: added to every input feature's mean square, in units
    of their mean (the planner's plan.FEATURE_FLOOR)."""
    wanted = {w.name: w for w in weights}
    readers = value_readers(model.graph)
    constants = {t.name for t in model.graph.initializer} | {n.output[0] for n in model.graph.node if n.op_type == "Constant"}
    opset = next((int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)
    rules: dict[str, list[_Rule | None]] = defaultdict(list)
    for node in model.graph.node:
        for i, name in enumerate(node.input):
            if name in wanted:
                rule = _rule(node, i, wanted[name]) if node.domain in ("", "ai.onnx") else None
                if rule is not None and classes:
                    rule.classes = _softmax_after(node, i, wanted[name], readers, constants, opset)
                rules[name].append(rule)
    cov_rules = _covariance_rules(weights, rules) if covariances else {}
    activations = {(r.activation, r.axis) for rs in rules.values() for r in rs if r is not None}
    activations |= {(r.classes[0], -1) for rs in rules.values() for r in rs if r is not None and r.classes}
    cov_keys = {_covariance_key(c) for cs in cov_rules.values() for c in cs}
    stats, covs, counts, ranks = _capture(model, activations, cov_keys, feeds)
    importance = {site.name: _importance(site, rules.get(site.name, []), stats, ranks, floor) for site in weights}
    covariance = {}
    for name, cs in cov_rules.items():
        parts = [p for c in cs if (p := covs.get(_covariance_key(c))) is not None and np.trace(p) > 0]
        view = cs[0].view or "rows"
        features = as_rows(wanted[name].array, view).shape[0]
        if len(parts) == len(cs) and {p.shape for p in parts} == {(features, features)}:
            # each consumer's statistics at the same scale, as their importances are
            mean = np.mean([p / np.trace(p) * p.shape[0] for p in parts], axis=0)
            samples = min(counts[_covariance_key(c)] for c in cs)
            covariance[name] = Covariance(mean, view, samples)
    return Sensitivity(importance, covariance)


def importances(model: onnx.ModelProto, weights: list[WeightSite], feeds: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Per weight name, non-negative element weights with mean 1 (so a weight's
    sensitivity-weighted error stays comparable to its plain error), broadcastable to the
    weight's shape (per feature where that is all they vary by)."""
    return calibrate(model, weights, feeds, covariances=False).importance


def _importance(site: WeightSite, rules: list[_Rule | None], stats: dict, ranks: dict[str, int], floor: float) -> np.ndarray:
    parts = []
    for rule in rules:
        part = rule.finish(stats.get((rule.activation, rule.axis))) if rule is not None else None
        if floor and part is not None and rule is not None and rule.axis is not None:  # mean squares, not lookup counts
            part = part / part.mean() + floor
        if part is not None and rule is not None and rule.classes:
            part = part * _class_weights(site, rule.classes, stats, ranks)
        parts.append(np.ones([1] * site.array.ndim) if part is None else part / part.mean())
    if not parts or any(c.in_subgraph for c in site.consumers):
        parts.append(np.ones([1] * site.array.ndim))  # a reader whose sensitivity is not modelled
    # kept in the parts' broadcast shape, not the weight's: a per-feature vector where that is
    # all there is (on MiniLM 90 MB of float32 became 0.2 MB)
    total = sum(p.astype(np.float64) for p in parts) / len(parts)
    return np.asarray(total, dtype=np.float32).reshape(np.broadcast_shapes(total.shape, [1] * site.array.ndim))


@dataclass
class _Rule:
    """Which activation to measure (its mean square along `axis`, or with axis None the lookup
    counts of integer ids) and how that vector becomes element weights; `view` and `patches`
    say how its covariance pairs with the weight (see compensate.Covariance), when it can."""

    activation: str
    axis: int | None
    finish_vector: Callable[[np.ndarray], np.ndarray | None]
    view: str | None = None
    patches: tuple | None = None  # a Conv's (kernel, strides, dilations, pads, auto_pad)
    # a Softmax the consumer's output feeds: (its output, its axis, the weight's class axis)
    classes: tuple[str, int, int] | None = None

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
            return _Rule(node.input[0], -1, along(0, shape[0]), "rows")
        return _Rule(node.input[1], -2, along(1, shape[1]), "cols")  # W @ X: column k meets row k of X
    if op == "Gemm" and index == 1 and ndim == 2:
        a_axis = 0 if attrs.get("transA", 0) else 1  # A' = A^T: the reduction index is A's axis 0
        w_axis = 1 if attrs.get("transB", 0) else 0
        return _Rule(node.input[0], a_axis, along(w_axis, shape[w_axis]), "cols" if w_axis else "rows")
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

        if group != 1:
            return _Rule(node.input[0], 1, per_filter)
        kernel = tuple(shape[2:])
        spatial = len(kernel)
        conv = (
            kernel,
            tuple(attrs.get("strides", [1] * spatial)),
            tuple(attrs.get("dilations", [1] * spatial)),
            tuple(attrs.get("pads", [0] * 2 * spatial)),
            attrs.get("auto_pad", b"NOTSET"),
        )
        return _Rule(node.input[0], 1, per_filter, "filters", conv)
    if op in ("LSTM", "GRU", "RNN") and index in (1, 2) and ndim == 3 and shape[0] == 1:
        # one direction: the gates are x_t @ W^T and h_(t-1) @ R^T, so W's and R's last axis is the
        # reduction; Y over all steps stands for the previous hidden states (off by the first
        # and the last step). GRU's R meets r * h, not h, unless linear_before_reset.
        if index == 1:
            return _Rule(node.input[0], -1, along(2, shape[2]), "cols")
        if not node.output or not node.output[0] or (op == "GRU" and not attrs.get("linear_before_reset", 0)):
            return None
        return _Rule(node.output[0], -1, along(2, shape[2]), "cols")
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


def _softmax_after(
    node: onnx.NodeProto, index: int, site: WeightSite, readers: dict[str, list], constants: set[str], opset: int
) -> tuple[str, int, int] | None:
    """For X @ W or Gemm's B whose output reaches a Softmax through nothing but bias Adds and
    Identities, each the only reader of what it reads: (the Softmax output, its axis, the
    weight's axis that holds the classes)."""
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    if site.array.ndim != 2 or index != 1:
        return None
    if node.op_type == "MatMul":
        class_axis = 1
    elif node.op_type == "Gemm":
        class_axis = 0 if attrs.get("transB", 0) else 1
    else:
        return None
    value = node.output[0]
    for _ in range(4):
        nxt = readers.get(value, [])
        if len(nxt) != 1 or nxt[0] is None:
            return None
        step = nxt[0]
        if step.op_type == "Softmax" and step.domain in ("", "ai.onnx"):
            axis = {a.name: onnx.helper.get_attribute_value(a) for a in step.attribute}.get("axis", -1 if opset >= 13 else 1)
            return step.output[0], int(axis), class_axis
        bias = step.op_type == "Add" and len(step.input) == 2 and any(i in constants for i in step.input if i != value)
        if not (bias or step.op_type == "Identity"):
            return None
        value = step.output[0]
    return None


def _class_weights(site: WeightSite, classes: tuple[str, int, int], stats: dict, ranks: dict[str, int]) -> np.ndarray:
    """Per class of a softmax head, E[p^2] plus the floor, along the weight's class axis; ones
    when the Softmax does not run over the last axis or its size is not the weight's."""
    name, axis, class_axis = classes
    squares, rank = stats.get((name, -1)), ranks.get(name)
    n = site.array.shape[class_axis]
    if squares is None or rank is None or axis % rank != rank - 1 or squares.size != n or not squares.sum() > 0:
        return np.ones([1] * site.array.ndim)
    return _expand(squares + UNLIKELY_CLASS_FLOOR * squares.mean(), site.array.ndim, class_axis)


def _covariance_rules(weights: list[WeightSite], rules: dict[str, list[_Rule | None]]) -> dict[str, list[_Rule]]:
    """The weights whose every consumer has a covariance, all with the weight laid out the
    same way, over at most COVARIANCE_LIMIT features."""
    out: dict[str, list[_Rule]] = {}
    for site in weights:
        rs = rules.get(site.name, [])
        if not rs or any(r is None or r.view is None for r in rs) or any(c.in_subgraph for c in site.consumers):
            continue
        views = {r.view for r in rs if r is not None}
        if len(views) != 1 or site.array.ndim < 2 or site.array.dtype.kind != "f":
            continue
        features = as_rows(site.array, views.pop() or "rows").shape[0]
        if features <= COVARIANCE_LIMIT:
            out[site.name] = [r for r in rs if r is not None]
    return out


def _covariance_key(rule: _Rule) -> tuple:
    return (rule.activation, rule.axis, rule.patches)


def _capture(
    model: onnx.ModelProto,
    wanted: set[tuple[str, int | None]],
    wanted_cov: set[tuple],
    feeds: list[dict[str, np.ndarray]],
) -> tuple[dict[tuple[str, int | None], np.ndarray], dict[tuple, np.ndarray], dict[tuple, int], dict[str, int]]:
    """Mean squares along the wanted axes (or id counts) of these tensors over all feeds, the
    wanted covariances with the number of vectors behind each, and each tensor's rank: fed inputs directly,
    initializers from the model, the rest as extra outputs of onnxruntime, reduced feed by feed
    so only one feed's activations are held at a time."""
    inits = {t.name: t for t in model.graph.initializer}
    names = sorted({name for name, _ in wanted} | {key[0] for key in wanted_cov})
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
    cov_sums: dict[tuple, np.ndarray] = {}
    cov_counts: dict[tuple, int] = defaultdict(int)
    ranks: dict[str, int] = {}
    for feed in feeds:
        values = {n: feed[n] for n in names if n in feed}
        values.update({n: onnx.numpy_helper.to_array(inits[n]) for n in names if n in inits and n not in feed})
        if sess is not None:
            (outs,) = run(sess, [feed], "the model on the calibration inputs", run_names)
            values.update(zip(run_names, outs, strict=True))
        for key in wanted:
            name, axis = key
            v = np.asarray(values[name])
            ranks[name] = v.ndim
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
        for ckey in wanted_cov:
            name, axis, patches = ckey
            v = np.asarray(values[name])
            if v.ndim == 0 or v.dtype.kind != "f":
                continue
            outer, n = _covariance_sum(v, axis, patches)
            if outer is None or (ckey in cov_sums and cov_sums[ckey].shape != outer.shape):
                cov_sums[ckey] = np.full((1, 1), np.nan)  # not one statistic over all feeds: none
                continue
            cov_sums[ckey] = cov_sums[ckey] + outer if ckey in cov_sums else outer
            cov_counts[ckey] += n
    means = {key: total / counts[key] for key, total in sums.items()}
    covs = {key: total / cov_counts[key] for key, total in cov_sums.items() if cov_counts[key] and np.all(np.isfinite(total))}
    return means, covs, dict(cov_counts), ranks


def _covariance_sum(v: np.ndarray, axis: int, patches: tuple | None) -> tuple[np.ndarray | None, int]:
    """(sum of x x^T, number of x) over the vectors x of `v` along `axis`, or over the
    patches a Conv with this geometry reads from `v` [N, C, *spatial]."""
    if patches is None:
        rows = np.moveaxis(v, axis % v.ndim, -1).reshape(-1, v.shape[axis])
        total = np.zeros((rows.shape[1], rows.shape[1]))
        for start in range(0, rows.shape[0], PATCH_CHUNK):
            part: np.ndarray = rows[start : start + PATCH_CHUNK].astype(_product_dtype(v), copy=False)
            total += part.T @ part
        return total, rows.shape[0]
    kernel, strides, dilations, pads, auto_pad = patches
    spatial = len(kernel)
    if v.ndim != spatial + 2:
        return None, 0
    begin, end = _conv_pads(v.shape[2:], kernel, strides, dilations, pads, auto_pad)
    padded = np.pad(v, [(0, 0), (0, 0), *zip(begin, end, strict=True)])
    outs = [(padded.shape[2 + i] - dilations[i] * (kernel[i] - 1) - 1) // strides[i] + 1 for i in range(spatial)]
    if min(outs) <= 0:
        return None, 0
    d = v.shape[1] * int(np.prod(kernel))
    total = np.zeros((d, d))
    # a few output rows of one batch item at a time: all patches at once would be the kernel's
    # size times the activation (2.3 GB for 64 x 1024 x 1024 floats and a 3 x 3 kernel)
    per_step = max(1, PATCH_CHUNK // max(1, int(np.prod(outs[1:]))))
    for item in padded:
        for first in range(0, outs[0], per_step):
            count = min(per_step, outs[0] - first)
            taps = []
            for offset in np.ndindex(*kernel):
                lo = [offset[i] * dilations[i] + (first * strides[0] if i == 0 else 0) for i in range(spatial)]
                n_out = [count if i == 0 else outs[i] for i in range(spatial)]
                index = tuple(slice(lo[i], lo[i] + strides[i] * (n_out[i] - 1) + 1, strides[i]) for i in range(spatial))
                taps.append(item[(slice(None), *index)])
            # [C * kernel taps, positions], as filters flatten
            cols: np.ndarray = np.stack(taps, axis=1).reshape(d, -1).astype(_product_dtype(v), copy=False)
            total += cols @ cols.T
    return total, padded.shape[0] * int(np.prod(outs))


def _product_dtype(v: np.ndarray) -> type:
    """Single precision for a chunk's x x^T unless the activations are double: half the time,
    and 3e-7 of the largest entry on MiniLM's widest input; chunks are summed in double."""
    return np.float64 if v.dtype == np.float64 else np.float32


def _conv_pads(size, kernel, strides, dilations, pads, auto_pad) -> tuple[list[int], list[int]]:
    spatial = len(kernel)
    mode = auto_pad.decode() if isinstance(auto_pad, bytes) else str(auto_pad)
    if mode in ("SAME_UPPER", "SAME_LOWER"):
        begin, end = [], []
        for i in range(spatial):
            out = -(-size[i] // strides[i])
            total = max(0, (out - 1) * strides[i] + dilations[i] * (kernel[i] - 1) + 1 - size[i])
            small, large = total // 2, total - total // 2
            begin.append(small if mode == "SAME_UPPER" else large)
            end.append(large if mode == "SAME_UPPER" else small)
        return begin, end
    if mode == "VALID":
        return [0] * spatial, [0] * spatial
    return list(pads[:spatial]), list(pads[spatial:])
