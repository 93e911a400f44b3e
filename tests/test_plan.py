"""The planner: options per tensor, the equal-slope ladder against brute force, and targets
met (or plainly refused) end to end."""

from __future__ import annotations

import itertools

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from models import ALL, F, make_model, matmul_chain
from onnx import helper

import onnxcompress as oc
from onnxcompress.io.select import WeightSite
from onnxcompress.planning.candidates import tensor_options
from onnxcompress.planning.ladder import (
    Option,
    Plan,
    PlanTrace,
    TensorOptions,
    ladder,
    lower_hull,
    search_error,
    within_size,
)
from onnxcompress.recipe import AsCodebook, Keep


def site(name: str, shape=(64, 32), seed=0) -> WeightSite:
    arr = np.random.default_rng(seed).normal(size=shape).astype(np.float32)
    return WeightSite(name, arr, onnx.TensorProto.FLOAT, "initializer", [])


def options_of(s: WeightSite, importance=None):
    from onnxcompress.encoding.codebook import encode_codebook
    from onnxcompress.options import CodebookOptions

    curve = encode_codebook(s.array, CodebookOptions(bits=8), importance=importance).sse_by_k
    return tensor_options(s, importance, s.array.nbytes, curve)


def test_options_cover_every_bit_width_and_shrink_with_bits():
    s = site("W", (256, 128))
    opts = options_of(s)
    assert isinstance(opts.options[-1].choice, Keep) and opts.options[-1].distortion == 0  # keep: the largest
    sizes = [o.bytes for o in opts.options]
    dists = [o.distortion for o in opts.options]
    assert sizes == sorted(sizes) and dists == sorted(dists, reverse=True)
    tensor = [o for o in opts.options if isinstance(o.choice, AsCodebook) and o.choice.layout == "tensor"]
    assert tensor, "the hull keeps per-tensor options"
    # distortion of 8 bits per tensor matches an actual encoding's relative weighted error
    from onnxcompress.encoding.codebook import encode_codebook
    from onnxcompress.options import CodebookOptions

    eight = next(o for o in opts.options if o.choice == AsCodebook(8, "tensor"))
    cb = encode_codebook(s.array, CodebookOptions(bits=8, kmeans="exact"))
    assert eight.distortion == pytest.approx(cb.rel_error**2, rel=1e-3)


