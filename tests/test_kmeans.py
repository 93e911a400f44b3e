"""The exact weighted 1D k-means core, checked against a brute-force dynamic programme."""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import onnxcompress as oc

# .ci/sanitize runs these property tests at scale against the ASan/UBSan build
FUZZ = int(os.environ.get("ONNXCOMPRESS_FUZZ", "1"))


def brute_force_curve(x: np.ndarray, w: np.ndarray, k: int) -> np.ndarray:
    """Optimal weighted SSE for 1..min(k, m) clusters, by the plain O(k m^2) DP over the
    distinct values with positive weight. Independent of the C core's tricks."""
    x = np.asarray(x, dtype=np.float64).ravel()
    w = np.asarray(w, dtype=np.float64).ravel()
    values, inverse = np.unique(x, return_inverse=True)
    weight = np.bincount(inverse, w, minlength=len(values))
    values, weight = values[weight > 0], weight[weight > 0]
    m = len(values)
    cost = np.full((m + 1, m + 1), np.inf)
    for a in range(m):
        for b in range(a + 1, m + 1):
            vw, vv = weight[a:b], values[a:b]
            mean = (vw * vv).sum() / vw.sum()
            cost[a, b] = (vw * (vv - mean) ** 2).sum()
    row = cost[0].copy()
    curve = [row[m]]
    for q in range(2, min(k, m) + 1):
        nxt = np.full(m + 1, np.inf)
        for t in range(q, m + 1):
            nxt[t] = np.min(row[q - 1 : t] + cost[q - 1 : t, t])
        row = nxt
        curve.append(row[m])
    return np.array(curve)


def check_nearest(x: np.ndarray, result: oc.KMeansResult) -> None:
    """Every value sits at (one of) its nearest centroids."""
    x = np.asarray(x, dtype=np.float64).ravel()
    dist = np.abs(x[:, None] - result.centroids[None, :])
    own = dist[np.arange(len(x)), result.labels.ravel()]
    scale = max(float(np.abs(result.centroids).max()), 1e-300)
    assert np.all(own <= dist.min(axis=1) + 1e-12 * scale)


def assert_optimal(x, w, k, result, rel=1e-9):
    w = np.ones(np.size(x)) if w is None else np.asarray(w, dtype=np.float64)
    ref = brute_force_curve(x, w, k)
    assert len(result.centroids) == len(ref)
    # the oracle itself rounds: allow rel of the 1-cluster SSE, or of sum w x^2 at eps level
    xd = np.asarray(x, dtype=np.float64).ravel()
    tol = rel * ref[0] + 1e-14 * float((w.ravel() * xd * xd).sum()) + 1e-300
    assert ref[-1] - tol <= result.sse <= ref[-1] + tol
    # the curve comes from the DP's prefix sums, not recomputed per k like the final SSE: it is
    # exact to about 1e-9 of the one-cluster SSE (found at 10x examples: 4.0010e-12 for 4.0e-12
    # beside a 1e-6 total)
    np.testing.assert_allclose(result.sse_by_k[: len(ref)], ref, rtol=1e-7, atol=tol + 1e-8 * ref[0])
    assert np.all(result.sse_by_k[len(ref) :] == 0)


# -- property tests against the oracle ------------------------------------------------------

finite = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False, width=64)
small_ints = st.integers(-4, 4).map(float)
values_strategy = st.one_of(
    hnp.arrays(np.float64, st.integers(1, 28), elements=finite),
    hnp.arrays(np.float64, st.integers(1, 28), elements=small_ints),  # many ties
)


@settings(max_examples=150 * FUZZ, deadline=None)
@given(x=values_strategy, k=st.integers(1, 12), budget=st.sampled_from([1 << 30, 0]))
# values 1e-226 and 2^-23 beside 30: the DP's prefix sums cancel and misplace a boundary, which
# only the boundary-fix pass moves back (found by the explore profile with that pass off)
@example(x=np.array([3.0, 4.52550322e-226, 2.0, 0.25, 0.5, 2.0**-23, 4.0, 30.0, 0.0, 1.0, 1.0, 1.0]), k=9, budget=1 << 30)
def test_matches_brute_force(x, k, budget):
    result = oc.kmeans1d(x, k, table_budget=budget)
    assert_optimal(x, None, k, result)
    check_nearest(x, result)


