"""Step 1: load a model from a path or a ModelProto, with one-line errors for bad input."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from .errors import CompressError, first_line


@dataclass
class LoadedModel:
    model: onnx.ModelProto
    path: Path | None  # None when given a ModelProto
    file_bytes: int  # model file plus external data files, or the serialized size


def load_model(source: str | os.PathLike | onnx.ModelProto) -> LoadedModel:
    if isinstance(source, onnx.ModelProto):
        model = onnx.ModelProto()
        model.CopyFrom(source)  # never modify the caller's model
        _check_is_model(model, "the given ModelProto")
        return LoadedModel(model, None, model.ByteSize())
    path = Path(source)
    if not path.exists():
        raise CompressError(f"{path}: no such file; check the path")
    if path.is_dir():
        raise CompressError(f"{path} is a directory; give the path of an .onnx file")
    size = path.stat().st_size
    if size == 0:
        raise CompressError(f"{path} is empty; it is not an ONNX model")
    try:
        model = onnx.load_model(str(path), load_external_data=False)
    except (DecodeError, RuntimeWarning, ValueError, OSError) as e:
        raise CompressError(f"{path} is not a readable ONNX model ({_short(e)}); is the file complete?") from None
    _check_is_model(model, str(path))
    external = _external_files(model)
    for name in external:
        data = path.parent / name
        if not data.is_file():
            raise CompressError(f"{path} keeps weights in {name}, which is missing next to it; copy it beside the model")
        size += data.stat().st_size
    if external:
        try:
            onnx.load_external_data_for_model(model, str(path.parent))
        except Exception as e:  # noqa: BLE001 - the external file is truncated or unreadable
            raise CompressError(f"{path}: cannot read its external data ({_short(e)}); is the data file complete?") from None
    return LoadedModel(model, path, size)


def _check_is_model(model: onnx.ModelProto, what: str) -> None:
    if not model.HasField("graph") or (len(model.graph.node) == 0 and len(model.graph.output) == 0):
        raise CompressError(f"{what} parses as protobuf but holds no ONNX graph; is it really a model?")
    if not model.opset_import:
        raise CompressError(f"{what} declares no opset; re-export it with an opset import")
    seen: set[str] = set()
    for name in [t.name for t in model.graph.initializer] + [n.output[0] for n in model.graph.node if n.op_type == "Constant"]:
        if name in seen:
            raise CompressError(
                f"{what} defines the tensor {name!r} twice (onnxruntime takes the last, other tools the first); "
                "give each initializer its own name"
            )
        seen.add(name)
    if len(model.training_info):
        raise CompressError(
            f"{what} holds a training graph (training_info), whose updates would write the compressed weights; "
            "export the inference model and compress that"
        )


def _external_files(model: onnx.ModelProto) -> list[str]:
    names = set()
    for t in _all_tensors(model.graph):
        if t.data_location == onnx.TensorProto.EXTERNAL:
            for entry in t.external_data:
                if entry.key == "location":
                    names.add(entry.value)
    return sorted(names)


def _all_tensors(graph: onnx.GraphProto):
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                yield attr.t
            elif attr.type == onnx.AttributeProto.GRAPH:
                yield from _all_tensors(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from _all_tensors(g)


def _short(e: Exception) -> str:
    return first_line(e, 160)
