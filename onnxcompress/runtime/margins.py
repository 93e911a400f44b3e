"""How close the inputs' decisions came to flipping, and how far compression moved them.

A share-of-decisions target ("1 prediction in 100 may change") says little when every decision
on the inputs sits far from its boundary: none can flip there, whatever the weights do. The
face net planned on 32 confident faces (log-odds 6.4 to 19) changed none of them, and flipped
a face of log-odds -0.004 on other inputs: margins had moved by up to 0.063 on the faces it
was planned on, and by 0.044 on that one. So the report compares the two numbers measured
here: the nearest decision's margin, and the largest shift of a margin.

A margin is in log-odds, where compression moves confident and unsure decisions alike (a
probability near 1 hardly moves while its log-odds do): for class scores, the log-ratio of the
original's top class to its runner-up (scores in [0, 1] are probabilities and are logged; other
scores, logits or log-probabilities, are differenced as they are); for a Sigmoid's
probabilities, log(p / (1 - p)) against the decision at 0.5."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .outputs import OutputKind

# float32 holds probabilities to about 6e-8 from 0 and 1: log-odds beyond ~16 are saturated
_FLOOR = 1e-7


@dataclass(frozen=True)
class Margins:
    nearest: float  # the original's smallest decision margin over all positions, in log-odds
    largest_shift: float  # the largest change of a decision's margin, compressed against original


def decision_margins(kind: OutputKind, refs: list[np.ndarray], cands: list[np.ndarray]) -> Margins | None:
    """Margins of a classes or probabilities output over all feeds; None for other kinds, or
    for outputs with no decisions to read (a class axis shorter than 2)."""
    if kind.kind == "probabilities":
        pairs = [(_log_odds(a), _log_odds(b)) for a, b in zip(refs, cands, strict=True)]
        return _summarize([(np.abs(a), np.abs(b - a)) for a, b in pairs])
    if kind.kind != "classes" or not refs or np.ndim(refs[0]) < 1:
        return None
    axis = kind.axis if kind.axis is not None else -1
    if np.shape(refs[0])[axis] < 2:
        return None
    probabilities = all(float(np.min(a)) >= 0.0 and float(np.max(a)) <= 1.0 for a in refs)
    return _summarize([_top_two_margins(a, b, axis, probabilities) for a, b in zip(refs, cands, strict=True)])


def _log_odds(p: np.ndarray) -> np.ndarray:
    q = np.clip(np.asarray(p, dtype=np.float64), _FLOOR, 1.0 - _FLOOR)
    return np.log(q) - np.log1p(-q)


def _top_two_margins(a: np.ndarray, b: np.ndarray, axis: int, probabilities: bool) -> tuple[np.ndarray, np.ndarray]:
    """Per position: the original's margin of its top class over its runner-up, and how much
    the compressed scores of those two classes moved it."""
    a = np.moveaxis(np.asarray(a), axis, -1)
    b = np.moveaxis(np.asarray(b), axis, -1)
    top = np.argpartition(-a, 1, axis=-1)[..., :2]
    pick = lambda x: np.take_along_axis(x, top, axis=-1).astype(np.float64)  # noqa: E731
    sa, sb = pick(a), pick(b)
    if probabilities:
        sa, sb = np.log(np.maximum(sa, _FLOOR)), np.log(np.maximum(sb, _FLOOR))
    ma = np.abs(sa[..., 0] - sa[..., 1])  # argpartition does not order the two
    mb = (sb[..., 0] - sb[..., 1]) * np.sign(sa[..., 0] - sa[..., 1] + (sa[..., 0] == sa[..., 1]))
    return ma, np.abs(mb - ma)


def _summarize(parts: list[tuple[np.ndarray, np.ndarray]]) -> Margins | None:
    if not parts or all(np.size(m) == 0 for m, _ in parts):
        return None
    nearest = min(float(np.min(m)) for m, _ in parts if np.size(m))
    shift = max(float(np.max(s)) for _, s in parts if np.size(s))
    return Margins(nearest, shift)
