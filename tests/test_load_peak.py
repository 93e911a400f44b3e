"""--load-peak: plans keep what folding their decoders adds to onnxruntime's load-time peak
within a budget (graph/decode.py: load_per_value; planning/ladder.py: lighten), by moving
tensors to options that fold lighter and are no more distorted."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import helper

import onnxcompress as oc
from onnxcompress.graph.decode import LOAD_RESHAPED, load_per_value, plane_widths
from onnxcompress.options import LOAD_BASE, LOAD_PER_WEIGHT_BYTE, PlanOptions
from onnxcompress.planning.ladder import Option, Plan, TensorOptions, lighten, lower_hull
from onnxcompress.recipe import AsCodebook, Keep

from models import F, make_model, weight
from test_plan import site

OLD, NEW = (1, 16), (1, 24, 4)


def test_each_further_bit_plane_costs_more_at_load_and_less_combined_in_uint8():
    one, two = load_per_value(1, "channel", 11, OLD), load_per_value(3, "channel", 11, OLD)
    for bits in range(1, 8):
        old = load_per_value(bits, "channel", 11, OLD)
        assert old == one + (len(plane_widths(bits)) - 1) * (two - one)
        assert load_per_value(bits, "channel", 14, (1, 21)) <= old  # uint8 Add: never dearer
        assert load_per_value(bits, "tensor", 11, OLD) < old  # no Reshape of the floats
    # one plane read through a 256-level table: no mask, a uint8 copy fewer
    assert load_per_value(4, "tensor", 11, OLD) < load_per_value(4, "channel", 11, OLD) - LOAD_RESHAPED
    assert load_per_value(8, "tensor", 11, OLD) < load_per_value(4, "tensor", 11, OLD) < load_per_value(3, "tensor", 11, OLD)
    assert load_per_value(4, "tensor", 21, NEW) < load_per_value(4, "tensor", 11, OLD)  # native uint4: one Cast
    assert load_per_value(4, "channel", 11, OLD) > load_per_value(4, "tensor", 11, OLD)  # a Reshape of the floats


def options(rng: np.random.Generator, full: int) -> list[Option]:
    opts = [Option(Keep(), full, 0.0)]
    for bits in range(1, 9):
        heavy = len(plane_widths(bits)) * 7 if bits < 8 else 1
        opts.append(Option(AsCodebook(bits), full * bits // 32, float(rng.uniform(0.5, 1.5) / 4**bits), load=heavy * full))
    return lower_hull(opts)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(1, 4), st.floats(0.0, 1.5))
def test_a_lightened_plan_fits_the_budget_when_any_no_more_distorted_plan_does(seed, n_tensors, share):
    """Brute force over every plan whose tensors are each no more distorted than the plan's:
    lighten fits the budget exactly when one of them does, never adds distortion, and leaves a
    plan within the budget as it is."""
    rng = np.random.default_rng(seed)
    tensors = [TensorOptions(site(f"w{t}"), options(rng, int(rng.integers(100, 1000)))) for t in range(n_tensors)]
    start = {t.site.name: t.options[int(rng.integers(0, len(t.options)))] for t in tensors}
    plan = Plan(start, sum(o.bytes for o in start.values()), sum(o.distortion for o in start.values()))
    budget = int(share * plan.load)
    light = lighten(plan, tensors, budget)
    alternatives = [[o for o in t.options if o.distortion <= start[t.site.name].distortion] for t in tensors]
    reachable = min(sum(o.load for o in combo) for combo in itertools.product(*alternatives))
    assert (light.load <= budget) == (reachable <= budget)
    assert all(o.distortion <= start[n].distortion for n, o in light.choices.items())
    if plan.load <= budget:
        assert light is plan
    else:
        assert set(light.lightened) == {n for n in start if light.choices[n] is not start[n]}


def test_the_budget_is_a_share_of_the_originals_peak_estimated_from_below():
    assert PlanOptions(load_peak=0).load_budget(10**8) is None
    budget = PlanOptions(load_peak=1.5).load_budget(10**8)
    assert budget == int(0.5 * (LOAD_BASE + LOAD_PER_WEIGHT_BYTE * 10**8))


@pytest.mark.parametrize("value", [0.5, float("inf"), float("nan"), -1])
def test_bad_load_peaks_are_one_line(value):
    with pytest.raises(oc.CompressError, match="--load-peak must be 1 or more"):
        oc.compress(big_matmul(), max_error=0.05, load_peak=value)


def big_matmul():
    nodes = [helper.make_node("MatMul", ["x", "W"], ["y"])]
    return make_model(nodes, [("x", F, ["batch", 256])], [("y", F, ["batch", 256])], [("W", weight(256, 256))])


def test_a_plan_whose_decoders_outweigh_the_model_at_load_says_so():
    from onnxcompress.pipeline.summary import heavy_load

    plan = {"load": {"estimated": 491_000_000, "budget": None, "held": [], "peak": 0.0}}
    assert "may take about 491.0 MB, more than the whole original model (90.4 MB)" in heavy_load(plan, 90_400_000)
    assert heavy_load(plan, 500_000_000) is None  # less than the model itself
    assert heavy_load({"load": {**plan["load"], "budget": 10**8}}, 90_400_000) is None  # bounded: the line says it
    assert heavy_load({}, 1) is None  # a report from before the estimate


def test_a_tight_load_peak_keeps_bit_planes_off_and_reports_its_estimate(tmp_path, capsys):
    x = np.random.default_rng(0).normal(size=(64, 256)).astype(np.float32)
    free = oc.compress(big_matmul(), tmp_path / "free.onnx", max_error=0.05, calibration={"x": x}, load_peak=0)
    assert free.report.plan["load"]["budget"] is None and free.report.plan["load"]["estimated"] > 0
    free.report.render()  # unbounded, the plan still says what its decoders cost at load
    assert "to the load-time peak (an estimate, unbounded: --load-peak 0)" in " ".join(capsys.readouterr().out.split())
    bounded = oc.compress(big_matmul(), max_error=0.05, calibration={"x": x}).report.plan["load"]
    assert bounded["peak"] == 1.2 and bounded["budget"] is not None  # held unless told otherwise
    (w,) = free.report.tensors
    assert len(plane_widths(w.bits)) > 1  # the bound is what changes the plan below
    # 1.002: about 99 KB for 65,536 values, under any bit plane's cost (5 bytes a value) and
    # float16's (4), over uint8 indices' (1)
    held = oc.compress(big_matmul(), tmp_path / "held.onnx", max_error=0.05, calibration={"x": x}, load_peak=1.002)
    (w,) = held.report.tensors
    load = held.report.plan["load"]
    assert load["estimated"] <= load["budget"] and load["held"] == ["W"] and load["peak"] == 1.002
    assert w.bits == 8
    assert max(o.task for o in held.report.outputs) <= 0.05
    held.report.render()
    assert "(--load-peak 1.002)" in " ".join(capsys.readouterr().out.split())


def test_a_load_peak_no_option_fits_is_a_one_line_error():
    """1.0005: about 25 KB, under uint8 indices' 65 KB: nothing can be compressed, and the error
    says the bound is why (not an error target that measured nothing)."""
    x = np.random.default_rng(0).normal(size=(64, 256)).astype(np.float32)
    with pytest.raises(oc.TargetError, match=r"cannot compress anything within --load-peak 1.0005: .* raise --load-peak"):
        oc.compress(big_matmul(), max_error=0.05, calibration={"x": x}, load_peak=1.0005)


def test_a_size_target_says_what_the_bound_ruled_out(tmp_path, capsys):
    """At 30 KB for 65,536 values the best plan is 3 bits, in two bit planes (about 1.2 MB at
    load); a budget of about 0.5 MB leaves one plane, 2 bits. The report says what was given up."""
    x = np.random.default_rng(1).normal(size=(64, 256)).astype(np.float32)
    held = oc.compress(big_matmul(), tmp_path / "held.onnx", target_size=0.03, calibration={"x": x}, load_peak=1.01)
    free = oc.compress(big_matmul(), tmp_path / "free.onnx", target_size=0.03, calibration={"x": x}, load_peak=0)
    (h,), (f,) = held.report.tensors, free.report.tensors
    assert len(plane_widths(f.bits)) > 1 and len(plane_widths(h.bits)) == 1
    ruled_out = held.report.plan["load"]["unbounded"]
    assert (
        ruled_out["bytes"] <= 30_000 and ruled_out["distortion"] < 0.9 and ruled_out["load"] > held.report.plan["load"]["budget"]
    )
    assert "unbounded" not in free.report.plan["load"]
    held.report.render()
    assert "--load-peak 1.01 ruled out a plan of" in " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize("bits,noted", [(3, True), (4, False), (8, False)])
def test_fixed_settings_that_fold_heavily_say_so(capsys, bits, noted):
    """2 M values: at 3 bits (two planes combined in INT32 for onnxruntime 1.16) about 40 MB at
    load, over half the original's estimated peak; at 4 bits (one plane) about 9 MB."""
    nodes = [helper.make_node("MatMul", ["x", "W"], ["y"])]
    model = make_model(nodes, [("x", F, ["batch", 2048])], [("y", F, ["batch", 1024])], [("W", weight(2048, 1024))])
    oc.compress(model, bits=bits, verify=False).report.render()
    said = " ".join(capsys.readouterr().out.split())
    assert ("note: folding these decoders at load may add about" in said) == noted
    assert ("3-bit indices fold through several bit planes" in said) == noted


@pytest.mark.parametrize("opset,per_value", [(17, 4), (9, 0)])
def test_float16_weights_count_their_int32_positions_at_load(opset, per_value):
    """From opset 10 a float16 weight folds through INT32 positions (4 bytes a value); before,
    through a Cast, which adds nothing."""
    from onnxcompress.encoding.codebook import encode_codebook
    from onnxcompress.options import CodebookOptions
    from onnxcompress.planning.candidates import tensor_options
    from onnxcompress.recipe import AsFloat16

    s = site("W", (64, 32))
    curve = encode_codebook(s.array, CodebookOptions(bits=8)).sse_by_k
    made = tensor_options(s, None, s.array.nbytes, curve, opset=opset)
    half = next(o for o in made.options if isinstance(o.choice, AsFloat16))
    assert half.load == per_value * s.array.size
