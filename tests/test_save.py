"""Writing: external data in and out, atomic replacement, bfloat16 weights."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from models import ALL, feed_for, make_model
from onnx import TensorProto, helper

import onnxcompress as oc
import onnxcompress.io.save as save_module
from onnxcompress.runtime.synthesize import synthesize_feed


def test_model_with_external_data_compresses(tmp_path):
    src = tmp_path / "ext.onnx"
    onnx.save_model(ALL["conv"](), str(src), save_as_external_data=True, location="ext.data", size_threshold=0)
    out = tmp_path / "out.onnx"
    rep = oc.compress(src, out, min_elements=64).report
    assert rep.file_bytes_before == src.stat().st_size + (tmp_path / "ext.data").stat().st_size
    assert rep.verified and out.exists()


@pytest.mark.parametrize("name", ["conv", "lstm", "if_branch", "float16_float64"])
def test_external_weights_stream_from_their_file(tmp_path, monkeypatch, name):
    """Codebooks at fixed bits never read a compressed weight's external data into the model:
    each weight is mapped from the file while it is encoded. The result is the same file as
    from the model with its weights inline."""
    model = ALL[name]()
    src, inline = tmp_path / "ext.onnx", tmp_path / "inline.onnx"
    onnx.save_model(model, str(src), save_as_external_data=True, location="ext.data", size_threshold=0)
    onnx.save_model(model, str(inline))
    read = []
    real = onnx.external_data_helper.load_external_data_for_tensor
    monkeypatch.setattr(
        onnx.external_data_helper, "load_external_data_for_tensor", lambda t, d: (read.append(t.name), real(t, d))
    )
    streamed = oc.compress(src, tmp_path / "a.onnx", min_elements=64, bits=4)
    assert streamed.report.tensors and not {t.name for t in streamed.report.tensors} & set(read)  # only the rest was read
    oc.compress(inline, tmp_path / "b.onnx", min_elements=64, bits=4)
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()
    read.clear()
    oc.compress(src, tmp_path / "c.onnx", min_elements=64, bits=4, calibration=synthesize_feed(model))  # reads it all
    assert {t.name for t in streamed.report.tensors} <= set(read)


def test_output_over_the_protobuf_limit_keeps_weights_in_a_data_file(tmp_path, monkeypatch):
    monkeypatch.setattr(save_module, "PROTOBUF_LIMIT", 1000)  # as if the model were over 2 GB
    out = tmp_path / "big.onnx"
    model = ALL["conv"]()
    rep = oc.compress(model, out, min_elements=64).report
    data = tmp_path / "big.onnx.data"
    assert data.exists() and rep.file_bytes_after == out.stat().st_size + data.stat().st_size
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.onnx", "big.onnx.data"]  # no temporary left
    feed = feed_for(model)
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, feed)[0]
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)[0]
    np.testing.assert_allclose(got, want, rtol=0.05, atol=0.05)


def test_force_replaces_atomically(tmp_path):
    out = tmp_path / "out.onnx"
    out.write_bytes(b"old")
    oc.compress(ALL["matmul"](), out, force=True, min_elements=64, verify=False)
    assert onnx.load(str(out)).graph.node
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.onnx"]


def test_bfloat16_weights_keep_their_type():
    w = (np.random.default_rng(0).normal(size=(48, 40)) * 0.2).astype(np.float32)
    bits = (w.view(np.uint32) >> 16).astype(np.uint16)
    init = helper.make_tensor("W", TensorProto.BFLOAT16, w.shape, bits.tobytes(), raw=True)
    model = make_model(
        [helper.make_node("Cast", ["W"], ["Wf"], to=TensorProto.FLOAT), helper.make_node("MatMul", ["x", "Wf"], ["y"])],
        [("x", TensorProto.FLOAT, [3, 48])],
        [("y", TensorProto.FLOAT, [3, 40])],
    )
    model.graph.initializer.append(init)
    result = oc.compress(model, min_elements=64)
    assert result.report.verified and result.report.outputs[0].cosine > 0.999
    casts = [n for n in result.model.graph.node if n.op_type == "Cast" and n.output[0] == "W"]
    assert casts and casts[0].attribute[0].i == TensorProto.BFLOAT16
