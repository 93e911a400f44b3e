"""What each graph output means, read from the graph's structure (never from names), so that
its error is measured the way its task reads it:

- parts: a Concat of different quantities (a detector's pixel boxes beside its 0..1 scores).
  Its relative L2 error is the worst of its parts', so no part hides behind a larger one;
- classes: Softmax or LogSoftmax scores, read by their argmax along the softmax axis;
- probabilities: a Sigmoid, read as decisions at 0.5;
- embedding: rows divided by their L2 norm (LpNormalization, or a Div by a ReduceL2), or
  normalized along the last axis by a LayerNormalization (a transformer's token vectors), read
  by their similarities;
- state: a recurrent op's final hidden or cell state, fed back by the caller;
- dense: anything else (features, maps, boxes), read channel by channel.

An output of token rows ([batch, sequence, ...]) of a model that takes an attention mask of
the same [batch, sequence] (an integer input added to the attention scores before a Softmax)
is measured on the rows the mask keeps: a padded position's vector is computed from padding,
and nothing that honours the mask reads it.

The caller may say otherwise per output (--output-kind NAME=KIND), or leave an output that
nothing reads out of the measure (KIND ignore).

Ops that only move values (Reshape, Transpose, Identity...) are looked through; a Concat's axis
is followed through Transpose and Identity only, where it stays known."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, replace

import onnx

from ..errors import CompressError

# ops whose output holds the same values as their first input, rearranged
PASS_THROUGH = {"Identity", "Cast", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose"}
RECURRENT = {"LSTM", "GRU", "RNN"}
# ops between a norm and the Div that uses it (an epsilon floor, a broadcast)
NORM_GUARDS = {"Clip", "Max", "Add", "Expand", *PASS_THROUGH}
# ops an attention mask takes on its way into the scores' bias: casts, broadcasts, the logic
# and arithmetic that turn 1 / 0 into 0 / -inf (Add: the bias joining the scores), and a Gather
# of its values (as data: ids enter a Gather as indices)
MASK_STEPS = {*PASS_THROUGH, "Expand", "Tile", "Sub", "Mul", "Add", "Div", "Neg", "Not", "And", "Or", "Equal", "Where"}
MASK_STEPS |= {"Less", "Greater", "Gather"}
MASK_DEPTH = 16  # MiniLM's mask reaches its first Softmax in 11 steps
# kinds measured row by row (or channel by channel over rows), where padded rows can be left out
ROW_KINDS = ("embedding", "dense")
T = onnx.TensorProto
INTEGER_TYPES = {T.INT64, T.INT32, T.INT16, T.INT8, T.UINT8, T.BOOL}


@dataclass(frozen=True)
class OutputKind:
    kind: str  # one of options.OUTPUT_KINDS
    axis: int | None = None  # parts: the Concat's axis in the output; classes: the softmax axis (None: the last)
    sizes: tuple[int, ...] | None = None  # parts: each part's extent along it (None: one slice each)
    chosen: bool = False  # said by the caller (--output-kind), not read from the graph
    feeds_back: str | None = None  # state: the graph input it is fed back into (runtime/sequence.py)
    mask: str | None = None  # token rows: the attention mask input whose zeros mark rows not measured

    def describe(self) -> str:
        if self.chosen:
            return f"{self.kind} (--output-kind)"
        if self.feeds_back is not None:
            return f"state (fed back as {self.feeds_back})"
        if self.mask is not None:
            return f"{self.kind} (rows where {self.mask} is 0 not measured)"
        if self.kind != "parts":
            return self.kind
        if self.axis is None:
            return "parts (axis unknown: measured whole)"
        count = f"{len(self.sizes)} parts" if self.sizes else "each slice"
        return f"parts ({count} along axis {self.axis})"


def output_kinds(model: onnx.ModelProto, chosen: dict[str, str] | None = None) -> dict[str, OutputKind]:
    """Each graph output's kind: `chosen` (output name -> kind name) where the caller said it,
    else read from the graph."""
    graph = model.graph
    names = [out.name for out in graph.output]
    for name, kind in (chosen or {}).items():
        if name not in names:
            raise CompressError(f"--output-kind {name}={kind}: the model has no output {name!r}; its outputs: {', '.join(names)}")
    producer = {out: node for node in graph.node for out in node.output}
    inputs = {i.name for i in graph.input} - {t.name for t in graph.initializer}
    kinds = {name: _kind_of(name, producer, {}, inputs) for name in names}
    if any(k.kind == "parts" for k in kinds.values()):  # shape inference: 0.4 s on a 90 MB model
        extents = _static_extents(model)
        kinds = {name: _kind_of(name, producer, extents, inputs) for name in names}
    masks = attention_masks(model)
    for out in graph.output:
        mask = masks.get(_leading_dims(out, 2)) if len(_dims(out)) >= 3 else None
        if mask is not None and kinds[out.name].kind in ROW_KINDS:
            kinds[out.name] = replace(kinds[out.name], mask=mask)
    for name, kind in (chosen or {}).items():
        found = kinds[name]
        same_kind = found.kind == kind  # keep what the graph says about its axes
        kinds[name] = OutputKind(
            kind, found.axis if same_kind else None, found.sizes if same_kind else None, chosen=True, mask=found.mask
        )
    return kinds


def attention_masks(model: onnx.ModelProto) -> dict[tuple, str]:
    """The graph inputs that are attention masks, by their two dims: integer inputs of rank 2,
    with both dims named or fixed, that reach a Softmax through MASK_STEPS alone (an input of
    ids reaches an embedding's Gather first)."""
    graph = model.graph
    consumers = value_readers(graph)
    constants = {t.name for t in graph.initializer}
    masks: dict[tuple, str | None] = {}
    for inp in graph.input:
        dims = _leading_dims(inp, 2)
        if inp.name in constants or len(_dims(inp)) != 2 or None in dims or inp.type.tensor_type.elem_type not in INTEGER_TYPES:
            continue
        if _reaches_softmax(inp.name, consumers):
            masks[dims] = None if dims in masks else inp.name  # two such inputs: which one pads is unclear
    return {dims: name for dims, name in masks.items() if name is not None}


def value_readers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto | None]]:
    """Per value name, the nodes that read it; graph outputs count as a reader (None)."""
    out: dict[str, list[onnx.NodeProto | None]] = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            out[name].append(node)
    for o in graph.output:
        out[o.name].append(None)
    return out


