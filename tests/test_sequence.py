"""State a caller feeds back (runtime/sequence.py): each feed runs twice, the second time with
the first call's state in place of its initial state, and the next call's outputs are measured
like the first's."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

import onnxcompress as oc
from onnxcompress.runtime.outputs import output_kinds
from onnxcompress.runtime.sequence import NEXT_RUN

from models import F, make_model
from oracles import ort_outputs

HIDDEN, FEATURES, STEPS = 64, 48, 40


def streaming_detector(state_shape=(1, 1, HIDDEN)):
    """x [steps, 1, 48] and the state (h, c) -> sigmoid(y @ V) per step, and the final state (hn,
    cn) for the next chunk, as a streaming voice detector runs."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("LSTM", ["x", "W", "R", "B", "", "h", "c"], ["y", "hn", "cn"], hidden_size=HIDDEN),
        helper.make_node("Squeeze", ["y", "one"], ["y2"]),
        helper.make_node("MatMul", ["y2", "V"], ["z"]),
        helper.make_node("Sigmoid", ["z"], ["p"]),
    ]
    inits = [
        ("W", (rng.normal(size=(1, 4 * HIDDEN, FEATURES)) * 0.3).astype(np.float32)),
        ("R", (rng.normal(size=(1, 4 * HIDDEN, HIDDEN)) * 0.3).astype(np.float32)),
        ("B", np.zeros((1, 8 * HIDDEN), np.float32)),
        ("V", (rng.normal(size=(HIDDEN, 1)) * 2).astype(np.float32)),
        ("one", np.array([1], np.int64)),
    ]
    inputs = [("x", F, [STEPS, 1, FEATURES]), ("h", F, list(state_shape)), ("c", F, list(state_shape))]
    outputs = [("p", F, [STEPS, 1, 1]), ("hn", F, [1, 1, HIDDEN]), ("cn", F, [1, 1, HIDDEN])]
    return make_model(nodes, inputs, outputs, inits)


def feed(seed=1):
    rng = np.random.default_rng(seed)
    zeros = np.zeros((1, 1, HIDDEN), np.float32)
    return {"x": rng.normal(size=(STEPS, 1, FEATURES)).astype(np.float32), "h": zeros, "c": zeros}


def twice(model, f):
    """Both calls by hand: the feed, then the feed with the first call's state."""
    p, hn, cn = ort_outputs(model, [f])[0]
    return [p, hn, cn], ort_outputs(model, [{**f, "h": hn, "c": cn}])[0]


def test_a_recurrent_final_state_feeds_back_into_the_input_it_started_from():
    kinds = output_kinds(streaming_detector())
    assert (kinds["hn"].feeds_back, kinds["cn"].feeds_back, kinds["p"].kind) == ("h", "c", "probabilities")
    assert kinds["hn"].describe() == "state (fed back as h)"
    from models import lstm

    assert output_kinds(lstm())["h"].feeds_back is None  # its initial state is not an input


def test_the_next_calls_outputs_are_measured_as_numpy_finds_them():
    model, f = streaming_detector(), feed()
    r = oc.compress(model, min_elements=64, bits=3, calibration=f)
    names = [d.name for d in r.report.outputs]
    assert names == ["p", "hn", "cn", "p" + NEXT_RUN, "hn" + NEXT_RUN, "cn" + NEXT_RUN]
    (want1, want2), (got1, got2) = twice(model, f), twice(r.model, f)
    flips = [float(np.mean((w[0] > 0.5) != (g[0] > 0.5))) for w, g in ((want1, got1), (want2, got2))]
    by_name = {d.name: d for d in r.report.outputs}
    assert by_name["p"].task == pytest.approx(flips[0]) and by_name["p" + NEXT_RUN].task == pytest.approx(flips[1])
    assert by_name["p" + NEXT_RUN].flips == pytest.approx(flips[1])
    rel = np.linalg.norm(got2[0] - want2[0]) / np.linalg.norm(want2[0])
    assert by_name["p" + NEXT_RUN].rel_l2 == pytest.approx(rel, rel=1e-5) and rel > 0  # the second call differs
    assert by_name["cn"].task == 0.0 and by_name["cn"].rel_l2 > 0.01  # read through the next call only


def test_a_state_of_another_shape_than_its_input_is_measured_as_it_is():
    model = streaming_detector()
    model.graph.node.append(helper.make_node("Squeeze", ["hn", "zero"], ["hs"]))  # [1, 64], its input is [1, 1, 64]
    model.graph.initializer.append(helper.make_tensor("zero", 7, [1], [0]))
    model.graph.output.remove(model.graph.output[1])
    model.graph.output.insert(1, helper.make_tensor_value_info("hs", F, [1, HIDDEN]))
    assert output_kinds(model)["hs"].feeds_back == "h"
    r = oc.compress(model, min_elements=64, bits=3, calibration=feed())
    assert [d.name for d in r.report.outputs] == ["p", "hs", "cn", "p" + NEXT_RUN, "hs" + NEXT_RUN, "cn" + NEXT_RUN]
    hs = next(d for d in r.report.outputs if d.name == "hs")
    assert hs.kind == "state" and hs.task == hs.rel_l2 > 0  # not fed back (cn is): measured as it is


def test_the_planner_bounds_both_calls():
    model, f = streaming_detector(), feed()
    r = oc.compress(model, min_elements=64, max_error=0.05, calibration=f)
    (want1, want2), (got1, got2) = twice(model, f), twice(r.model, f)
    for w, g in ((want1, got1), (want2, got2)):
        assert np.mean((w[0] > 0.5) != (g[0] > 0.5)) <= 0.05
    assert r.report.plan["measured"] == pytest.approx(max(d.task for d in r.report.outputs))
