"""Which weights onnxruntime keeps packed as integer blocks: it fuses a DequantizeLinear of
blocks into MatMulNBits only in some graphs (not where a Relu reads the MatMul's output, in
1.24.4 and 1.32), so the planner asks this onnxruntime instead of assuming."""

from __future__ import annotations

import tempfile
from pathlib import Path

import onnx
import onnxruntime as ort

from ..encoding.blocks import encode_blocks
from ..graph.rewrite import rewrite_graph
from ..io.select import WeightSite


def fused_blocks(model: onnx.ModelProto, sites: list[WeightSite], bits: int) -> set[str]:
    """The weights among `sites` whose `bits`-bit blocks this onnxruntime fuses into its
    MatMul (no DequantizeLinear of theirs left in the optimized graph); none when the probe
    model does not load."""
    if not sites:
        return set()
    probe, _ = rewrite_graph(model, [(site, encode_blocks(site.array, bits)) for site in sites])
    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        try:
            ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
        except Exception:  # noqa: BLE001 - a probe that does not load fuses nothing
            return set()
        optimized = onnx.load(options.optimized_model_filepath, load_external_data=False)
    left = {n.name for n in optimized.graph.node if n.op_type == "DequantizeLinear"}
    return {site.name for site in sites if not any(name.startswith(f"{site.name}::decode.") for name in left)}
