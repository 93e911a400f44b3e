"""Error-compensated rounding: give a codebook's values new labels so that their rounding
errors cancel on the consumer's real inputs (the GPTQ / optimal-brain-quantization update,
here with a k-means codebook's levels in place of a uniform grid).

For Y = X @ W with the input covariance H = E[x x^T], rounding W to levels Q costs
tr((Q - W)^T H (Q - W)) at the output. Rounding row by row, in order, and after each row
moving the not-yet-rounded rows by the least-squares correction for its error (through the
Cholesky factor of H^-1) leaves the output error far below nearest rounding's when the inputs
are correlated: 4-9x lower on MiniLM's projections at every bit width. The levels stay those
of the k-means, so the decoders and the file format do not change; only the weight error
(which no longer is what the rounding minimizes) goes up.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np

from .codebook import Codebook, codebook_error

BLOCK = 128  # rows corrected together before the rest is updated by one matrix product
DAMPING = 0.01  # of the mean diagonal, so the factorization exists when inputs are collinear


@dataclass
class Covariance:
    """E[x x^T] of a weight's reduction index over the calibration inputs, and how the weight
    lays out as a [reduction, outputs] matrix: "rows" (X @ W), "cols" (W @ X, Gemm with transB:
    the transpose) or "filters" (Conv: [Cout, Cin * kernel] transposed)."""

    # [d, d], kept in float32 like its factor: the two in float64 held 284 MB through MiniLM's
    # plan; each use computes in float64 (the factor's rounding moves no plan by a byte there).
    # None once only the factor is kept (keep_factor_only).
    matrix: np.ndarray | None
    view: str
    samples: int = 0  # how many input vectors it was measured on (0: as if infinitely many)
    _factor: np.ndarray | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        assert self.matrix is not None
        self.matrix = np.asarray(self.matrix, dtype=np.float32)
        self.features = self.matrix.shape[0]

    def factor(self) -> np.ndarray:
        """The rounding's error-spreading factor (see _inverse_factor), computed once: every
        bit width and layout the planner tries reuses it."""
        if self._factor is None:
            assert self.matrix is not None
            self._factor = _inverse_factor(self.matrix, self.shrinkage()).astype(np.float32)
        return self._factor

    def keep_factor_only(self) -> None:
        """Drops the matrix once its output distortions are measured: rounding needs only the
        factor (71 MB less through the rest of MiniLM's plan)."""
        self.factor()
        self.matrix = None

    def shrinkage(self) -> float:
        """How far the matrix is pulled towards its mean variance before use: DAMPING, or
        d / (2 samples) when that is more. Measured on few vectors, a covariance is near
        singular, and rounding would hide its errors in directions the calibration inputs
        happen to miss but other inputs do not; with half as many vectors as features, nothing
        is left to compensate (nearest rounding). On MiniLM, calibrated on half its sentences
        and measured on the other half, shrinking by 0.1 kept 2-5x of the gain at d / n of 0.1
        and 0.42, where 0.01 lost up to a third of it."""
        d = self.features
        return min(1.0, max(DAMPING, d / (2 * self.samples))) if self.samples > 0 else DAMPING

    def as_rows(self, array: np.ndarray) -> np.ndarray:
        return as_rows(array, self.view)

    def from_rows(self, rows: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        if self.view == "rows":
            return rows.reshape(shape)
        return rows.T.reshape(shape)


def as_rows(array: np.ndarray, view: str) -> np.ndarray:
    """The weight as [d, n] for this view (see Covariance), row i multiplied by input feature i."""
    if view == "rows":
        return array.reshape(array.shape[0], -1)
    if view == "cols":
        return array.reshape(-1, array.shape[-1]).T
    return array.reshape(array.shape[0], -1).T


def output_distortion(array: np.ndarray, approx: np.ndarray, cov: Covariance) -> float:
    """tr(D^T H D) / tr(W^T H W) for D = approx - W: the share of the consumer's output
    energy the approximation loses (on the calibration inputs' statistics)."""
    w = cov.as_rows(array.astype(np.float64))
    d = cov.as_rows(approx.astype(np.float64).reshape(array.shape)) - w
    assert cov.matrix is not None, "output distortions are measured before keep_factor_only"
    h = cov.matrix.astype(np.float64)
    norm = float(np.einsum("ij,ij->", w, h @ w))
    return float(np.einsum("ij,ij->", d, h @ d)) / norm if norm > 0 else 0.0


def compensate(array: np.ndarray, cb: Codebook, cov: Covariance) -> Codebook:
    """`cb` with labels chosen by error-compensated rounding against `cov` (same levels); its
    method says so."""
    levels = _Levels(_levels_by_group(cb))
    groups = cov.as_rows(_group_ids(cb))
    labels = compensated_rounding(array, cov, lambda values, row: levels.nearest(values, groups[row]))
    out = replace(cb, labels=_to_layout(cov.from_rows(labels, cb.shape), cb), method=cb.method + ", compensated")
    out.rel_error = codebook_error(array, out)
    return out


Nearest = Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]


def compensated_rounding(array: np.ndarray, cov: Covariance, nearest: Nearest) -> np.ndarray:
    """The labels [d, n] (the weight as rows, Covariance.as_rows) of error-compensated rounding:
    row by row, `nearest(values, row)` gives each value's label and level, and the row's
    error moves the rows not yet rounded."""
    w = cov.as_rows(array.astype(np.float64)).copy()
    d = w.shape[0]
    if cov.features != d:
        raise ValueError(f"covariance over {cov.features} features for a weight with {d} input features")
    u = cov.factor()
    labels = np.empty(w.shape, dtype=np.int64)
    for start in range(0, d, BLOCK):
        stop = min(start + BLOCK, d)
        block = w[start:stop]  # a view: corrected in place
        errors = np.empty_like(block)
        for i in range(stop - start):
            row = start + i
            labels[row], rounded = nearest(block[i], row)
            errors[i] = (block[i] - rounded) / u[row, row]
            block[i + 1 :] -= np.outer(u[row, row + 1 : stop], errors[i])
        w[stop:] -= u[start:stop, stop:].T @ errors
    return labels


def _inverse_factor(h: np.ndarray, shrinkage: float = DAMPING) -> np.ndarray:
    """The upper Cholesky factor U of H_s^-1 (U^T U = H_s^-1) for the shrunk
    H_s = (1 - s) H + s mean(diag H) I: row i holds how row i's error spreads to the later
    rows, scaled by 1 / U[i, i]. Inputs never seen (zero variance) get a unit diagonal: their
    rows round to nearest and spread nothing."""
    h = h.astype(np.float64).copy()
    diag = np.diag(h).copy()
    dead = diag <= 0
    h[dead, :] = 0.0
    h[:, dead] = 0.0
    h[dead, dead] = 1.0
    mean = float(np.mean(np.diag(h)))
    h *= 1.0 - shrinkage
    h[np.diag_indices_from(h)] += shrinkage * mean
    # With J the reversal, J H J = M M^T gives H = N N^T for the upper N = J M J, so
    # H^-1 = (N^-1)^T N^-1: U = N^-1 = J M^-1 J, one factorization and one inverse.
    m = np.linalg.cholesky(h[::-1, ::-1])
    return np.ascontiguousarray(np.linalg.inv(m)[::-1, ::-1])


class _Levels:
    """Nearest level per value, each value with its own group's levels: all groups' sorted
    midpoints in one array, group g shifted by g * span so one searchsorted serves all."""

    def __init__(self, centroids: np.ndarray) -> None:
        self.order = np.argsort(centroids, axis=1, kind="stable")
        self.sorted = np.take_along_axis(centroids, self.order, axis=1)
        g, k = self.sorted.shape
        self.k = k
        self.low, self.high = self.sorted[:, 0], self.sorted[:, -1]
        self.span = 2.0 * float(self.high.max() - self.low.min()) + 1.0
        mids = (self.sorted[:, 1:] + self.sorted[:, :-1]) / 2 + (np.arange(g) * self.span)[:, None]
        self.mids = mids.reshape(-1)

    def nearest(self, values: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(labels into each group's centroids, the levels) for these values."""
        if self.k == 1:
            return self.order[groups, 0], self.sorted[groups, 0]
        if len(self.sorted) == 1:  # one codebook for the tensor: no shifts
            rank = np.searchsorted(self.mids, values)
            return self.order[0, rank], self.sorted[0, rank]
        clipped = np.clip(values, self.low[groups], self.high[groups])
        rank = np.searchsorted(self.mids, clipped + groups * self.span) - groups * (self.k - 1)
        rank = np.clip(rank, 0, self.k - 1)
        return self.order[groups, rank], self.sorted[groups, rank]


def _levels_by_group(cb: Codebook) -> np.ndarray:
    """Each group's levels [groups, k]: the codebooks, or for layout "scaled" the one codebook
    times each channel's scale (a label indexes the same level either way)."""
    if cb.scale is None:
        return cb.centroids.astype(np.float64)
    return cb.scale.astype(np.float64)[:, None] * cb.centroids[0].astype(np.float64)[None, :]


def _group_ids(cb: Codebook) -> np.ndarray:
    """Per value of the weight (in its shape), the row of _levels_by_group it draws from."""
    n = cb.n_values
    if cb.layout == "tensor":
        return np.zeros(cb.shape, dtype=np.int64)
    if cb.layout in ("channel", "scaled"):
        shape = [1] * len(cb.shape)
        shape[cb.axis] = cb.shape[cb.axis]
        return np.broadcast_to(np.arange(cb.shape[cb.axis]).reshape(shape), cb.shape)
    return (np.arange(n) // cb.group_size).reshape(cb.shape)


def _to_layout(labels: np.ndarray, cb: Codebook) -> np.ndarray:
    """Labels in the weight's shape back into `cb`'s grouped layout (Codebook.decoded's inverse)."""
    dtype = cb.labels.dtype
    if cb.layout in ("tensor", "scaled"):
        return labels.reshape(1, -1).astype(dtype)
    if cb.layout == "channel":
        moved = np.moveaxis(labels, cb.axis, 0)
        return np.ascontiguousarray(moved.reshape(moved.shape[0], -1), dtype=dtype)
    flat = cb.labels.reshape(-1).copy()  # keeps the padding's labels
    flat[: cb.n_values] = labels.reshape(-1)
    return flat.reshape(cb.labels.shape)
