"""The JSON report, checked from outside: every number in its `outputs` and `plan` sections
recomputed in numpy from both models' onnxruntime outputs, on an .npz of several feeds
(NAME@K keys) for a model with two inputs and two outputs."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
from models import F, make_model
from onnx import helper

from onnxcompress import cli
from onnxcompress.pipeline.report import human

FEEDS = 3  # x@0..x@2 and z@0..z@2, each feed its own batch size


def two_inputs_two_outputs():
    """y = x @ A, probs = softmax((y + z) @ C): a dense output and class scores."""
    rng = np.random.default_rng(3)
    return make_model(
        [
            helper.make_node("MatMul", ["x", "A"], ["y"]),
            helper.make_node("Add", ["y", "z"], ["s"]),
            helper.make_node("MatMul", ["s", "C"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probs"], axis=-1),
        ],
        [("x", F, ["batch", 64]), ("z", F, ["batch", 128])],
        [("y", F, ["batch", 128]), ("probs", F, ["batch", 10])],
        [("A", rng.normal(size=(64, 128)).astype(np.float32) * 0.1), ("C", rng.normal(size=(128, 10)).astype(np.float32))],
    )


@pytest.fixture
def files(tmp_path):
    import onnx

    model = tmp_path / "m.onnx"
    onnx.save_model(two_inputs_two_outputs(), str(model))
    rng = np.random.default_rng(4)
    feeds = [
        {"x": rng.normal(size=(8 + k, 64)).astype(np.float32), "z": rng.normal(size=(8 + k, 128)).astype(np.float32)}
        for k in range(FEEDS)
    ]
    np.savez(tmp_path / "in.npz", **{f"{name}@{k}": a for k, feed in enumerate(feeds) for name, a in feed.items()})
    return model, tmp_path / "in.npz", feeds


def run(path, feeds) -> dict[str, np.ndarray]:
    """Each output over all feeds, flattened, in float64."""
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    runs = [sess.run(None, feed) for feed in feeds]
    return {n: [r[j] for r in runs] for j, n in enumerate(names)}


def expected_outputs(before: dict, after: dict) -> dict[str, dict]:
    rows = {}
    for name in before:
        a = np.concatenate([r.ravel() for r in before[name]]).astype(np.float64)
        b = np.concatenate([r.ravel() for r in after[name]]).astype(np.float64)
        rows[name] = {
            "max_abs": float(np.abs(b - a).max()),
            "rel_l2": float(np.linalg.norm(b - a) / np.linalg.norm(a)),
            "cosine": float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))),
        }
    labels = [(r.argmax(-1), c.argmax(-1)) for r, c in zip(before["probs"], after["probs"], strict=True)]
    rows["probs"]["top1"] = float(np.mean(np.concatenate([r == c for r, c in labels])))
    return rows


def compress(args, capsys) -> int:
    code = cli.main([str(a) for a in args])
    capsys.readouterr()
    return code


def test_outputs_section_matches_numpy_over_every_feed(files, tmp_path, capsys):
    model, inputs, feeds = files
    out, report = tmp_path / "c.onnx", tmp_path / "r.json"
    assert compress([model, "-o", out, "--min-elements", 64, "--bits", 2, "--inputs", inputs, "--report", report], capsys) == 0
    got = {d["name"]: d for d in json.loads(report.read_text())["outputs"]}
    want = expected_outputs(run(model, feeds), run(out, feeds))
    assert sorted(got) == sorted(want) == ["probs", "y"]
    for name, row in want.items():
        for key, value in row.items():
            assert got[name][key] == pytest.approx(value, rel=1e-5, abs=1e-7), (name, key)
    assert got["y"]["top1"] is None  # a dense output has no labels
    assert 0.5 < want["probs"]["top1"] < 1.0  # 2 bits changed some labels, not all: the check means something


def test_plan_section_states_what_numpy_measures(files, tmp_path, capsys):
    model, inputs, feeds = files
    out, report = tmp_path / "p.onnx", tmp_path / "r.json"
    args = [model, "-o", out, "--min-elements", 64, "--max-error", 0.03, "--metric", "rel-l2", "--inputs", inputs]
    assert compress([*args, "--report", report], capsys) == 0
    data = json.loads(report.read_text())
    plan = data["plan"]
    worst = max(row["rel_l2"] for row in expected_outputs(run(model, feeds), run(out, feeds)).values())
    assert plan["target"] == "--max-error 0.03 (rel-l2)" and plan["measured"] == pytest.approx(worst, rel=1e-5) and worst <= 0.03
    # the planner's own record: every candidate it measured, the chosen one among them
    errors = [c["error"] for c in plan["candidates"]]
    assert errors and any(e == pytest.approx(plan["measured"], rel=1e-6) for e in errors)
    assert all(c["bytes"] > 0 for c in plan["candidates"]) and plan["plans_on_ladder"] >= len(set(errors))
    assert data["file_bytes_after"] == out.stat().st_size


def test_codebooks_past_onnxruntimes_folding_cap_are_named():
    """From onnxruntime 1.27 a node whose output passes 1 GiB is not folded at load: a codebook
    whose INT32 indices (4 bytes a value) pass it is named, with what to do; pairs and float16
    Casts (folded by onnxruntime's float16 fusion even so) are not."""
    from onnxcompress.pipeline.report import TensorReport, over_folding_cap

    def row(name, shape, encoding="codebook"):
        size = 4 * int(np.prod(shape))
        return TensorReport(name, list(shape), ["MatMul"], encoding, 8, "tensor", "binned", None, None, size, size // 4, 0.0, 0.0)

    assert over_folding_cap([row("small", (4096, 4096)), row("pair", (1 << 15, 1 << 14), "lowrank")]) is None
    note = over_folding_cap([row("big", (1 << 15, 1 << 14)), row("exact", (1 << 14, 1 << 14))])
    assert note is not None and "big (2.1 GB)" in note and "exact" not in note  # 4 x 2^28 bytes is the cap itself
    assert "constant_folding_max_output_size_in_bytes" in note


def test_outputs_that_did_not_move_at_all_are_a_warning():
    """Weights changed but no output moved by a single bit: the inputs never reached them (the
    If-branch voice detector on made-up inputs), and the verification says nothing."""
    from onnxcompress.pipeline.report import TensorReport, unchanged_outputs
    from onnxcompress.runtime.verify import OutputDiff

    weight = TensorReport("W", [64, 64], ["MatMul"], "codebook", 8, "tensor", "exact", None, None, 16384, 4096, 3e-3, 0.0)
    still = [OutputDiff("y", 0.0, 0.0, 1.0), OutputDiff("state", 0.0, 0.0, 1.0)]
    assert "no output changed" in (unchanged_outputs(still, [weight]) or "")
    assert unchanged_outputs([OutputDiff("y", 1e-6, 1e-7, 1.0), still[1]], [weight]) is None
    exact = TensorReport("W", [64, 64], ["MatMul"], "codebook", 8, "tensor", "exact", None, None, 16384, 4096, 0.0, 0.0)
    assert unchanged_outputs(still, [exact]) is None  # a weight with 256 values or fewer is exact at 8 bits


@pytest.mark.parametrize(
    "options, smaller, model",
    [({"bits": 4}, False, "matmul"), ({"method": "lowrank", "rank": 8}, True, "matmul"), ({"bits": 4}, True, "table")],
)
def test_the_report_says_what_the_weights_take_in_ram_after_load(options, smaller, model):
    """Codebooks fold back into the weight's type at load: RAM after load is the original's;
    a low-rank pair's factors and a lookup table's packed rows stay as they are: RAM after is
    their size, in the JSON and in the table's "in RAM" column."""
    import onnxcompress as oc
    from models import embedding, low_rank_weight

    r = oc.compress(low_rank_weight() if model == "matmul" else embedding(), min_elements=64, verify=False, **options)
    header, rows = r.report.tensor_rows()
    for t, row in zip(r.report.tensors, rows, strict=True):
        assert row[header.index("in RAM")] == human(t.ram_after)
        if smaller:
            assert (t.rank is not None or t.indices == "rows") and t.ram_after == t.bytes_after < t.bytes_before
        else:
            assert t.ram_after == t.bytes_before
