"""Weights that stay packed in RAM (issue 20's `--max-ram`): what onnxruntime does with a
DequantizeLinear in front of a MatMul or a Conv, per version. One 4096 x 4096 MatMul (batch 1)
and one 3 x 3 Conv of 256 channels (on 1 x 256 x 56 x 56), each as float32, as a folded 8-bit
codebook (this tool's decoder) and as DequantizeLinear from INT8 and INT4 blocks of 32 (opset 21;
per output channel for the Conv). In a fresh process per model and runtime: the load peak, the
RSS after runs, the median latency, and which ops the optimized graph runs.

    python benchmarks/bench_resident.py [--python PY ...]

--python: the interpreters to measure with (each with numpy and onnxruntime); by default this
one and the test suite's venvs under ~/.cache/onnxcompress-compat (tests/test_compat.py makes
them). Writes benchmarks/results/resident.md.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

RESULTS = Path(__file__).parent / "results"
COMPAT = Path.home() / ".cache" / "onnxcompress-compat"
K = N = 4096
BLOCK = 32

PROBE = """
import json, sys, time
import numpy as np, onnxruntime as ort
def status(key):
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith(key)) / 1024
path, optimized = sys.argv[1], sys.argv[2]
feed = dict(np.load(sys.argv[3]))
base = status("VmRSS")
options = ort.SessionOptions()
options.intra_op_num_threads = 1
options.optimized_model_filepath = optimized
options.log_severity_level = 3
try:
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
except Exception as e:
    print(json.dumps({"error": str(e).splitlines()[0][:600], "version": ort.__version__})); sys.exit(0)
peak = status("VmHWM") - base
session.run(None, feed)
times = []
for _ in range(30):
    t0 = time.perf_counter(); session.run(None, feed); times.append(time.perf_counter() - t0)