@settings(max_examples=80, deadline=None)
@given(st.integers(2, 120), st.floats(1e-3, 1.0), st.floats(0.05, 20.0), st.floats(0.3, 3.0), st.integers(0, 2**31 - 1))
@example(74, 0.01, 1.15, 1.0, 0)  # MiniLM-like: 74 plans, the prediction 15% low
@example(74, 0.01, 0.8, 1.02, 1)
def test_error_search_finds_the_smallest_plan_that_meets_the_target(n, target, bias, curvature, seed):
    """Whatever the prediction's bias (measured / predicted) and shape, the search returns the
    first plan on the ladder whose measured error meets the target, in few measurements: with
    a fair prediction in 1-3 runs, and never more than twice bisection's."""
    rng = np.random.default_rng(seed)
    predicted = np.sort(rng.uniform(1e-4, 1.0, n))[::-1]  # plans grow: errors fall
    measured = bias * predicted**curvature
    plans = [Plan({"w": Option(AsCodebook(1), bytes=i + 1)}, i + 1, float(p * p)) for i, p in enumerate(predicted)]
    runs = []

    def measure(p: Plan) -> float:
        runs.append(p.bytes)
        return float(measured[p.bytes - 1])

    best = search_error(plans, target, measure, PlanTrace())
    meets = np.flatnonzero(measured <= target)
    assert (best is None) == (meets.size == 0)
    if best is not None:
        assert best.bytes == meets[0] + 1 and best.measured == measured[meets[0]]
    assert len(runs) == len(set(runs)) and len(runs) <= 2 * (int(np.log2(n)) + 2)
    if bias == pytest.approx(1.0, abs=0.2) and curvature == pytest.approx(1.0, abs=0.05):
        assert len(runs) <= 3  # a fair prediction


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 1000), st.floats(0, 1)), min_size=1, max_size=12))
def test_lower_hull_is_convex_and_pareto(points):
    options = [Option(AsCodebook(b), size, d) for b, (size, d) in enumerate(points, start=1)]
    hull = lower_hull(options)
    assert [o.bytes for o in hull] == sorted(o.bytes for o in hull)
    assert all(a.distortion > b.distortion for a, b in itertools.pairwise(hull))
    for a, b, c in zip(hull, hull[1:], hull[2:], strict=False):  # slopes flatten: convex
        assert (a.distortion - b.distortion) / (b.bytes - a.bytes) >= (b.distortion - c.distortion) / (c.bytes - b.bytes) - 1e-12
    for o in options:  # every option is on or above the hull's lower envelope
        assert hull[0].bytes <= o.bytes
        right = next((h for h in hull if h.bytes >= o.bytes), None)
        if right is None:
            assert hull[-1].distortion <= o.distortion
            continue
        left = max((h for h in hull if h.bytes <= o.bytes), key=lambda h: h.bytes)
        t = 0.0 if right.bytes == left.bytes else (o.bytes - left.bytes) / (right.bytes - left.bytes)
        assert left.distortion + t * (right.distortion - left.distortion) <= o.distortion + 1e-9


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(2, 4))
def test_ladder_plans_are_optimal_for_their_size(seed, n_tensors):
    """Every plan on the ladder has the least total distortion among all combinations of hull
    options that fit in its bytes, up to the Lagrangian's convexification: never worse than
    the best combination at or below its size."""
    rng = np.random.default_rng(seed)
    tensors = []
    for t in range(n_tensors):
        sizes = np.sort(rng.integers(10, 1000, size=4))
        dists = np.sort(rng.uniform(0, 1, size=4))[::-1]
        opts = [Option(AsCodebook(i + 1), int(s), float(d)) for i, (s, d) in enumerate(zip(sizes, dists, strict=True))]
        tensors.append(TensorOptions(site(f"w{t}"), lower_hull(opts + [Option(Keep(), bytes=2000, distortion=0.0)])))
    plans = ladder(tensors)
    assert plans[0].bytes == sum(t.options[0].bytes for t in tensors)  # everything at its smallest
    assert not plans[-1].compressed()  # ... up to everything kept
    combos = [(sum(o.bytes for o in c), sum(o.distortion for o in c)) for c in itertools.product(*(t.options for t in tensors))]
    for p in plans:
        best = min(d for b, d in combos if b <= p.bytes)
        assert p.distortion <= best + 1e-9
    budget = (plans[0].bytes + plans[-1].bytes) // 2
    fitting = within_size(tensors, plans, budget)
    assert fitting and all(p.bytes <= budget for p in fitting)
    assert [p.distortion for p in fitting] == sorted(p.distortion for p in fitting)
    # the slope bisection only adds plans: never a worse fit than the ladder's own
    assert fitting[0].distortion <= min(p.distortion for p in plans if p.bytes <= budget)


def ten_close_tensors() -> list[TensorOptions]:
    """Ten tensors whose 1-bit -> 2-bit slopes all lie within 0.3% of each other: the ladder's
    grid steps over all ten at once (50 -> 100 bytes), so only bisection finds the plans between."""
    return [
        TensorOptions(
            site(f"w{i}", (4, 4)),
            [Option(AsCodebook(1), 5, 4.0), Option(AsCodebook(2), 10, 1 + 0.001 * i), Option(Keep(), bytes=20, distortion=0.0)],
        )
        for i in range(10)
    ]


