"""Token rows at padded positions (runtime/outputs.py: attention masks): an encoder's token
vectors at positions its attention mask zeroes are computed from padding and read by nothing
that honours the mask, so the task measure leaves them out; every other row still counts."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxcompress as oc
from onnxcompress.runtime.outputs import OutputKind, attention_masks, output_kinds
from onnxcompress.runtime.verify import compare

from models import F, make_model
from oracles import ort_outputs

VOCAB, WIDTH, BATCH, SEQ = 512, 32, 6, 10
I64 = TensorProto.INT64


def encoder(extra_mask: bool = False, position_bias: bool = False):
    """ids, mask [batch, seq] -> one attention layer whose scores get (1 - mask) * -10000, then a
    LayerNormalization: token vectors [batch, seq, WIDTH]. The padding id 0 embeds far from the
    other tokens (20 + noise), so a codebook blurs its rows most. `extra_mask`: a second input
    added to the mask; `position_bias`: an input of positions whose table values join the bias."""
    rng = np.random.default_rng(7)
    nodes = [
        helper.make_node("Gather", ["E", "ids"], ["x"]),
        helper.make_node("MatMul", ["x", "Wq"], ["q"]),
        helper.make_node("MatMul", ["x", "Wk"], ["k"]),
        helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["q", "kt"], ["scores"]),
        helper.make_node("Cast", ["mask"], ["m"], to=TensorProto.FLOAT),
        helper.make_node("Sub", ["one", "m"], ["pad"]),
        helper.make_node("Mul", ["pad", "neg"], ["bias"]),
        helper.make_node("Unsqueeze", ["bias", "axis1"], ["bias3"]),
        helper.make_node("Add", ["scores", "bias3"], ["masked"]),
        helper.make_node("Softmax", ["masked"], ["p"], axis=-1),
        helper.make_node("MatMul", ["p", "x"], ["ctx"]),
        helper.make_node("Add", ["ctx", "x"], ["res"]),
        helper.make_node("LayerNormalization", ["res", "g", "b"], ["tokens"], axis=-1),
    ]
    table = rng.normal(size=(VOCAB, WIDTH))
    table[0] = 20.0 + rng.normal(size=WIDTH) * 0.3
    inits = [
        ("E", table.astype(np.float32)),
        ("Wq", (rng.normal(size=(WIDTH, WIDTH)) / np.sqrt(WIDTH)).astype(np.float32)),
        ("Wk", (rng.normal(size=(WIDTH, WIDTH)) / np.sqrt(WIDTH)).astype(np.float32)),
        ("one", np.array(1.0, np.float32)),
        ("neg", np.array(-10000.0, np.float32)),
        ("axis1", np.array([1], np.int64)),
        ("g", np.ones(WIDTH, np.float32)),
        ("b", np.zeros(WIDTH, np.float32)),
    ]
    inputs = [("ids", I64, ["batch", "seq"]), ("mask", I64, ["batch", "seq"])]
    if extra_mask:  # a second mask-like input, added into the scores the same way
        nodes[5:5] = [helper.make_node("Add", ["mask", "mask2"], ["both"])]
        nodes[6].input[0] = "both"
        inputs.append(("mask2", I64, ["batch", "seq"]))
    if position_bias:  # a relative-position bias: the positions index a table
        at = next(i for i, n in enumerate(nodes) if n.output[0] == "masked")
        nodes[at].input[1] = "both_bias"
        nodes[at:at] = [
            helper.make_node("Gather", ["P", "positions"], ["pos_bias"]),
            helper.make_node("Unsqueeze", ["pos_bias", "axis1"], ["pos_bias3"]),
            helper.make_node("Add", ["bias3", "pos_bias3"], ["both_bias"]),
        ]
        inputs.append(("positions", I64, ["batch", "seq"]))
        inits.append(("P", np.linspace(-1, 1, SEQ).astype(np.float32)))
    return make_model(nodes, inputs, [("tokens", F, ["batch", "seq", WIDTH])], inits)


def padded_feed(seed: int = 0) -> dict[str, np.ndarray]:
    """Sentences of 3..SEQ tokens, padded with id 0 and mask 0."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, SEQ + 1, size=BATCH)
    mask = (np.arange(SEQ)[None, :] < lengths[:, None]).astype(np.int64)
    ids = np.where(mask == 1, rng.integers(1, VOCAB, size=(BATCH, SEQ)), 0)
    return {"ids": ids, "mask": mask}


def test_an_integer_input_added_to_the_scores_before_a_softmax_is_an_attention_mask():
    model = encoder()
    assert attention_masks(model) == {("batch", "seq"): "mask"}  # the ids reach a Gather's indices: not a mask
    kind = output_kinds(model)["tokens"]
    assert kind == OutputKind("embedding", mask="mask")
    assert kind.describe() == "embedding (rows where mask is 0 not measured)"


def test_position_ids_gathered_into_the_scores_bias_are_no_mask():
    """A relative-position bias: an integer [batch, seq] input whose values index a table added
    to the scores. It reaches the Softmax, but through a Gather's indices, as ids do."""
    assert attention_masks(encoder(position_bias=True)) == {("batch", "seq"): "mask"}


