"""End to end: compress small real graphs and check them in onnxruntime."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from decoded import substitute_decoded
from models import ALL, feed_for, matmul, matmul_chain

import onnxcompress as oc
from onnxcompress.encoding.codebook import encode_codebook
from onnxcompress.io.select import select_weights
from onnxcompress.options import CodebookOptions, SelectOptions


def run(model: onnx.ModelProto, feed):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feed)


def reference_with_decoded_weights(model, bits, granularity):
    """The original model with every compressed weight replaced by its decoded value."""
    opts = CodebookOptions(bits=bits, granularity=granularity)
    sel = select_weights(model, SelectOptions(min_elements=64))
    return substitute_decoded(model, [(s, encode_codebook(s.array, opts, s.channel_axis())) for s in sel.weights])


@pytest.mark.parametrize(
    "bits,granularity", [(8, "tensor"), (4, "tensor"), (3, "channel"), (4, "scaled"), (5, "group:50"), (1, "tensor")]
)
@pytest.mark.parametrize("kind", sorted(ALL))
def test_outputs_match_decoded_weights(kind, bits, granularity):
    model = ALL[kind]()
    onnx.checker.check_model(model, full_check=True)
    result = oc.compress(model, bits=bits, granularity=granularity, min_elements=64, verify=False)
    out = result.model
    onnx.checker.check_model(out, full_check=True)
    assert result.report.tensors, "something was compressed"
    reference = reference_with_decoded_weights(model, bits, granularity)
    for seed in (0, 1):
        feed = feed_for(model, seed)
        got, want, orig = run(out, feed), run(reference, feed), run(model, feed)
        for g, w, o in zip(got, want, orig, strict=True):
            np.testing.assert_allclose(g.astype(np.float64), w.astype(np.float64), rtol=1e-5, atol=1e-6)
            if bits == 8:
                rel = np.linalg.norm(g.astype(np.float64) - o) / max(np.linalg.norm(o.astype(np.float64)), 1e-12)
                assert rel < 0.05


def test_weight_shared_by_two_consumers_is_decoded_once():
    model = ALL["mul_add_einsum"]()
    out = oc.compress(model, min_elements=64, verify=False).model
    gathers = [n for n in out.graph.node if n.op_type == "Gather"]
    assert len(gathers) == 2  # S and W, once each
    assert not {i.name for i in out.graph.initializer} & {"S", "W"}


def test_constant_node_weights_are_replaced():
    out = oc.compress(ALL["constant_node"](), min_elements=64, verify=False).model
    assert not [n for n in out.graph.node if n.op_type == "Constant"]
    assert any(n.op_type == "Gather" and n.output for n in out.graph.node)


def test_if_branch_reads_the_decoded_outer_weight():
    model = ALL["if_branch"]()
    out = oc.compress(model, min_elements=64, verify=False).model
    assert "W" not in {i.name for i in out.graph.initializer}
    for cond in (True, False):
        feed = feed_for(model)
        feed["cond"] = np.array(cond)
        np.testing.assert_allclose(run(out, feed)[0], run(model, feed)[0], rtol=0.05, atol=0.05)


@pytest.mark.parametrize("options", [{"bits": 4}, {"bits": 2, "granularity": "channel"}])
def test_constants_inside_if_branches_are_decoded_in_the_main_graph(options):
    """Each branch's Constant weight leaves its branch; its decoder sits in the main graph
    (folded at load) and the branch reads it from the outer scope: both branches give the
    decoded weight's outputs."""
    from decoded import encoded_weights, substitute_decoded

    from onnxcompress.options import CodebookOptions, LowRankOptions

    model = ALL["if_branch_constants"]()
    sel = select_weights(model, SelectOptions(min_elements=64))
    assert sorted(w.name for w in sel.weights) == ["W_else", "W_then"]
    out = oc.compress(model, min_elements=64, verify=False, **options).model
    bodies = [a.g for n in out.graph.node if n.op_type == "If" for a in n.attribute]
    assert not [n for g in bodies for n in g.node if n.op_type == "Constant"]
    assert sum(n.op_type in ("Gather", "GatherElements") for n in out.graph.node) == 2
    codebook_o = CodebookOptions(bits=options["bits"], granularity=options.get("granularity", "tensor"))
    encoded = encoded_weights(sel.weights, "codebook", codebook_o, LowRankOptions())
    expected = substitute_decoded(model, [(e.site, e) for e in encoded])
    for cond in (True, False):
        feed = feed_for(model)
        feed["cond"] = np.array(cond)
        np.testing.assert_allclose(run(out, feed)[0], run(expected, feed)[0], rtol=1e-6, atol=1e-6)


