"""Packed indices and decode nodes rebuild exactly the encoded weight, at every bit width
and layout, in onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort
import pytest

from onnxcompress.encoding.codebook import encode_codebook
from onnxcompress.graph.decode import IDENTITY_MAX, build_decoder, pack_plane, plane_widths
from onnxcompress.options import CodebookOptions


@pytest.mark.parametrize("bits", range(1, 8))
def test_plane_widths_add_up(bits):
    assert plane_widths(8) == []  # 8-bit indices are plain bytes
    widths = plane_widths(bits)
    assert sum(w for w, _ in widths) == bits
    assert [off for _, off in widths] == [sum(w for w, _ in widths[:i]) for i in range(len(widths))]


@pytest.mark.parametrize("width", [1, 2, 4])
@pytest.mark.parametrize("n", [1, 7, 8, 1001])
def test_pack_plane_round_trip(width, n):
    values = np.random.default_rng(n).integers(0, 1 << width, n).astype(np.uint8)
    packed = pack_plane(values, width)
    per = 8 // width
    assert packed.shape == (1, -(-n // per))
    fields = [(packed[0] >> (j * width)) & ((1 << width) - 1) for j in range(per)]
    np.testing.assert_array_equal(np.concatenate(fields)[:n], values)


def decoded_in_onnxruntime(cb, dtype=np.float32, opset=17, target_ort=(1, 16)):
    out = gs.Variable("W", dtype=dtype, shape=list(cb.shape))
    onnx_dtype = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    nodes, _ = build_decoder(cb, "W", out, onnx_dtype, opset, target_ort)
    graph = gs.Graph(nodes=nodes, outputs=[out], opset=opset)
    model = gs.export_onnx(graph)
    model.ir_version = 11 if opset >= 23 else 10 if opset >= 21 else 8
    onnx.checker.check_model(model, full_check=True)
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {})[0]


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("layout", ["tensor", "channel", "scaled", "group:7"])
@pytest.mark.parametrize("shape,axis", [((13, 11), 1), ((9, 40), 1), ((6, 5, 3, 3), 0), ((1000,), 0)])
def test_decoder_rebuilds_the_codebook_exactly(bits, layout, shape, axis):
    w = np.random.default_rng(bits).normal(size=shape).astype(np.float32)
    cb = encode_codebook(w, CodebookOptions(bits=bits, granularity=layout), axis)
    got = decoded_in_onnxruntime(cb)
    assert got.shape == w.shape and got.dtype == np.float32
    np.testing.assert_array_equal(got, cb.decoded().astype(np.float32))


@pytest.mark.parametrize("bits", range(1, 8))
@pytest.mark.parametrize(
    "opset,target_ort", [(11, (1, 16)), (13, (1, 16)), (14, (1, 16)), (21, (1, 16)), (21, (1, 24, 4)), (25, (1, 24, 4))]
)
def test_sub_8_bit_decoders_at_every_opset_they_change_at(bits, opset, target_ort):
    """Bit planes are combined with Mul below opset 14 and with Add from it; for onnxruntime
    1.24.4 on, 4-bit indices are stored as uint4 from opset 21 and 2-bit ones as uint2 from 25.
    Each decoder must rebuild the same weight."""
    w = np.random.default_rng(bits).normal(size=(13, 11)).astype(np.float32)
    cb = encode_codebook(w, CodebookOptions(bits=bits, granularity="channel"), 1)
    out = gs.Variable("W", dtype=np.float32, shape=[13, 11])
    stored = build_decoder(cb, "W", out, onnx.TensorProto.FLOAT, opset, target_ort)[1]
    native = target_ort >= (1, 24, 4) and ((bits == 4 and opset >= 21) or (bits == 2 and opset >= 25))
    assert stored == ({4: "uint4", 2: "uint2"}[bits] if native else "planes")
    np.testing.assert_array_equal(decoded_in_onnxruntime(cb, opset=opset, target_ort=target_ort), cb.decoded().astype(np.float32))


@pytest.mark.parametrize("codebook_dtype,weight_dtype", [("float16", np.float32), ("auto", np.float16), ("auto", np.float64)])
def test_codebook_storage_types(codebook_dtype, weight_dtype):
    w = np.random.default_rng(0).normal(size=(40, 30)).astype(weight_dtype)
    cb = encode_codebook(w, CodebookOptions(bits=4, codebook_dtype=codebook_dtype))
    assert cb.centroids.dtype == (np.float16 if codebook_dtype == "float16" else weight_dtype)
    got = decoded_in_onnxruntime(cb, weight_dtype)
    assert got.dtype == weight_dtype
    np.testing.assert_array_equal(got, cb.decoded().astype(weight_dtype))


def test_indices_are_stored_at_exactly_bits_bits():
    w = np.random.default_rng(0).normal(size=(64, 125)).astype(np.float32)
    for bits in range(1, 9):
        cb = encode_codebook(w, CodebookOptions(bits=bits))
        out = gs.Variable("W", dtype=np.float32, shape=list(w.shape))
        nodes, _ = build_decoder(cb, "W", out, onnx.TensorProto.FLOAT, 17)
        stored = sum(t.values.nbytes for n in nodes for t in n.inputs if isinstance(t, gs.Constant) and "indices" in t.name)
        assert stored == sum(-(-w.size // (8 // wd)) for wd, _ in plane_widths(bits)) if bits < 8 else w.size
        assert stored <= -(-w.size * bits // 8) + 3


@pytest.mark.parametrize("bits", range(1, 8))
@pytest.mark.parametrize("layout", ["tensor", "scaled", "channel"])
def test_a_single_plane_reads_a_repeated_codebook_with_no_mask(bits, layout):
    """One codebook of 2^bits levels in one plane (1, 2, 4 bits): a BitShift right and a
    Gather from the codebook repeated to 256 levels; a uint8 copy fewer at load than masking each
    value first. Every other decoder masks."""
    w = np.random.default_rng(bits).normal(size=(64, 33)).astype(np.float32)
    cb = encode_codebook(w, CodebookOptions(bits=bits, granularity=layout), 1)
    nodes, _ = build_decoder(cb, "W", gs.Variable("W", dtype=np.float32, shape=[64, 33]), onnx.TensorProto.FLOAT, 17)
    ops = [n.op for n in nodes]
    repeated = bits in (1, 2, 4) and layout != "channel"
    assert ops.count("Concat") == (8 - bits if repeated else 0)
    assert ops.count("BitShift") == (1 if repeated else 2 * len(plane_widths(bits)) + (len(plane_widths(bits)) - 1))
    np.testing.assert_array_equal(decoded_in_onnxruntime(cb), cb.decoded().astype(np.float32))


def test_a_codebook_with_fewer_levels_than_its_width_masks():
    """Three distinct values at 4 bits: 3 levels, which a 256-level repetition would misplace."""
    w = np.random.default_rng(1).choice(np.array([-1.0, 0.5, 2.0], dtype=np.float32), size=(40, 30))
    cb = encode_codebook(w, CodebookOptions(bits=4))
    assert cb.centroids.shape[-1] < 16
    nodes, _ = build_decoder(cb, "W", gs.Variable("W", dtype=np.float32, shape=[40, 30]), onnx.TensorProto.FLOAT, 17)
    assert "Concat" not in [n.op for n in nodes]
    np.testing.assert_array_equal(decoded_in_onnxruntime(cb), w)


@pytest.mark.parametrize("bits,opset", [(4, 21), (2, 25)])
def test_native_indices_read_the_codebook_as_it_is(bits, opset):
    """uint4 and uint2 indices are whole values after their Cast: no repetition to 256 levels."""
    w = np.random.default_rng(bits).normal(size=(64, 33)).astype(np.float32)
    cb = encode_codebook(w, CodebookOptions(bits=bits))
    out = gs.Variable("W", dtype=np.float32, shape=[64, 33])
    nodes, stored = build_decoder(cb, "W", out, onnx.TensorProto.FLOAT, opset, (1, 24, 4))
    assert stored == f"uint{bits}" and [n.op for n in nodes] == ["Cast", "Gather"]
    np.testing.assert_array_equal(decoded_in_onnxruntime(cb, opset=opset, target_ort=(1, 24, 4)), cb.decoded().astype(np.float32))


@pytest.mark.parametrize("bits", [8, 4, 3])
@pytest.mark.parametrize("shape", [(5, IDENTITY_MAX), (5, IDENTITY_MAX + 1), (IDENTITY_MAX + 1,), (3, 2, 1, 17), (4, 3, 3)])
def test_indices_become_int32_by_a_product_not_a_cast(bits, shape):
    """onnxruntime-web's Cast kernel is a wasm function that V8 recompiles once it runs hot (200 MiB
    of a Chromium tab for a second, docs/deployment.md): from opset 10 the indices become INT32 by
    a MatMulInteger, by the identity where the last axis is short and by a 1-D row of one through
    a length-1 axis where it is long, in the index's own shape either way."""
    w = np.random.default_rng(len(shape)).normal(size=shape).astype(np.float32)
    cb = encode_codebook(w, CodebookOptions(bits=bits), 0)
    nodes, _ = build_decoder(cb, "W", gs.Variable("W", dtype=np.float32, shape=list(shape)), onnx.TensorProto.FLOAT, 17)
    ops = [n.op for n in nodes]
    assert "Cast" not in ops and ops.count("MatMulInteger") == (1 if bits in (8, 4) else len(plane_widths(bits)))
    products = [n for n in nodes if n.op == "MatMulInteger"]
    short = shape[-1] <= IDENTITY_MAX
    for n in products:
        factor = n.inputs[1] if short else n.inputs[0]
        assert factor.values.tolist() == (np.eye(shape[-1], dtype=np.uint8).tolist() if short else [1])
    np.testing.assert_array_equal(decoded_in_onnxruntime(cb), cb.decoded().astype(np.float32))


def test_opsets_before_matmul_integer_cast_8_bit_indices():
    w = np.random.default_rng(0).normal(size=(20, 30)).astype(np.float32)
    cb = encode_codebook(w, CodebookOptions(bits=8))
    nodes, stored = build_decoder(cb, "W", gs.Variable("W", dtype=np.float32, shape=[20, 30]), onnx.TensorProto.FLOAT, 9)
    assert stored == "uint8" and [n.op for n in nodes] == ["Cast", "Gather"]
    np.testing.assert_array_equal(decoded_in_onnxruntime(cb, opset=9), cb.decoded().astype(np.float32))
