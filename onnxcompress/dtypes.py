"""ONNX element types as numpy holds them. numpy has no bfloat16: its values are read as
float32 (whose top 16 bits they are) and kept in files as uint16 bit patterns. This module is
the one place that knows."""

from __future__ import annotations

import numpy as np
import onnx

BFLOAT16 = onnx.TensorProto.BFLOAT16


def itemsize(onnx_dtype: int) -> int:
    """Bytes per value in the file."""
    return 2 if onnx_dtype == BFLOAT16 else onnx.helper.tensor_dtype_to_np_dtype(onnx_dtype).itemsize


def numpy_dtype(onnx_dtype: int) -> np.dtype | None:
    """numpy's type for values of this element type; None for bfloat16 or a type onnx cannot map."""
    if onnx_dtype == BFLOAT16:
        return None
    try:
        return onnx.helper.tensor_dtype_to_np_dtype(onnx_dtype)
    except (KeyError, ValueError):
        return None


def file_dtype(onnx_dtype: int) -> np.dtype:
    """How the raw bytes of a tensor of this type read in numpy (bfloat16: uint16 patterns)."""
    return np.dtype(np.uint16) if onnx_dtype == BFLOAT16 else np.dtype(onnx.helper.tensor_dtype_to_np_dtype(onnx_dtype))


def bfloat16_to_float32(bits: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns (uint16) as the float32 values they are, exactly."""
    return (np.asarray(bits).astype(np.uint32) << 16).view(np.float32)


def float32_to_bfloat16(values: np.ndarray) -> np.ndarray:
    """float32 values as bfloat16 bit patterns (uint16), truncated."""
    return (np.asarray(values, dtype=np.float32).view(np.uint32) >> 16).astype(np.uint16)
