"""float16 weights read without a Cast: each value's position among float16's finite values,
stored in two bytes, made INT32 by one product (decode.to_int32), gathers a table of those values
that folds at load from three small constants."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from ..dtypes import numpy_dtype
from .decode import INT32_BY_PRODUCT_OPSET, NodeBuilder, stack_planes, to_int32

# float16 weights become their float type by a Gather from a table of every finite float16
# value, not a Cast (see decode.INT32_BY_PRODUCT_OPSET: the OCR plan's 18 float16 weights took
# node to 1.36x the original's RSS). The table folds at load from three small constants (3 KB;
# the distinct values of those 18 weights stored as they are took 113 KB). A value is stored as
# its position in two bytes, 255 * high + low: a uint8 factor reaches 255, not 256, and
# 255 x 256 positions cover float16's 63,488 finite values.
HALF_BASE = 255
FINITE_HALVES = 63488  # 2 signs x 31 exponent fields (the 32nd: inf and nan) x 1024 mantissas
# Their INT32 positions add to onnxruntime's load-time peak (a Cast added nothing): the OCR
# plan's 806,400 float16 values, 124.9 -> 128.1 MiB.
LOAD_PER_HALF_VALUE = 4.0


def reads_from_table(onnx_dtype: int, opset: int) -> bool:
    """Whether a float16 weight of this element type is read from the table (MatMulInteger:
    opset 10; a table in a type numpy has: not bfloat16), else through a Cast."""
    return opset >= INT32_BY_PRODUCT_OPSET and numpy_dtype(onnx_dtype) is not None


def half_positions(half: np.ndarray) -> np.ndarray:
    """Each finite float16 value's position in half_table: its bit pattern, the negative ones
    moved down past the 1024 patterns of inf and nan between them."""
    bits = np.ascontiguousarray(half, dtype=np.float16).view(np.uint16).astype(np.int32)
    assert not np.any((bits & 0x7C00) == 0x7C00), "float16 weights are finite (candidates.float16_is_an_option)"
    return np.where(bits < 0x8000, bits, bits - 1024)


def half_table(dtype: np.dtype, name: str) -> tuple[list[gs.Node], gs.Variable]:
    """Nodes that compute every finite float16 value in `dtype`, at half_positions: value =
    sign * 2^(max(e, 1) - 25) * (implicit + 256 * top mantissa bits + low byte), exact, as an
    outer sum and product of [high byte] and [low byte] constants."""
    b = NodeBuilder(name)
    high = np.concatenate([np.arange(0, 124), np.arange(128, 252)])  # sign, exponent < 31, 2 mantissa bits
    exponent, top = (high >> 2) & 31, high & 3
    scale = np.where(high >= 128, -1.0, 1.0) * np.exp2(np.maximum(exponent, 1) - 25.0)
    base = np.where(exponent > 0, 1024, 0) + 256 * top
    table = b.node("Add", [b.const("base", base.astype(dtype).reshape(-1, 1)), b.const("low", np.arange(256, dtype=dtype))])
    table = b.node("Mul", [b.const("scale", scale.astype(dtype).reshape(-1, 1)), table])
    return b.nodes, b.node("Reshape", [table, b.const("flat", np.array([FINITE_HALVES], dtype=np.int64))])


def build_half_decoder(half: np.ndarray, table: gs.Tensor, name: str, out: gs.Variable) -> list[gs.Node]:
    """Nodes that compute `out` from the float16 array `half` exactly: its half_positions as two
    byte planes, made INT32 by one product, gather `table` (half_table in the weight's type)."""
    b = NodeBuilder(name)
    high, low = np.divmod(half_positions(half), HALF_BASE)
    shape = half.shape if half.ndim else (1,)
    x = b.const("indices", stack_planes([high.astype(np.uint8), low.astype(np.uint8)], shape))
    idx = to_int32(b, x, shape, (HALF_BASE, 1))
    if not half.ndim:
        idx = b.node("Reshape", [idx, b.const("scalar", np.zeros(0, dtype=np.int64))])
    b.node("Gather", [table, idx], attrs={"axis": 0}, out=out)
    return b.nodes