def test_channel_axis_follows_the_consumer():
    model = ALL["gemm"]()  # transB=0: B is [K, N], output channels are columns
    sel = select_weights(model, SelectOptions(min_elements=64))
    assert sel.weights[0].channel_axis() == 1
    model = ALL["gemm_transB"]()
    assert select_weights(model, SelectOptions(min_elements=64)).weights[0].channel_axis() == 0
    assert select_weights(ALL["matmul"](), SelectOptions(min_elements=64)).weights[0].channel_axis() == 1


def test_report_sizes_metadata_and_verification(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save_model(ALL["conv"](), str(path))
    before = path.read_bytes()
    out = tmp_path / "out.onnx"
    result = oc.compress(path, out, bits=4, min_elements=64, report_json=tmp_path / "r.json")
    assert path.read_bytes() == before  # the input is never modified
    rep = result.report
    assert rep.verified and rep.outputs and rep.outputs[0].cosine > 0.9
    assert rep.file_bytes_after == out.stat().st_size < rep.file_bytes_before
    t = rep.tensors[0]
    assert (t.name, t.bits, t.consumers) == ("W", 4, ["Conv"])
    assert t.bytes_after == (16 * 8 * 9 * 4 + 7) // 8 + 16 * 4
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert meta["onnxcompress.method"] == "codebook"
    assert json.loads(meta["onnxcompress.tensors"])["W"]["bits"] == 4
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["tensors"][0]["name"] == "W" and data["ratio"] == pytest.approx(rep.ratio)


def test_model_metadata_and_ir_version_are_kept():
    model = ALL["matmul"]()
    model.metadata_props.add(key="character", value="abc")
    out = oc.compress(model, min_elements=64, verify=False).model
    meta = {p.key: p.value for p in out.metadata_props}
    assert meta["character"] == "abc"
    assert out.ir_version == model.ir_version
    assert [(o.domain, o.version) for o in out.opset_import] == [("", 17)]


def test_sub_byte_codebooks_need_opset_11():
    old = ALL["matmul"]()
    old.opset_import[0].version = 10
    old.ir_version = 5
    with pytest.raises(oc.CompressError, match="opset 11"):
        oc.compress(old, bits=4, min_elements=64, verify=False)
    # 8-bit tensor codebooks need only MatMulInteger (opset 10) and Gather
    out = oc.compress(old, bits=8, min_elements=64, verify=False).model
    assert out.opset_import[0].version == 10
    feed = feed_for(old)
    np.testing.assert_allclose(run(out, feed)[0], run(old, feed)[0], rtol=0.05, atol=0.05)


def test_opset_conversion_only_on_request():
    old = ALL["matmul"]()
    old.opset_import[0].version = 10
    old.ir_version = 5
    out = oc.compress(old, bits=4, min_elements=64, opset=13, verify=False).model
    assert out.opset_import[0].version == 13
    assert oc.compress(ALL["matmul"](), min_elements=64, verify=False).model.opset_import[0].version == 17


def test_kmeans_exact_and_binned_are_both_available():
    model = ALL["matmul"]()
    exact = oc.compress(model, min_elements=64, kmeans="exact", verify=False).report.tensors[0]
    binned = oc.compress(model, min_elements=64, kmeans="binned", verify=False).report.tensors[0]
    assert (exact.method, binned.method) == ("exact", "binned")
    assert exact.rel_error <= binned.rel_error * (1 + 1e-9)
    assert binned.rel_error <= exact.rel_error * 1.05


def test_include_exclude_and_skipped_reasons():
    model = ALL["mul_add_einsum"]()
    rep = oc.compress(model, min_elements=64, exclude="^S$", verify=False).report
    assert [t.name for t in rep.tensors] == ["W"]
    assert rep.skipped == [{"name": "S", "shape": [30, 40], "reason": "matched by --exclude"}]
    rep = oc.compress(model, min_elements=64, include="^S$", verify=False).report
    assert [t.name for t in rep.tensors] == ["S"]


def test_unknown_option_is_a_type_error():
    with pytest.raises(TypeError, match="unknown option"):
        oc.compress(ALL["matmul"](), bitz=4)


def test_inspect_counts_bytes_as_compress_stores_them():
    candidates, _ = oc.inspect(ALL["float16_float64"](), min_elements=64)
    by_name = {c.name: c for c in candidates}
    assert by_name["W16"].bytes == 48 * 40 * 2 and by_name["W16"].by_bits[8][0] == 48 * 40 + 256 * 2
    assert by_name["W64"].bytes == 48 * 40 * 8 and by_name["W64"].by_bits[4][0] == 48 * 40 // 2 + 16 * 8
    rep = oc.compress(ALL["float16_float64"](), bits=4, min_elements=64, verify=False).report
    assert {t.name: t.bytes_after for t in rep.tensors}["W64"] == by_name["W64"].by_bits[4][0]


def test_inspect_lists_bytes_and_errors_per_bit_width():
    candidates, _ = oc.inspect(ALL["conv"](), min_elements=64)
    c = candidates[0]
    errors = [c.by_bits[b][1] for b in range(1, 9)]
    assert all(a >= b for a, b in zip(errors, errors[1:], strict=False))  # more bits, less error
    assert c.by_bits[8][0] == 16 * 8 * 9 + 256 * 4
    # the 4-bit prediction equals what compress does
    got = oc.compress(ALL["conv"](), bits=4, min_elements=64, verify=False).report.tensors[0].rel_error
    assert got == pytest.approx(c.by_bits[4][1], rel=1e-6)


@pytest.mark.parametrize(
    "bits,opset,ir,target,expected",
    [
        (4, 21, 10, "1.24.4", "uint4"),
        (2, 25, 11, "1.24.4", "uint2"),
        (4, 21, 10, "1.16", "planes"),  # onnxruntime 1.16-1.22 cannot Cast uint4
        (4, 17, 8, "1.24.4", "planes"),  # uint4 needs opset 21
        (3, 21, 10, "1.24.4", "planes"),  # no native 3-bit type
    ],
)
def test_native_sub_byte_indices_when_opset_and_target_allow(bits, opset, ir, target, expected):
    model = matmul(opset, ir)
    result = oc.compress(model, bits=bits, min_elements=64, target_ort=target)
    assert result.report.tensors[0].indices == expected
    onnx.checker.check_model(result.model, full_check=True)
    types = {i.data_type for i in result.model.graph.initializer}
    assert (onnx.TensorProto.UINT4 in types) == (expected == "uint4")
    assert (onnx.TensorProto.UINT2 in types) == (expected == "uint2")
    assert any(n.op_type == "BitShift" for n in result.model.graph.node) == (expected == "planes")
    meta = json.loads({p.key: p.value for p in result.model.metadata_props}["onnxcompress.tensors"])
    assert meta["W"]["indices"] == expected
    reference = reference_with_decoded_weights(model, bits, "tensor")
    feed = feed_for(model)
    np.testing.assert_array_equal(run(result.model, feed)[0], run(reference, feed)[0])
    index_bytes = sum(len(i.raw_data) for i in result.model.graph.initializer if "indices" in i.name)
    assert index_bytes == (48 * 40 * bits + 7) // 8


def test_a_tensor_that_would_grow_is_left_alone():
    model = matmul_chain("A", (48, 1000), "B", (1000, 8))
    # per output channel at 8 bits: A has 1000 columns of 48 values (a 48-level codebook each,
    # bigger than the column itself); B has 8 columns of 1000 values
    rep = oc.compress(model, bits=8, granularity="channel", min_elements=64).report
    assert [t.name for t in rep.tensors] == ["B"]
    assert rep.skipped[0]["name"] == "A" and "not smaller as a codebook" in rep.skipped[0]["reason"]
    assert all(t.bytes_after < t.bytes_before for t in rep.tensors)
    with pytest.raises(oc.CompressError, match="no weight gets smaller"):
        oc.compress(model, bits=8, granularity="channel", min_elements=64, include="^A$", verify=False)


def test_scalar_inputs_are_synthesized_as_arrays():
    """A model with a scalar bool input (an If's condition) verifies without --inputs: the
    synthesized scalar is a 0-d array, which onnxruntime takes (a numpy bool it refused)."""
    model = ALL["if_branch"]()
    assert [len(i.type.tensor_type.shape.dim) for i in model.graph.input][0] == 0
    result = oc.compress(model, min_elements=64)
    assert result.report.verified and result.report.outputs[0].rel_l2 < 0.05


def test_binned_path_works_in_chunks_with_the_same_result(monkeypatch):
    """The binned k-means and the weight error go through a weight CHUNK values at a time (a
    weight mapped from its file is never copied whole); the chunk size changes nothing."""
    import onnxcompress.encoding.codebook as encode
    from onnxcompress.encoding.codebook import codebook_error, relative_error

    x = np.random.default_rng(3).standard_t(4, size=(300, 170)).astype(np.float32)
    opts = CodebookOptions(bits=5, kmeans="binned")
    whole = encode_codebook(x, opts)
    monkeypatch.setattr(encode, "CHUNK", 997)
    parts = encode_codebook(x, opts)
    np.testing.assert_allclose(parts.centroids, whole.centroids, rtol=1e-12)
    np.testing.assert_array_equal(parts.labels, whole.labels)
    assert parts.rel_error == pytest.approx(whole.rel_error, rel=1e-12)
    assert codebook_error(x, parts) == pytest.approx(relative_error(x, parts.decoded()), rel=1e-12)


@pytest.mark.parametrize("kmeans", ["exact", "binned"])
def test_codebook_carries_the_curve_of_its_own_run(kmeans):
    """A per-tensor codebook's sse_by_k is sse_curve's (the planner reads its options from
    it), and its entry at k is what that codebook's clustering really costs."""
    from onnxcompress.encoding.codebook import sse_curve

    rng = np.random.default_rng(5)
    x = rng.standard_t(5, size=(120, 90)).astype(np.float32)
    importance = rng.uniform(0.1, 2.0, size=(120, 1)) * np.ones((1, 90))
    for imp in (None, importance):
        cb = encode_codebook(x, CodebookOptions(bits=6, kmeans=kmeans), importance=imp)
        curve, _ = sse_curve(x, 64, kmeans, imp)
        assert cb.sse_by_k is not None and len(cb.sse_by_k) == 64
        np.testing.assert_allclose(cb.sse_by_k, curve, rtol=1e-9)
        w = np.ones(x.shape) if imp is None else imp
        sse = float(np.sum(w * (cb.decoded().astype(np.float64) - x) ** 2))
        # exact: the codebook is the curve's optimum; binned: the Lloyd polish only lowers it
        assert sse <= cb.sse_by_k[-1] * (1 + 1e-6) and sse >= cb.sse_by_k[-1] * (0.99 if kmeans == "binned" else 1 - 1e-6)


@pytest.mark.parametrize("path", ["exact", "binned"])
def test_a_per_channel_codebook_carries_the_summed_curve_of_its_channels(path, monkeypatch):
    """Layout channel: sse_by_k sums each channel's optimal curve (exact per channel; binned
    row by row for long channels, within the binned promise), and its entry at k is what the
    codebook's clustering costs."""
    import onnxcompress.encoding.codebook as codebook
    from onnxcompress.encoding.codebook import sse_curve

    if path == "binned":
        monkeypatch.setattr(codebook, "CHANNEL_EXACT_WORK_LIMIT", 100)  # every channel here is "long"
    rng = np.random.default_rng(6)
    x = rng.standard_t(5, size=(12, 400)).astype(np.float32)
    importance = rng.uniform(0.1, 2.0, size=(1, 400)) * np.ones((12, 1))
    for imp in (None, importance):
        cb = encode_codebook(x, CodebookOptions(bits=5, granularity="channel"), axis=0, importance=imp)
        assert cb.method == path
        optimum = sum(sse_curve(x[i], 32, "exact", None if imp is None else imp[i])[0] for i in range(12))
        assert cb.sse_by_k is not None
        np.testing.assert_allclose(cb.sse_by_k, optimum, rtol=1e-9 if path == "exact" else 1e-4)
        w = np.ones(x.shape) if imp is None else imp
        sse = float(np.sum(w * (cb.decoded().astype(np.float64) - x) ** 2))
        assert optimum[-1] * (1 - 1e-6) <= sse <= optimum[-1] * (1 + (1e-6 if path == "exact" else 1e-4))


def test_large_models_are_verified_without_folding(monkeypatch):
    """Past UNFOLDED_VERIFY_BYTES the compressed model is verified with graph optimizations
    off: the same outputs, without the load-time folding that holds every decoded weight."""
    import onnxcompress.pipeline.stages as pipeline

    model = ALL["conv"]()
    folded = oc.compress(model, min_elements=64, bits=4).report
    monkeypatch.setattr(pipeline, "UNFOLDED_VERIFY_BYTES", 0)
    unfolded = oc.compress(model, min_elements=64, bits=4).report
    assert unfolded.verified and unfolded.verified_unfolded and not folded.verified_unfolded
    assert unfolded.outputs[0].rel_l2 == pytest.approx(folded.outputs[0].rel_l2, rel=1e-5)


@pytest.mark.parametrize(
    "options",
    [{"bits": 4}, {"method": "lowrank", "rank": 4}, {"method": "auto"}, {"max_error": 0.02}],
    ids=["codebook", "lowrank", "auto", "plan"],
)
def test_outputs_keep_their_declared_types_when_value_info_repeats_them(options):
    """Quantization tools leave a shapeless value_info entry beside a graph output; the
    compressed file once took that type, lost the output's shape and failed the full check."""
    model = matmul_chain("A", (64, 48), "B", (48, 32))
    for io in list(model.graph.input) + list(model.graph.output):
        model.graph.value_info.append(onnx.helper.make_tensor_value_info(io.name, io.type.tensor_type.elem_type, None))
    onnx.checker.check_model(model, full_check=True)
    out = oc.compress(model, min_elements=64, **options).model
    onnx.checker.check_model(out, full_check=True)
    assert [v.type for v in out.graph.output] == [v.type for v in model.graph.output]
    assert [v.type for v in out.graph.input] == [v.type for v in model.graph.input]


@pytest.mark.parametrize("kind", ["matmul", "conv", "gemm", "lstm", "embedding"])
def test_opset_conversion_gives_the_decoded_weights_outputs(kind):
    """--opset 21 converts the graph, then stores 4-bit indices for that opset: the outputs are
    the original's with its weights decoded, as the unconverted model computes them."""
    model = ALL[kind]()
    out = oc.compress(model, bits=4, min_elements=64, opset=21, verify=False).model
    assert out.opset_import[0].version == 21
    reference = reference_with_decoded_weights(model, 4, "tensor")
    for seed in (0, 1):
        feed = feed_for(model, seed)
        for g, w in zip(run(out, feed), run(reference, feed), strict=True):
            np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("stored,weights", [("float32", np.float16), ("float16", np.float32)])
def test_codebook_dtype_is_how_levels_are_stored_not_what_the_model_computes(stored, weights):
    from models import FACTORABLE

    model = FACTORABLE["matmul_fp16"]() if weights == np.float16 else ALL["matmul"]()
    out = oc.compress(model, min_elements=64, codebook_dtype=stored, verify=False).model
    (codebook,) = [t for t in out.graph.initializer if "::codebook" in t.name]
    assert codebook.data_type == onnx.helper.np_dtype_to_tensor_dtype(np.dtype(stored))
    (site,) = select_weights(model, SelectOptions(min_elements=64)).weights
    cb = encode_codebook(site.array, CodebookOptions(codebook_dtype=stored), site.channel_axis())
    reference = substitute_decoded(model, [(site, cb)])
    feed = feed_for(model)
    (got,), (want,) = run(out, feed), run(reference, feed)
    assert got.dtype == want.dtype == run(model, feed)[0].dtype
    np.testing.assert_allclose(got, want, rtol=1e-3 if weights == np.float16 else 1e-5, atol=1e-6)


def test_seed_picks_the_synthesized_inputs(tmp_path):
    """With no inputs given, verification and compare_models run on inputs drawn from `seed`:
    the same seed, the same numbers; another seed, others."""
    src = tmp_path / "m.onnx"
    onnx.save_model(ALL["conv"](), str(src))
    out = tmp_path / "c.onnx"
    report = oc.compress(src, out, bits=3, min_elements=64, seed=7).report
    same = oc.compare_models(src, out, seed=7)
    other = oc.compare_models(src, out, seed=8)
    assert [d.to_dict() for d in same] == [d.to_dict() for d in report.outputs]
    assert same[0].rel_l2 != other[0].rel_l2


def test_run_models_keeps_both_models_outputs_for_every_feed(tmp_path):
    model = ALL["conv"]()
    src, out = tmp_path / "m.onnx", tmp_path / "c.onnx"
    onnx.save_model(model, str(src))
    oc.compress(src, out, bits=3, min_elements=64, verify=False)
    feeds = [feed_for(model, seed) for seed in range(3)]
    both = oc.run_models(src, out, inputs=feeds)
    original, compressed = both.output("y")
    assert original.dtype == compressed.dtype == np.float64
    np.testing.assert_array_equal(original, np.concatenate([run(model, f)[0].ravel() for f in feeds]))
    np.testing.assert_array_equal(compressed, np.concatenate([run(onnx.load(str(out)), f)[0].ravel() for f in feeds]))
    assert both.diffs == oc.compare_models(src, out, inputs=feeds)
    assert both.diffs[0].rel_l2 == pytest.approx(np.linalg.norm(compressed - original) / np.linalg.norm(original), rel=1e-9)


def test_keep_outputs_keeps_the_verification_outputs_of_both_models():
    model = ALL["conv"]()
    feeds = [feed_for(model, seed) for seed in range(2)]
    kept = oc.compress(model, bits=3, min_elements=64, calibration=feeds, keep_outputs=True)
    assert oc.compress(model, bits=3, min_elements=64, calibration=feeds).comparison is None
    both = kept.comparison
    assert both is not None and both.diffs == kept.report.outputs
    for k, feed in enumerate(feeds):
        np.testing.assert_array_equal(both.original[k][0], run(model, feed)[0])
        np.testing.assert_array_equal(both.compressed[k][0], run(kept.model, feed)[0])


def test_constants_inside_if_branches_can_be_float16_and_planned():
    """The float16 rewrite drops a branch's Constant too (its Cast sits in the main graph), and
    a plan on the model builds and meets its target on both branches' inputs."""
    from onnxcompress.encoding.encoded import Encoder
    from onnxcompress.options import CodebookOptions
    from onnxcompress.pipeline.build import build
    from onnxcompress.recipe import AsFloat16, Recipe

    model = ALL["if_branch_constants"]()
    sites = {w.name: w for w in select_weights(model, SelectOptions(min_elements=64)).weights}
    half = build(model, Recipe({name: AsFloat16() for name in sites}), sites, Encoder(CodebookOptions())).model
    bodies = [a.g for n in half.graph.node if n.op_type == "If" for a in n.attribute]
    assert not [n for g in bodies for n in g.node if n.op_type == "Constant"]
    feeds = []
    for cond in (True, False):
        feed = feed_for(model)
        feed["cond"] = np.array(cond)
        np.testing.assert_allclose(run(half, feed)[0], run(model, feed)[0], rtol=1e-2, atol=1e-2)
        feeds.append(feed)
    planned = oc.compress(model, min_elements=64, max_error=0.02, calibration=feeds)
    assert planned.report.plan["measured"] <= 0.02
