"""How far an embedding moves where its consumers read it: the cosine similarities between
rows that search, clustering and deduplication compare (the task measure of an embedding
output, runtime/verify.py)."""

from __future__ import annotations

import numpy as np


def similarity_shift(refs: list[np.ndarray], cands: list[np.ndarray]) -> float:
    """The largest |cos(b_i, a_j) - cos(a_i, a_j)| over rows i and reference rows j (rows along
    the last axis, a the original, b the compressed): how far a similarity that search or
    clustering reads moves when compressed queries meet an index of original rows. j = i gives
    1 - cos(a_i, b_i), so E also keeps each row within cos 1 - E of itself; between two
    compressed rows a similarity moves by at most 2E. A row that rotates with all the others
    keeps their mutual similarities but not these. The reference rows are at most
    _REFERENCE_ROWS spread over all of them (MiniLM's 1,011 token rows: all of them)."""
    a = _rows(refs)
    b = _rows(cands).reshape(a.shape)
    if a.size == 0:
        return 0.0
    ua, ub = _unit(a), _unit(b)
    moved = ub - ua
    # 1 - cos(a_i, b_i) from the difference, exact for equal rows; a row zero on one side only
    # has no direction to keep: 1
    alone = ua.any(axis=1) != ub.any(axis=1)  # _unit keeps zero rows zero
    worst = float(np.max(np.where(alone, 1.0, 0.5 * np.sum(moved * moved, axis=1))))
    picks = np.unique(np.linspace(0, len(a) - 1, min(len(a), _REFERENCE_ROWS)).round().astype(np.int64))
    anchors = ua[picks].astype(np.float32).T
    for start in range(0, len(a), _BLOCK_ROWS):
        # j = i gives cos - 1 = -(1 - cos), the term above
        block = moved[start : start + _BLOCK_ROWS].astype(np.float32) @ anchors
        worst = max(worst, float(np.abs(block).max(initial=0.0)))
    return worst


def _rows(outputs: list[np.ndarray]) -> np.ndarray:
    """Every feed's rows along the last axis, stacked, in float64."""
    width = np.shape(outputs[0])[-1] if np.ndim(outputs[0]) else 1
    return np.concatenate([np.asarray(x, dtype=np.float64).reshape(-1, width) for x in outputs])


def _unit(rows: np.ndarray) -> np.ndarray:
    """Rows divided by their L2 norm; zero rows stay zero."""
    norm = np.linalg.norm(rows, axis=1, keepdims=True)
    return np.divide(rows, norm, out=np.zeros_like(rows), where=norm > 0)


# Similarities are measured against at most this many original rows (spread evenly). On one
# thread: MiniLM's 1,011 token rows of 384, 0.04 s; 32,768 rows of 768, 3.7 s (a plan compares
# outputs about 10 times)
_REFERENCE_ROWS = 2048
_BLOCK_ROWS = 4096
