"""What the tests check the package against, computed apart from it: both models run in
onnxruntime, their outputs compared in numpy. Nothing here imports onnxcompress."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort


def ort_outputs(model: onnx.ModelProto | str | Path, feeds: list[dict]) -> list[list[np.ndarray]]:
    """Every output (in the graph's order) of `model` on each feed."""
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    sess = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
    return [sess.run(None, feed) for feed in feeds]


def rel_l2(reference: list[list[np.ndarray]], candidate: list[list[np.ndarray]], j: int) -> float:
    """Output j's relative L2 error over all feeds together."""
    a = np.concatenate([r[j].ravel() for r in reference]).astype(np.float64)
    b = np.concatenate([c[j].ravel() for c in candidate]).astype(np.float64)
    return float(np.linalg.norm(b - a) / np.linalg.norm(a))


def worst_channel(reference: list[list[np.ndarray]], candidate: list[list[np.ndarray]], j: int) -> float:
    """Output j's worst channel (slice along its last axis) relative L2 error over all feeds."""
    a = np.concatenate([r[j].reshape(-1, r[j].shape[-1]) for r in reference]).astype(np.float64)
    b = np.concatenate([c[j].reshape(-1, c[j].shape[-1]) for c in candidate]).astype(np.float64)
    return float(np.max(np.linalg.norm(b - a, axis=0) / np.linalg.norm(a, axis=0)))