@settings(max_examples=150 * FUZZ, deadline=None)
@given(
    data=st.data(),
    n=st.integers(1, 24),
    k=st.integers(1, 10),
    budget=st.sampled_from([1 << 30, 0]),
)
def test_weighted_matches_brute_force(data, n, k, budget):
    x = data.draw(hnp.arrays(np.float64, n, elements=st.one_of(finite, small_ints)))
    # weights are summed in double precision: positive weights within 1e-6..50 of each other
    # (zero allowed); a weight 1e128 times smaller than another acts as zero up to rounding
    w = data.draw(hnp.arrays(np.float64, n, elements=st.one_of(st.just(0.0), st.floats(1e-6, 50))))
    assume(w.sum() > 0)
    result = oc.kmeans1d(x, k, w, table_budget=budget)
    assert_optimal(x, w, k, result)


@settings(max_examples=60 * FUZZ, deadline=None)
@given(
    base=st.sampled_from([1e6, -1e6, 1e-30, 1e30, 3.0e38]),
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(2, 30),
    k=st.integers(1, 8),
)
def test_offsets_and_magnitudes(base, seed, n, k):
    """1e6 + N(0,1) and tiny or huge magnitudes keep the optimum (centring and scaling)."""
    rng = np.random.default_rng(seed)
    scale = abs(base) * 1e-6 if abs(base) >= 1 else abs(base)
    x = base + rng.normal(size=n) * scale if abs(base) >= 1 else rng.normal(size=n) * scale
    result = oc.kmeans1d(x, k)
    assert_optimal(x, None, k, result)


# -- reference package and structural properties ----------------------------------------------


@pytest.mark.parametrize("n,k", [(2000, 4), (5000, 16), (3000, 256), (20000, 64)])
def test_sse_equals_kmeans1d_package(n, k):
    kmeans1d_package = pytest.importorskip("kmeans1d")
    x = np.random.default_rng(n + k).normal(size=n)
    labels, centroids = kmeans1d_package.cluster(x, k)
    ref = float(((x - np.asarray(centroids)[labels]) ** 2).sum())
    result = oc.kmeans1d(x, k)
    assert result.sse == pytest.approx(ref, rel=1e-9)
    check_nearest(x, result)


@pytest.mark.parametrize(
    "make",
    [
        # fp16-exact values take the 65536-bin counting path (n > 4096)
        lambda rng: rng.normal(size=9000).astype(np.float16).astype(np.float32),
        # bf16-exact values outside fp16's range take the bf16 bins
        lambda rng: (rng.normal(size=9000) * 1e10).astype(np.float32).view(np.uint32) & np.uint32(0xFFFF0000),
        # the float16 dtype itself
        lambda rng: rng.laplace(size=9000).astype(np.float16),
    ],
    ids=["fp16-values", "bf16-values", "float16-dtype"],
)
def test_counting_paths_are_exact(make):
    kmeans1d_package = pytest.importorskip("kmeans1d")
    raw = make(np.random.default_rng(7))
    x = raw.view(np.float32) if raw.dtype == np.uint32 else raw
    xd = x.astype(np.float64)
    for k in (3, 16, 200):
        labels, centroids = kmeans1d_package.cluster(xd, k)
        ref = float(((xd - np.asarray(centroids)[labels]) ** 2).sum())
        result = oc.kmeans1d(x, k)
        assert result.sse == pytest.approx(ref, rel=1e-9, abs=1e-12)
        check_nearest(xd, result)


def test_result_shapes_and_order():
    x = np.random.default_rng(0).normal(size=(7, 11, 3)).astype(np.float32)
    r = oc.kmeans1d(x, 8)
    assert r.labels.shape == x.shape and r.labels.dtype == np.uint8
    assert r.centroids.shape == (8,) and np.all(np.diff(r.centroids) > 0)
    assert r.sse_by_k.shape == (8,) and np.all(np.diff(r.sse_by_k) <= 1e-12)
    assert r.sse == pytest.approx(r.sse_by_k[-1])
    recon = r.centroids[r.labels]
    assert r.sse == pytest.approx(float(((x.astype(np.float64) - recon) ** 2).sum()), rel=1e-12)


def test_centroids_are_weighted_means():
    rng = np.random.default_rng(3)
    x, w = rng.normal(size=500), rng.uniform(0, 3, size=500)
    r = oc.kmeans1d(x, 9, w)
    for c in range(9):
        members = r.labels == c
        assert r.centroids[c] == pytest.approx(np.average(x[members], weights=w[members]), rel=1e-12)


def test_equal_values_share_a_label_and_k_above_distinct():
    x = np.array([3.0, -0.0, 0.0, 3.0, 7.0, 0.0, 7.0])
    r = oc.kmeans1d(x, 10)
    assert len(r.centroids) == 3  # exactly min(k, m) centroids, no padding
    assert r.labels[1] == r.labels[2] == r.labels[5]
    assert r.sse == 0.0 and np.all(r.sse_by_k[2:] == 0)


