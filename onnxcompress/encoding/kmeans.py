"""Exact, globally optimal, weighted 1D k-means: a thin Pythonic layer over the C core.

The core (native/kmeans1d.c) reduces the values to their distinct values with total weights
and runs the optimal dynamic programme over them, so the result is the global optimum, not a
local one. It releases the GIL, so threads can cluster several tensors at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from .._kmeans_native import ffi, lib

__all__ = ["KMeansResult", "BatchedKMeansResult", "kmeans1d", "kmeans1d_batched", "MAX_K"]

MAX_K = 65536
# Bytes the DP may spend on its argmin table; past that it recurses (Hirschberg) in O(m)
# memory for about twice the time. 1 GiB keeps n = 1e6 all-distinct at k = 256 on the fast path.
DEFAULT_TABLE_BUDGET = 1 << 30

_DTYPE_CODE = {
    np.dtype(np.float16): lib.OC_FLOAT16,
    np.dtype(np.float32): lib.OC_FLOAT32,
    np.dtype(np.float64): lib.OC_FLOAT64,
}


@dataclass(frozen=True)
class KMeansResult:
    """The optimal clustering of one set of values.

    labels: cluster of each value, same shape as the input (uint8 when k <= 256, else uint16);
        clusters are numbered in ascending centroid order and equal values share a label.
    centroids: the min(k, distinct values) weighted cluster means, ascending (float64).
    sse: weighted sum of squared distances of the values to their centroids.
    sse_by_k: entry j is the optimal SSE with j + 1 clusters, for j < k (0 once j + 1 reaches
        the number of distinct values): a rate-distortion curve from the same run.
    """

    labels: np.ndarray
    centroids: np.ndarray
    sse: float
    sse_by_k: np.ndarray


@dataclass(frozen=True)
class BatchedKMeansResult:
    """Independent optimal clusterings of the rows of a 2-D array (G groups of L values).

    labels: (G, L). centroids: (G, k), ascending; row g holds n_clusters[g] real centroids and
    repeats the last one after them. n_clusters: (G,). sse: (G,). sse_by_k: (G, k).
    """

    labels: np.ndarray
    centroids: np.ndarray
    n_clusters: np.ndarray
    sse: np.ndarray
    sse_by_k: np.ndarray


def kmeans1d(
    x: ArrayLike,
    k: int,
    weights: ArrayLike | None = None,
    *,
    table_budget: int = DEFAULT_TABLE_BUDGET,
) -> KMeansResult:
    """Cluster the values of ``x`` (any shape) into at most ``k`` groups, optimally.

    ``weights`` (same shape, non-negative) scale each value's squared error; values with
    weight 0 do not move the centroids and are labelled with the nearest one. Weights are
    summed in double precision, so the result is exact while positive weights span less than
    about 1e12 of each other; a far smaller weight acts as zero up to rounding.
    Raises ValueError for NaN or infinite values, bad weights, empty input or k < 1.
    """
    values, wts = _prepare(x, weights)
    out = _run(values.reshape(1, -1), k, None if wts is None else wts.reshape(1, -1), table_budget, values.shape)
    n = int(out.n_clusters[0])
    return KMeansResult(
        labels=out.labels.reshape(values.shape),
        centroids=out.centroids[0, :n].copy(),
        sse=float(out.sse[0]),
        sse_by_k=out.sse_by_k[0].copy(),
    )


def kmeans1d_batched(
    x: ArrayLike,
    k: int,
    weights: ArrayLike | None = None,
    *,
    table_budget: int = DEFAULT_TABLE_BUDGET,
) -> BatchedKMeansResult:
    """Cluster each row of the 2-D array ``x`` independently (rows, channels or blocks of a
    tensor), in one call into the core."""
    values, wts = _prepare(x, weights)
    if values.ndim != 2:
        raise ValueError(f"kmeans1d_batched needs a 2-D array (groups, values); got shape {values.shape}")
    return _run(values, k, wts, table_budget, values.shape)


def _prepare(x: ArrayLike, weights: ArrayLike | None) -> tuple[np.ndarray, np.ndarray | None]:
    values = _as_float_array(x, "x")
    if values.size == 0:
        raise ValueError("x is empty: k-means needs at least one value")
    if weights is None:
        return values, None
    wts = _as_float_array(weights, "weights")
    if wts.shape != values.shape:
        raise ValueError(f"weights have shape {wts.shape} but x has shape {values.shape}; they must match")
    if wts.dtype == np.float16:
        wts = wts.astype(np.float32)
    return values, wts


def _as_float_array(a: ArrayLike, name: str) -> np.ndarray:
    arr = np.asarray(a)
    if arr.dtype not in _DTYPE_CODE:
        if arr.dtype.kind not in "biuf":
            raise ValueError(f"{name} must hold real numbers; got dtype {arr.dtype}")
        arr = arr.astype(np.float64)
    return np.ascontiguousarray(arr)  # no copy when already contiguous


def _run(values: np.ndarray, k: int, wts: np.ndarray | None, table_budget: int, shape: tuple[int, ...]) -> BatchedKMeansResult:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise ValueError(f"k must be an integer; got {k!r}")
    k = int(k)
    if not 1 <= k <= MAX_K:
        raise ValueError(f"k must be between 1 and {MAX_K}; got {k}")
    groups, n = values.shape
    if n >= 0xFFFFFFFF:
        raise ValueError(f"a group holds {n} values; the core handles fewer than 2**32 - 1 per group")
    labels = np.empty((groups, n), dtype=np.uint8 if k <= 256 else np.uint16)
    centroids = np.empty((groups, k), dtype=np.float64)
    sse_by_k = np.empty((groups, k), dtype=np.float64)
    n_clusters = np.empty(groups, dtype=np.uint32)
    sse = np.empty(groups, dtype=np.float64)
    bad = ffi.new("size_t *")
    rc = lib.oc_kmeans1d(
        ffi.from_buffer(values),
        _DTYPE_CODE[values.dtype],
        ffi.NULL if wts is None else ffi.from_buffer(wts),
        lib.OC_FLOAT64 if wts is None else _DTYPE_CODE[wts.dtype],
        n,
        groups,
        k,
        max(0, int(table_budget)),
        ffi.from_buffer(labels, require_writable=True),
        ffi.cast("double *", ffi.from_buffer(centroids, require_writable=True)),
        ffi.cast("double *", ffi.from_buffer(sse_by_k, require_writable=True)),
        ffi.cast("uint32_t *", ffi.from_buffer(n_clusters, require_writable=True)),
        ffi.cast("double *", ffi.from_buffer(sse, require_writable=True)),
        bad,
    )
    if rc != lib.OC_OK:
        raise _error(rc, int(bad[0]), shape)
    return BatchedKMeansResult(labels, centroids, n_clusters, sse, sse_by_k)


def _error(rc: int, bad: int, shape: tuple[int, ...]) -> Exception:
    where = tuple(int(i) for i in np.unravel_index(bad, shape)) if rc in (lib.OC_ERR_NONFINITE, lib.OC_ERR_WEIGHT) else None
    if rc == lib.OC_ERR_NONFINITE:
        return ValueError(f"x holds NaN or infinity (first at index {where}); clean or mask those values first")
    if rc == lib.OC_ERR_WEIGHT:
        return ValueError(f"weights must be finite and non-negative; the one at index {where} is not")
    if rc == lib.OC_ERR_ZERO_WEIGHT:
        return ValueError(f"every weight of group {bad} is zero; give at least one value a positive weight")
    if rc == lib.OC_ERR_NOMEM:
        return MemoryError("k-means ran out of memory; lower table_budget or cluster fewer values at once")
    return ValueError("k-means rejected its arguments (empty input, k outside 1..65536, or too many values)")