def test_size_bisection_finds_the_plans_the_ladder_steps_over():
    tensors = ten_close_tensors()
    plans = ladder(tensors)
    assert [p.bytes for p in plans if p.bytes <= 100] == [50, 100]
    combos = [(sum(o.bytes for o in c), sum(o.distortion for o in c)) for c in itertools.product(*(t.options for t in tensors))]
    for budget in (62, 75, 95):
        best = within_size(tensors, plans, budget)[0]
        optimum = min(d for b, d in combos if b <= budget)  # brute force over all 3^10 combinations
        assert best.bytes == budget - budget % 5 and best.distortion == pytest.approx(optimum)


def test_error_refinement_finds_the_plans_the_ladder_steps_over():
    tensors = ten_close_tensors()
    plans = ladder(tensors)
    target = np.sqrt(5 * 4.0 + sum(1 + 0.001 * i for i in range(5))) * 1.0001  # five tensors at 2 bits
    measure = lambda p: float(np.sqrt(p.distortion))  # noqa: E731
    unrefined = search_error(plans, target, measure, PlanTrace(), tensors, refine=0)
    refined = search_error(plans, target, measure, PlanTrace(), tensors)
    assert unrefined.bytes == 100 and refined.bytes == 75 and refined.measured <= target


def test_max_error_is_met_on_the_calibration_inputs_and_beats_uniform_8_bits():
    model = matmul_chain("A", (256, 192), "B", (192, 64))
    x = np.random.default_rng(0).normal(size=(40, 256)).astype(np.float32)
    r = oc.compress(model, min_elements=64, max_error=0.02, calibration={"x": x})
    assert r.report.plan["measured"] <= 0.02
    assert max(d.rel_l2 for d in r.report.outputs) <= 0.02  # the final verification agrees
    uniform = oc.compress(model, min_elements=64, bits=8, verify=False)
    assert r.report.file_bytes_after < uniform.report.file_bytes_after
    # the report's estimate of the 8-bit size, which it compares the plan with
    assert r.report.plan["eight_bit_bytes"] == pytest.approx(uniform.report.file_bytes_after, rel=0.02)
    assert r.report.plan["candidates"], "the error target was measured"
    onnx.checker.check_model(r.model, full_check=True)


@pytest.mark.parametrize("metric", ["cosine", "max-abs"])
def test_other_metrics(metric):
    model = matmul_chain("A", (256, 192), "B", (192, 64))
    x = np.random.default_rng(1).normal(size=(40, 256)).astype(np.float32)
    target = 1e-4 if metric == "cosine" else 0.5
    r = oc.compress(model, min_elements=64, max_error=target, metric=metric, calibration={"x": x})
    d = r.report.outputs[0]
    assert (1 - d.cosine if metric == "cosine" else d.max_abs) <= target


def test_a_user_metric_drives_the_plan():
    model = matmul_chain("A", (256, 192), "B", (192, 64))
    x = np.random.default_rng(2).normal(size=(40, 256)).astype(np.float32)
    calls = []

    def mean_abs(original, compressed):
        calls.append(1)
        return float(np.mean(np.abs(original[0]["y"] - compressed[0]["y"])))

    r = oc.compress(model, min_elements=64, max_error=0.5, metric=mean_abs, calibration={"x": x})
    assert calls and r.report.plan["measured"] <= 0.5
    y = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    got = ort.InferenceSession(r.model.SerializeToString()).run(None, {"x": x})[0]
    assert np.mean(np.abs(got - y)) <= 0.5


def test_target_size_and_ratio():
    model = matmul_chain("A", (256, 192), "B", (192, 64))
    size = model.ByteSize()
    r = oc.compress(model, min_elements=64, ratio=6.0, verify=False)
    assert r.model.ByteSize() <= size / 6
    r = oc.compress(model, min_elements=64, target_size=size / 5 / 1e6, verify=False)
    assert r.model.ByteSize() <= size / 5
    assert r.report.plan["measured"] is not None  # the error of a size target is measured too


