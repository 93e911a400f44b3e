"""verify.compare against a float64 oracle over the concatenated outputs."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from onnxcompress.errors import VerificationError
from onnxcompress.verify import _BLOCK, compare, error_of


def oracle(reference, candidate, j):
    a = np.concatenate([np.asarray(r[j], dtype=np.float64).ravel() for r in reference])
    b = np.concatenate([np.asarray(c[j], dtype=np.float64).ravel() for c in candidate])
    d = b - a
    wide_a, wide_b = a.astype(np.longdouble), b.astype(np.longdouble)  # 1 - cos to ~1e-19
    cos = wide_a @ wide_b / np.sqrt((wide_a @ wide_a) * (wide_b @ wide_b))
    return np.abs(d).max(), np.linalg.norm(d) / np.linalg.norm(a), cos


@settings(max_examples=40, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 3 * _BLOCK // 2), min_size=1, max_size=3),
    noise=st.floats(1e-7, 1.0),
    seed=st.integers(0, 2**32 - 1),
)
def test_compare_matches_the_concatenated_float64_oracle(sizes, noise, seed):
    rng = np.random.default_rng(seed)
    reference = [[rng.normal(size=n).astype(np.float32), rng.integers(-5, 5, size=(n, 2))] for n in sizes]
    candidate = [[(r[0] + noise * rng.normal(size=r[0].shape)).astype(np.float32), r[1] + 1] for r in reference]
    diffs = compare(["x", "ints"], reference, candidate)
    for j, diff in enumerate(diffs):
        peak, rel, cos = oracle(reference, candidate, j)
        assert diff.max_abs == pytest.approx(peak, rel=1e-12)
        assert diff.rel_l2 == pytest.approx(rel, rel=1e-9)
        # abs: the cosine is a double near 1, where doubles lie 1.1e-16 apart
        assert 1 - diff.cosine == pytest.approx(float(1 - cos), rel=1e-4, abs=3.4e-16)


def test_a_nan_in_the_compressed_outputs_shows_in_every_measure():
    a = np.ones(3 * _BLOCK, dtype=np.float32)
    b = a.copy()
    b[_BLOCK + 5] = np.nan
    (diff,) = compare(["y"], [[a]], [[b]])
    assert np.isnan(diff.max_abs) and np.isnan(diff.rel_l2)
    assert np.isnan(error_of([diff], "rel-l2"))


def test_empty_and_identical_outputs():
    empty = np.zeros((0, 4), dtype=np.float32)
    same = np.arange(10, dtype=np.float32)
    d_empty, d_same = compare(["e", "s"], [[empty, same]], [[empty, same.copy()]])
    assert (d_empty.max_abs, d_empty.rel_l2, d_empty.cosine) == (0.0, 0.0, 1.0)
    assert (d_same.max_abs, d_same.rel_l2, d_same.cosine) == (0.0, 0.0, 1.0)


def test_outputs_of_different_sizes_are_a_one_line_error():
    with pytest.raises(VerificationError, match="'y' has 5 values in the compressed model, 4 in the original"):
        compare(["y"], [[np.zeros(4)]], [[np.zeros(5)]])


def test_top1_for_softmax_rows_and_classifier_names_only():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(500, 7))
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    flipped = probs.copy()
    flipped[:50] = flipped[:50, ::-1]  # argmax changes on these rows (ties aside)
    agree = float(np.mean(np.argmax(probs, 1) == np.argmax(flipped, 1)))
    d_probs, d_scores, d_logits = compare(
        ["output", "features", "logits"], [[probs, logits, logits]], [[flipped, logits, logits]]
    )
    assert d_probs.top1 == pytest.approx(agree) and agree < 1
    assert d_scores.top1 is None  # neither softmax rows nor a classifier's name
    assert d_logits.top1 == 1.0
