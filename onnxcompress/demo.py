"""The bundled example: a digits MLP (2.4 MB) and its 360 held-out test images."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

import numpy as np
import onnxruntime as ort


def example_model() -> Path:
    return Path(str(files("onnxcompress.examples") / "digits_mlp.onnx"))


def example_data() -> tuple[np.ndarray, np.ndarray]:
    """(pixels [360, 64] float32, labels [360] int64)."""
    with np.load(str(files("onnxcompress.examples") / "digits_test.npz")) as d:
        return d["pixels"], d["labels"]


def accuracy(model: str | Path | bytes, pixels: np.ndarray, labels: np.ndarray) -> float:
    sess = ort.InferenceSession(model if isinstance(model, bytes) else str(model), providers=["CPUExecutionProvider"])
    probs = sess.run(None, {"pixels": pixels})[0]
    return float((probs.argmax(axis=1) == labels).mean())
