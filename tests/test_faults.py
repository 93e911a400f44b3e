"""Bad input and faults: each ends in one clear line (exit 2 on the command line), nothing
half-written, the input untouched; or, where the model is valid, a correct result."""

from __future__ import annotations

import errno

import numpy as np
import onnx
from models import ALL, F, make_model, weight
from onnx import helper, numpy_helper
from test_cli import assert_bad_input


def save(model, tmp_path, name="model.onnx"):
    path = tmp_path / name
    onnx.save_model(model, str(path))
    return path


def test_duplicate_tensor_names(tmp_path, capsys):
    model = ALL["matmul"]()
    model.graph.initializer.append(numpy_helper.from_array(weight(48, 40), "W"))  # a second "W"
    path = save(model, tmp_path)
    assert_bad_input([path, "--min-elements", 64], capsys, tmp_path, "defines the tensor 'W' twice", [path])


def test_training_graphs_are_refused(tmp_path, capsys):
    model = ALL["matmul"]()
    model.training_info.add()
    path = save(model, tmp_path)
    assert_bad_input([path, "--min-elements", 64], capsys, tmp_path, "training graph", [path])


def test_local_functions_that_read_weights(tmp_path, capsys):
    """A model-local function takes a weight as input: that weight is left alone (the
    function's body is its own), the other weight is compressed, and the functions survive."""
    scale = helper.make_function(
        "local", "Scale", ["x", "s"], ["y"], [helper.make_node("Mul", ["x", "s"], ["y"])], [helper.make_opsetid("", 17)]
    )
    model = make_model(
        [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Scale", ["h", "S"], ["y"], domain="local")],
        [("x", F, [2, 96])],
        [("y", F, [2, 80])],
        [("W", weight(96, 80)), ("S", weight(2, 80) + 1.0)],
    )
    model.opset_import.append(helper.make_opsetid("local", 1))
    model.functions.append(scale)
    model.graph.initializer[1].CopyFrom(numpy_helper.from_array(np.tile(weight(1, 80), (2, 1)) + 1.0, "S"))
    import onnxcompress as oc

    r = oc.compress(model, min_elements=64)
    assert [t.name for t in r.report.tensors] == ["W"]
    assert any(s["name"] == "S" for s in r.report.skipped)
    assert [f.name for f in r.model.functions] == ["Scale"]
    assert r.report.verified and r.report.outputs[0].rel_l2 < 0.05


def test_unknown_domain_opset(tmp_path, capsys):
    model = ALL["matmul"]()
    model.graph.node.append(helper.make_node("Mystery", ["y"], ["z"], domain="com.unknown"))
    model.graph.output[0].CopyFrom(helper.make_tensor_value_info("z", F, None))
    model.opset_import.append(helper.make_opsetid("com.unknown", 1))
    path = save(model, tmp_path)
    assert_bad_input([path, "--min-elements", 64], capsys, tmp_path, "must run in onnxruntime", [path])


def test_unwritable_output_folder(tmp_path, capsys, monkeypatch):
    path = save(ALL["matmul"](), tmp_path)
    import onnxcompress.io.save as s

    def refuse(*a, **k):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(s.tempfile, "mkdtemp", refuse)  # as a read-only folder does (root ignores chmod)
    assert_bad_input([path, "-o", tmp_path / "out.onnx", "--min-elements", 64], capsys, tmp_path, "Permission denied", [path])


def test_disk_full_midway_leaves_nothing_and_keeps_the_old_output(tmp_path, capsys, monkeypatch):
    path = save(ALL["matmul"](), tmp_path)
    old = tmp_path / "out.onnx"
    old.write_bytes(b"the previous result")
    import onnxcompress.io.save as s

    def half_then_full(model, target, *a, **k):
        with open(target, "wb") as f:
            f.write(model.SerializeToString()[:100])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(s.onnx, "save_model", half_then_full)
    assert_bad_input([path, "-o", old, "--min-elements", 64, "--force"], capsys, tmp_path, "No space left on device", [path, old])
