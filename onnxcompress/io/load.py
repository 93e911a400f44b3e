"""Load a model from a path or a ModelProto, with one-line errors for bad input."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnx.external_data_helper
from google.protobuf.message import DecodeError

from ..errors import CompressError, first_line


@dataclass
class LoadedModel:
    model: onnx.ModelProto
    path: Path | None  # None when given a ModelProto
    file_bytes: int  # model file plus external data files, or the serialized size
    # where the data of tensors still kept in external files lies (load_model(defer=True));
    # None once every tensor holds its own data
    data_dir: Path | None = None


def load_model(source: str | os.PathLike | onnx.ModelProto, defer_external: bool = False) -> LoadedModel:
    """The model, checked. Weights in external data files are read into the protos, unless
    `defer_external`: then they stay in their files (checked to be complete) until
    read_external() or a WeightSite reads them, so a model larger than RAM can stream."""
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
    loaded = LoadedModel(model, path, size, path.parent if external else None)
    if external:
        _check_external_extents(model, path)
        if not defer_external:
            read_external(loaded)
    return loaded


def read_external(loaded: LoadedModel, keep: set[str] | frozenset[str] = frozenset()) -> None:
    """Read the external data of every tensor but those named in `keep` into its proto."""
    if loaded.data_dir is None:
        return
    left = False
    for t in _all_tensors(loaded.model.graph):
        if t.data_location != onnx.TensorProto.EXTERNAL:
            continue
        if t.name in keep:
            left = True
            continue
        try:
            onnx.external_data_helper.load_external_data_for_tensor(t, str(loaded.data_dir))
        except Exception as e:  # noqa: BLE001 - the external file is unreadable
            raise CompressError(
                f"{loaded.path}: cannot read its external data ({_short(e)}); is the data file complete?"
            ) from None
        t.data_location = onnx.TensorProto.DEFAULT
        del t.external_data[:]
    if not left:
        loaded.data_dir = None


def external_extent(tensor: onnx.TensorProto) -> tuple[str, int, int | None]:
    """(file name, offset, length or None) of a tensor kept in an external data file."""
    info = {e.key: e.value for e in tensor.external_data}
    length = info.get("length")
    return info.get("location", ""), int(info.get("offset", 0)), None if length is None else int(length)


def _check_external_extents(model: onnx.ModelProto, path: Path) -> None:
    """Every external tensor lies inside its file: a truncated file is found before any work."""
    sizes: dict[str, int] = {}
    for t in _all_tensors(model.graph):
        if t.data_location != onnx.TensorProto.EXTERNAL:
            continue
        name, offset, length = external_extent(t)
        if name not in sizes:
            sizes[name] = (path.parent / name).stat().st_size
        need = length if length is not None else _packed_bytes(t)
        if offset < 0 or offset + need > sizes[name]:
            raise CompressError(
                f"{path}: tensor {t.name!r} lies past the end of {name} ({offset + need} > {sizes[name]} bytes); "
                "is the data file complete?"
            )


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


def tensor_bytes(model: onnx.ModelProto) -> int:
    """What all the model's tensors (initializers, Constant nodes, in bodies too) take as values."""
    return sum(_packed_bytes(t) for t in _all_tensors(model.graph))


def _packed_bytes(t: onnx.TensorProto) -> int:
    n = int(np.prod(t.dims, dtype=np.int64))
    bits: dict[int, int] = {onnx.TensorProto.UINT4: 4, onnx.TensorProto.INT4: 4, onnx.TensorProto.UINT2: 2}
    bits.update({onnx.TensorProto.INT2: 2, int(getattr(onnx.TensorProto, "FLOAT4E2M1", -1)): 4})
    if t.data_type in bits:
        return -(-n * bits[t.data_type] // 8)
    if t.data_type in (onnx.TensorProto.STRING, onnx.TensorProto.UNDEFINED):
        return 0
    return n * onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize


def bodies(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    """The graphs a node holds as attributes: an If's branches, a Loop's or Scan's body."""
    out: list[onnx.GraphProto] = []
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            out.append(attr.g)
        elif attr.type == onnx.AttributeProto.GRAPHS:
            out.extend(attr.graphs)
    return out


def _all_tensors(graph: onnx.GraphProto):
    yield from graph.initializer
    for node in graph.node:
        yield from (attr.t for attr in node.attribute if attr.type == onnx.AttributeProto.TENSOR)
        for sub in bodies(node):
            yield from _all_tensors(sub)


def _short(e: Exception) -> str:
    return first_line(e, 160)
