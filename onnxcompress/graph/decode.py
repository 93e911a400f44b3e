"""The standard ONNX nodes that rebuild a weight from its codebook, and the packing of the
indices they read.

Indices are stored at exactly `bits` bits each, split into bit planes of width 4, 2 or 1
(bits = 7 is 4 + 2 + 1). A plane of width w holds 8/w values per byte, in plane-major order:
byte i holds values i, N + i, 2N + i, ... in bits [0, w), [w, 2w), ... Two BitShift nodes
with broadcast shift amounts unpack a whole plane (opset 11, onnxruntime 1.16+); one, when a
single plane feeds one codebook repeated to 256 levels (_byte_table). The index
becomes INT32 once (Gather rejects uint8; INT64 costs more peak memory at load), by a
MatMulInteger with the identity or a row of one rather than a Cast (to_int32), then
Gather (one codebook) or GatherElements (one per channel or group) looks the values up.
onnxruntime folds all of it into a plain initializer at load.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.ir.tensor import LazyValues

from ..encoding.blocks import Blocks, blocks_fit
from ..encoding.codebook import Codebook, scale_shape
from ..errors import CompressError
from ..io.select import WeightSite

PLANE_WIDTHS = (4, 2, 1)
# Native sub-byte index types (bits -> element type, first opset): one Cast replaces the
# BitShift planes; onnxruntime casts them from 1.24.4 (1.20-1.22 have no uint4 Cast kernel).
NATIVE_INDEX = {4: (onnx.TensorProto.UINT4, 21), 2: (onnx.TensorProto.UINT2, 25)}
NATIVE_MIN_ORT = (1, 24, 4)
# Bit planes are combined in uint8 (a quarter of INT32's load-time memory) only for onnxruntime
# 1.21 and later: ONNX allows uint8 Add from opset 14, but onnxruntime's CPU kernels before
# 1.21 have none ("Could not find an implementation for Add(14)" on 1.16.3, tests/test_compat.py).
UINT8_ADD_MIN_ORT = (1, 21)
# uint8 indices become INT32 through a MatMulInteger (opset 10) instead of a Cast:
# onnxruntime-web's Cast kernel is one 490 KB wasm function that V8's optimizing compiler takes
# up once folding runs it hot, for about 200 MiB more in a Chromium tab for a second after the
# session is made and 130 MiB more in node for good (a 1 M-value weight). Natively the two fold
# alike (an 11.7 M-value table: 0.18 s both, 3 MiB more peak). docs/deployment.md.
INT32_BY_PRODUCT_OPSET = 10
# A last axis this short is multiplied by the identity (one product of that many terms a value);
# a longer one by a row of ones through a length-1 axis (one product per row: the conv weights'
# 3-wide rows folded 2.5x slower that way).
IDENTITY_MAX = 16


# What folding a decoder at load adds to onnxruntime's memory peak over loading the float
# weight, in bytes per value, native onnxruntime (docs/deployment.md), from the OCR model's
# 120 x 18710 head alone: uint8 indices 0.9, native uint4 1.9, one bit plane 4.2-5.1, each
# further plane 12-15 combined in INT32 and 5.3-5.9 in uint8. Small weights cost more per value
# (the face net's two 7-bit weights took 46 where the head took 33); the budget's estimate of
# the original's peak errs low to make up for it (options.LOAD_PER_WEIGHT_BYTE).
# A single plane read through a 256-level table (_byte_table) skips the mask: 0.85 less, from
# the OCR model at 4 bits (5.3 M values; 133 -> 129 MiB).
LOAD_PER_VALUE = {"uint8": 1.0, "native": 2.0, "plane": 5.0, "table": 4.2}
LOAD_PER_EXTRA_PLANE = {"int32": 14.0, "uint8": 6.0}
LOAD_RESHAPED = 4.0  # codebooks per channel or group: a Reshape of the float values


def load_per_value(bits: int, layout: str, opset: int, target_ort: tuple[int, ...]) -> float:
    """Bytes per value that folding this codebook's decoder adds to the load-time peak (an
    estimate from LOAD_PER_VALUE; the planner holds plans to --load-peak with it)."""
    planes = plane_widths(bits)
    if bits == 8:
        cost = LOAD_PER_VALUE["uint8"]
    elif native_index_type(bits, opset, target_ort) is not None:
        cost = LOAD_PER_VALUE["native"]
    elif len(planes) == 1 and layout in ("tensor", "scaled"):
        cost = LOAD_PER_VALUE["table"]
    else:
        combine = "uint8" if opset >= 14 and tuple(target_ort) >= UINT8_ADD_MIN_ORT else "int32"
        cost = LOAD_PER_VALUE["plane"] + (len(planes) - 1) * LOAD_PER_EXTRA_PLANE[combine]
    return cost + (0.0 if layout in ("tensor", "scaled") else LOAD_RESHAPED)


def native_index_type(bits: int, opset: int, target_ort: tuple[int, ...]) -> int | None:
    entry = NATIVE_INDEX.get(bits)
    if entry and opset >= entry[1] and tuple(target_ort) >= NATIVE_MIN_ORT:
        return entry[0]
    return None


def pack_little_end(values: np.ndarray, width: int) -> bytes:
    """uint8 values < 2^width, 8/width to a byte, element 0 in the low bits (ONNX's layout
    for UINT4 and UINT2)."""
    per_byte = 8 // width
    padded = np.zeros(-(-values.size // per_byte) * per_byte, dtype=np.uint8)
    padded[: values.size] = values
    groups = padded.reshape(-1, per_byte).astype(np.uint16)
    packed = np.zeros(groups.shape[0], dtype=np.uint16)
    for j in range(per_byte):
        packed |= groups[:, j] << (j * width)
    return packed.astype(np.uint8).tobytes()


def to_top_bits(width: int) -> list[int]:
    """Left shifts that move value j of a packed byte (bits [j*width, (j+1)*width)) to the top
    bits, so that a right shift by 8 - width then leaves it alone."""
    return [8 - width * (j + 1) for j in range(8 // width)]


def plane_widths(bits: int) -> list[tuple[int, int]]:
    """(width, bit offset) of each plane, low bits first: 7 -> [(4, 0), (2, 4), (1, 6)]."""
    out, offset = [], 0
    for w in PLANE_WIDTHS:
        if bits & w:
            out.append((w, offset))
            offset += w
    return out


def pack_plane(values: np.ndarray, width: int) -> np.ndarray:
    """uint8 values < 2^width -> bytes [1, N] in plane-major order."""
    per_byte = 8 // width
    n = -(-values.size // per_byte)
    padded = np.zeros(n * per_byte, dtype=np.uint8)
    padded[: values.size] = values
    planes = padded.reshape(per_byte, n).astype(np.uint16)
    packed = np.zeros(n, dtype=np.uint16)
    for j in range(per_byte):
        packed |= planes[j] << (j * width)
    return packed.astype(np.uint8).reshape(1, n)


def required_opset(bits: int, layout: str) -> int:
    """8-bit tensor codebooks need Gather (and Mul, scaled), and MatMulInteger from opset 10 or
    a Cast before it; the rest BitShift or GatherElements."""
    return 5 if bits == 8 and layout in ("tensor", "scaled") else 11


def check_opset(bits: int, layout: str, opset: int, what: str) -> None:
    need = required_opset(bits, layout)
    if opset < need:
        raise CompressError(
            f"{what}: {bits}-bit {layout} codebooks need opset {need} (BitShift, GatherElements) but the model "
            f"has opset {opset}; use --bits 8 --granularity tensor, or convert with --opset {need}"
        )


def build_decoder(
    cb: Codebook, name: str, out: gs.Variable, onnx_dtype: int, opset: int, target_ort: tuple[int, ...] = (1, 16)
) -> tuple[list[gs.Node], str]:
    """Nodes that compute `out` (named like the weight) from constants only, and how the
    indices are stored: "uint8", "uint4"/"uint2" (native, when the opset and target allow)
    or "planes" (BitShift bit planes, opset 11 and onnxruntime 1.16 on).

    onnxruntime keeps every folded intermediate until its folding pass ends, so the load-time
    peak grows with each 4-byte-per-value tensor here: the indices stay uint8 (already in the
    weight's shape at 8 bits; planes combined with uint8 Add from opset 14) until one product
    makes them INT32 in the weight's shape (to_int32), and Gather then yields the weight's shape
    directly, with no Reshape of floats.
    """
    check_opset(cb.bits, cb.layout, opset, name)
    b = NodeBuilder(name)
    one_codebook = cb.layout in ("tensor", "scaled")
    index_shape = cb.shape if one_codebook else cb.labels.shape
    native = native_index_type(cb.bits, opset, target_ort)
    byte_table = native is None and _byte_table(cb)  # native indices come unpacked: nothing to mask
    if cb.bits == 8 and opset >= INT32_BY_PRODUCT_OPSET:
        idx = to_int32(b, b.const("indices", cb.labels.reshape(product_shape(index_shape))), index_shape)
        stored = "uint8"
    elif cb.bits == 8:
        idx = b.node("Cast", [b.const("indices", cb.labels.reshape(index_shape))], attrs={"to": onnx.TensorProto.INT32})
        stored = "uint8"
    elif native is not None:
        packed = pack_little_end(cb.labels.reshape(-1), cb.bits)
        proto = onnx.helper.make_tensor("", native, index_shape, packed, raw=True)
        idx = b.node("Cast", [b.proto_const("indices", proto)], attrs={"to": onnx.TensorProto.INT32})
        stored = "uint4" if native == onnx.TensorProto.UINT4 else "uint2"
    else:
        in_uint8 = opset >= 14 and tuple(target_ort) >= UINT8_ADD_MIN_ORT
        idx = _unpack(b, cb.labels.reshape(-1), cb.bits, index_shape, in_uint8, unmasked=byte_table)
        stored = "planes"
    if one_codebook:
        codebook = b.const("codebook", cb.centroids[0])
        for _ in range(8 - cb.bits if byte_table else 0):  # level b mod 2^bits at each byte b: no mask
            codebook = b.node("Concat", [codebook, codebook], attrs={"axis": 0})  # any type (Tile has no float16)
        vals = b.node("Gather", [codebook, idx], attrs={"axis": 0})
        if cb.scale is not None:  # each channel's levels times its scale, in the scale's type
            level_type = cb.centroids.dtype
            if level_type != cb.scale.dtype:
                vals = b.node("Cast", [vals], attrs={"to": onnx.helper.np_dtype_to_tensor_dtype(cb.scale.dtype)})
            vals = b.node("Mul", [vals, b.const("scale", cb.scale.reshape(scale_shape(cb.shape, cb.axis)))])
    else:
        vals = b.node("GatherElements", [b.const("codebook", cb.centroids), idx], attrs={"axis": 1})
        if cb.layout == "channel":
            moved = np.moveaxis(np.empty(cb.shape, dtype=np.bool_), cb.axis, 0).shape
            vals = b.node("Reshape", [vals, b.const("moved", np.array(moved, dtype=np.int64))])
            if cb.axis != 0:
                perm = list(range(1, len(cb.shape)))
                perm.insert(cb.axis, 0)
                vals = b.node("Transpose", [vals], attrs={"perm": perm})
        else:
            if cb.labels.size != cb.n_values:
                vals = b.node("Reshape", [vals, b.const("flat", np.array([-1], dtype=np.int64))])
                vals = b.node(
                    "Slice",
                    [
                        vals,
                        b.const("start", np.array([0], dtype=np.int64)),
                        b.const("count", np.array([cb.n_values], dtype=np.int64)),
                    ],
                )
            vals = b.node("Reshape", [vals, b.const("shape", np.array(cb.shape, dtype=np.int64))])
    values_type = cb.centroids.dtype if cb.scale is None else cb.scale.dtype
    if onnx.helper.np_dtype_to_tensor_dtype(values_type) != onnx_dtype:
        b.node("Cast", [vals], attrs={"to": onnx_dtype})
    b.nodes[-1].outputs = [out]
    return b.nodes, stored


# DequantizeLinear with blocks (block_size) and INT4: opset 21, whose models are IR 10.
BLOCKS_OPSET = 21
# The first onnxruntime that fuses DequantizeLinear blocks of this width into MatMulNBits and
# keeps them packed (bench_resident.py: 1.24.4 fuses INT4, and decodes INT8 at every call).
BLOCKS_MIN_ORT = {4: (1, 24, 4), 8: (1, 32)}


def blocks_stay_packed(site: WeightSite, bits: int, opset: int, target_ort: tuple[int, ...]) -> bool:
    """Whether integer blocks of this width are offered for `site`: a float32 weight read only
    as the right operand of main-graph MatMuls, in whole blocks, in a model of opset 21 or
    later, for a target onnxruntime that keeps them packed."""
    products = bool(site.consumers) and all(
        c.op_type == "MatMul" and c.input_index == 1 and not c.in_subgraph for c in site.consumers
    )
    return (
        products
        and site.onnx_dtype == onnx.TensorProto.FLOAT
        and site.location == "initializer"
        and blocks_fit(site.array.shape)
        and opset >= BLOCKS_OPSET
        and tuple(target_ort) >= BLOCKS_MIN_ORT[bits]
    )


def build_block_decoder(blocks: Blocks, name: str, out: gs.Variable) -> tuple[list[gs.Node], str]:
    """One DequantizeLinear from the integer blocks (INT8, or INT4 two to a byte, the first
    in the low bits) and their float32 scales to `out`, and how the values are stored.
    onnxruntime fuses it with the MatMul that reads `out` (MatMulNBits) and keeps it packed."""
    b = NodeBuilder(name)
    if blocks.bits == 8:
        values = b.const("blocks", blocks.values)
    else:
        nibbles = (blocks.values.reshape(-1) & 0x0F).astype(np.uint8)
        packed = pack_little_end(nibbles, 4)
        values = b.proto_const("blocks", onnx.helper.make_tensor("", onnx.TensorProto.INT4, blocks.shape, packed, raw=True))
    scale = b.const("scale", blocks.scale)
    b.node("DequantizeLinear", [values, scale], attrs={"axis": 0, "block_size": blocks.block})
    b.nodes[-1].outputs = [out]
    return b.nodes, f"int{blocks.bits} blocks"


def _byte_table(cb: Codebook) -> bool:
    """Whether the decoder gathers from the codebook repeated to 256 levels: one codebook (per
    tensor or scaled) of exactly 2^bits levels in a single plane (1, 2 or 4 bits). A plane
    shifted right then needs no mask, which saves a uint8 copy of the indices at load (the OCR
    model at 4 bits: 0.85 bytes a value, 133 -> 129 MiB; docs/deployment.md)."""
    single_plane = cb.bits in PLANE_WIDTHS
    return single_plane and cb.layout in ("tensor", "scaled") and cb.centroids.shape[-1] == 1 << cb.bits


def _unpack(
    b: NodeBuilder, flat: np.ndarray, bits: int, shape: tuple[int, ...], in_uint8: bool, unmasked: bool = False
) -> gs.Variable:
    """INT32 indices of the given shape from bit planes of width 4, 2, 1, combined in uint8
    (`in_uint8`) or in INT32. Each plane takes the index shape while still uint8: onnxruntime
    keeps every folded tensor until its folding pass ends, and an INT32 copy is 4 bytes a value.
    `unmasked` (a single plane read through a 256-level table): each value keeps the bits of the
    byte's later values above its own."""
    total = flat.size
    combined = None
    for width, offset in plane_widths(bits):
        field = (flat >> offset) & ((1 << width) - 1)
        packed = pack_plane(field, width)
        per_byte = 8 // width
        x = b.const(f"indices{width}", packed)
        if unmasked:  # value j of each byte to the low bits, [per_byte, N]
            x = _shift(b, x, "RIGHT", f"shr{width}", [width * j for j in range(per_byte)])
        else:  # value j to the top bits, then down to the low ones: the bits above it gone
            x = _shift(b, x, "LEFT", f"shl{width}", to_top_bits(width))
            x = _shift(b, x, "RIGHT", f"shr{width}", [8 - width])
        if per_byte * packed.shape[1] != total:  # the last byte's padding goes
            x = b.node("Reshape", [x, b.const("flat", np.array([-1], dtype=np.int64))])
            ends = [b.const("start", np.array([0], dtype=np.int64)), b.const(f"len{total}", np.array([total], dtype=np.int64))]
            x = b.node("Slice", [x, *ends])
        x = b.node("Reshape", [x, b.const("index_shape", np.array(product_shape(shape), dtype=np.int64))])
        if offset:  # moved up in uint8 (offset + width <= 7): one INT32 copy fewer than a Mul after to_int32
            x = _shift(b, x, "LEFT", f"up{offset}", [offset])
        if not in_uint8:
            x = to_int32(b, x, shape)
        combined = x if combined is None else b.node("Add", [combined, x])
    assert combined is not None, "below 8 bits there is at least one plane"
    return to_int32(b, combined, shape) if in_uint8 else combined


def product_shape(shape: tuple[int, ...], planes: int = 1) -> tuple[int, ...]:
    """The shape uint8 indices take for to_int32, `planes` byte planes of `shape` side by side:
    along the last axis when it is short, else along an axis before the last."""
    if shape[-1] <= IDENTITY_MAX:
        return (*shape[:-1], planes * shape[-1])
    return (*shape[:-1], planes, shape[-1])


def stack_planes(planes: list[np.ndarray], shape: tuple[int, ...]) -> np.ndarray:
    """uint8 byte planes of `shape` laid out as product_shape(shape, len(planes)) says."""
    if shape[-1] <= IDENTITY_MAX:
        return np.concatenate([p.reshape(shape) for p in planes], axis=-1)
    return np.stack([p.reshape(shape) for p in planes], axis=-2)


def to_int32(b: NodeBuilder, x: gs.Tensor, shape: tuple[int, ...], weights: tuple[int, ...] = (1,)) -> gs.Variable:
    """INT32 indices of `shape`, the sum of uint8 byte planes times `weights`, from `x` of
    product_shape(shape, len(weights)), exactly, with no Cast: x times the identity stacked once
    per plane, or a 1-D row of the weights times x's [planes, k] blocks (MatMul drops the axis it
    prepends to a 1-D left operand)."""
    k = shape[-1]
    if k <= IDENTITY_MAX:
        stacked = np.concatenate([np.eye(k, dtype=np.uint8) * np.uint8(w) for w in weights])
        return b.node("MatMulInteger", [x, b.const("identity", stacked)])
    return b.node("MatMulInteger", [b.const("one", np.array(weights, dtype=np.uint8)), x])


def _shift(b: NodeBuilder, x: gs.Tensor, direction: str, what: str, amounts: list[int]) -> gs.Variable:
    """BitShift of uint8 `x` by one amount, or by one amount per row of the result ([n, 1])."""
    by = np.array(amounts, dtype=np.uint8).reshape(-1, 1) if len(amounts) > 1 else np.array(amounts, dtype=np.uint8)
    return b.node("BitShift", [x, b.const(what, by)], attrs={"direction": direction})


class NodeBuilder:
    """Names every decode tensor and node after the weight: `<weight>::codebook`, ..."""

    def __init__(self, name: str) -> None:
        self.name, self._n = name, 0
        self.nodes: list[gs.Node] = []

    def const(self, what: str, values: np.ndarray) -> gs.Constant:
        self._n += 1
        return gs.Constant(f"{self.name}::{what}.{self._n}", np.ascontiguousarray(values))

    def proto_const(self, what: str, proto: onnx.TensorProto) -> gs.Constant:
        """A constant numpy cannot hold (UINT4, UINT2), exported as the given TensorProto."""
        self._n += 1
        proto.name = f"{self.name}::{what}.{self._n}"
        return gs.Constant(proto.name, LazyValues(proto))

    def node(self, op: str, inputs: list, attrs: dict | None = None, out: gs.Variable | None = None) -> gs.Variable:
        self._n += 1
        result = out if out is not None else gs.Variable(f"{self.name}::{op.lower()}.{self._n}")
        self.nodes.append(gs.Node(op, f"{self.name}::decode.{op}.{self._n}", attrs or {}, list(inputs), [result]))
        return result
