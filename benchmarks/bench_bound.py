"""How much smaller than 8 bits any weight coder could make each model at --max-error 0.01:
an estimate from measured errors and the weights' entropy, next to what the planner reached.

    python benchmarks/fetch_models.py     # once
    python benchmarks/bench_bound.py [--cache DIR] [--models a,b]

Per model, on its real inputs:
1. The worst relative L2 output error of uniform 6, 7 and 8 bits per tensor, calibrated
   (sensitivity-weighted k-means, error-compensated rounding), as the planner would start.
   Each bit removed multiplies it by about the same factor r (2 for Gaussian noise), so the
   target leaves `slack` = log_r(0.01 / error at 8 bits) bits to remove from every weight.
2. The bits per weight an ideal entropy coder needs for each weight's own error at 8 bits:
   the entropy of a uniform quantizer with that mean squared error (entropy-coded uniform
   quantization is within 0.25 bit of the rate-distortion bound at these rates, so 0.25 bit
   is taken off too). No ONNX decoder can undo an entropy code at load, so this is below
   anything a codebook reaches; k-means codebooks pay the full 8 bits.
3. best = 8 / (entropy bits - 0.25 - slack): the most any coder could shrink the weights
   under the same error if every weight mattered alike; and 8 / (8 - slack) for a fixed-rate
   codebook, which the planner's options are. Unequal sensitivities let a plan do
   better (digits); the planner's measured ratio is shown beside it (from results/plan.json).
Writes benchmarks/results/bound.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import tempfile
import warnings
from pathlib import Path

import numpy as np
from harness import DEFAULT_CACHE, MISSING, compress_checked, model_inputs, session, write_json

from onnxcompress.encoding.codebook import binned_kmeans
from onnxcompress.encoding.kmeans import kmeans1d
from onnxcompress.io.load import load_model
from onnxcompress.options import SelectOptions
from onnxcompress.io.select import select_weights
from onnxcompress.runtime.verify import compare

RESULTS = Path(__file__).parent / "results"
MODELS = ["digits_mlp", "minilm_l6", "ppocrv6_rec_small", "silero_vad_seq", "mtcnn_onet"]
MAX_ERROR = 0.01
ECSQ_GAP_BITS = 0.5 * math.log2(math.pi * math.e / 6)  # 0.254: uniform + entropy code vs the bound


def output_error(src: Path, dst: Path, bits: int, feed: dict) -> float:
    compress_checked(src, dst, force=True, bits=bits, verify=False, calibration=feed)
    names = [o.name for o in session(src).get_outputs()]
    ref, got = session(src).run(names, feed), session(dst).run(names, feed)
    return max(d.rel_l2 for d in compare(names, [ref], [got]))


def entropy_bits(w: np.ndarray) -> float:
    """Entropy (bits per value) of the uniform quantizer whose MSE equals 256-level k-means'."""
    if w.size <= 300_000:
        r = kmeans1d(w, 256)
        mse = float(np.mean((r.centroids[r.labels] - w) ** 2))
    else:
        centroids, labels, _ = binned_kmeans(w, 256)
        mse = float(np.mean((centroids[labels] - w) ** 2))
    lo, hi = 1e-12, 10 * float(w.std()) + 1e-12
    for _ in range(40):  # bisect the step on a log scale: MSE grows with it
        step = math.sqrt(lo * hi)
        lo, hi = (step, hi) if np.mean((np.round(w / step) * step - w) ** 2) < mse else (lo, step)
    q = np.round(w / step).astype(np.int64)
    p = np.bincount(q - q.min()) / q.size
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    logging.getLogger().setLevel(logging.ERROR)
    planned = {}
    if (args.out / "plan.json").exists():  # bench_plan's run written beside this one
        for row in json.loads((args.out / "plan.json").read_text()):
            planned[row["model"]] = row["uniform8"]["bytes"] / row["planned"]["bytes"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            if name != "digits_mlp" and not (args.cache / "models" / f"{name}.onnx").exists():
                print(f"{name}: not in {args.cache} ({MISSING}); skipped")
                continue
            src, feed, _ = model_inputs(name, args.cache)
            errors = {b: output_error(Path(src), Path(tmp) / f"{b}.onnx", b, feed) for b in (8, 7, 6)}
            per_bit = math.sqrt(errors[6] / errors[8])
            slack = math.log(MAX_ERROR / errors[8]) / math.log(per_bit)
            loaded = load_model(src)
            weights = select_weights(loaded.model, SelectOptions(), loaded.data_dir).weights
            sizes = [w.array.size for w in weights]
            per_weight = [entropy_bits(np.asarray(w.array, dtype=np.float64).ravel()) for w in weights]
            entropy = float(np.dot(per_weight, sizes)) / sum(sizes)
            bits = entropy - ECSQ_GAP_BITS - slack
            row = {
                "model": name,
                "errors": errors,
                "per_bit": per_bit,
                "slack": slack,
                "entropy": entropy,
                "best": 8 / bits if bits > 0 else math.inf,
                "best_codebook": 8 / (8 - slack),
                "planned": planned.get(name),
            }
            rows.append(row)
            print(name, {k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}, flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(rows, args.out / "bound.json")
    (args.out / "bound.md").write_text(render(rows))
    print(render(rows))
    return 0


def render(rows: list[dict]) -> str:
    lines = [
        f"# How small any weight coder could go at --max-error {MAX_ERROR} (`python benchmarks/bench_bound.py`)",
        "",
        "| model | calibrated 8 / 7 / 6 bit: rel. L2 | per bit removed | bits the target frees | "
        "entropy at 8-bit error | best any coder, vs 8 bit | best codebook | the planner, vs 8 bit |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        e = r["errors"]
        got = f"{r['planned']:.2f}x" if r["planned"] else "(run bench_plan.py)"
        lines.append(
            f"| {r['model']} | {e[8]:.1e} / {e[7]:.1e} / {e[6]:.1e} | x{r['per_bit']:.2f} | {r['slack']:.2f} | "
            f"{r['entropy']:.2f} bits | {r['best']:.2f}x | {r['best_codebook']:.2f}x | {got} |"
        )
    lines += [
        "",
        "Best any coder: 8 / (entropy - 0.25 - bits the target frees); best codebook: 8 / (8 - bits the target",
        "frees). Both assume every weight reaches the outputs alike; a plan gains more where sensitivities differ.",
        "Target of issue 5: 1.5x.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
