"""Made-up inputs (runtime/synthesize.py): the sizes the graph implies when the declared ones do
not run, integer scalars at the constants the graph compares them with, and an error that names
the inputs when nothing runs."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from models import F, make_model
from onnx import TensorProto, helper, numpy_helper

import onnxcompress as oc
from onnxcompress.errors import CompressError
from onnxcompress.runtime.synthesize import compared_constants, first_running_feed
from onnxcompress.runtime.verify import run, session


def needs_samples(n: int) -> onnx.ModelProto:
    """x [1, N] reshaped to [1, n]: runs only when N is n."""
    w = np.random.default_rng(0).normal(size=(n, 8)).astype(np.float32)
    return make_model(
        [helper.make_node("Reshape", ["x", "shape"], ["r"]), helper.make_node("MatMul", ["r", "W"], ["y"])],
        [("x", F, [1, "samples"])],
        [("y", F, [1, 8])],
        [("shape", np.array([1, n], dtype=np.int64)), ("W", w)],
    )


def voice_detector_like() -> onnx.ModelProto:
    """Branches on the sample rate: at 16000 it wants 512 samples; at any other rate 3584,
    more than any size tried (as the If-branch form of a popular voice-activity model refuses
    rates it does not know)."""
    rng = np.random.default_rng(1)

    def branch(name: str, n: int) -> onnx.GraphProto:
        target = numpy_helper.from_array(np.array([-1, n], dtype=np.int64))
        shape = helper.make_node("Constant", [], [f"{name}_shape"], value=target)
        nodes = [shape, helper.make_node("Reshape", ["x", f"{name}_shape"], [f"{name}_r"])]
        nodes.append(helper.make_node("MatMul", [f"{name}_r", f"W_{name}"], [f"{name}_y"]))
        return helper.make_graph(nodes, name, [], [helper.make_tensor_value_info(f"{name}_y", F, [1, 8])])

    rate = helper.make_node("Constant", [], ["rate"], value=numpy_helper.from_array(np.array(16000, dtype=np.int64)))
    return make_model(
        [
            rate,
            helper.make_node("Cast", ["sr"], ["sr64"], to=TensorProto.INT64),
            helper.make_node("Equal", ["sr64", "rate"], ["known"]),
            helper.make_node("If", ["known"], ["y"], then_branch=branch("then", 512), else_branch=branch("else", 3584)),
        ],
        [("x", F, [1, "samples"]), ("sr", TensorProto.INT64, [])],
        [("y", F, [1, 8])],
        [(f"W_{name}", rng.normal(size=(n, 8)).astype(np.float32)) for name, n in (("then", 512), ("else", 3584))],
    )


def test_a_size_the_graph_implies_is_found():
    result = oc.compress(needs_samples(512), min_elements=64, bits=8)
    assert result.comparison is None and result.report.outputs[0].rel_l2 < 0.05


def test_integer_scalars_take_the_constants_they_are_compared_with():
    model = voice_detector_like()
    assert compared_constants(model) == {"sr": [16000]}
    sess = session(model, "the test model")
    feed, outputs = first_running_feed(model, 0, lambda f: run(sess, [f], "the test model"))
    assert feed["x"].shape == (1, 512) and int(feed["sr"]) == 16000 and outputs[0][0].shape == (1, 8)
    assert oc.compress(model, min_elements=64, bits=8).report.outputs[0].rel_l2 < 0.05


def test_when_nothing_runs_the_error_names_the_inputs():
    with pytest.raises(CompressError) as e:
        oc.compress(needs_samples(21), min_elements=64, bits=8)
    message = str(e.value)
    assert "x: float32 [1, samples]" in message and "--inputs FILE.npz" in message and "\n" not in message


def test_sizes_can_go_to_the_last_axis_alone():
    """A recurrent state [2, batch, 128] beside samples [batch, N]: the variant that sizes only
    last axes keeps the state's batch at 1 (the If-branch voice detector runs on it)."""
    from onnxcompress.runtime.synthesize import synthesize_feed

    model = make_model(
        [helper.make_node("Identity", ["x"], ["y"]), helper.make_node("Identity", ["state"], ["s"])],
        [("x", F, ["batch", "samples"]), ("state", F, [2, "batch", 128])],
        [("y", F, ["batch", "samples"]), ("s", F, [2, "batch", 128])],
    )
    every = synthesize_feed(model, size=512)
    last = synthesize_feed(model, size=512, last_only=True)
    assert every["x"].shape == (1, 512) and every["state"].shape == (2, 512, 128)
    assert last["x"].shape == (1, 512) and last["state"].shape == (2, 1, 128)
