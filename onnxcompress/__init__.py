"""onnxcompress: make ONNX models much smaller, still runnable on stock onnxruntime."""

from ._version import __version__
from .api import Candidate, CompressResult, compare_models, compress, inspect, run_models
from .encoding.kmeans import BatchedKMeansResult, KMeansResult, kmeans1d, kmeans1d_batched
from .errors import CompressError, OnnxCompressError, TargetError, VerificationError
from .runtime.verify import Comparison, OutputDiff


def load_ipython_extension(ipython) -> None:  # noqa: ANN001 - IPython's shell
    """`%load_ext onnxcompress` registers the %onnxcompress magic (magic.py)."""
    from .magic import load_ipython_extension as load

    load(ipython)


def _jupyter_labextension_paths() -> list[dict[str, str]]:
    """Where the prebuilt JupyterLab extension lies, for `jupyter labextension develop .` (an
    installed wheel puts it under share/jupyter/labextensions; setup.py)."""
    return [{"src": "labextension", "dest": "onnxcompress-jupyter"}]


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
    "OnnxCompressError",
    "CompressError",
    "VerificationError",
    "KMeansResult",
    "BatchedKMeansResult",
    "kmeans1d",
    "kmeans1d_batched",
]
