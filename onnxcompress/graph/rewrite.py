"""Replace each weight by its decode nodes (onnx-graphsurgeon).

The decoder's output keeps the weight's name, so every consumer, including nodes inside
If/Loop/Scan bodies that read the outer name, sees the same tensor; a weight read by several
nodes is decoded once. Decoders read only constants, so they go first in the node list.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from .._version import __version__
from ..dtypes import numpy_dtype
from ..encoding.blocks import Blocks
from ..encoding.codebook import Codebook
from ..io.select import WeightSite
from .decode import build_block_decoder, build_decoder
from .halves import build_half_decoder, half_table, reads_from_table
from .lookup import replace_lookups, stays_packed


def default_opset(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    return 1


def rewrite_graph(
    model: onnx.ModelProto,
    encoded: list[tuple[WeightSite, Codebook | Blocks]],
    target_ort: tuple[int, ...] = (1, 16),
    halves: list[tuple[WeightSite, np.ndarray]] | None = None,
) -> tuple[onnx.ModelProto, dict[str, str]]:
    """The rewritten model, and how each weight's indices are stored (see build_decoder; "rows"
    for a lookup table decoded after each lookup, lookup.py; "table" for a float16 weight read from
    the table of float16's values, "float16" where a Cast reads it, before opset 10)."""
    opset = default_opset(model)
    graph = gs.import_onnx(model)
    tensors = _tensors_by_name(graph)
    constant_nodes = _constant_nodes(graph)
    outputs = {t.name for t in graph.outputs}
    decoders: list[gs.Node] = []
    stored: dict[str, str] = {}
    for site, cb in encoded:
        if isinstance(cb, Codebook) and stays_packed(site, cb.bits, cb.layout, opset) and site.name not in outputs:
            replace_lookups(graph, tensors[site.name][0], cb, site.name, site.onnx_dtype)
            stored[site.name] = "rows"
            continue
        out = _detach(graph, site, tensors, constant_nodes)
        if isinstance(cb, Blocks):
            nodes, stored[site.name] = build_block_decoder(cb, site.name, out)
        else:
            nodes, stored[site.name] = build_decoder(cb, site.name, out, site.onnx_dtype, opset, target_ort)
        decoders += nodes
    decoders += _half_decoders(graph, halves or [], tensors, constant_nodes, opset, stored)
    graph.nodes = decoders + list(graph.nodes)
    result = gs.export_onnx(graph, do_type_check=False)
    _restore_model_fields(model, result)
    return result, stored


def _detach(graph: gs.Graph, site: WeightSite, tensors: dict, constant_nodes: dict) -> gs.Variable:
    """The tensor a decoder of this weight writes, read where the weight was read."""
    if site.location == "constant":
        # the decoder goes to the main graph, where it folds at load; a Constant inside an
        # If or Loop body is then read from the outer scope, under the same name
        node, owner = constant_nodes[site.name]
        out = node.outputs[0]
        node.outputs.clear()
        owner.nodes.remove(node)
        return out
    out = gs.Variable(site.name, dtype=numpy_dtype(site.onnx_dtype), shape=list(site.array.shape))
    for old in tensors[site.name]:  # one object, or one per subgraph that reads it
        old.name = site.name + "::replaced"
        for consumer in list(old.outputs):
            for i, t in enumerate(consumer.inputs):
                if t is old:
                    consumer.inputs[i] = out
        graph.outputs = [out if t is old else t for t in graph.outputs]
    return out


