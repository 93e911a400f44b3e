"""Lookup tables decoded after each lookup (graph/lookup.py): the same outputs as the table
decoded at load, to the bit, at every width and layout, while the table stays packed in
onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from models import embedding, gather_scalar, make_model, weight
from onnxcompress.encoding.codebook import encode_codebook
from onnxcompress.graph.lookup import packed_rows, stays_packed
from onnxcompress.graph.rewrite import rewrite_graph
from onnxcompress.io.select import select_weights
from onnxcompress.options import CodebookOptions, SelectOptions
from decoded import substitute_decoded


@pytest.mark.parametrize("bits", [1, 2, 4])
@pytest.mark.parametrize("cols", [1, 7, 8, 24])
def test_packed_rows_hold_each_row_in_element_order(bits, cols):
    codes = np.random.default_rng(cols).integers(0, 1 << bits, (5, cols)).astype(np.uint8)
    packed = packed_rows(codes, bits)
    per = 8 // bits
    assert packed.shape == (5, -(-cols // per))
    fields = np.stack([(packed >> (j * bits)) & ((1 << bits) - 1) for j in range(per)], axis=-1)
    np.testing.assert_array_equal(fields.reshape(5, -1)[:, :cols], codes)


def outputs(model: onnx.ModelProto, feed: dict) -> list[np.ndarray]:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)


def table_site(model: onnx.ModelProto):
    return select_weights(model, SelectOptions(min_elements=16)).weights[0]


IDS = {"ids": np.array([[0, 5, -1, 299], [17, 17, -300, 2]], dtype=np.int64)}  # negative ids count from the end


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 5, 6, 7, 8])
@pytest.mark.parametrize("layout,axis", [("tensor", 0), ("scaled", 0), ("scaled", 1), ("channel", 0), ("channel", 1)])
def test_lookup_gives_the_decoded_table_to_the_bit(bits, layout, axis):
    model = embedding()
    site = table_site(model)
    cb = encode_codebook(site.array, CodebookOptions(bits=bits, granularity=layout), axis)
    assert stays_packed(site, bits, layout, 17)
    rewritten, stored = rewrite_graph(model, [(site, cb)])
    assert stored == {"E": "rows"}
    onnx.checker.check_model(rewritten, full_check=True)
    expected = outputs(substitute_decoded(model, [(site, cb)]), IDS)
    np.testing.assert_array_equal(outputs(rewritten, IDS)[0], expected[0])


@pytest.mark.parametrize("bits", [8, 4, 3])
def test_lookups_make_their_indices_int32_without_a_cast(bits):
    """Each lookup runs at every call: a Cast there would make onnxruntime-web's Cast kernel hot
    in V8 after a few calls (graph/decode.py, INT32_BY_PRODUCT_OPSET). One MatMulInteger per plane."""
    model = embedding()
    site = table_site(model)
    rewritten, _ = rewrite_graph(model, [(site, encode_codebook(site.array, CodebookOptions(bits=bits), 0))])
    ops = [n.op_type for n in rewritten.graph.node]
    assert "Cast" not in ops and ops.count("MatMulInteger") == {8: 1, 4: 1, 3: 2}[bits]


@pytest.mark.parametrize("bits", [3, 5, 6, 7])
@pytest.mark.parametrize("layout,axis", [("tensor", 0), ("channel", 1)])
def test_rows_that_end_inside_a_byte_of_each_plane(bits, layout, axis):
    """13 columns: each plane's last byte a row holds padding, cut off after the lookup."""
    model = make_model(
        [helper.make_node("Gather", ["E", "ids"], ["y"], axis=0)],
        [("ids", TensorProto.INT64, ["batch", "seq"])],
        [("y", TensorProto.FLOAT, ["batch", "seq", 13])],
        [("E", weight(300, 13))],
    )
    site = table_site(model)
    cb = encode_codebook(site.array, CodebookOptions(bits=bits, granularity=layout), axis)
    rewritten, stored = rewrite_graph(model, [(site, cb)])
    assert stored == {"E": "rows"}
    onnx.checker.check_model(rewritten, full_check=True)
    np.testing.assert_array_equal(outputs(rewritten, IDS)[0], outputs(substitute_decoded(model, [(site, cb)]), IDS)[0])


def test_float16_table_with_float32_scales_comes_back_as_float16():
    model = make_model(
        [helper.make_node("Gather", ["E", "ids"], ["y"], axis=0)],
        [("ids", TensorProto.INT64, [2, 4])],
        [("y", TensorProto.FLOAT16, [2, 4, 24])],
        [("E", weight(300, 24, dtype=np.float16))],
    )
    site = table_site(model)
    cb = encode_codebook(site.array, CodebookOptions(bits=4, granularity="scaled"), 0)
    rewritten, stored = rewrite_graph(model, [(site, cb)])
    got = outputs(rewritten, IDS)[0]
    assert stored["E"] == "rows" and got.dtype == np.float16
    np.testing.assert_array_equal(got, outputs(substitute_decoded(model, [(site, cb)]), IDS)[0])