def test_unreachable_targets_say_so_and_fail():
    model = matmul_chain("A", (256, 192), "B", (192, 64))
    with pytest.raises(oc.TargetError, match="cannot meet --max-error 1e-09"):
        oc.compress(model, min_elements=64, max_error=1e-9)
    with pytest.raises(oc.TargetError, match="cannot meet --ratio 100"):
        oc.compress(model, min_elements=64, ratio=100.0)


def test_plan_options_are_validated():
    with pytest.raises(oc.CompressError, match="two targets"):
        oc.compress(ALL["matmul"](), max_error=0.1, ratio=4.0)
    with pytest.raises(oc.CompressError, match="--ratio must be a number above 1"):
        oc.compress(ALL["matmul"](), ratio=0.5)
    with pytest.raises(oc.CompressError, match="drop --method"):
        oc.compress(ALL["matmul"](), max_error=0.1, method="lowrank")
    with pytest.raises(oc.CompressError, match="--metric must be one of"):
        oc.compress(ALL["matmul"](), max_error=0.1, metric="psnr")


def test_low_opsets_plan_with_8_bits_only():
    model = ALL["matmul"](opset=9)
    r = oc.compress(model, min_elements=64, ratio=2.0, verify=False)
    assert {t.describe() for t in r.report.tensors} <= {"8 tensor", "float16"}


def test_float16_is_an_option_between_codebooks_and_float32():
    """A target tighter than 8-bit codebooks can reach: some tensors go to float16 (read
    from the table of float16's values, which onnxruntime folds at load)."""
    model = matmul_chain("A", (256, 192), "B", (192, 64))
    x = np.random.default_rng(5).normal(size=(40, 256)).astype(np.float32)
    r = oc.compress(model, min_elements=64, max_error=5e-4, calibration={"x": x})
    kinds = {t.name: t.encoding for t in r.report.tensors}
    assert "float16" in kinds.values()
    assert any(i.name.startswith("onnxcompress::float16") for i in r.model.graph.initializer)
    assert not any(n.op_type == "Cast" for n in r.model.graph.node)
    assert r.report.plan["measured"] <= 5e-4
    meta = {p.key: p.value for p in r.model.metadata_props}
    assert '"dtype":"float16","values":"table"' in meta["onnxcompress.tensors"]


def test_the_plan_takes_a_pair_where_the_weight_is_low_rank():
    from models import low_rank_weight

    model = low_rank_weight(noise=1e-5)
    x = np.random.default_rng(6).normal(size=(30, 256)).astype(np.float32)
    r = oc.compress(model, min_elements=64, max_error=0.01, calibration={"x": x})
    w = {t.name: t for t in r.report.tensors}["W"]
    assert w.encoding in ("lowrank", "lowrank+kmeans") and w.rank is not None and w.rank <= 8
    assert r.report.plan["measured"] <= 0.01
    ops = [n.op_type for n in r.model.graph.node]
    assert ops.count("MatMul") == 3  # the pair and the second layer


def test_weights_in_constant_nodes_are_planned_by_building_each_candidate():
    """Constant nodes cannot be fed to the probe session: every candidate is built instead."""
    model = ALL["constant_node"]()
    x = np.random.default_rng(7).normal(size=(3, 48)).astype(np.float32)
    r = oc.compress(model, min_elements=64, max_error=0.05, calibration={"x": x})
    assert r.report.plan["measured"] <= 0.05 and r.report.plan["candidates"]
    assert not any(n.op_type == "Constant" and n.output[0] == "W" for n in r.model.graph.node)


def test_several_calibration_feeds_all_count():
    model = matmul_chain("A", (256, 192), "B", (192, 64))
    rng = np.random.default_rng(8)
    feeds = [{"x": rng.normal(size=(5, 256)).astype(np.float32) * s} for s in (0.1, 1.0, 10.0)]
    r = oc.compress(model, min_elements=64, max_error=0.02, calibration=feeds)
    for feed in feeds:
        y = ort.InferenceSession(model.SerializeToString()).run(None, feed)[0]
        got = ort.InferenceSession(r.model.SerializeToString()).run(None, feed)[0]
        assert np.linalg.norm(got - y) / np.linalg.norm(y) <= 0.02 * 1.5  # per feed close; over all feeds within
    assert max(d.rel_l2 for d in r.report.outputs) <= 0.02


