"""What each graph output means, read from the graph's structure (never from names), so that
its error is measured the way its task reads it:

- parts: a Concat of different quantities (a detector's pixel boxes beside its 0..1 scores).
  Its relative L2 error is the worst of its parts', so no part hides behind a larger one;
- classes: Softmax or LogSoftmax rows, read by their argmax (top-1 agreement);
- probabilities: a Sigmoid, read as decisions at 0.5 (the share that flips is reported);
- state: a recurrent op's final hidden or cell state, fed back by the caller;
- dense: anything else (features, embeddings, maps).

Ops that only move values (Reshape, Transpose, Identity...) are looked through; a Concat's axis
is followed through Transpose and Identity only, where it stays known."""

from __future__ import annotations

from dataclasses import dataclass

import onnx

# ops whose output holds the same values as their first input, rearranged
PASS_THROUGH = {"Identity", "Cast", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose"}
RECURRENT = {"LSTM", "GRU", "RNN"}


@dataclass(frozen=True)
class OutputKind:
    kind: str  # parts, classes, probabilities, state or dense
    axis: int | None = None  # parts: the Concat's axis in the output
    sizes: tuple[int, ...] | None = None  # parts: each part's extent along it (None: one slice each)

    def describe(self) -> str:
        if self.kind != "parts":
            return self.kind
        if self.axis is None:
            return "parts (axis unknown: measured whole)"
        count = f"{len(self.sizes)} parts" if self.sizes else "each slice"
        return f"parts ({count} along axis {self.axis})"


def output_kinds(model: onnx.ModelProto) -> dict[str, OutputKind]:
    """Each graph output's kind."""
    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}
    kinds = {out.name: _kind_of(out.name, producer, {}) for out in graph.output}
    if any(k.kind == "parts" for k in kinds.values()):  # shape inference: 0.4 s on a 90 MB model
        extents = _static_extents(model)
        kinds = {out.name: _kind_of(out.name, producer, extents) for out in graph.output}
    return kinds


def _kind_of(name: str, producer: dict[str, onnx.NodeProto], extents: dict[str, list[int | None]]) -> OutputKind:
    perms: list[list[int]] | None = []  # the Transposes between the node reached and the output; None: axes lost
    while (node := producer.get(name)) is not None:
        op = node.op_type
        if op in ("Softmax", "LogSoftmax"):
            return OutputKind("classes")
        if op == "Sigmoid":
            return OutputKind("probabilities")
        if op in RECURRENT and list(node.output).index(name) > 0:
            return OutputKind("state")
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
    axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
    shapes = [extents.get(i) for i in node.input]
    if axis < 0:
        if not shapes or shapes[0] is None:
            return OutputKind("parts")
        axis += len(shapes[0])
    sizes = tuple(s[axis] if s is not None and axis < len(s) else None for s in shapes)
    if perms is None:
        return OutputKind("parts")
    out_axis = axis
    for perm in reversed(perms):  # from the Concat towards the output
        out_axis = perm.index(out_axis)
    return OutputKind("parts", out_axis, sizes if all(isinstance(n, int) and n > 0 for n in sizes) else None)


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
