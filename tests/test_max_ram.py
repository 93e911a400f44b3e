"""--max-ram: the planner holds what onnxruntime keeps of the weights once loaded to a budget, by
keeping lookup tables packed (graph/lookup.py) where it must; the budget is parsed like a size,
refused in one line when no plan can meet it, and reported."""

from __future__ import annotations

import itertools

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from models import make_model, weight
from onnx import TensorProto, helper

import onnxcompress as oc
from onnxcompress import cli
from onnxcompress.options import PlanOptions
from onnxcompress.planning.ladder import Option, TensorOptions, hold_to_ram, least_ram, lower_hull
from onnxcompress.recipe import AsCodebook, Keep
from test_plan import site


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(1, 4), st.floats(0.05, 1.1))
def test_held_plans_all_fit_and_none_is_refused_that_could(seed, n_tensors, share):
    """Brute force over every combination of options: after hold_to_ram each one fits the
    budget, and it refuses exactly when no combination of the original options fits."""
    rng = np.random.default_rng(seed)
    tensors = []
    for t in range(n_tensors):
        full = int(rng.integers(100, 1000))
        opts = [Option(Keep(), full, 0.0, ram=full)]
        packable = rng.random() < 0.7
        for bits in range(1, 5):
            size = int(full * bits / 16)
            opts.append(Option(AsCodebook(bits), size, float(rng.uniform(0, 1) / bits), ram=size if packable else full))
        hull = lower_hull(opts)
        tensors.append(TensorOptions(site(f"w{t}"), hull, lower_hull([o for o in opts if o.ram < full])))
    originals = [list(t.options) + list(t.smaller_in_ram) for t in tensors]
    least = min(sum(o.ram for o in combo) for combo in itertools.product(*originals))
    assert least_ram(tensors) == least
    budget = int(share * sum(t.options[-1].ram for t in tensors))
    smaller = {t.site.name: list(t.smaller_in_ram) for t in tensors}
    forced = hold_to_ram(tensors, budget)
    if forced is None:
        assert least > budget
        return
    assert all(sum(o.ram for o in combo) <= budget for combo in itertools.product(*(t.options for t in tensors)))
    for t in tensors:  # a tensor held to its smaller options keeps a choice among them
        if t.site.name in forced:
            assert t.options and all(o in smaller[t.site.name] for o in t.options)


def table_and_matmul() -> onnx.ModelProto:
    """ids -> Gather(E 4000 x 32) -> MatMul(W 32 x 32): a table of 512 KB and a 4 KB product weight."""
    return make_model(
        [helper.make_node("Gather", ["E", "ids"], ["h"], axis=0), helper.make_node("MatMul", ["h", "W"], ["y"])],
        [("ids", TensorProto.INT64, ["batch", "seq"])],
        [("y", TensorProto.FLOAT, ["batch", "seq", 32])],
        [("E", weight(4000, 32)), ("W", weight(32, 32))],
    )


IDS = {"ids": np.random.default_rng(3).integers(0, 4000, size=(32, 16)).astype(np.int64)}


def held_floats(model: onnx.ModelProto, tmp_path) -> int:
    """The largest float initializer onnxruntime keeps once it has optimized the model."""
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    held = onnx.load(tmp_path / "optimized.onnx").graph.initializer
    return max(int(np.prod(t.dims)) for t in held if t.data_type == TensorProto.FLOAT)


@pytest.mark.parametrize("targets", [{"max_error": 0.02}, {}])
def test_the_plan_fits_the_budget_with_the_table_packed(targets, tmp_path):
    model = table_and_matmul()
    r = oc.compress(model, min_elements=64, calibration=IDS, max_ram="40%", **targets)
    ram = r.report.plan["ram"]
    assert ram["budget"] == int(0.4 * ram["original"]) and ram["estimated"] <= ram["budget"]
    table = next(t for t in r.report.tensors if t.name == "E")
    assert table.indices == "rows" and table.ram_after == table.bytes_after
    assert held_floats(r.model, tmp_path) < 4000 * 32 // 4  # no float copy of the table once loaded
    assert "--max-ram" in r.report.plan["target"]
    if targets:
        assert r.report.plan["measured"] <= 0.02
    else:  # alone: the least error that fits, so the product weight stays float
        assert "W" not in {t.name for t in r.report.tensors}


def test_an_unreachable_budget_names_the_least_ram(capsys, tmp_path):
    model = table_and_matmul()
    with pytest.raises(oc.TargetError, match=r"cannot meet --max-ram 1% .* at least 0.0\d+ MB \(\d+% of the original's\)"):
        oc.compress(model, min_elements=64, calibration=IDS, max_error=0.5, max_ram="1%")
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    np.savez(tmp_path / "ids.npz", **IDS)
    args = [str(path), "--min-elements", "64", "--inputs", str(tmp_path / "ids.npz"), "--max-ram", "0.001", "-o", "x.onnx"]
    assert cli.main(args) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("onnxcompress: target not met: cannot meet --max-ram 0.001") and "\n" not in err
    assert not (tmp_path / "x.onnx").exists()


def test_a_budget_the_original_meets_alone_asks_for_another_target():
    with pytest.raises(oc.TargetError, match="already fit --max-ram 200: nothing needs compressing"):
        oc.compress(table_and_matmul(), min_elements=64, calibration=IDS, max_ram=200)


def test_a_tight_error_under_the_budget_says_which_bound_to_raise():
    with pytest.raises(oc.TargetError, match="held to --max-ram 10%; raise --max-error, or --max-ram"):
        oc.compress(table_and_matmul(), min_elements=64, calibration=IDS, max_error=1e-7, max_ram="10%")


@pytest.mark.parametrize("value,budget", [("30%", 300), (30, 30e6), ("12MB", 12e6), (" 2.5 ", 2.5e6), ("100%", 1000)])
def test_budgets_parse(value, budget):
    assert PlanOptions(max_ram=value).ram_budget(1000) == int(budget)


@pytest.mark.parametrize("value", ["lots", "0", "-3", "150%", "nan", "inf", "%"])
def test_bad_budgets_are_one_line(value):
    with pytest.raises(oc.CompressError, match=r"--max-ram wants megabytes \(40\) or a share"):
        oc.compress(table_and_matmul(), max_ram=value)
