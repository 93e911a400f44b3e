"""How near the inputs' decisions came to flipping (runtime/margins.py), and the report's note
when none came near enough to test a share-of-decisions target."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from onnx import helper

import onnxcompress as oc
from onnxcompress.pipeline.summary import untested_decisions
from onnxcompress.runtime.margins import decision_margins
from onnxcompress.runtime.outputs import OutputKind

from models import F, make_model
from oracles import ort_outputs


def _oracle(refs, cands, axis, logged):
    """Position by position: the original's two best classes, sorted in Python, and the margins."""
    nearest, shift = np.inf, 0.0
    f = (lambda v: np.log(max(v, 1e-7))) if logged else float  # noqa: E731
    for a, b in zip(refs, cands, strict=True):
        a, b = np.moveaxis(a, axis, -1), np.moveaxis(b, axis, -1)
        for index in itertools.product(*(range(n) for n in a.shape[:-1])):
            order = sorted(range(a.shape[-1]), key=lambda c: -a[index][c])
            first, second = order[0], order[1]
            m = f(a[index][first]) - f(a[index][second])
            nearest = min(nearest, m)
            shift = max(shift, abs(f(b[index][first]) - f(b[index][second]) - m))
    return nearest, shift


def _softmax(z, axis):
    e = np.exp(z - z.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


@pytest.mark.parametrize("seed,axis,probabilities", [(0, -1, True), (1, 1, True), (2, -1, False), (3, 0, False)])
def test_class_margins_match_a_position_by_position_oracle(seed, axis, probabilities):
    rng = np.random.default_rng(seed)
    z = [rng.normal(size=(3, 5, 4)) * 3 for _ in range(2)]
    moved = [x + rng.normal(size=x.shape) * 0.05 for x in z]
    refs, cands = (z, moved) if not probabilities else ([_softmax(x, axis) for x in z], [_softmax(x, axis) for x in moved])
    found = decision_margins(OutputKind("classes", axis), refs, cands)
    nearest, shift = _oracle(refs, cands, axis, probabilities)
    assert found.nearest == pytest.approx(nearest, rel=1e-9, abs=1e-12)
    assert found.largest_shift == pytest.approx(shift, rel=1e-9, abs=1e-12)
    if probabilities:  # a softmax's log-ratio is the logits' difference: the scale the margin is on
        assert found.largest_shift == pytest.approx(_oracle(z, moved, axis, False)[1], rel=1e-6)


def test_probability_margins_are_log_odds_from_the_decision_at_a_half():
    p = [np.array([0.5, 0.9, 1e-12, 0.3])]
    q = [np.array([0.6, 0.9, 1e-12, 0.2])]
    found = decision_margins(OutputKind("probabilities"), p, q)
    assert found.nearest == 0.0  # a decision on its boundary
    odds = lambda v: np.log(v / (1 - v))  # noqa: E731
    assert found.largest_shift == pytest.approx(max(odds(0.6) - odds(0.5), odds(0.3) - odds(0.2)))


def test_other_kinds_and_single_class_outputs_have_no_margins():
    a = [np.ones((4, 3))]
    assert decision_margins(OutputKind("dense"), a, a) is None
    assert decision_margins(OutputKind("classes"), [np.ones((4, 1))], [np.ones((4, 1))]) is None


def detector():
    """x [n, 8] -> Sigmoid(x @ w): one decision per row, at 0.5."""
    w = np.random.default_rng(2).normal(size=(8, 1024)).astype(np.float32) / 30
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["h"]),
        helper.make_node("ReduceSum", ["h"], ["z"], axes=[1], keepdims=1),
        helper.make_node("Sigmoid", ["z"], ["p"]),
    ]
    return make_model(nodes, [("x", F, [None, 8])], [("p", F, [None, 1])], [("W", w)], opset=12)


def test_a_plan_on_decisions_far_from_their_boundary_says_that_near_ones_were_not_tested(capsys):
    """The face net's case: planned on confident inputs only, a target of no flips is met by
    construction, and the report says which margins other inputs would need to be safe."""
    model = detector()
    rng = np.random.default_rng(3)
    x = rng.normal(size=(64, 8)).astype(np.float32)
    w = np.random.default_rng(2).normal(size=(8, 1024)) / 30
    z = x @ w.sum(axis=1)
    confident = x[np.abs(z) > 2.0]
    far = oc.compress(model, min_elements=64, max_error=0.01, calibration=[{"x": confident}])
    (diff,) = far.report.outputs
    assert diff.margin_nearest > 2.0 and 0 < diff.margin_shift < diff.margin_nearest
    note = untested_decisions(far.report.outputs)
    assert note is not None and "p's moved by up to" in note
    far.report.render()
    assert "no decision on these inputs came near enough" in " ".join(capsys.readouterr().out.split())
    # the shift measured there is what moves a decision near the boundary on other inputs
    (original,), (compressed,) = ort_outputs(model, [{"x": x}])[0], ort_outputs(far.model, [{"x": x}])[0]
    odds = lambda p: np.log(p) - np.log1p(-p)  # noqa: E731
    assert np.abs(odds(compressed.astype(np.float64)) - odds(original.astype(np.float64))).max() < 3 * diff.margin_shift
    near = oc.compress(model, min_elements=64, max_error=0.01, calibration=[{"x": x}])
    assert near.report.outputs[0].margin_nearest < near.report.outputs[0].margin_shift
    assert untested_decisions(near.report.outputs) is None


def test_fixed_settings_on_confident_inputs_say_so_too(capsys):
    """A user who runs --bits 4 on confident inputs reads 100% of decisions kept: the note says
    that none of them was near enough to flip."""
    x = np.random.default_rng(3).normal(size=(64, 8)).astype(np.float32)
    z = x @ (np.random.default_rng(2).normal(size=(8, 1024)) / 30).sum(axis=1)
    r = oc.compress(detector(), min_elements=64, bits=4, calibration=[{"x": x[np.abs(z) > 2.0]}])
    assert r.report.outputs[0].flips == 0.0
    r.report.render()
    assert "no decision on these inputs came near enough" in " ".join(capsys.readouterr().out.split())
