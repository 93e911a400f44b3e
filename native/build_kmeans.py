"""cffi build script (compiled API mode) for the k-means core.

setup.py names it in ``cffi_modules``; a signature that does not match kmeans1d.h fails the
build, not a call at run time. The result is the bindings module
``onnxcompress._kmeans_native``, which exposes only ``ffi`` and ``lib``.
"""

import os
import sys

from cffi import FFI

# ONNXCOMPRESS_SANITIZE=1: AddressSanitizer and UBSan, for .ci/sanitize (never in a release build)
SANITIZE = os.environ.get("ONNXCOMPRESS_SANITIZE") == "1"
SANITIZER_FLAGS = ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined", "-fno-omit-frame-pointer", "-g"]

ffibuilder = FFI()
ffibuilder.cdef(
    """
    #define OC_FLOAT16 ...
    #define OC_FLOAT32 ...
    #define OC_FLOAT64 ...
    #define OC_OK ...
    #define OC_ERR_NONFINITE ...
    #define OC_ERR_WEIGHT ...
    #define OC_ERR_ZERO_WEIGHT ...
    #define OC_ERR_NOMEM ...
    #define OC_ERR_ARG ...
    int oc_kmeans1d(const void *x, int x_dtype, const void *weights, int w_dtype, size_t n,
                    size_t n_groups, uint32_t k, size_t table_budget, void *labels,
                    double *centroids, double *sse_by_k, uint32_t *n_clusters, double *sse,
                    size_t *bad_index);
    """
)
ffibuilder.set_source(
    "onnxcompress._kmeans_native",
    '#include "kmeans1d.h"',
    sources=["native/kmeans1d.c"],
    include_dirs=["native"],
    extra_compile_args=[] if sys.platform == "win32" else ["-std=c99", "-O1" if SANITIZE else "-O3"] + (SANITIZER_FLAGS if SANITIZE else []),
    extra_link_args=SANITIZER_FLAGS if SANITIZE else [],
)

if __name__ == "__main__":
    print(ffibuilder.compile(tmpdir=sys.argv[1] if len(sys.argv) > 1 else ".", verbose=True))
