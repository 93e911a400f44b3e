"""One BLAS thread per worker. onnxcompress spreads its own work over the cores (a thread per
core for codebooks, plan options, rounding and SVDs; onnxruntime's pool when it runs a model),
and OpenBLAS's own threads, which spin for a while after every call, took cores from both:
planning MiniLM with --max-error 0.01 took 38.6 s with two BLAS threads and 31.1 s with one,
the whole 8-bit command 10.4 s and 8.2 s. The limit is process-wide (BLAS has no per-thread
setting) and lasts while compress() or compare_models() runs."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from threadpoolctl import threadpool_limits


@contextmanager
def one_blas_thread() -> Iterator[None]:
    """BLAS (OpenBLAS, MKL, BLIS, whichever numpy loaded) at one thread inside; as before after."""
    with threadpool_limits(limits=1, user_api="blas"):
        yield