def test_scalar_id_and_a_table_read_by_two_lookups():
    model = gather_scalar()
    site = table_site(model)
    cb = encode_codebook(site.array, CodebookOptions(bits=2), 0)
    rewritten, _ = rewrite_graph(model, [(site, cb)])
    feed = {"i": np.array(-3, dtype=np.int64)}
    np.testing.assert_array_equal(outputs(rewritten, feed)[0], outputs(substitute_decoded(model, [(site, cb)]), feed)[0])

    two = make_model(
        [helper.make_node("Gather", ["E", "a"], ["y"], axis=0), helper.make_node("Gather", ["E", "b"], ["z"], axis=0)],
        [("a", TensorProto.INT64, [3]), ("b", TensorProto.INT64, [2, 2])],
        [("y", TensorProto.FLOAT, [3, 24]), ("z", TensorProto.FLOAT, [2, 2, 24])],
        [("E", weight(300, 24))],
    )
    site = table_site(two)
    cb = encode_codebook(site.array, CodebookOptions(bits=4, granularity="channel"), 1)
    rewritten, stored = rewrite_graph(two, [(site, cb)])
    feed = {"a": np.array([1, 2, 3]), "b": np.array([[0, 299], [-1, 4]])}
    for got, want in zip(outputs(rewritten, feed), outputs(substitute_decoded(two, [(site, cb)]), feed), strict=True):
        np.testing.assert_array_equal(got, want)
    packed = [t for t in rewritten.graph.initializer if t.name == "E::rows"]
    assert len(packed) == 1 and list(packed[0].dims) == [300, 12, 1]  # one packed table for both lookups


@pytest.mark.parametrize("bits,planes", [(4, {"E::rows": 12}), (7, {"E::rows4": 12, "E::rows2": 6, "E::rows1": 3})])
def test_the_table_stays_packed_in_onnxruntime(tmp_path, bits, planes):
    """onnxruntime's optimized graph holds the packed rows (one array per bit plane, P bytes a
    row) and no float or index copy of the table."""
    model = embedding()
    site = table_site(model)
    cb = encode_codebook(site.array, CodebookOptions(bits=bits), 0)
    rewritten, _ = rewrite_graph(model, [(site, cb)])
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(rewritten.SerializeToString(), options, providers=["CPUExecutionProvider"])
    held = {t.name: t for t in onnx.load(tmp_path / "optimized.onnx").graph.initializer}
    for name, per_row in planes.items():
        assert held[name].data_type == TensorProto.UINT8 and list(held[name].dims) == [300, per_row, 1]
    others = [int(np.prod(t.dims)) for name, t in held.items() if name not in planes]
    assert max(others) < 300 * 24 // 8


@pytest.mark.parametrize(
    "why,model_or_bits",
    [
        ("Gather along axis 1", "axis1"),
        ("opset 10 has no BitShift", "opset10"),
    ],
)
def test_other_tables_fold_at_load_as_before(why, model_or_bits):
    bits = model_or_bits if isinstance(model_or_bits, int) else 4
    if model_or_bits == "axis1":
        model = make_model(
            [helper.make_node("Gather", ["E", "ids"], ["y"], axis=1)],
            [("ids", TensorProto.INT64, [2])],
            [("y", TensorProto.FLOAT, [300, 2])],
            [("E", weight(300, 24))],
        )
        feed = {"ids": np.array([1, 23])}
    else:
        model = (
            embedding()
            if model_or_bits != "opset10"
            else make_model(
                [helper.make_node("Gather", ["E", "ids"], ["y"], axis=0)],
                [("ids", TensorProto.INT64, ["batch", "seq"])],
                [("y", TensorProto.FLOAT, ["batch", "seq", 24])],
                [("E", weight(300, 24))],
                opset=10,
            )
        )
        feed = IDS
    site = table_site(model)
    cb = encode_codebook(site.array, CodebookOptions(bits=bits if model_or_bits != "opset10" else 8), 0)
    assert not stays_packed(site, cb.bits, cb.layout, 10 if model_or_bits == "opset10" else 17), why
    rewritten, stored = rewrite_graph(model, [(site, cb)])
    assert stored["E"] != "rows"
    np.testing.assert_array_equal(outputs(rewritten, feed)[0], outputs(substitute_decoded(model, [(site, cb)]), feed)[0])