print(json.dumps({"version": ort.__version__, "peak": peak, "rss": status("VmRSS") - base, "ms": 1e3 * float(np.median(times))}))
"""


def models(folder: Path) -> dict[str, tuple[Path, Path]]:
    """name: (model, feed .npz)."""
    rng = np.random.default_rng(0)
    w = (rng.normal(size=(K, N)) * 0.02).astype(np.float32)
    conv = (rng.normal(size=(256, 256, 3, 3)) * 0.02).astype(np.float32)
    x_mm = {"x": rng.normal(size=(1, K)).astype(np.float32)}
    x_conv = {"x": rng.normal(size=(1, 256, 56, 56)).astype(np.float32)}
    out = {}

    def save(name: str, nodes, inits, x_shape, y_shape, feed, opset=17):
        graph = helper.make_graph(
            nodes,
            name,
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)],
            inits,
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        model.ir_version = 10 if opset >= 21 else 8  # 8: what onnxruntime 1.16 reads
        path, feed_path = folder / f"{name}.onnx", folder / f"{name}.npz"
        onnx.save(model, path)
        np.savez(feed_path, **feed)
        out[name] = (path, feed_path)

    for op, weight, x_shape, y_shape, feed, axis in (
        ("MatMul", w, [1, K], [1, N], x_mm, 0),
        ("Conv", conv, [1, 256, 56, 56], [1, 256, 54, 54], x_conv, 0),
    ):
        inputs = ["x", "W"]
        save(
            f"{op} float32", [helper.make_node(op, inputs, ["y"])], [numpy_helper.from_array(weight, "W")], x_shape, y_shape, feed
        )
        levels = np.quantile(weight, np.linspace(0, 1, 256)).astype(np.float32)
        labels = np.searchsorted((levels[1:] + levels[:-1]) / 2, weight).astype(np.uint8)
        decode = [
            helper.make_node("Cast", ["idx"], ["i32"], to=TensorProto.INT32),
            helper.make_node("Gather", ["cb", "i32"], ["W"]),
        ]
        save(
            f"{op} codebook 8 bits (folded)",
            [*decode, helper.make_node(op, inputs, ["y"])],
            [numpy_helper.from_array(labels, "idx"), numpy_helper.from_array(levels, "cb")],
            x_shape,
            y_shape,
            feed,
        )
        for bits, kind in ((8, TensorProto.INT8), (4, TensorProto.INT4)):
            q, scale, attrs = _quantize(weight, bits, op)
            qt = helper.make_tensor("q", kind, q.shape, q.reshape(-1).tolist()) if bits == 4 else numpy_helper.from_array(q, "q")
            dq = helper.make_node("DequantizeLinear", ["q", "s"], ["W"], axis=axis, **attrs)
            save(
                f"{op} DequantizeLinear INT{bits}" + (f" block {BLOCK}" if attrs else " per channel"),
                [dq, helper.make_node(op, inputs, ["y"])],
                [qt, numpy_helper.from_array(scale, "s")],
                x_shape,
                y_shape,
                feed,
                opset=21,  # blocked DequantizeLinear and INT4
            )
    return out


def _quantize(weight: np.ndarray, bits: int, op: str) -> tuple[np.ndarray, np.ndarray, dict]:
    """Symmetric integers and scales: blocks of BLOCK along K for a MatMul weight [K, N], one
    scale per output channel for a Conv's filters (blocked DequantizeLinear needs a block axis
    that a Conv weight does not have in the same sense)."""
    top = 2 ** (bits - 1) - 1
    if op == "MatMul":
        blocks = weight.reshape(K // BLOCK, BLOCK, N)
        scale = (np.abs(blocks).max(axis=1) / top).astype(np.float32)  # [K / BLOCK, N]
        q = np.clip(np.round(blocks / scale[:, None, :]), -top - 1, top).astype(np.int8).reshape(K, N)
        return q, scale, {"block_size": BLOCK}
    scale = (np.abs(weight).reshape(weight.shape[0], -1).max(axis=1) / top).astype(np.float32)
    q = np.clip(np.round(weight / scale[:, None, None, None]), -top - 1, top).astype(np.int8)
    return q, scale, {}


def ops_run(optimized: Path) -> str:
    if not optimized.exists():
        return ""
    ops = sorted({n.op_type for n in onnx.load(optimized, load_external_data=False).graph.node})
    return ", ".join(ops)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--python", nargs="*", help="interpreters to measure with")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    # the compatibility suite's pinned venvs (its "newest" is this environment's onnxruntime again)
    pythons = args.python or [sys.executable] + [str(p) for p in sorted(COMPAT.glob("ort-1.*/bin/python"))]
    lines = [
        "# Weights packed in RAM (`python benchmarks/bench_resident.py`)",
        "",
        "One 4096 x 4096 MatMul (batch 1) and one 3 x 3 Conv of 256 channels (1 x 256 x 56 x 56). Load peak and RSS "
        "after 30 runs above the process's own, median latency (one thread), and the ops of the optimized graph.",
        "",
        "| onnxruntime | model | load peak MiB | RSS after MiB | latency ms | runs |",
        "|---|---|---|---|---|---|",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        built = models(folder)
        for python in pythons:
            for name, (model, feed) in built.items():
                optimized = folder / "optimized.onnx"
                optimized.unlink(missing_ok=True)
                run = subprocess.run([python, "-c", PROBE, str(model), str(optimized), str(feed)], capture_output=True, text=True)
                r = json.loads(run.stdout.strip().splitlines()[-1]) if run.stdout.strip() else {"error": run.stderr[-160:]}
                if "error" in r:
                    reason = re.search(r"Unsupported model IR version: \d+|[^:]*$", r["error"])
                    row = f"| {r.get('version', python)} | {name} | refused ({reason.group(0).strip() if reason else ''}) | | | |"
                else:
                    row = f"| {r['version']} | {name} | {r['peak']:.0f} | {r['rss']:.0f} | {r['ms']:.2f} | {ops_run(optimized)} |"
                print(row, flush=True)
                lines.append(row)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "resident.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
