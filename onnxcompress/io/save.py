"""Write the model atomically; models over 2 GB keep their weights in one data file."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import onnx

from ..errors import CompressError

PROTOBUF_LIMIT = 2**31 - 2**20  # protobuf cannot serialize 2 GiB; leave room for the graph


def check_output_path(path: Path, input_path: Path | None, force: bool) -> None:
    """Everything that would make the write fail or clobber something, checked before any work."""
    if not path.parent.is_dir():
        raise CompressError(f"cannot write {path}: the folder {path.parent} does not exist; create it or choose another -o")
    if input_path is not None and path.resolve() == input_path.resolve():
        raise CompressError(f"the output {path} is the input model; choose another -o (the input is never overwritten)")
    if path.is_dir():
        raise CompressError(f"cannot write {path}: it is a directory; give a file name")
    if path.exists() and not force:
        raise CompressError(f"{path} already exists; pass --force to replace it")


def save_model(model: onnx.ModelProto, path: Path) -> int:
    """Writes into a temporary folder beside the target, then renames into place: a reader
    never sees a half-written file. Returns the bytes on disk (model plus data file)."""
    path = Path(path)
    external = model.ByteSize() > PROTOBUF_LIMIT
    data_name = path.name + ".data"
    try:
        tmp = Path(tempfile.mkdtemp(prefix=".onnxcompress-", dir=path.parent))
    except OSError as e:
        raise CompressError(f"cannot write in {path.parent}: {e.strerror or e}; choose another -o") from None
    try:
        try:
            if external:
                to_save = onnx.ModelProto()
                to_save.CopyFrom(model)
                onnx.save_model(
                    to_save,
                    str(tmp / path.name),
                    save_as_external_data=True,
                    all_tensors_to_one_file=True,
                    location=data_name,
                    size_threshold=1024,
                )
            else:
                onnx.save_model(model, str(tmp / path.name))
        except OSError as e:
            raise CompressError(f"cannot write {path}: {e.strerror or e}; free some space or choose another -o") from None
        size = 0
        if external:
            size += (tmp / data_name).stat().st_size
            os.replace(tmp / data_name, path.parent / data_name)
        size += (tmp / path.name).stat().st_size
        os.replace(tmp / path.name, path)
        return size
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
