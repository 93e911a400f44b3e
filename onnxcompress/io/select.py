"""Find the weights worth compressing, and say why the others are left alone."""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from ..dtypes import BFLOAT16, bfloat16_to_float32, file_dtype
from ..options import SelectOptions
from .load import bodies, external_extent

FLOAT_TYPES = {
    onnx.TensorProto.FLOAT: "float32",
    onnx.TensorProto.FLOAT16: "float16",
    onnx.TensorProto.BFLOAT16: "bfloat16",
    onnx.TensorProto.DOUBLE: "float64",
}

# Inputs that are shapes, axes, indices, scales, pads, thresholds or quantization parameters,
# not data: a weight read there is never touched.
NON_DATA_INPUTS: dict[str, set[int]] = {
    "Reshape": {1},
    "Expand": {1},
    "Tile": {1},
    "Slice": {1, 2, 3, 4},
    "Pad": {1, 2, 3},
    "Resize": {1, 2, 3},
    "Upsample": {1},
    "TopK": {1},
    "ConstantOfShape": {0},
    "Range": {0, 1, 2},
    "Squeeze": {1},
    "Unsqueeze": {1},
    "Split": {1},
    "CumSum": {1},
    "Clip": {1, 2},
    "Dropout": {1, 2},
    "Gather": {1},
    "GatherElements": {1},
    "GatherND": {1},
    "ScatterElements": {1},
    "ScatterND": {1},
    "OneHot": {0, 1, 2},
    "NonMaxSuppression": {2, 3, 4},
    "RoiAlign": {1, 2},
    "QuantizeLinear": {0, 1, 2},
    "DequantizeLinear": {0, 1, 2},
    "DynamicQuantizeLinear": {0},
    "ReduceSum": {1},
    "ReduceMean": {1},
    "ReduceMax": {1},
    "ReduceMin": {1},
    "ReduceProd": {1},
    "ReduceL1": {1},
    "ReduceL2": {1},
    "ReduceLogSum": {1},
    "ReduceLogSumExp": {1},
    "ReduceSumSquare": {1},
}
# Ops whose every input is a quantization parameter or an already quantized tensor.
QUANTIZED_OPS = {"QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger", "QLinearAdd", "QLinearMul"}


@dataclass
class Consumer:
    op_type: str
    input_index: int
    in_subgraph: bool
    trans_b: bool = False  # Gemm's transB: which axis of B is the output channel
    attrs: dict[str, int] = field(default_factory=dict)  # the node's integer attributes (group, axis, ...)


@dataclass
class WeightSite:
    """A float tensor of the model that will be compressed."""

    name: str
    # float32/float16/float64 values (bfloat16 is read as float32), or, for a tensor left in
    # its external data file, how to map them from there: nothing holds them between uses,
    # so a model larger than RAM streams through tensor by tensor
    values: np.ndarray | Callable[[], np.ndarray]
    onnx_dtype: int  # the tensor's own element type, restored by the decoder
    location: str  # "initializer" or "constant" (a Constant node's output)
    consumers: list[Consumer] = field(default_factory=list)

    @property
    def array(self) -> np.ndarray:
        return self.values() if callable(self.values) else self.values

    @property
    def consumer_ops(self) -> list[str]:
        return sorted({c.op_type for c in self.consumers})

    @property
    def is_lookup_table(self) -> bool:
        """Every reader takes it as a Gather's data: a table of rows looked up by ids."""
        return bool(self.consumers) and all(c.op_type == "Gather" and c.input_index == 0 for c in self.consumers)

    def channel_axis(self) -> int:
        """The output-channel axis for per-channel codebooks, from how the weight is used:
        columns of a MatMul right operand, rows of Gemm's B with transB, ConvTranspose's
        axis 1, otherwise axis 0 (Conv filters, embedding rows, LSTM gates)."""
        axes = set()
        for c in self.consumers:
            if c.op_type == "MatMul" and c.input_index == 1:
                axes.add(self.array.ndim - 1)
            elif c.op_type == "Gemm" and c.input_index == 1:
                axes.add(0 if c.trans_b else 1)
            elif c.op_type == "ConvTranspose" and c.input_index == 1:
                axes.add(1)
            else:
                axes.add(0)
        return axes.pop() if len(axes) == 1 else 0


@dataclass
class Skipped:
    name: str
    shape: tuple[int, ...]
    reason: str


@dataclass
class Selection:
    weights: list[WeightSite]
    skipped: list[Skipped]