def _reaches_softmax(name: str, consumers: dict[str, list[onnx.NodeProto | None]]) -> bool:
    frontier, seen = [name], {name}
    for _ in range(MASK_DEPTH):
        step = []
        for value in frontier:
            for node in consumers.get(value, []):
                if node is None:  # a graph output
                    continue
                if node.op_type == "Softmax":
                    return True
                if node.op_type in MASK_STEPS and (node.op_type != "Gather" or node.input[0] == value):
                    step += [o for o in node.output if o not in seen]
        seen.update(step)
        frontier = step
    return False


def _dims(info: onnx.ValueInfoProto) -> list:
    """A value's dims as names or numbers (None: unknown)."""
    t = info.type.tensor_type
    if not t.HasField("shape"):
        return []
    return [d.dim_param or (d.dim_value if d.HasField("dim_value") else None) for d in t.shape.dim]


def _leading_dims(info: onnx.ValueInfoProto, n: int) -> tuple:
    return tuple(_dims(info)[:n])


def _kind_of(
    name: str, producer: dict[str, onnx.NodeProto], extents: dict[str, list[int | None]], inputs: set[str] = frozenset()
) -> OutputKind:
    perms: list[list[int]] | None = []  # the Transposes between the node reached and the output; None: axes lost
    while (node := producer.get(name)) is not None:
        op = node.op_type
        if op in ("Softmax", "LogSoftmax"):
            axis = _axis(node, -1)
            if perms is None:  # a reshape after it: the axis is lost, the last one is the guess
                return OutputKind("classes")
            if axis < 0 and perms:  # a Transpose's perm gives the rank
                axis += len(perms[-1])
            return OutputKind("classes", axis if axis < 0 else _to_output_axis(axis, perms))
        if op == "Sigmoid":
            return OutputKind("probabilities")
        if op == "LpNormalization" or (op == "Div" and len(node.input) > 1 and _is_norm(node.input[1], producer)):
            return OutputKind("embedding")
        if op == "LayerNormalization" and perms == [] and _axis(node, -1) == -1:
            return OutputKind("embedding")  # rows normalized along the last axis: a transformer's token vectors
        if op in RECURRENT and (index := list(node.output).index(name)) > 0:
            # Y_h, Y_c (outputs 1, 2) start from initial_h, initial_c (inputs 5, 6) on the next call
            start = node.input[4 + index] if len(node.input) > 4 + index else ""
            return OutputKind("state", feeds_back=_graph_input(start, producer, inputs))
        if op == "Concat":
            return _parts(node, perms, extents)
        if op not in PASS_THROUGH or not node.input:
            break
        if perms is not None and op == "Transpose":
            perm = [list(a.ints) for a in node.attribute if a.name == "perm"]
            perms = perms + perm if perm else None  # no perm: reversed axes, rank unknown here
        elif op not in ("Identity", "Cast"):
            perms = None
        name = node.input[0]
    return OutputKind("dense")


