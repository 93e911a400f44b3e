"""A model over 2 GB, its weights in an external data file, compressed from the command line:
peak RSS of that process against the model's size.

    python benchmarks/bench_streaming.py [--gb 2.4] [--bits 8 4] [--work DIR] [--keep]
    python benchmarks/bench_streaming.py --gb 0.5 --bits --max-error 0.01   # the planner

With --max-error E, one more run plans the model for that target on 64 random input rows
(`--max-error E --inputs x.npz`); the planner reads the whole model, so its target (issue 19)
is to fit this machine's RAM, not twice the model.

Generates the model in --work (default: a temporary folder; about 3 GB of disk for the model
and its output): N MatMul weights of 4096 x 16384 float32, N chosen for --gb, all reading one
input and summed into one output, the weights written straight into one data file (the
generator never holds more than a slice). Then runs `onnxcompress MODEL -o OUT --bits B` in a
fresh process per bit width, which verifies the result in onnxruntime as usual, and reads that
process's peak RSS (VmHWM). Target (issue 8): peak well below twice the model's size.
Writes benchmarks/results/streaming.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

RESULTS = Path(__file__).parent / "results"
ROWS, COLS = 4096, 16384
TARGET = 2.0  # peak RSS / model size must stay well below this

# The child: the command line as a user runs it, then its own high-water mark on stderr.
CHILD = """
import json, sys
from onnxcompress.cli import main
rc = main(sys.argv[1:])
peak = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM"))
print(json.dumps({"rc": rc, "peak_kib": peak}), file=sys.stderr)
sys.exit(rc)
"""


def generate(folder: Path, gigabytes: float, seed: int = 0) -> Path:
    """y = sum_i x @ W_i with W_i [4096, 16384]; the weights go to model.onnx.data."""
    count = max(1, round(gigabytes * 1e9 / (ROWS * COLS * 4)))
    rng = np.random.default_rng(seed)
    data = folder / "model.onnx.data"
    inits, nodes, offset = [], [], 0
    with open(data, "wb") as f:
        for i in range(count):
            for _ in range(0, ROWS, 512):  # 32 MB at a time
                (rng.standard_normal((512, COLS), dtype=np.float32) * 0.02).tofile(f)
            t = TensorProto(name=f"W{i}", data_type=TensorProto.FLOAT, dims=[ROWS, COLS])
            t.data_location = TensorProto.EXTERNAL
            length = ROWS * COLS * 4
            for key, value in (("location", data.name), ("offset", str(offset)), ("length", str(length))):
                entry = t.external_data.add()
                entry.key, entry.value = key, value
            offset += length
            inits.append(t)
            nodes.append(helper.make_node("MatMul", ["x", f"W{i}"], [f"y{i}"]))
    nodes.append(helper.make_node("Sum", [f"y{i}" for i in range(count)], ["y"]))
    graph = helper.make_graph(
        nodes,
        "streaming",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", ROWS])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", COLS])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = folder / "model.onnx"
    path.write_bytes(model.SerializeToString())
    onnx.checker.check_model(str(path))
    return path


def compress_in_fresh_process(model: Path, out: Path, setting: list[str]) -> dict:
    t0 = time.perf_counter()
    run = subprocess.run(
        [sys.executable, "-c", CHILD, str(model), "-o", str(out), *setting, "--force", "-q"],
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - t0
    last = run.stderr.strip().splitlines()[-1] if run.stderr.strip() else "{}"
    if run.returncode != 0 or not last.startswith("{"):
        raise SystemExit(f"onnxcompress failed ({run.returncode}):\n{run.stdout}\n{run.stderr}")
    result = json.loads(last)
    result.update(seconds=seconds, out_bytes=out.stat().st_size, summary=run.stdout.strip().splitlines()[-1])
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gb", type=float, default=2.4, help="model size to generate, in GB (default 2.4)")
    ap.add_argument("--bits", type=int, nargs="*", default=[8, 4])
    ap.add_argument("--max-error", type=float, help="also plan the model for this target on random inputs")
    ap.add_argument("--work", type=Path, help="folder for the model and outputs (default: a temporary one)")
    ap.add_argument("--keep", action="store_true", help="keep the generated files")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="onnxcompress-streaming-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        t0 = time.perf_counter()
        model = generate(work, args.gb)
        size = model.stat().st_size + (work / "model.onnx.data").stat().st_size
        print(f"generated {size / 1e9:.2f} GB in {time.perf_counter() - t0:.0f} s: {model}", flush=True)
        lines = [
            f"# A {size / 1e9:.1f} GB model from the command line (`python benchmarks/bench_streaming.py "
            f"{' '.join(argv if argv is not None else sys.argv[1:])}`)",
            "",
            f"Model: {size / 1e9:.2f} GB, float32 MatMul weights of {ROWS} x {COLS} in one external data file. "
            "Each row is `onnxcompress MODEL -o OUT SETTING` in a fresh process (verification in onnxruntime "
            "included); peak RSS is that process's VmHWM.",
            "",
            "| setting | time | output | peak RSS | peak / model size | target |",
            "|---|---|---|---|---|---|",
        ]
        settings = [["--bits", str(b)] for b in args.bits]
        if args.max_error is not None:
            x = np.random.default_rng(1).standard_normal((64, ROWS)).astype(np.float32)
            np.savez(work / "x.npz", x=x)
            settings.append(["--max-error", str(args.max_error), "--inputs", str(work / "x.npz")])
        ok = True
        for setting in settings:
            r = compress_in_fresh_process(model, work / "out.onnx", setting)
            peak = r["peak_kib"] * 1024
            planned = "--max-error" in setting
            met = peak < _ram_bytes() if planned else peak / size < TARGET
            ok &= met
            row = (
                f"| {' '.join(setting[:2])} | {r['seconds']:.0f} s | {r['out_bytes'] / 1e6:.0f} MB | {peak / 2**30:.2f} GiB "
                f"| {peak / size:.2f}x | {'fits RAM' if planned else '< 2x'}: {'PASS' if met else 'FAIL'} |"
            )
            print(row, "  ", r["summary"], flush=True)
            lines.append(row)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / ("streaming_plan.md" if args.max_error is not None else "streaming.md")).write_text("\n".join(lines) + "\n")
        return 0 if ok else 1
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


def _ram_bytes() -> int:
    return next(int(line.split()[1]) * 1024 for line in open("/proc/meminfo") if line.startswith("MemTotal"))


if __name__ == "__main__":
    sys.exit(main())
