"""BLAS runs one thread while compress and compare_models run (threads.py), and gets its own
setting back afterwards, also when compress raises."""

from __future__ import annotations

import numpy as np
import pytest
from models import matmul_chain
from threadpoolctl import threadpool_info, threadpool_limits

import onnxcompress as oc


def blas_threads() -> set[int]:
    return {lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"}


def test_blas_is_single_threaded_inside_compress_and_restored_after():
    if not blas_threads():
        pytest.skip("numpy here loads no BLAS that threadpoolctl can see")
    model = matmul_chain("A", (256, 192), "B", (192, 64))
    seen: list[set[int]] = []
    with threadpool_limits(limits=2, user_api="blas"):
        oc.compress(model, bits=4, min_elements=64, progress=lambda stage, done, total: seen.append(blas_threads()))
        assert blas_threads() == {2}
        with pytest.raises(oc.CompressError):
            oc.compress(model, bits=4, min_elements=10**9)  # nothing to compress
        assert blas_threads() == {2}
    assert seen and all(s == {1} for s in seen)


def test_compare_models_runs_with_one_blas_thread_too(monkeypatch):
    if not blas_threads():
        pytest.skip("numpy here loads no BLAS that threadpoolctl can see")
    import onnxcompress.api as api

    model = matmul_chain("A", (256, 192), "B", (192, 64))
    small = oc.compress(model, bits=4, min_elements=64).model
    x = {"x": np.random.default_rng(0).normal(size=(8, 256)).astype(np.float32)}
    inside: list[set[int]] = []
    original = api.compare

    def spy(*args, **kwargs):
        inside.append(blas_threads())
        return original(*args, **kwargs)

    monkeypatch.setattr(api, "compare", spy)
    with threadpool_limits(limits=2, user_api="blas"):
        oc.compare_models(model, small, inputs=x)
    assert inside == [{1}]
