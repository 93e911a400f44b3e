"""The command line: every bad input is one line on stderr, exit code 2, nothing written, and
the input untouched."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import onnx
import pytest
from models import ALL
from onnx import numpy_helper
from oracles import ort_outputs, rel_l2

from onnxcompress import cli


@pytest.fixture
def model_path(tmp_path):
    path = tmp_path / "model.onnx"
    onnx.save_model(ALL["conv"](), str(path))
    return path


def run_cli(args, capsys):
    code = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def assert_bad_input(args, capsys, tmp_path, match, protected=()):
    before = {p: p.read_bytes() for p in protected}
    files_before = sorted(p.name for p in tmp_path.iterdir())
    code, out, err = run_cli(args, capsys)
    assert code == 2, (out, err)
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert match in lines[0], lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == files_before  # nothing written
    for p, data in before.items():
        assert p.read_bytes() == data  # input untouched


def test_missing_file(tmp_path, capsys):
    assert_bad_input([tmp_path / "nope.onnx"], capsys, tmp_path, "no such file")


def test_directory(tmp_path, capsys):
    (tmp_path / "d").mkdir()
    assert_bad_input([tmp_path / "d"], capsys, tmp_path, "is a directory")


def test_empty_file(tmp_path, capsys):
    p = tmp_path / "empty.onnx"
    p.write_bytes(b"")
    assert_bad_input([p], capsys, tmp_path, "is empty", [p])


def test_truncated_model(tmp_path, capsys, model_path):
    p = tmp_path / "cut.onnx"
    p.write_bytes(model_path.read_bytes()[: model_path.stat().st_size // 2])
    assert_bad_input([p], capsys, tmp_path, "not a readable ONNX model", [p, model_path])


def test_random_bytes(tmp_path, capsys):
    p = tmp_path / "noise.onnx"
    p.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    assert_bad_input([p], capsys, tmp_path, "ONNX", [p])


def test_protobuf_that_is_not_a_model(tmp_path, capsys):
    p = tmp_path / "tensor.onnx"
    p.write_bytes(numpy_helper.from_array(np.zeros(10, np.float32), "t").SerializeToString())
    assert_bad_input([p], capsys, tmp_path, "ONNX", [p])


def test_missing_external_data(tmp_path, capsys):
    p = tmp_path / "ext.onnx"
    onnx.save_model(ALL["conv"](), str(p), save_as_external_data=True, location="ext.data", size_threshold=0)
    (tmp_path / "ext.data").unlink()
    assert_bad_input([p], capsys, tmp_path, "ext.data, which is missing", [p])


def test_truncated_external_data(tmp_path, capsys):
    p = tmp_path / "ext.onnx"
    onnx.save_model(ALL["conv"](), str(p), save_as_external_data=True, location="ext.data", size_threshold=0)
    data = tmp_path / "ext.data"
    data.write_bytes(data.read_bytes()[:-100])
    assert_bad_input([p, "--min-elements", 64], capsys, tmp_path, "lies past the end of ext.data", [p, data])


def test_nothing_to_compress(tmp_path, capsys, model_path):
    assert_bad_input([model_path], capsys, tmp_path, "nothing to compress", [model_path])


def test_opset_onnxruntime_cannot_run(tmp_path, capsys):
    m = ALL["matmul"]()
    m.opset_import[0].version = 40
    p = tmp_path / "future.onnx"
    p.write_bytes(m.SerializeToString())
    assert_bad_input([p, "--min-elements", 64], capsys, tmp_path, "cannot load the original model", [p])


def test_output_in_a_missing_folder(tmp_path, capsys, model_path):
    assert_bad_input(
        [model_path, "-o", tmp_path / "no" / "out.onnx", "--min-elements", 64], capsys, tmp_path, "does not exist", [model_path]
    )


def test_existing_output_needs_force(tmp_path, capsys, model_path):
    out = tmp_path / "out.onnx"
    out.write_bytes(b"keep me")
    assert_bad_input([model_path, "-o", out, "--min-elements", 64], capsys, tmp_path, "--force", [model_path, out])
    code, _, _ = run_cli([model_path, "-o", out, "--min-elements", 64, "--force", "-q"], capsys)
    assert code == 0 and onnx.load(str(out)).graph.node


def test_output_over_the_input_is_refused(tmp_path, capsys, model_path):
    assert_bad_input(
        [model_path, "-o", model_path, "--force", "--min-elements", 64], capsys, tmp_path, "is the input", [model_path]
    )


@pytest.mark.parametrize(
    "flags,match",
    [
        (["--granularity", "rows"], "--granularity"),
        (["--include", "("], "not a valid regular expression"),
        (["--target-ort", "latest"], "--target-ort"),
        (["--target-ort", "1.14"], "1.16 and later"),
        (["--rank", "4"], "add --method lowrank"),
        (["--method", "lowrank", "--rank", "4", "--energy", "0.9"], "pass only one"),
        (["--method", "lowrank", "--energy", "1.5"], "--energy must be in (0, 1]"),
        (["--method", "auto", "--rank-ratio", "0.5"], "--method auto sets each rank"),
        (["--method", "lowrank", "--rank", "1000"], "nothing to compress"),
    ],
)
def test_bad_options(tmp_path, capsys, model_path, flags, match):
    assert_bad_input([model_path, "--min-elements", 64, *flags], capsys, tmp_path, match, [model_path])


def test_report_in_a_missing_folder(tmp_path, capsys, model_path):
    assert_bad_input(
        [model_path, "--min-elements", 64, "--report", tmp_path / "no" / "r.json"],
        capsys,
        tmp_path,
        "its folder does not exist",
        [model_path],
    )


def test_bad_inputs_file(tmp_path, capsys, model_path):
    bad = tmp_path / "inputs.npz"
    bad.write_bytes(b"not npz")
    assert_bad_input([model_path, "--min-elements", 64, "--inputs", bad], capsys, tmp_path, "--inputs", [model_path, bad])


def test_inputs_that_the_model_rejects(tmp_path, capsys, model_path):
    feeds = tmp_path / "inputs.npz"
    np.savez(feeds, wrong_name=np.zeros((1, 8, 12, 12), np.float32))
    assert_bad_input(
        [model_path, "--min-elements", 64, "--inputs", feeds], capsys, tmp_path, "check the --inputs file", [model_path, feeds]
    )


@pytest.mark.parametrize(
    "args, usage",
    [
        (["--bits", "9"], "usage: onnxcompress MODEL [options]"),
        (["--granularity"], "usage: onnxcompress MODEL [options]"),
        (["compare", "a.onnx"], "usage: onnxcompress compare ORIGINAL COMPRESSED [options]"),
    ],
)
def test_a_bad_flag_gets_one_usage_line_and_the_error(model_path, capsys, args, usage):
    """Exit 2, and two lines on stderr: a short usage line that points to --help, then the
    error (argparse printed the whole 16-line usage first)."""
    argv = [str(model_path), *args] if args[0] != "compare" else args
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith(usage) and "--help" in lines[0]
    assert lines[1].startswith("onnxcompress") and "error:" in lines[1]


def test_broken_result_exits_1_and_is_removed(tmp_path, capsys, model_path, monkeypatch):
    import onnxcompress.pipeline.build as c

    real = c.assemble

    def broken(*a, **k):
        m, stored = real(*a, **k)
        m.graph.node[-1].op_type = "NoSuchOp"
        return m, stored

    monkeypatch.setattr(c, "assemble", broken)
    out = tmp_path / "out.onnx"
    code, _, err = run_cli([model_path, "-o", out, "--min-elements", 64], capsys)
    assert code == 1 and "verification failed" in err and not out.exists()


def test_success_writes_output_and_json_report(tmp_path, capsys, model_path):
    code, out, _ = run_cli([model_path, "--min-elements", 64, "--bits", 4, "--report", tmp_path / "r.json"], capsys)
    assert code == 0
    written = tmp_path / "model.compressed.onnx"
    assert written.exists()
    assert "Compressed tensors" in out and "smaller" in out and "cosine" in out
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["tensors"][0]["bits"] == 4 and report["verified"]
    onnx.checker.check_model(str(written), full_check=True)


def test_low_rank_from_the_command_line(tmp_path, capsys, model_path):
    out = tmp_path / "pair.onnx"
    code, text, _ = run_cli([model_path, "-o", out, "--min-elements", 64, "--method", "lowrank", "--rank", 4], capsys)
    assert code == 0 and "rank 4/16" in text and "multiply-adds" in text and "cosine" in text
    ops = [n.op_type for n in onnx.load(str(out)).graph.node]
    assert ops == ["Conv", "Conv"]


def test_compare_prints_every_output_and_exits_1_past_the_tolerance(tmp_path, capsys, model_path):
    out = tmp_path / "c.onnx"
    assert run_cli([model_path, "-o", out, "--min-elements", 64, "--bits", 2, "-q"], capsys)[0] == 0
    code, text, _ = run_cli(["compare", model_path, out], capsys)
    assert code == 0 and "relative L2" in text and "y" in text
    assert run_cli(["compare", model_path, out, "--tolerance", 1e-6], capsys)[0] == 1
    assert run_cli(["compare", model_path, model_path, "--tolerance", 0], capsys)[0] == 0
    assert_bad_input(["compare", model_path, tmp_path / "missing.onnx"], capsys, tmp_path, "missing.onnx", [model_path])


def test_unreachable_target_exits_1_with_one_line(tmp_path, capsys, model_path):
    code, _, err = run_cli([model_path, "-o", tmp_path / "x.onnx", "--min-elements", 64, "--max-error", 1e-12], capsys)
    assert code == 1 and "target not met" in err and "Traceback" not in err
    assert not (tmp_path / "x.onnx").exists()


def test_planned_compression_from_the_command_line(tmp_path, capsys, model_path):
    code, text, _ = run_cli([model_path, "-o", tmp_path / "p.onnx", "--min-elements", 64, "--max-error", 0.05], capsys)
    assert code == 0 and "plan for --max-error 0.05" in text
    assert re.search(r"(\d\.\d\dx smaller than|% larger than|about the size of) uniform 8 bits \(", " ".join(text.split()))


def test_inspect_writes_nothing(tmp_path, capsys, model_path):
    code, out, _ = run_cli(["inspect", model_path, "--min-elements", 64], capsys)
    assert code == 0 and "8 bits" in out and "W" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_demo_reports_accuracy(capsys):
    code, out, _ = run_cli(["demo", "-q"], capsys)
    assert code == 0
    line = [line for line in out.splitlines() if "accuracy" in line][0]
    before, after = [float(v.rstrip("%")) for v in line.split(":")[1].split()[0:3:2]]
    assert before > 95 and after > before - 1.5


def test_version_help_and_module_entry_point():
    from onnxcompress import __version__

    r = subprocess.run([sys.executable, "-m", "onnxcompress", "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and __version__ in r.stdout
    r = subprocess.run([sys.executable, "-m", "onnxcompress", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "--bits" in r.stdout and "inspect" in r.stdout and "exit codes" in r.stdout


def test_compare_tolerance_is_judged_at_the_measured_error(tmp_path, capsys, model_path):
    out = tmp_path / "c.onnx"
    assert run_cli([model_path, "-o", out, "--min-elements", 64, "--bits", 3, "-q"], capsys)[0] == 0
    feeds = {"x": np.random.default_rng(5).normal(size=(1, 8, 12, 12)).astype(np.float32)}
    np.savez(tmp_path / "x.npz", **feeds)
    error = rel_l2(ort_outputs(model_path, [feeds]), ort_outputs(out, [feeds]), 0)  # its one output
    assert error > 1e-3
    common = ["compare", model_path, out, "--inputs", tmp_path / "x.npz", "--metric", "rel-l2", "--tolerance"]
    assert run_cli([*common, error * 0.99], capsys)[0] == 1
    assert run_cli([*common, error * 1.01], capsys)[0] == 0


def test_demo_accuracy_is_the_written_models(tmp_path, capsys):
    """At 1 bit with no calibration the digits MLP loses accuracy (97.8% -> 78.3%): the printed
    'after' must be the written model's, counted here from its onnxruntime outputs."""
    import onnxruntime as ort

    from onnxcompress.demo import example_data, example_model

    out = tmp_path / "d.onnx"
    code, text, _ = run_cli(["demo", "-q", "--bits", 1, "--no-compensate", "--no-sensitivity", "-o", out], capsys)
    assert code == 0
    before, after = (float(v) / 100 for v in re.findall(r"([\d.]+)%", text.split("accuracy")[1])[:2])
    pixels, labels = example_data()

    def counted(path):
        scores = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"pixels": pixels})[0]
        return float(np.mean(scores.argmax(axis=1) == labels))

    assert before == pytest.approx(counted(example_model()), abs=5e-5)
    assert after == pytest.approx(counted(out), abs=5e-5) and after < before - 0.05