def _parts(node: onnx.NodeProto, perms: list[list[int]] | None, extents: dict[str, list[int | None]]) -> OutputKind:
    """A Concat's parts in the output's axes: its axis carried through the Transposes after it
    (None where a reshape loses it: the output is then measured whole, and says so), and the
    inputs' extents along it where shape inference knows them all (else one part per slice)."""
    axis = _axis(node, 0)
    shapes = [extents.get(i) for i in node.input]
    if axis < 0:
        if not shapes or shapes[0] is None:
            return OutputKind("parts")
        axis += len(shapes[0])
    sizes = tuple(s[axis] if s is not None and axis < len(s) else None for s in shapes)
    out_axis = _to_output_axis(axis, perms)
    if out_axis is None:
        return OutputKind("parts")
    return OutputKind("parts", out_axis, sizes if all(isinstance(n, int) and n > 0 for n in sizes) else None)


def _axis(node: onnx.NodeProto, default: int) -> int:
    """The node's `axis` attribute, or the op's default."""
    return next((a.i for a in node.attribute if a.name == "axis"), default)


def _to_output_axis(axis: int, perms: list[list[int]] | None) -> int | None:
    """A non-negative axis of a node's output carried through the Transposes after it to the
    graph output (None: a reshape on the way loses it)."""
    if perms is None:
        return None
    for perm in reversed(perms):  # from the node towards the output
        if axis >= len(perm):
            return None
        axis = perm.index(axis)
    return axis


def _graph_input(name: str, producer: dict[str, onnx.NodeProto], inputs: set[str]) -> str | None:
    """The graph input a value is, through ops that only move values (None: it is computed)."""
    while name not in inputs:
        node = producer.get(name)
        if node is None or node.op_type not in PASS_THROUGH or not node.input:
            return None
        name = node.input[0]
    return name


def _is_norm(name: str, producer: dict[str, onnx.NodeProto]) -> bool:
    """Whether a value is an L2 norm (ReduceL2, or Sqrt of a ReduceSumSquare), maybe floored by
    an epsilon and broadcast."""
    while (node := producer.get(name)) is not None:
        if node.op_type == "ReduceL2":
            return True
        if node.op_type == "Sqrt":
            inner = producer.get(node.input[0])
            return inner is not None and inner.op_type == "ReduceSumSquare"
        if node.op_type not in NORM_GUARDS or not node.input:
            return False
        name = node.input[0]
    return False


def _static_extents(model: onnx.ModelProto) -> dict[str, list[int | None]]:
    """Every value's static shape that onnx's shape inference finds (a dim it cannot fix: None)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:  # noqa: BLE001 - inference is a help here: without it, parts are slices
        inferred = model
    graph = inferred.graph
    shapes: dict[str, list[int | None]] = {}
    for info in [*graph.value_info, *graph.input, *graph.output]:
        t = info.type.tensor_type
        if t.HasField("shape"):
            shapes[info.name] = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
    for init in graph.initializer:
        shapes[init.name] = list(init.dims)
    return shapes
