"""A MatMul weight as signed integers with one float scale per block of values along the
reduction axis: what DequantizeLinear reads from opset 21, and what onnxruntime runs as its
MatMulNBits kernel with the weight kept packed in RAM (INT4 from 1.24.4, INT8 from 1.32;
bench_resident.py). Unlike a codebook, the levels are a uniform grid: worse at equal size,
but the only form onnxruntime keeps packed in front of a MatMul."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import numpy as np

from .codebook import relative_error
from .compensate import Covariance, compensated_rounding

BLOCK = 32  # values per scale, along the reduction axis (onnxruntime's MatMulNBits takes 16..256)
BLOCK_BITS = (4, 8)


@dataclass
class Blocks:
    """values [K, N] int8 (within the signed `bits`-bit range), scale [K / block, N] float32:
    W[k, n] ~ values[k, n] * scale[k // block, n]."""

    values: np.ndarray
    scale: np.ndarray
    bits: int
    block: int = BLOCK
    method: str = "absmax"
    seconds: float = 0.0
    rel_error: float = float("nan")

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.values.shape)

    def decoded(self) -> np.ndarray:
        k, n = self.values.shape
        grid = self.values.reshape(k // self.block, self.block, n).astype(np.float32)
        return (grid * self.scale[:, None, :]).reshape(k, n)

    def stored_bytes(self) -> int:
        return -(-self.values.size * self.bits // 8) + self.scale.nbytes


def blocks_fit(shape: tuple[int, ...], block: int = BLOCK) -> bool:
    """A 2-D weight whose reduction axis splits into whole blocks."""
    return len(shape) == 2 and shape[0] % block == 0 and shape[0] >= block


def encode_blocks(array: np.ndarray, bits: int, block: int = BLOCK) -> Blocks:
    """Each block's largest magnitude at the grid's top (2^(bits-1) - 1), values rounded to nearest."""
    t0 = time.perf_counter()
    k, n = array.shape
    top = (1 << (bits - 1)) - 1
    grid = array.astype(np.float32).reshape(k // block, block, n)
    scale = np.abs(grid).max(axis=1) / top
    scale[scale == 0] = 1.0  # a block of zeros: any scale decodes it exactly
    values = np.clip(np.rint(grid / scale[:, None, :]), -top - 1, top).astype(np.int8).reshape(k, n)
    out = Blocks(values, scale.astype(np.float32), bits, block, seconds=time.perf_counter() - t0)
    out.rel_error = relative_error(array, out.decoded())
    return out


def compensate_blocks(array: np.ndarray, blocks: Blocks, cov: Covariance) -> Blocks:
    """The same scales, with values chosen by error-compensated rounding (compensate.py)
    against the consumer's input covariance (view "rows": row k is reduction index k)."""
    t0 = time.perf_counter()
    top = (1 << (blocks.bits - 1)) - 1
    scales = np.repeat(blocks.scale.astype(np.float64), blocks.block, axis=0)  # each row's own

    def nearest(values: np.ndarray, row: int) -> tuple[np.ndarray, np.ndarray]:
        q = np.clip(np.rint(values / scales[row]), -top - 1, top)
        return q.astype(np.int64), q * scales[row]

    values = compensated_rounding(array, cov, nearest).astype(np.int8)
    out = replace(blocks, values=values, method=blocks.method + ", compensated")
    out.seconds = blocks.seconds + time.perf_counter() - t0
    out.rel_error = relative_error(array, out.decoded())
    return out
