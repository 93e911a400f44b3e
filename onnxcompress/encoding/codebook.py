"""Encode a weight as a k-means codebook plus one small index per value."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from ..options import CodebookOptions
from .kmeans import kmeans1d, kmeans1d_batched

# Tensor-level k-means is exact when its DP is cheap; past this many value-clusters (n * k) a
# large all-distinct tensor takes the binned path under --kmeans auto (about 0.1 s at the limit;
# the binned path is 1e-7 above the optimal SSE at k = 16 and 3e-5 at k = 256 on real weights).
EXACT_WORK_LIMIT = 1 << 23
# Per-channel codebooks take the binned path, row by row, past this much DP work per channel
# (values * k): MiniLM's word embedding in 8-bit codebooks per column (30522 values each) took
# 37 s exact, 14 s binned at 1.5e-6 above the optimal SSE. Short channels stay exact: binning
# costs about 1 ms per channel whatever its length.
CHANNEL_EXACT_WORK_LIMIT = 1 << 21
# Large weights are read in steps of 1 Mi values (8 MB in float64): binning, decoding, errors.
CHUNK = 1 << 20


@dataclass
class Codebook:
    """A weight as centroids and labels, in a grouped layout.

    Rows of `labels` and `centroids` are groups: the whole tensor (layout "tensor"), one output
    channel along `axis` (layout "channel"), or `group_size` consecutive values of the flat
    tensor, the last group padded (layout "group"). Layout "scaled" is one codebook for the
    whole tensor over its values divided by `scale`, one per channel along `axis` (the
    channel's RMS): decoded, each channel's levels are the codebook's times its scale.
    """

    shape: tuple[int, ...]
    bits: int
    layout: str
    axis: int
    group_size: int
    centroids: np.ndarray  # [groups, k] in the storage dtype
    labels: np.ndarray  # [groups, values per group], uint8
    method: str  # "exact" or "binned"
    seconds: float
    rel_error: float = float("nan")  # ||W - decoded|| / ||W||, with the stored codebook's rounding
    # Layouts "tensor", "scaled" and "channel": the (weighted) SSE of the best clustering with
    # 1..k levels, from the same k-means run (for "channel", summed over the channels); the
    # planner's rate-distortion curve comes free with it.
    sse_by_k: np.ndarray | None = field(default=None, repr=False, compare=False)
    scale: np.ndarray | None = None  # layout "scaled": [channels] in the storage dtype

    @property
    def n_values(self) -> int:
        return int(np.prod(self.shape)) if self.shape else 1

    @property
    def k(self) -> int:
        return int(self.centroids.shape[1])

    def stored_bytes(self) -> int:
        """What the weight costs in the file: packed indices plus codebook."""
        groups, k = self.centroids.shape
        scales = 0 if self.scale is None else self.scale.nbytes
        return codebook_size(self.labels.size, self.bits, groups, k, self.centroids.itemsize) + scales

    def decoded(self) -> np.ndarray:
        """The weight exactly as the decode nodes rebuild it, before the final cast."""
        vals = _lookup(self.centroids, self.labels)
        if self.layout == "channel":
            moved = tuple(np.moveaxis(np.empty(self.shape, dtype=np.bool_), self.axis, 0).shape)
            return np.moveaxis(vals.reshape(moved), 0, self.axis)
        vals = vals.reshape(-1)[: self.n_values].reshape(self.shape)
        if self.scale is None:
            return vals
        vals = vals.astype(self.scale.dtype, copy=False)
        vals *= self.scale.reshape(scale_shape(self.shape, self.axis))  # in place: the lookup is a fresh array
        return vals


def _lookup(centroids: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Each label's level in its group's row, [groups, values per group]. Indexing by the
    uint8 labels themselves: converting them to index integers first took 8 bytes per value
    (94 MB more for MiniLM's word embedding)."""
    if centroids.shape[0] == 1:
        return centroids[0][labels[0]][None, :]
    out = np.empty(labels.shape, dtype=centroids.dtype)
    rows = max(1, CHUNK // max(1, labels.shape[1]))
    for start in range(0, labels.shape[0], rows):
        part = slice(start, start + rows)
        out[part] = np.take_along_axis(centroids[part], labels[part].astype(np.intp), axis=1)
    return out


def scale_shape(shape: tuple[int, ...], axis: int) -> list[int]:
    """The shape that broadcasts one value per channel along `axis` over `shape`."""
    out = [1] * len(shape)
    out[axis] = shape[axis]
    return out


def scale_dtype(store: np.dtype) -> np.dtype:
    """What the scales are stored in, and the decoder multiplies in: float32, or float64 for
    float64 levels (onnxruntime has no float16 Mul kernel to fold with)."""
    return np.dtype(np.float64) if store == np.float64 else np.dtype(np.float32)


def channel_scales(array: np.ndarray, axis: int, dtype: np.dtype) -> np.ndarray:
    """Each channel's RMS along `axis`, as stored (`dtype`); 1 for a channel of zeros."""
    rms = np.sqrt(np.mean(channel_rows(array, axis, np.float64) ** 2, axis=1))
    return np.where(rms > 0, rms, 1.0).astype(dtype)


def relative_error(array: np.ndarray, approx: np.ndarray) -> float:
    """||W - approx|| / ||W|| (the absolute error when W is zero), summed chunk by chunk in
    float64: no float64 copies of a large weight (float16 of MiniLM's word embedding took
    0.38 GB at once)."""
    flat, other = array.reshape(-1), approx.reshape(-1)
    return _error_over_chunks(flat, lambda part: other[part])


def codebook_error(array: np.ndarray, cb: Codebook) -> float:
    """relative_error(array, cb.decoded()); a per-tensor codebook's levels are looked up chunk
    by chunk, without decoding it whole."""
    if cb.layout != "tensor":
        return relative_error(array, cb.decoded())
    levels, labels = cb.centroids[0], cb.labels[0]
    return _error_over_chunks(array.reshape(-1), lambda part: levels[labels[part]])


def _error_over_chunks(flat: np.ndarray, approx_of: Callable[[slice], np.ndarray]) -> float:
    err = norm = 0.0
    for part in _chunks(flat.size):
        w = flat[part].astype(np.float64)
        d = approx_of(part).astype(np.float64) - w
        err, norm = err + float(d @ d), norm + float(w @ w)
    return float(np.sqrt(err / norm)) if norm > 0 else float(np.sqrt(err))


def weighted_sse(array: np.ndarray, approx: np.ndarray | None = None, weight: np.ndarray | None = None) -> float:
    """sum(weight * (approx - W)^2), or without `approx` sum(weight * W^2), in float64 over
    blocks of W's first axis; `weight` broadcastable to W's shape (None: all ones)."""
    if array.ndim == 0:
        array = array.reshape(1)
    other = None if approx is None else approx.reshape(array.shape)
    full = None if weight is None else np.broadcast_to(weight, array.shape)
    step = max(1, CHUNK // max(1, array.size // max(1, array.shape[0])))
    total = 0.0
    for start in range(0, array.shape[0], step):
        part = slice(start, start + step)
        d = array[part].astype(np.float64)
        if other is not None:
            d = other[part].astype(np.float64) - d
        d *= d
        total += float(np.sum(d if full is None else d * full[part]))
    return total


def codebook_size(n_values: int, bits: int, n_codebooks: int, k: int, itemsize: int) -> int:
    """Bytes in the file: n_values indices of `bits` bits, packed, plus the codebooks."""
    return (n_values * bits + 7) // 8 + n_codebooks * k * itemsize


def per_tensor_widths(n_values: int, curve: np.ndarray, itemsize: int, lowest: int = 1) -> list[tuple[int, int, float]]:
    """(bits, bytes, SSE) of one codebook per tensor at each width from `lowest` to 8, read off
    `curve`, the SSE of the best clustering for 1..256 levels (one k-means run gives it all)."""
    widths = []
    for bits in range(lowest, 9):
        k = 1 << bits
        widths.append((bits, codebook_size(n_values, bits, 1, k, itemsize), max(float(curve[min(k, len(curve)) - 1]), 0.0)))
    return widths


def channel_rows(array: np.ndarray, axis: int, dtype: type | None = None) -> np.ndarray:
    """One row per channel along `axis`: the array with that axis first, flattened behind it."""
    axis = axis % array.ndim
    return np.ascontiguousarray(np.moveaxis(array, axis, 0), dtype=dtype).reshape(array.shape[axis], -1)


def use_exact(array: np.ndarray, k: int, method: str) -> bool:
    """--kmeans: exact, binned, or auto (exact for 16-bit weights, whose values fit the core's
    65536 bins, and where the DP's work n * k is small)."""
    return method == "exact" or (method == "auto" and (array.dtype == np.float16 or array.size * k <= EXACT_WORK_LIMIT))


def storage_dtype(weight_dtype: np.dtype, codebook_dtype: str) -> np.dtype:
    if codebook_dtype == "float16":
        return np.dtype(np.float16)
    if codebook_dtype == "float32":
        return np.dtype(np.float32)
    return np.dtype(weight_dtype) if weight_dtype in (np.float16, np.float32, np.float64) else np.dtype(np.float32)


def encode_codebook(array: np.ndarray, options: CodebookOptions, axis: int = 0, importance: np.ndarray | None = None) -> Codebook:
    """Cluster the values of `array` into 2^bits levels per group; `axis` is the output
    channel for --granularity channel; `importance` (broadcastable to its shape) weights each value's
    squared error (see calibrate.py). Also measures the relative weight error."""
    t0 = time.perf_counter()
    cb = _cluster(array, options, axis, None if importance is None else np.broadcast_to(importance, array.shape))
    cb.rel_error = codebook_error(array, cb)
    cb.seconds = time.perf_counter() - t0
    return cb


def _cluster(array: np.ndarray, options: CodebookOptions, axis: int, importance: np.ndarray | None) -> Codebook:
    bits, k = options.bits, 1 << options.bits
    store = storage_dtype(array.dtype, options.codebook_dtype)
    scale = None
    if options.granularity == "scaled" and array.ndim >= 2:
        # values divided by their channel's scale, each weighed by the scale squared: the
        # k-means then minimizes the (weighted) squared error of the weight itself
        axis = axis % array.ndim
        scale = channel_scales(array, axis, scale_dtype(store))
        shaped = scale.astype(np.float64).reshape(scale_shape(array.shape, axis))
        scaled_importance = (np.broadcast_to(shaped**2, array.shape) * (1.0 if importance is None else importance)).astype(
            np.float32
        )
        array, importance = (array / shaped).astype(array.dtype), scaled_importance
    if options.granularity in ("tensor", "scaled") or array.ndim == 0:
        flat = array.reshape(-1)
        w = None if importance is None else np.ascontiguousarray(importance, dtype=np.float32).reshape(-1)
        if w is not None and not w.any():
            w = None  # no value matters on the calibration inputs: plain k-means
        exact = use_exact(array, k, options.kmeans)
        if exact:
            r = kmeans1d(flat, k, w)
            centroids, labels, curve = r.centroids, r.labels, r.sse_by_k
        else:
            centroids, labels, curve = binned_kmeans(flat, k, weights=w)
        return Codebook(
            tuple(array.shape),
            bits,
            "tensor" if scale is None else "scaled",
            0 if scale is None else axis,
            flat.size,
            centroids.astype(store)[None, :],
            labels.reshape(1, -1).astype(np.uint8),
            "exact" if exact else "binned",
            0.0,
            sse_by_k=curve,
            scale=scale,
        )
    if options.granularity == "channel":
        axis = axis % array.ndim
        rows = channel_rows(array, axis)
        row_weights = None
        if importance is not None:
            row_weights = channel_rows(importance, axis, np.float32)
            _weigh_unweighted_rows(row_weights, np.ones(rows.shape, dtype=bool))
        k = min(k, rows.shape[1])
        if options.kmeans != "exact" and rows.shape[1] * k > CHANNEL_EXACT_WORK_LIMIT:
            centroids, labels, curve = _binned_rows(rows, k, row_weights)
            method = "binned"
        else:
            per_channel = kmeans1d_batched(rows, k, row_weights)
            centroids, labels, curve = per_channel.centroids, per_channel.labels, per_channel.sse_by_k.sum(axis=0)
            method = "exact"
        return Codebook(
            tuple(array.shape), bits, "channel", axis, rows.shape[1], centroids.astype(store), labels, method, 0.0, sse_by_k=curve
        )
    group_size = options.group_size()
    assert group_size is not None  # the only layout left is group:N
    flat = array.reshape(-1)
    groups = -(-flat.size // group_size)
    padded = np.zeros(groups * group_size, dtype=flat.dtype)
    padded[: flat.size] = flat
    weights = np.zeros(padded.size, dtype=np.float32)
    weights[: flat.size] = 1.0 if importance is None else importance.reshape(-1)  # padding weighs nothing
    real = (np.arange(padded.size) < flat.size).reshape(groups, group_size)
    _weigh_unweighted_rows(weights.reshape(groups, group_size), real)
    per_group = kmeans1d_batched(padded.reshape(groups, group_size), min(k, group_size), weights.reshape(groups, group_size))
    return Codebook(
        tuple(array.shape),
        bits,
        "group",
        0,
        group_size,
        per_group.centroids.astype(store),
        per_group.labels,
        "exact",
        0.0,
    )


def _binned_rows(rows: np.ndarray, k: int, weights: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """binned_kmeans row by row: (centroids [rows, k], uint8 labels, the summed curve for 1..k
    levels). A row with fewer distinct bins than k repeats its last level, which no label uses."""
    centroids = np.empty((rows.shape[0], k))
    labels = np.empty(rows.shape, dtype=np.uint8)

    def one(i: int) -> np.ndarray:
        c, labels[i], row_curve = binned_kmeans(rows[i], k, weights=None if weights is None else weights[i])
        centroids[i] = np.pad(c, (0, k - c.size), mode="edge")
        return np.pad(row_curve, (0, k - row_curve.size), mode="edge")

    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:  # the k-means core releases the GIL
        curve = np.sum(list(pool.map(one, range(rows.shape[0]))), axis=0)
    return centroids, labels, curve


def _weigh_unweighted_rows(weights: np.ndarray, real: np.ndarray) -> None:
    """A group whose values all have zero importance (inputs that are always zero on the
    calibration data, say) is clustered plainly: its real values get weight one, in place."""
    empty = ~weights.any(axis=1)
    if empty.any():
        weights[empty] = real[empty]


def binned_kmeans(
    x: np.ndarray, k: int, polish_rounds: int = 2, weights: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Near-optimal k-means for a large all-distinct tensor: the exact DP over at most 65536
    fp16 bins (each at the exact weighted mean of its values, weighted by its total weight),
    then Lloyd rounds on the full data, which only lower the SSE. Returns (centroids, uint8
    labels, sse_curve's binned curve for 1..k levels from the same DP). Works through the data
    CHUNK values at a time, so its memory beyond the labels stays small whatever the tensor (a
    weight mapped from its file is never copied whole)."""
    flat = x.reshape(-1)
    w = None if weights is None else weights.reshape(-1)
    counts, means, within = _fp16_bins(flat, w)
    dp = kmeans1d(means, k, counts)
    centroids = dp.centroids
    labels = np.empty(flat.size, dtype=np.uint8)
    for round_ in range(polish_rounds + 1):
        bounds = (centroids[1:] + centroids[:-1]) / 2
        cnt, tot = np.zeros(len(centroids)), np.zeros(len(centroids))
        for part in _chunks(flat.size):
            xd = flat[part].astype(np.float64)
            nearest = np.searchsorted(bounds, xd)
            labels[part] = nearest
            if round_ < polish_rounds:
                wd = None if w is None else w[part].astype(np.float64)
                cnt += np.bincount(nearest, weights=wd, minlength=len(centroids))
                tot += np.bincount(nearest, weights=xd if wd is None else xd * wd, minlength=len(centroids))
        if round_ < polish_rounds:
            # cnt is a total weight, below 1 for a few light values: divide by it exactly
            centroids = np.where(cnt > 0, tot / np.where(cnt > 0, cnt, 1.0), centroids)
    return centroids, labels, dp.sse_by_k + within


def sse_curve(array: np.ndarray, k: int, method: str = "auto", importance: np.ndarray | None = None) -> tuple[np.ndarray, str]:
    """(Weighted) SSE of the best clustering with 1..k levels, from one k-means run: exact, or
    for a large tensor the binned bound (DP over the bins plus the within-bin SSE, which is
    what those partitions really cost; within about 1e-4 of the optimum)."""
    flat = array.reshape(-1)
    w = (
        None
        if importance is None
        else np.ascontiguousarray(np.broadcast_to(importance, array.shape), dtype=np.float32).reshape(-1)
    )
    exact = use_exact(array, k, method)
    if exact:
        return kmeans1d(flat, k, w).sse_by_k, "exact"
    counts, means, within = _fp16_bins(flat, w)
    return kmeans1d(means, k, counts).sse_by_k + within, "binned"


def _chunks(n: int):
    for start in range(0, n, CHUNK):
        yield slice(start, min(n, start + CHUNK))


def _fp16_bins(x: np.ndarray, w: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, float]:
    """Total weights and exact weighted means of the values in each non-empty fp16 bin (after
    a power-of-two scaling that keeps them in fp16 range), and the weighted SSE within bins."""
    peak = max(float(x.max()), -float(x.min())) if x.size else 0.0
    exponent = int(np.frexp(peak)[1]) if peak > 0 else 0
    counts, sums, second = np.zeros(65536), np.zeros(65536), 0.0
    for part in _chunks(x.size):
        xd = x[part].astype(np.float64)
        wd = None if w is None else w[part].astype(np.float64)
        keys = np.ldexp(xd, 14 - exponent).astype(np.float16).view(np.uint16)
        counts += np.bincount(keys, weights=wd, minlength=65536)
        sums += np.bincount(keys, weights=xd if wd is None else xd * wd, minlength=65536)
        second += float(xd @ xd) if wd is None else float(wd @ (xd * xd))
    present = counts > 0
    counts, means = counts[present], sums[present] / counts[present]
    within = max(0.0, second - float(counts @ (means * means)))
    return counts, means, within