def test_zero_weight_values_go_to_the_nearest_centroid():
    x = np.array([0.0, 0.1, 5.0, 5.1, 2.4, 2.6, 100.0])
    w = np.array([1, 1, 1, 1, 0, 0, 0], dtype=float)
    r = oc.kmeans1d(x, 2, w)
    np.testing.assert_allclose(r.centroids, [0.05, 5.05])
    assert list(r.labels) == [0, 0, 1, 1, 0, 1, 1]


def test_more_than_256_clusters_use_uint16_labels():
    x = np.arange(1000, dtype=np.float32)
    r = oc.kmeans1d(x, 300)
    assert r.labels.dtype == np.uint16 and len(r.centroids) == 300
    check_nearest(x, r)


def test_table_and_hirschberg_agree_on_a_large_input():
    x = np.random.default_rng(11).normal(size=70000)  # above 65535 distinct values
    a = oc.kmeans1d(x, 40)
    b = oc.kmeans1d(x, 40, table_budget=0)
    assert a.sse == b.sse
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_allclose(a.sse_by_k, b.sse_by_k, rtol=1e-12)


# -- batched form and threads -----------------------------------------------------------------


def test_batched_equals_one_call_per_group():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(6, 300)).astype(np.float32)
    x[2] = 1.5  # a constant group: one cluster
    w = rng.uniform(0.1, 2, size=x.shape)
    b = oc.kmeans1d_batched(x, 16, w)
    for g in range(6):
        r = oc.kmeans1d(x[g], 16, w[g])
        n = len(r.centroids)
        assert b.n_clusters[g] == n
        np.testing.assert_array_equal(b.labels[g], r.labels)
        np.testing.assert_array_equal(b.centroids[g, :n], r.centroids)
        assert np.all(b.centroids[g, n:] == r.centroids[-1])
        assert b.sse[g] == r.sse
        np.testing.assert_array_equal(b.sse_by_k[g], r.sse_by_k)


def test_threads_cluster_at_once():
    rng = np.random.default_rng(9)
    data = [rng.normal(size=40000) for _ in range(4)]
    expected = [oc.kmeans1d(x, 64).sse for x in data]
    results: dict[int, float] = {}

    def work(i):
        results[i] = oc.kmeans1d(data[i], 64).sse

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [results[i] for i in range(4)] == expected


# -- bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "x,k,w,message",
    [
        (np.array([1.0, np.nan]), 2, None, "NaN or infinity .* index \\(1,\\)"),
        (np.array([[1.0, 2.0], [np.inf, 0.0]], dtype=np.float32), 2, None, "index \\(1, 0\\)"),
        (np.array([1.0, 2.0], dtype=np.float16) * np.float16(np.inf), 2, None, "NaN or infinity"),
        (np.array([1.0, 2.0]), 2, np.array([1.0, -1.0]), "non-negative.*\\(1,\\)"),
        (np.array([1.0, 2.0]), 2, np.array([1.0, np.nan]), "non-negative"),
        (np.array([1.0, 2.0]), 2, np.array([1.0, 2.0, 3.0]), "shape"),
        (np.array([1.0, 2.0]), 2, np.zeros(2), "every weight .* zero"),
        (np.array([]), 2, None, "empty"),
        (np.array([1.0, 2.0]), 0, None, "k must be between"),
        (np.array([1.0, 2.0]), 70000, None, "k must be between"),
        (np.array([1.0, 2.0]), 2.5, None, "k must be an integer"),
        (np.array([1 + 2j]), 2, None, "real numbers"),
    ],
)
def test_bad_input_is_a_clear_value_error(x, k, w, message):
    with pytest.raises(ValueError, match=message):
        oc.kmeans1d(x, k, w)


def test_batched_needs_two_dimensions():
    with pytest.raises(ValueError, match="2-D"):
        oc.kmeans1d_batched(np.zeros(5), 2)


def test_integer_and_noncontiguous_input():
    x = np.arange(40, dtype=np.int64).reshape(8, 5)[:, ::2]  # a strided view of ints
    r = oc.kmeans1d(x, 4)
    assert r.labels.shape == x.shape
    assert_optimal(x.astype(float), None, 4, r)


def test_curve_precision_beside_a_tiny_total():
    """Found by the sanitized run at 10x examples: the curve entry for k = 2 is within 1e-9 of
    the one-cluster SSE; the final SSE (k = 3) is exact."""
    x, w = np.array([1.0, 0.0, 0.0, 1e-6]), np.array([1e-6, 6.0, 6.0, 6.0])
    result = oc.kmeans1d(x, 3, w)
    assert_optimal(x, w, 3, result)
    assert result.sse == 0.0
