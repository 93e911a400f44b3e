"""Independent tensors encoded in parallel: the k-means core releases the GIL, so threads
use every core. Times encoding every weight of each real model at 8 and 4 bits with one
thread and with one per core, in one process, best of three.

    python benchmarks/bench_parallel.py [--cache DIR]

Writes benchmarks/results/parallel.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import onnx

from onnxcompress.encoding.encoded import encode_codebooks
from onnxcompress.options import CodebookOptions, SelectOptions
from onnxcompress.io.select import select_weights

from harness import DEFAULT_CACHE

RESULTS = Path(__file__).parent / "results"


def best_of(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    cores = os.cpu_count() or 1
    lines = [
        f"# Encoding in parallel ({cores} cores, `python benchmarks/bench_parallel.py`)",
        "",
        "| model | tensors | bits | 1 thread | " + f"{cores} threads | speed-up |",
        "|---|---|---|---|---|---|",
    ]
    for name in ["minilm_l6", "ppocrv6_rec_small", "silero_vad_seq", "mtcnn_onet"]:
        path = args.cache / "models" / f"{name}.onnx"
        if not path.exists():
            print(f"{name}: not in {args.cache}; skipped")
            continue
        weights = select_weights(onnx.load(str(path)), SelectOptions()).weights
        for bits in (8, 4):
            options = CodebookOptions(bits=bits)
            one = best_of(lambda w=weights, o=options: encode_codebooks(w, o, workers=1))
            many = best_of(lambda w=weights, o=options: encode_codebooks(w, o, workers=cores))
            row = f"| {name} | {len(weights)} | {bits} | {one:.2f} s | {many:.2f} s | {one / many:.2f}x |"
            print(row, flush=True)
            lines.append(row)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "parallel.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