def test_every_error_shares_one_base_that_carries_its_exit_code():
    import onnxcompress as oc

    codes = {oc.CompressError: 2, oc.VerificationError: 1, oc.TargetError: 1}
    assert all(issubclass(kind, oc.OnnxCompressError) and kind.exit_code == code for kind, code in codes.items())
    assert not issubclass(oc.TargetError, oc.VerificationError)  # a missed target is not a broken model


def test_onnxruntime_logs_reach_the_terminal_only_with_verbose(tmp_path):
    """A model that fails on synthesized inputs (a Reshape to 12 values of a dynamic input):
    one line of ours on stderr; onnxruntime's own coloured log lines only with -v."""
    from onnx import TensorProto, helper

    w = np.random.default_rng(0).normal(size=(12, 64)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "s"], ["r"]), helper.make_node("MatMul", ["r", "W"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])],
        [numpy_helper.from_array(np.array([1, 12], dtype=np.int64), "s"), numpy_helper.from_array(w, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "reshape.onnx"
    onnx.save(model, path)
    command = [sys.executable, "-m", "onnxcompress", str(path), "--min-elements", "64", "-o", str(tmp_path / "out.onnx")]
    quiet = subprocess.run(command, capture_output=True, text=True)
    assert quiet.returncode == 2
    lines = quiet.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("onnxcompress: error:") and "[E:onnxruntime" not in quiet.stderr
    loud = subprocess.run([*command, "-v"], capture_output=True, text=True)
    assert loud.returncode == 2 and "[E:onnxruntime" in loud.stderr


def test_names_and_shapes_with_brackets_print_as_they_are(tmp_path, capsys):
    """rich reads [..] as markup: a weight named layer[a].weight, or an input of shape [n] in
    an error, must print whole."""
    from onnx import TensorProto, helper

    w = np.random.default_rng(0).normal(size=(48, 40)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "layer[a].weight"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 48])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 40])],
        [numpy_helper.from_array(w, "layer[a].weight")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "brackets.onnx"
    onnx.save(model, path)
    code, out, _ = run_cli([path, "--min-elements", 64, "-o", tmp_path / "out[b].onnx"], capsys)
    assert code == 0 and "layer[a].weight" in out and "out[b].onnx" in out.replace("\n", "")
    code, _, err = run_cli([tmp_path / "missing[c].onnx"], capsys)
    assert code == 2 and "missing[c].onnx" in err
