"""Encode a weight as two factors from a truncated SVD.

A weight is seen as a matrix M (a 2-D weight as it is; a Conv filter bank Cout x Cin x k...
as Cout x (Cin * prod k)) and M ~= left @ right, left [rows, r], right [r, cols]. The
singular values are split evenly between the two (sqrt(s) on each side), which keeps both
factors at the same scale: the codebook encoder quantizes them better that way.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from ..dtypes import BFLOAT16
from ..io.select import Consumer, WeightSite
from ..options import LowRankOptions
from .codebook import relative_error

# Which consumers a pair can replace, and how the weight is read there.
MATRIX_CONSUMERS = {("MatMul", 0), ("MatMul", 1), ("Gemm", 1), ("Gather", 0)}

# --svd auto takes the randomized SVD on matrices whose short side is at least this long, when
# the rank it needs is at most RANDOMIZED_MAX_FRACTION of that side (see benchmarks/bench_lowrank.py).
RANDOMIZED_MIN_SIDE = 1024
RANDOMIZED_MAX_FRACTION = 0.25
OVERSAMPLE = 16
POWER_ITERATIONS = 5


@dataclass
class LowRankPair:
    """A weight as left @ right; `kind` says how the product maps back to the weight's shape
    ("matrix": as it is; "conv": reshaped to Cout x Cin x k...)."""

    shape: tuple[int, ...]
    kind: str
    left: np.ndarray  # [rows, rank], in the weight's dtype
    right: np.ndarray  # [rank, cols]
    full_rank: int
    svd: str  # "full" or "randomized"
    seconds: float
    rel_error: float = float("nan")  # ||W - left @ right|| / ||W||

    @property
    def rank(self) -> int:
        return int(self.left.shape[1])

    def stored_bytes(self) -> int:
        return int(self.left.nbytes + self.right.nbytes)

    def decoded(self) -> np.ndarray:
        """The weight the pair stands for (in float64, the weight's shape)."""
        return (self.left.astype(np.float64) @ self.right.astype(np.float64)).reshape(self.shape)


def factor_kind(site: WeightSite) -> tuple[str | None, str]:
    """("matrix" | "conv", "") when every consumer of the weight can be rewritten as a pair,
    else (None, why not)."""
    if site.array.dtype not in (np.float32, np.float16, np.float64) or site.onnx_dtype == BFLOAT16:
        return None, "low rank: bfloat16 weights are not factored (no bfloat16 MatMul in onnxruntime)"
    uses = site.consumers
    if any(c.in_subgraph for c in uses):
        return None, "low rank: read inside an If/Loop/Scan body"
    ops = {(c.op_type, c.input_index) for c in uses}
    if {("MatMul", 0), ("MatMul", 1)} <= ops:
        return None, "low rank: read as both inputs of MatMul"
    if site.array.ndim >= 3 and ops == {("Conv", 1)}:
        if any(c.attrs.get("group", 1) != 1 for c in uses):
            return None, "low rank: grouped or depthwise Conv (only group = 1 is factored)"
        return "conv", ""
    if site.array.ndim == 2 and ops <= MATRIX_CONSUMERS:
        if any(c.op_type == "Gather" and c.attrs.get("axis", 0) not in (0, -2) for c in uses):
            return None, "low rank: Gather along axis 1 (only row lookups are factored)"
        return "matrix", ""
    kinds = ", ".join(sorted({f"{op} input {i}" for op, i in ops}))
    return None, f"low rank: read by {kinds}; only MatMul, Gemm B, Conv (group 1) and Gather rows are factored"


def as_matrix(array: np.ndarray, kind: str) -> np.ndarray:
    return array.reshape(array.shape[0], -1) if kind == "conv" else array


def break_even_rank(rows: int, cols: int) -> int:
    """The largest rank whose pair is strictly smaller than the matrix."""
    return max(0, (rows * cols - 1) // (rows + cols))


def rank_for_energy(singular: np.ndarray, total: float, energy: float) -> int | None:
    """The smallest r whose top singular values hold `energy` of the squared Frobenius norm
    `total`, or None when the given values do not reach it."""
    held = np.cumsum(singular.astype(np.float64) ** 2)
    hit = np.flatnonzero(held >= energy * total * (1 - 1e-12))
    return int(hit[0]) + 1 if hit.size else None


def singular_values(matrix: np.ndarray) -> np.ndarray:
    """The singular values, descending, from the eigenvalues of the smaller Gram matrix in
    float64: 5x faster than LAPACK's SVD on MiniLM's embedding table, and exact to ~1e-15 of
    the largest value, far finer than any energy share the planner asks about."""
    m = matrix.astype(np.float64)
    gram = m.T @ m if m.shape[0] >= m.shape[1] else m @ m.T
    return np.sqrt(np.clip(np.linalg.eigvalsh(gram)[::-1], 0.0, None))


def truncated_svd(
    matrix: np.ndarray, rank: int | None, energy: float | None, method: str = "auto", seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """U[:, :r], s[:r], Vt[:r] for a fixed `rank` or the smallest rank holding `energy`.
    method: full (LAPACK), randomized (Halko et al.), or auto (randomized for a fixed rank that
    is a small part of a long short side; see benchmarks/bench_lowrank.py)."""
    a: np.ndarray = matrix.astype(np.float64 if matrix.dtype == np.float64 else np.float32, copy=False)
    short = min(a.shape)
    total = float(np.sum(a.astype(np.float64) ** 2))
    if method == "auto":  # an energy target's rank is unknown up front: on trained spectra LAPACK wins there
        small_rank = rank is not None and rank <= RANDOMIZED_MAX_FRACTION * short
        method = "randomized" if short >= RANDOMIZED_MIN_SIDE and small_rank else "full"
    if method == "randomized":
        got = _randomized(a, rank, energy, total, seed)
        if got is not None:
            return (*got, "randomized")
    u, s, vt = np.linalg.svd(a, full_matrices=False)
    r = min(rank, short) if rank is not None else (rank_for_energy(s, total, energy or 1.0) or short)
    return u[:, :r], s[:r], vt[:r], "full"


def _randomized(a: np.ndarray, rank: int | None, energy: float | None, total: float, seed: int):
    """Randomized range finder with power iterations; for an energy target the sketch doubles
    until the target is met. None when the sketch would reach a quarter of the short side
    (then the full SVD is as fast)."""
    short = min(a.shape)
    rng = np.random.default_rng(seed)
    width = (rank if rank is not None else max(32, short // 16)) + OVERSAMPLE
    while width <= max(RANDOMIZED_MAX_FRACTION * short, (rank or 0) + OVERSAMPLE) and width < short:
        q, _ = np.linalg.qr(a @ rng.standard_normal((a.shape[1], width)).astype(a.dtype))
        for _ in range(POWER_ITERATIONS):
            z, _ = np.linalg.qr(a.T @ q)
            q, _ = np.linalg.qr(a @ z)
        ub, s, vt = np.linalg.svd(q.T @ a, full_matrices=False)
        r = rank if rank is not None else rank_for_energy(s[: width - OVERSAMPLE], total, energy or 1.0)
        if r is not None:
            return q @ ub[:, :r], s[:r], vt[:r]
        width = 2 * width - OVERSAMPLE
    return None


def encode_lowrank(
    array: np.ndarray,
    kind: str,
    options: LowRankOptions,
    u_s_vt: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> LowRankPair:
    """Factor `array` as the options say (--rank, --rank-ratio or --energy); `u_s_vt`, a full
    SVD of its matrix already computed, is truncated instead of computing another."""
    t0 = time.perf_counter()
    matrix = as_matrix(array, kind)
    full = min(matrix.shape)
    rank, energy = options.fixed_rank(full), options.energy_target()
    if u_s_vt is not None:
        u, s, vt = u_s_vt
        r = rank if rank is not None else (rank_for_energy(s, float(np.sum(s.astype(np.float64) ** 2)), energy or 1.0) or full)
        u, s, vt, how = u[:, :r], s[:r], vt[:r], "full"
    else:
        u, s, vt, how = truncated_svd(matrix, rank, energy, options.svd)
    root = np.sqrt(s)
    store = array.dtype if array.dtype in (np.float16, np.float32, np.float64) else np.dtype(np.float32)
    pair = LowRankPair(
        tuple(array.shape),
        kind,
        np.ascontiguousarray((u * root).astype(store)),
        np.ascontiguousarray((root[:, None] * vt).astype(store)),
        full,
        how,
        0.0,
    )
    pair.rel_error = relative_error(array, pair.decoded())
    pair.seconds = time.perf_counter() - t0
    return pair


def multiply_adds(pair_or_shape: LowRankPair | tuple[int, ...], kind: str, op: str) -> int:
    """Multiply-adds per output row (MatMul, Gemm), per output position (Conv) or per looked-up
    row (Gather) for the weight as it is (a shape) or as a pair."""
    if isinstance(pair_or_shape, LowRankPair):
        rows, r = pair_or_shape.left.shape
        cols = pair_or_shape.right.shape[1]
        return r * cols if op == "Gather" else r * (rows + cols)
    shape = pair_or_shape
    return 0 if op == "Gather" else int(np.prod(shape))


LEFT, RIGHT = "::lowrank_left", "::lowrank_right"


def factor_arrays(pair: LowRankPair) -> tuple[np.ndarray, np.ndarray]:
    """The factors in the shapes the rewritten graph reads them."""
    if pair.kind == "conv":
        spatial = len(pair.shape) - 2
        right = pair.right.reshape((pair.rank, *pair.shape[1:]))
        left = pair.left.reshape((pair.shape[0], pair.rank, *([1] * spatial)))
        return left, right
    return pair.left, pair.right


def factor_sites(site: WeightSite, pair: LowRankPair) -> list[WeightSite]:
    """The two factors as weights of the rewritten graph, with the consumers they will have
    there (so a codebook per channel finds each factor's output axis)."""
    left_uses: list[Consumer] = []
    right_uses: list[Consumer] = []
    for c in site.consumers:
        if c.op_type == "Gather":
            left_uses.append(Consumer("Gather", 0, False))
            right_uses.append(Consumer("MatMul", 1, False))
        elif c.op_type == "Gemm":
            left_uses.append(Consumer("Gemm", 1, False, c.trans_b))
            right_uses.append(Consumer("Gemm", 1, False, c.trans_b))
        else:  # MatMul on either side, Conv: each factor sits where the weight sat
            left_uses.append(Consumer(c.op_type, c.input_index, False))
            right_uses.append(Consumer(c.op_type, c.input_index, False))
    left, right = factor_arrays(pair)
    return [
        WeightSite(site.name + LEFT, left, site.onnx_dtype, "initializer", left_uses),
        WeightSite(site.name + RIGHT, right, site.onnx_dtype, "initializer", right_uses),
    ]