def _half_decoders(
    graph: gs.Graph, halves: list[tuple[WeightSite, np.ndarray]], tensors: dict, constant_nodes: dict, opset: int, stored: dict
) -> list[gs.Node]:
    """Each float16 weight's decoder: a Gather from one table of float16's values per float type
    (opset 10 on), else a Cast of the float16 values (and for bfloat16, which numpy has no type for)."""
    tables: dict[int, gs.Variable] = {}
    nodes: list[gs.Node] = []
    for site, half in halves:
        out = _detach(graph, site, tensors, constant_nodes)
        if not reads_from_table(site.onnx_dtype, opset):
            source = gs.Constant(site.name + "::float16", np.ascontiguousarray(half, dtype=np.float16))
            nodes.append(gs.Node("Cast", f"{site.name}::decode.Cast", {"to": site.onnx_dtype}, [source], [out]))
            stored[site.name] = "float16"
            continue
        if site.onnx_dtype not in tables:
            made, tables[site.onnx_dtype] = half_table(numpy_dtype(site.onnx_dtype), f"onnxcompress::float16.{site.onnx_dtype}")
            nodes += made
        nodes += build_half_decoder(half, tables[site.onnx_dtype], site.name, out)
        stored[site.name] = "table"
    return nodes


def record(model: onnx.ModelProto, method: str, tensors: dict[str, dict]) -> None:
    """What was done, in metadata_props: onnxcompress.version, .method and .tensors (per weight:
    bits, layout, k and index storage of a codebook; rank and factors of a pair)."""
    _set_metadata(
        model,
        {
            "onnxcompress.version": __version__,
            "onnxcompress.method": method,
            "onnxcompress.tensors": json.dumps(tensors, separators=(",", ":")),
        },
    )


def _constant_nodes(graph: gs.Graph, out: dict | None = None) -> dict[str, tuple[gs.Node, gs.Graph]]:
    """Every Constant node by its output's name, with the graph (main or body) that holds it."""
    out = {} if out is None else out
    for node in graph.nodes:
        if node.op == "Constant" and node.outputs:
            out[node.outputs[0].name] = (node, graph)
        for sub in _gs_bodies(node):
            _constant_nodes(sub, out)
    return out


def _tensors_by_name(graph: gs.Graph, out: dict | None = None) -> dict[str, list[gs.Tensor]]:
    """Every tensor object that nodes read, by name, including nodes of If/Loop/Scan bodies
    (graphsurgeon's Graph.tensors() stops at the main graph)."""
    out = {} if out is None else out
    for t in list(graph.inputs) + list(graph.outputs):
        _add(out, t)
    for node in graph.nodes:
        for t in node.inputs:
            _add(out, t)
        for sub in _gs_bodies(node):
            _tensors_by_name(sub, out)
    return out


def _gs_bodies(node: gs.Node) -> list[gs.Graph]:
    """A graphsurgeon node's If branches, Loop or Scan body (io.load.bodies for protos)."""
    return [
        sub
        for value in node.attrs.values()
        for sub in (value if isinstance(value, list) else [value])
        if isinstance(sub, gs.Graph)
    ]


def _add(out: dict, t: gs.Tensor) -> None:
    same = out.setdefault(t.name, [])
    if not any(x is t for x in same):
        same.append(t)


def _restore_model_fields(src: onnx.ModelProto, dst: onnx.ModelProto) -> None:
    """graphsurgeon keeps the graph; the model-level fields come from the original."""
    dst.ir_version = src.ir_version
    dst.producer_name, dst.producer_version = src.producer_name, src.producer_version
    dst.domain, dst.model_version, dst.doc_string = src.domain, src.model_version, src.doc_string
    del dst.opset_import[:]
    dst.opset_import.extend(src.opset_import)
    del dst.metadata_props[:]
    dst.metadata_props.extend(src.metadata_props)
    if not dst.functions and src.functions:
        dst.functions.extend(src.functions)
    # graphsurgeon takes a tensor's type from value_info when the name is there too: a
    # quantization tool's shapeless value_info entry for an output cost it its shape, which
    # onnx.checker's full check requires of graph outputs
    for field in ("input", "output"):
        declared = {v.name: v.type for v in getattr(src.graph, field)}
        for v in getattr(dst.graph, field):
            if v.name in declared:
                v.type.CopyFrom(declared[v.name])


def _set_metadata(model: onnx.ModelProto, entries: dict[str, str]) -> None:
    keep = [p for p in model.metadata_props if p.key not in entries]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    for key, value in entries.items():
        model.metadata_props.add(key=key, value=value)
