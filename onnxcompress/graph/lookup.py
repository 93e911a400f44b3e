"""Lookup tables that stay packed in RAM: a table read only by Gather keeps its codebook
indices as rows, and each lookup gathers the packed rows by the runtime ids and decodes only
those. Nothing here reads only constants, so onnxruntime folds nothing: once loaded the table
holds its bits per value, not the 4 bytes per value a decoder folded at load leaves behind
(MiniLM's word embedding: 12.1 MB instead of 47 MB, and the same outputs to the bit).

Below 8 bits the indices are split into bit planes of width 4, 2 and 1, as the decoders
that fold are (decode.plane_widths: 7 bits = 4 + 2 + 1), each plane packed row by row. Per
lookup Gather(table, ids) -> Y, for each plane (one at 8 bits), with P packed bytes per row:
    Gather(rows [n, 1, P] or [n, P, 1], ids)       the looked-up rows, still packed
    BitShift left, right (when bits < 8)           [.., P, 8/width] -> Reshape [.., 1, P*8/width], Slice
    BitShift left by the plane's offset            (from the second plane on; in uint8)
    MatMulInteger([1], rows [.., 1, cols])         INT32 without a Cast (decode.INT32_BY_PRODUCT_OPSET),
    and Add the planes                             the levels' indices (only the looked-up rows:
                                                   onnxruntime 1.16 has no uint8 Add)
    Gather(levels, indices)                        the values; per column, indices offset to column j's
                                                   levels first; per row, GatherElements on the
                                                   looked-up rows' levels
    Mul by the scale (layout "scaled")             per column, or per row gathered by ids
    Cast to the table's type (when it differs)
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ..encoding.codebook import Codebook
from ..io.select import WeightSite
from .decode import pack_little_end, plane_widths, to_top_bits

# Slice with starts/ends as inputs and BitShift: opset 11.
LOOKUP_OPSET = 11


def stays_packed(site: WeightSite, bits: int, layout: str, opset: int) -> bool:
    """Whether a codebook of this width and layout for `site` is decoded after each lookup
    (and stays packed in RAM): a 2-D initializer read only by main-graph Gathers along axis 0,
    in one of the layouts a row lookup can decode, at any width from 1 to 8 bits."""
    rows_in_main_graph = all(not c.in_subgraph and c.attrs.get("axis", 0) == 0 for c in site.consumers)
    return (
        site.is_lookup_table
        and rows_in_main_graph
        and site.location == "initializer"
        and site.array.ndim == 2
        and 1 <= bits <= 8
        and layout in ("tensor", "scaled", "channel")
        and opset >= LOOKUP_OPSET
    )


def packed_rows(codes: np.ndarray, bits: int) -> np.ndarray:
    """uint8 codes [n, cols] -> [n, P] bytes, 8/bits codes per byte in element order, the first
    in the low bits (row j's byte i holds codes i*8/bits ... of row j); rows padded with zeros,
    so that no byte holds codes of two rows."""
    per_byte = 8 // bits
    n, cols = codes.shape
    width = -(-cols // per_byte)
    padded = np.zeros((n, width * per_byte), dtype=np.uint8)
    padded[:, :cols] = codes
    return np.frombuffer(pack_little_end(padded.reshape(-1), bits), dtype=np.uint8).reshape(n, width)


def row_planes(cb: Codebook) -> list[tuple[int, int, np.ndarray]]:
    """(width, bit offset, packed rows) of each plane of the codebook's indices: one [n, 1, cols]
    uint8 plane at 8 bits (the length-1 axis for the MatMulInteger that makes them INT32), else
    [n, P, 1] bytes per plane (decode.plane_widths)."""
    codes = row_codes(cb)
    if cb.bits == 8:
        return [(8, 0, codes[:, None, :])]
    return [(w, at, packed_rows((codes >> at) & ((1 << w) - 1), w)[:, :, None]) for w, at in plane_widths(cb.bits)]


def row_codes(cb: Codebook) -> np.ndarray:
    """The codebook's labels as the table's rows, [n, cols]."""
    if cb.layout == "channel" and cb.axis == 1:
        return np.ascontiguousarray(cb.labels.T)
    return cb.labels.reshape(cb.shape)


def replace_lookups(graph: gs.Graph, table: gs.Tensor, cb: Codebook, name: str, onnx_dtype: int) -> None:
    """Replaces each Gather of `table` in `graph` by the packed lookup above, in place."""
    consts = _constants(cb, name)
    for gather in [n for n in graph.nodes if n.op == "Gather" and n.inputs and n.inputs[0] is table]:
        nodes = _decode_after(gather, cb, consts, onnx_dtype)
        at = graph.nodes.index(gather)
        gather.outputs.clear()
        graph.nodes[at : at + 1] = nodes


def _constants(cb: Codebook, name: str) -> dict[str, gs.Constant]:
    """The packed rows, levels, offsets and scales, shared by every lookup of the table."""
    rows, k = cb.shape[0], cb.k
    planes = row_planes(cb)
    out = {}
    for width, _, packed in planes:  # named "rows" alone when one plane holds the indices
        stored = "rows" if len(planes) == 1 else f"rows{width}"
        out[f"rows{width}"] = gs.Constant(f"{name}::{stored}", np.ascontiguousarray(packed))
    per_row = cb.layout == "channel" and cb.axis == 0  # [rows, k]: gathered by the ids like the rows
    levels = cb.centroids if per_row else cb.centroids.reshape(-1)
    out["levels"] = gs.Constant(f"{name}::codebook", np.ascontiguousarray(levels))
    if cb.layout == "channel" and cb.axis == 1:
        out["offsets"] = gs.Constant(f"{name}::column_first_level", (np.arange(cb.shape[1], dtype=np.int32) * k))
    if cb.scale is not None:
        scale = cb.scale.reshape(rows, 1) if cb.axis == 0 else cb.scale.reshape(-1)
        out["scale"] = gs.Constant(f"{name}::scale", np.ascontiguousarray(scale))
    return out


def _decode_after(gather: gs.Node, cb: Codebook, consts: dict[str, gs.Constant], onnx_dtype: int) -> list[gs.Node]:
    """The nodes that compute `gather`'s output from the packed rows at its ids."""
    ids, out = gather.inputs[1], gather.outputs[0]
    nodes: list[gs.Node] = []

    def add(op: str, inputs: list, **attrs) -> gs.Variable:
        result = gs.Variable(f"{out.name}::{op.lower()}.{len(nodes)}")
        nodes.append(gs.Node(op, f"{out.name}::lookup.{op}.{len(nodes)}", attrs, list(inputs), [result]))
        return result

    def const(what: str, values: np.ndarray) -> gs.Constant:
        return gs.Constant(f"{out.name}::{what}", np.ascontiguousarray(values))

    index, one = None, const("one", np.ones(1, dtype=np.uint8))
    for width, offset in [(8, 0)] if cb.bits == 8 else plane_widths(cb.bits):
        x = add("Gather", [consts[f"rows{width}"], ids], axis=0)
        if width < 8:
            x = _unpacked(add, const, x, ids, width, cb.shape[1])
        if offset:
            x = add("BitShift", [x, const(f"up{offset}", np.array([offset], dtype=np.uint8))], direction="LEFT")
        x = add("MatMulInteger", [one, x])  # [.., 1, cols] -> [.., cols]
        index = x if index is None else add("Add", [index, x])
    assert index is not None
    x = index
    if cb.layout == "channel" and cb.axis == 0:  # each looked-up row's own levels, [.., k]
        x = add("GatherElements", [add("Gather", [consts["levels"], ids], axis=0), x], axis=-1)
    else:
        if "offsets" in consts:  # column j's levels start at j * k in the flat codebook
            x = add("Add", [x, consts["offsets"]])
        x = add("Gather", [consts["levels"], x], axis=0)
    if cb.scale is not None:
        if cb.centroids.dtype != cb.scale.dtype:
            x = add("Cast", [x], to=onnx.helper.np_dtype_to_tensor_dtype(cb.scale.dtype))
        scale = consts["scale"] if cb.axis == 1 else add("Gather", [consts["scale"], ids], axis=0)
        x = add("Mul", [x, scale])
    values_type = cb.centroids.dtype if cb.scale is None else cb.scale.dtype
    if onnx.helper.np_dtype_to_tensor_dtype(values_type) != onnx_dtype:
        add("Cast", [x], to=onnx_dtype)
    nodes[-1].outputs = [out]
    return nodes


def _unpacked(add, const, x: gs.Variable, ids: gs.Variable, width: int, cols: int) -> gs.Variable:
    """Looked-up rows of one plane, [.., P, 1] bytes -> [.., 1, cols] uint8 values < 2^width."""
    per_byte = 8 // width
    x = add("BitShift", [x, const(f"shl{width}", np.array(to_top_bits(width), dtype=np.uint8))], direction="LEFT")
    x = add("BitShift", [x, const(f"shr{width}", np.array([8 - width], dtype=np.uint8))], direction="RIGHT")
    padded = -(-cols // per_byte) * per_byte
    shape = add("Concat", [add("Shape", [ids]), const(f"width{width}", np.array([1, padded], dtype=np.int64))], axis=0)
    x = add("Reshape", [x, shape])
    if padded != cols:
        ends = [const(f"start{width}", np.array([0], dtype=np.int64)), const(f"cols{width}", np.array([cols], dtype=np.int64))]
        x = add("Slice", [x, *ends, const(f"last{width}", np.array([-1], dtype=np.int64))])
    return x
