"""The reference a compressed model must match exactly: the original with each compressed
weight replaced by its decoded value (or a pair's product). Used by the end-to-end tests and
the conformance sweep."""

from __future__ import annotations

import numpy as np
import onnx

from onnxcompress.dtypes import BFLOAT16, float32_to_bfloat16
from onnxcompress.io.load import bodies


def substitute_decoded(model: onnx.ModelProto, encoded: list) -> onnx.ModelProto:
    """`model` with each (site, encoding) pair's weight replaced by encoding.decoded()."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    values = {site.name: (cb.decoded(), site.onnx_dtype) for site, cb in encoded}

    def tensor(name: str) -> onnx.TensorProto:
        arr, dtype = values[name]
        if dtype == BFLOAT16:
            return onnx.helper.make_tensor(name, dtype, arr.shape, float32_to_bfloat16(arr).tobytes(), raw=True)
        return onnx.numpy_helper.from_array(np.asarray(arr).astype(onnx.helper.tensor_dtype_to_np_dtype(dtype)), name)

    for i, init in enumerate(out.graph.initializer):
        if init.name in values:
            out.graph.initializer[i].CopyFrom(tensor(init.name))

    def constants(graph: onnx.GraphProto) -> None:  # in the main graph and in If/Loop/Scan bodies
        for node in graph.node:
            if node.op_type == "Constant" and node.output and node.output[0] in values:
                for attr in node.attribute:
                    if attr.name == "value":
                        attr.t.CopyFrom(tensor(node.output[0]))
            for sub in bodies(node):
                constants(sub)

    constants(out.graph)
    return out


def encoded_weights(weights: list, method: str, codebook_o, lowrank_o) -> list:
    """The encodings fixed settings choose for `weights` (the kept ones left out), as the
    builder receives them."""
    from onnxcompress.encoding.encoded import Encoder
    from onnxcompress.planning.fixed import decide_fixed

    encoder = Encoder(codebook_o, lowrank_o)
    recipe = decide_fixed(weights, method, codebook_o, lowrank_o, encoder)
    sites = {w.name: w for w in weights}
    return encoder.encode([(sites[name], c) for name, c in recipe.encoded().items()])
