"""onnxcompress: make ONNX models much smaller, still runnable on stock onnxruntime."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("onnxcompress")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

from .api import Candidate, CompressResult, compare_models, compress, inspect, run_models  # noqa: E402
from .errors import CompressError, TargetError, VerificationError  # noqa: E402
from .verify import Comparison, OutputDiff  # noqa: E402
from .kmeans import BatchedKMeansResult, KMeansResult, kmeans1d, kmeans1d_batched  # noqa: E402

__all__ = [
    "__version__",
    "compress",
    "inspect",
    "compare_models",
    "run_models",
    "Comparison",
    "TargetError",
    "CompressResult",
    "Candidate",
    "OutputDiff",
    "CompressError",
    "VerificationError",
    "KMeansResult",
    "BatchedKMeansResult",
    "kmeans1d",
    "kmeans1d_batched",
]