def test_a_weight_only_added_is_never_planned_below_four_bits():
    """A bias reaches the outputs value by value: the planner offers it 4 bits at least, even
    when a loose target would take anything."""
    rng = np.random.default_rng(14)
    model = make_model(
        [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Add", ["h", "b"], ["y"])],
        [("x", F, ["batch", 64])],
        [("y", F, ["batch", 4096])],
        [("W", rng.normal(size=(64, 4096)).astype(np.float32)), ("b", rng.normal(size=4096).astype(np.float32) * 0.01)],
    )
    x = rng.normal(size=(8, 64)).astype(np.float32)
    r = oc.compress(model, min_elements=64, max_error=0.5, metric="rel-l2", calibration={"x": x})
    bits = {t.name: t.bits for t in r.report.tensors}
    assert bits["b"] is not None and bits["b"] >= 4
    assert bits["W"] < 4  # the product's weight may go lower


def test_long_channels_are_offered_codebooks_per_channel_along_their_axis():
    """long_channel_choice: an embedding table's columns (its rows are its own channels), a
    table whose own channels are long, and nothing for a product's weight or where no channel
    reaches LONG_CHANNEL."""
    from onnxcompress.io.select import Consumer
    from onnxcompress.planning.candidates import LONG_CHANNEL, long_channel_choice

    table = site("E", (LONG_CHANNEL, 8))
    table.consumers = [Consumer("Gather", 0, False)]
    assert long_channel_choice(table) == AsCodebook(8, "channel", axis=1)
    tall = site("T", (4, LONG_CHANNEL))
    tall.consumers = [Consumer("Gather", 0, False)]  # 4 rows of 8192 values: its own channels
    assert long_channel_choice(tall, 6) == AsCodebook(6, "channel")
    head = site("W", (LONG_CHANNEL, 4))
    head.consumers = [Consumer("MatMul", 1, False)]
    assert long_channel_choice(head) is None
    for short in (site("S", (LONG_CHANNEL - 1, 8)), site("V", (LONG_CHANNEL * 2,))):
        short.consumers = [Consumer("Gather", 0, False)]
        assert long_channel_choice(short) is None


def test_an_embedding_whose_columns_differ_is_planned_per_column():
    """Columns at scales 1e-3 to 1 in one table: one codebook for all starves the small columns
    (the output's worst channel), one per column does not. The plan takes them, and onnxruntime
    decodes exactly the codebook's values."""
    from models import columns_table

    from onnxcompress.planning.candidates import LONG_CHANNEL

    model, table = columns_table(LONG_CHANNEL)
    ids = np.random.default_rng(12).integers(0, LONG_CHANNEL, size=(64, 32)).astype(np.int64)
    r = oc.compress(model, min_elements=64, max_error=0.01, calibration={"ids": ids})
    (row,) = r.report.tensors
    assert row.describe().endswith("channel axis 1") and row.bits is not None and row.bits >= 4
    assert r.report.plan["measured"] <= 0.01
    got = ort.InferenceSession(r.model.SerializeToString()).run(None, {"ids": np.arange(LONG_CHANNEL)[None, :]})[0][0]
    levels = r.centroids["E"]  # [6 columns, 2^bits]
    assert levels.shape == (6, 1 << row.bits)
    for j in range(6):  # every value of column j is one of column j's own levels
        assert np.isin(got[:, j], levels[j].astype(np.float32)).all()
    err = np.linalg.norm(got - table, axis=0) / np.linalg.norm(table, axis=0)
    assert err.max() <= 0.01 and row.bytes_after < table.nbytes / 3
