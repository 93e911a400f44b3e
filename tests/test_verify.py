"""verify.compare against a float64 oracle over the concatenated outputs."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from onnxcompress.errors import CompressError, VerificationError
from onnxcompress.runtime.verify import _BLOCK, OutputDiff, compare, error_of, load_feeds


def oracle(reference, candidate, j):
    a = np.concatenate([np.asarray(r[j], dtype=np.float64).ravel() for r in reference])
    b = np.concatenate([np.asarray(c[j], dtype=np.float64).ravel() for c in candidate])
    d = b - a
    wide_a, wide_b = a.astype(np.longdouble), b.astype(np.longdouble)  # 1 - cos to ~1e-19
    norms = np.sqrt((wide_a @ wide_a) * (wide_b @ wide_b))
    # the documented conventions for an all-zero output: the absolute L2 error where the
    # reference is zero; a cosine of 1 when both are zero, 0 when only one is
    cos = wide_a @ wide_b / norms if norms > 0 else np.longdouble(np.all(a == 0) == np.all(b == 0))
    rel = np.linalg.norm(d) / np.linalg.norm(a) if np.any(a) else np.linalg.norm(d)
    return np.abs(d).max(), rel, cos


@settings(max_examples=40, deadline=None)
@example(sizes=[1], noise=0.5, seed=379)  # an all-zero integer output (found by a random run)
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


def diff(name: str, rel_l2: float, cosine: float, max_abs: float, top1: float | None = None) -> OutputDiff:
    return OutputDiff(name, max_abs=max_abs, rel_l2=rel_l2, cosine=cosine, top1=top1)


def test_error_of_is_the_worst_output_whatever_the_order():
    diffs = [diff("a", 0.1, 0.99, 2.0, 0.97), diff("b", 0.3, 0.999, 0.5), diff("c", 0.2, 0.95, 1.0, 0.9)]
    for order in (diffs, diffs[::-1], diffs[1:] + diffs[:1]):
        assert error_of(order, "rel-l2") == 0.3
        assert error_of(order, "cosine") == pytest.approx(0.05)
        assert error_of(order, "max-abs") == 2.0
        assert error_of(order, "top1") == pytest.approx(0.1)  # outputs with no top-1 do not count


def test_top1_error_is_the_share_of_changed_argmaxes():
    rng = np.random.default_rng(11)
    a = rng.normal(size=(300, 5)).astype(np.float32)
    b = a + rng.normal(size=a.shape).astype(np.float32) * 0.3
    changed = float(np.mean(np.argmax(a, axis=1) != np.argmax(b, axis=1)))
    assert 0 < changed < 1
    (d,) = compare(["logits"], [[a]], [[b]])
    assert error_of([d], "top1") == pytest.approx(changed)
    with pytest.raises(CompressError, match="no output looks like class scores"):
        error_of([diff("features", 0.1, 0.9, 1.0)], "top1")


def test_npz_keys_name_at_k_are_separate_feeds(tmp_path):
    rng = np.random.default_rng(12)
    first = {"x": rng.normal(size=(2, 3)).astype(np.float32), "mask": np.ones((2, 3), dtype=np.int64)}
    second = {"x": rng.normal(size=(5, 3)).astype(np.float32), "mask": np.zeros((5, 3), dtype=np.int64)}
    path = tmp_path / "feeds.npz"
    np.savez(path, **{f"{k}@{i}": v for i, feed in enumerate([first, second]) for k, v in feed.items()})
    feeds = load_feeds(path)
    assert len(feeds) == 2
    for got, want in zip(feeds, [first, second], strict=True):
        assert sorted(got) == sorted(want)
        for k in want:
            np.testing.assert_array_equal(got[k], want[k])
    # plain keys: one feed, and an email-like name with @ but no number stays a name
    np.savez(path, x=first["x"], **{"a@b": first["mask"]})
    (only,) = load_feeds(path)
    assert sorted(only) == ["a@b", "x"]