def select_weights(model: onnx.ModelProto, options: SelectOptions, data_dir: Path | None = None) -> Selection:
    """The weights to compress and the tensors left alone, with the reason. `data_dir`: where
    the external data files of tensors still kept there lie (see load_model(defer_external))."""
    graph = model.graph
    consumers = _consumers(graph)
    graph_inputs = {i.name for i in graph.input}
    include = re.compile(options.include) if options.include else None
    exclude = re.compile(options.exclude) if options.exclude else None

    candidates: list[tuple[onnx.TensorProto, str, str]] = [(t, t.name, "initializer") for t in graph.initializer]
    candidates += [(t, name, "constant") for t, name in constant_tensors(graph)]

    weights, skipped = [], []
    for tensor, name, location in candidates:  # names are unique: load_model refuses duplicates
        shape = tuple(int(d) for d in tensor.dims)
        size = int(np.prod(shape)) if shape else 1
        reason = None
        if tensor.data_type not in FLOAT_TYPES:
            continue  # integer and bool tensors are never candidates: not worth listing
        elif size < options.min_elements:
            continue  # biases, norms, scalars: below the threshold
        elif name in graph_inputs:
            reason = "also a graph input (can be overridden at run time)"
        elif include and not include.search(name):
            reason = "not matched by --include"
        elif exclude and exclude.search(name):
            reason = "matched by --exclude"
        else:
            uses = consumers.get(name, [])
            bad = [c for c in uses if _is_non_data(c)]
            if not uses:
                reason = "read by no node"
            elif bad:
                reason = f"used as a non-data input of {bad[0].op_type} (input {bad[0].input_index})"
        values: np.ndarray | Callable[[], np.ndarray] | None = None
        if not reason:
            values = _values(tensor, data_dir)
            if not np.all(np.isfinite(values() if callable(values) else values)):
                reason = "holds NaN or infinity (a mask or a sentinel): kept exact"
        if reason:
            skipped.append(Skipped(name, shape, reason))
            continue
        assert values is not None
        weights.append(WeightSite(name, values, tensor.data_type, location, consumers[name]))
    return Selection(weights, skipped)


def constant_tensors(graph: onnx.GraphProto) -> Iterator[tuple[onnx.TensorProto, str]]:
    """The value and output name of every Constant node, including those inside If, Loop and
    Scan bodies (the If-branch form of silero's voice detector keeps all its weights there)."""
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            for attr in node.attribute:
                if attr.name == "value" and attr.type == onnx.AttributeProto.TENSOR:
                    yield attr.t, node.output[0]
        for sub in bodies(node):
            yield from constant_tensors(sub)


def _is_non_data(c: Consumer) -> bool:
    if c.op_type.startswith("@custom:"):
        return True
    return c.op_type in QUANTIZED_OPS or c.input_index in NON_DATA_INPUTS.get(c.op_type, ())


def _consumers(graph: onnx.GraphProto, in_subgraph: bool = False, out=None) -> dict[str, list[Consumer]]:
    """Every (op, input index) that reads each tensor name, including nodes inside If/Loop/Scan
    bodies that read outer names. Ops outside the default domain are marked as custom."""
    out = defaultdict(list) if out is None else out
    for node in graph.node:
        op = node.op_type if node.domain in ("", "ai.onnx") else f"@custom:{node.domain}.{node.op_type}"
        ints = {a.name: int(a.i) for a in node.attribute if a.type == onnx.AttributeProto.INT}
        trans_b = bool(ints.get("transB", 0)) if node.op_type == "Gemm" else False
        for i, name in enumerate(node.input):
            if name:
                out[name].append(Consumer(op, i, in_subgraph, trans_b, ints))
        for sub in bodies(node):
            _consumers(sub, True, out)
    return out


def _values(tensor: onnx.TensorProto, data_dir: Path | None) -> np.ndarray | Callable[[], np.ndarray]:
    if tensor.data_location != onnx.TensorProto.EXTERNAL:
        return _to_array(tensor)
    assert data_dir is not None, "external data must be read, or its folder given"
    file, offset, _ = external_extent(tensor)
    path, shape, onnx_type = data_dir / file, tuple(int(d) for d in tensor.dims), tensor.data_type

    def read() -> np.ndarray:  # a read-only map: pages come in as the encoder reads them
        mapped = np.asarray(np.memmap(path, dtype=file_dtype(onnx_type).newbyteorder("<"), mode="r", offset=offset, shape=shape))
        return bfloat16_to_float32(mapped) if onnx_type == BFLOAT16 else mapped

    return read


def _to_array(tensor: onnx.TensorProto) -> np.ndarray:
    if tensor.data_type == BFLOAT16:
        raw = (
            np.frombuffer(tensor.raw_data, dtype=np.uint16) if tensor.raw_data else np.asarray(tensor.int32_data, dtype=np.uint16)
        )
        return bfloat16_to_float32(raw).reshape(tuple(tensor.dims))
    return numpy_helper.to_array(tensor)