def test_two_inputs_that_could_be_the_mask_leave_every_row_measured():
    assert attention_masks(encoder(extra_mask=True)) == {}
    assert output_kinds(encoder(extra_mask=True))["tokens"].mask is None


def test_an_override_keeps_the_mask():
    kind = output_kinds(encoder(), {"tokens": "dense"})["tokens"]
    assert kind.chosen and kind.kind == "dense" and kind.mask == "mask"


@pytest.mark.parametrize("kind", ["embedding", "dense"])
def test_padded_rows_do_not_count_and_every_kept_row_does(kind):
    feed = padded_feed()
    rng = np.random.default_rng(3)
    a = rng.normal(size=(BATCH, SEQ, WIDTH))
    pad = feed["mask"] == 0
    noisy_pads = a + pad[..., None] * rng.normal(size=a.shape) * 5.0  # padded rows turned around
    measured = OutputKind(kind, mask="mask")
    (diff,) = compare(["o"], [[a]], [[noisy_pads]], {"o": measured}, [feed])
    assert diff.task == 0.0 and diff.rel_l2 > 0.5  # the plain relative L2 still sees every row
    (unmasked,) = compare(["o"], [[a]], [[noisy_pads]], {"o": measured})  # without the feeds: all rows
    assert unmasked.task > 0.5
    kept_row = a.copy()
    b, t = np.argwhere(~pad)[-1]
    kept_row[b, t] += rng.normal(size=WIDTH) * 0.1
    (diff,) = compare(["o"], [[a]], [[kept_row]], {"o": measured}, [feed])
    assert diff.task > 0.01


def test_a_feed_whose_mask_has_another_shape_measures_every_row():
    a = np.ones((2, 3, 4))
    b = a.copy()
    b[1, 2] = -1.0
    (diff,) = compare(["o"], [[a]], [[b]], {"o": OutputKind("embedding", mask="mask")}, [{"mask": np.zeros((2, 5))}])
    assert diff.task == pytest.approx(2.0)  # the reversed row counts


def with_padding_row_changed():
    """The encoder with the padding id's embedding reversed: only padded rows change."""
    model = encoder()
    table = next(t for t in model.graph.initializer if t.name == "E")
    values = numpy_helper.to_array(table).copy()
    values[0] *= -3.0
    table.CopyFrom(numpy_helper.from_array(values, "E"))
    return model


def test_comparing_models_leaves_padded_rows_out_in_onnxruntime():
    feeds = [padded_feed(s) for s in range(2)]
    (diff,) = oc.compare_models(encoder(), with_padding_row_changed(), inputs=feeds)
    assert diff.task == 0.0 and diff.rel_l2 > 0.1
    unmasked = [{**f, "mask": np.ones_like(f["mask"])} for f in feeds]
    (whole,) = oc.compare_models(encoder(), with_padding_row_changed(), inputs=unmasked)
    assert whole.task > 0.1  # unmasked, the padding ids are tokens like the others, and count


def test_the_planners_measure_reads_the_masks_of_the_feeds_it_is_given():
    from onnxcompress.pipeline.stages import _plan_metric

    feeds = [padded_feed(s) for s in range(2)]
    ref = ort_outputs(encoder(), feeds)
    cand = ort_outputs(with_padding_row_changed(), feeds)
    measure = _plan_metric("task", ["tokens"], output_kinds(encoder()))
    assert measure(ref, cand, feeds) == 0.0
    assert measure(ref, cand, [{**f, "mask": np.ones_like(f["mask"])} for f in feeds]) > 0.1


def test_a_plan_is_held_to_its_target_on_the_unpadded_rows_in_onnxruntime(tmp_path):
    model = encoder()
    feeds = [padded_feed(s) for s in range(4)]
    r = oc.compress(model, tmp_path / "m.onnx", min_elements=256, max_error=0.01, calibration=feeds)
    (out,) = r.report.outputs
    assert out.kind == "embedding (rows where mask is 0 not measured)"
    ref = [outs[0] for outs in ort_outputs(model, feeds)]
    got = [outs[0] for outs in ort_outputs(tmp_path / "m.onnx", feeds)]
    kept = [f["mask"] == 1 for f in feeds]
    pick = lambda outs: np.concatenate([x[m] for x, m in zip(outs, kept, strict=True)])  # noqa: E731
    on_kept = _similarity_shift(pick(ref), pick(got))
    on_all = _similarity_shift(np.concatenate(ref).reshape(-1, WIDTH), np.concatenate(got).reshape(-1, WIDTH))
    assert out.task == pytest.approx(on_kept, rel=1e-3, abs=1e-6) and on_kept <= 0.01
    assert on_all > 1.5 * on_kept  # the padded rows: the worst, and let go


def _similarity_shift(a: np.ndarray, b: np.ndarray) -> float:
    """max over rows i, j of |cos(b_i, a_j) - cos(a_i, a_j)|, from the two matrices of cosines."""
    cos = lambda x, y: (x @ y.T) / np.outer(np.linalg.norm(x, axis=1), np.linalg.norm(y, axis=1))  # noqa: E731
    return float(np.abs(cos(b, a) - cos(a, a)).max())
