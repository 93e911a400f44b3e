"""Issue 19's untried sub-8-bit encodings, measured at equal size against the codebooks the
planner already has, on the benchmark models' largest weights.

    python benchmarks/bench_encodings.py [--cache DIR] [--models a,b] [--top N]

Each weight with an input covariance H (MatMul, Gemm, Conv) is measured by the share of its
consumer's output energy lost, tr(D^T H D) / tr(W^T H W) on the model's real inputs, the
quantity the planner's compensated codebooks minimize. The reference is the better of the
compensated per-tensor and scaled codebooks at 2..8 bits: its log distortion, interpolated
over bits per value, turns any candidate's (bits per value, distortion) into "bits saved at
equal distortion" (positive: the candidate wins). Candidates:

- bias correction: the mean output shift mu^T D moved into the bias (free where the consumer
  has one, n floats where not); it removes ||D^T mu||^2 of the uncentered distortion;
- outliers: the 0.5% values of largest |w| sqrt(H_ii) kept exact (a 32-bit position and a
  float16 value each), the rest compensated around them;
- whitened low rank plus a residual codebook: the rank-r SVD of H^(1/2) W in float16, and the
  residual compensated at b bits;
- pairs: one index per two values into a 2-D codebook of 2^(2b) rows (Lloyd's k-means weighted
  by H_ii), against the scalar codebook at b bits, both rounded to nearest (no compensation:
  the pair's first-order gain).

Writes benchmarks/results/encodings.md and encodings.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import onnx

from onnxcompress.encoding.codebook import encode_codebook
from onnxcompress.encoding.compensate import Covariance, compensate, compensated_rounding, output_distortion
from onnxcompress.io.load import load_model
from onnxcompress.io.select import WeightSite, select_weights
from onnxcompress.options import CodebookOptions, SelectOptions
from onnxcompress.runtime.calibrate import calibrate
from onnxcompress.runtime.verify import run, session

sys.path.insert(0, str(Path(__file__).parent))
from harness import DEFAULT_CACHE, model_inputs, write_json  # noqa: E402

RESULTS = Path(__file__).parent / "results"
MODELS = ["digits_mlp", "minilm_l6", "ppocrv6_rec_small", "silero_vad_seq", "mtcnn_onet"]
CURVE_BITS = range(2, 9)
TRIAL_BITS = (3, 4, 6)
OUTLIER_SHARE = 0.005
OUTLIER_BITS = 48  # a 32-bit flat position and a float16 value
LOWRANK_SHARES = (0.05, 0.1)  # of the smaller side
PAIR_BITS = (2, 3, 4)  # 2^(2b) rows: 4096 at 6 bits would cost more than small weights hold
PAIR_FIT_SAMPLE = 200_000
LLOYD_STEPS = 25


def distortion(site: WeightSite, cov: Covariance, approx_rows: np.ndarray) -> float:
    """compensate.output_distortion of an approximation given as rows (Covariance.as_rows)."""
    return output_distortion(site.array, cov.from_rows(approx_rows, site.array.shape), cov)


def reference_curve(site: WeightSite, cov: Covariance) -> tuple[dict[int, float], dict[int, np.ndarray]]:
    """Per width, the best compensated per-tensor or scaled codebook's distortion and its error
    D (rows view)."""
    a = site.array
    w = cov.as_rows(a.astype(np.float64))
    curve, errors = {}, {}
    for bits in CURVE_BITS:
        curve[bits] = np.inf
        for layout in ("tensor", "scaled"):
            cb = compensate(a, encode_codebook(a, CodebookOptions(bits=bits, granularity=layout), site.channel_axis()), cov)
            d = cov.as_rows(cb.decoded().astype(np.float64)) - w
            if (dist := output_distortion(a, cb.decoded(), cov)) < curve[bits]:
                curve[bits], errors[bits] = dist, d
    return curve, errors


def bits_saved(curve: dict[int, float], cost_bits: float, dist: float) -> float:
    """The reference's bits per value at this distortion (log-linear between widths, and past
    the widest by the curve's last slope) minus cost_bits."""
    bits = np.array(sorted(curve), dtype=float)
    logs = np.log2([max(curve[int(b)], 1e-30) for b in bits])
    at = np.log2(max(dist, 1e-30))
    if at < logs[-1]:  # below the 8-bit reference: extrapolate rather than clamp at 8
        slope = (bits[-1] - bits[-2]) / (logs[-1] - logs[-2])
        return float(bits[-1] + (at - logs[-1]) * slope) - cost_bits
    # logs fall with bits: interpolate bits over the reversed (increasing) logs
    return float(np.interp(at, logs[::-1], bits[::-1])) - cost_bits


def nearest_scalar(cb_levels: np.ndarray):
    levels = np.sort(cb_levels)
    mids = (levels[1:] + levels[:-1]) / 2

    def nearest(values: np.ndarray, row: int) -> tuple[np.ndarray, np.ndarray]:
        idx = np.searchsorted(mids, values)
        return idx, levels[idx]

    return nearest


def with_outliers(site: WeightSite, cov: Covariance, h: np.ndarray, bits: int) -> float:
    a = site.array
    w = cov.as_rows(a.astype(np.float64))
    score = np.abs(w) * np.sqrt(np.maximum(np.diag(h), 0))[:, None]
    n_keep = max(1, int(OUTLIER_SHARE * w.size))
    keep = np.zeros(w.size, dtype=bool)
    keep[np.argpartition(score.reshape(-1), -n_keep)[-n_keep:]] = True
    keep = keep.reshape(w.shape)
    rest = cov.from_rows(np.where(keep, 0.0, w), a.shape)  # levels fitted without the outliers
    cb = encode_codebook(rest.astype(np.float32)[~cov.from_rows(keep, a.shape)], CodebookOptions(bits=bits))
    scalar = nearest_scalar(cb.centroids[0].astype(np.float64))

    def nearest(values: np.ndarray, row: int) -> tuple[np.ndarray, np.ndarray]:
        idx, levels = scalar(values, row)
        exact = np.where(keep[row], values, levels)  # a kept value lands exactly where compensation moved it
        return idx, exact

    rounded = np.empty_like(w)

    def record(values: np.ndarray, row: int) -> tuple[np.ndarray, np.ndarray]:
        idx, levels = nearest(values, row)
        rounded[row] = levels
        return idx, levels

    compensated_rounding(a, cov, record)
    return distortion(site, cov, rounded)


def lowrank_residual(site: WeightSite, cov: Covariance, h: np.ndarray, bits: int, rank: int) -> float:
    a = site.array
    w = cov.as_rows(a.astype(np.float64))
    vals, vecs = np.linalg.eigh(h)
    root = (vecs * np.sqrt(np.maximum(vals, 0))) @ vecs.T
    inv_root = (vecs * (1 / np.sqrt(np.maximum(vals, vals.max() * 1e-10)))) @ vecs.T
    u, s, vt = np.linalg.svd(root @ w, full_matrices=False)
    left = (inv_root @ (u[:, :rank] * s[:rank])).astype(np.float16).astype(np.float64)
    right = vt[:rank].astype(np.float16).astype(np.float64)
    pair = left @ right
    residual = cov.from_rows(w - pair, a.shape).astype(np.float32)
    cb = compensate(residual, encode_codebook(residual, CodebookOptions(bits=bits)), cov)
    return distortion(site, cov, pair + cov.as_rows(cb.decoded().astype(np.float64)))


def lloyd_2d(points: np.ndarray, weights: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    sample = rng.choice(len(points), size=min(len(points), PAIR_FIT_SAMPLE), replace=False)
    p, wt = points[sample], weights[sample]
    centers = p[rng.choice(len(p), size=k, replace=len(p) < k)].copy()
    for _ in range(LLOYD_STEPS):
        labels = assign_2d(p, centers)
        sums = np.zeros_like(centers)
        np.add.at(sums, labels, p * wt[:, None])
        mass = np.bincount(labels, weights=wt, minlength=k)
        moved = mass > 0
        centers[moved] = sums[moved] / mass[moved, None]
    return centers


def assign_2d(points: np.ndarray, centers: np.ndarray) -> np.ndarray:
    out = np.empty(len(points), dtype=np.int64)
    c2 = (centers**2).sum(1)
    for start in range(0, len(points), 65536):
        part = points[start : start + 65536]
        out[start : start + 65536] = np.argmin(c2[None, :] - 2 * part @ centers.T, axis=1)
    return out


def pair_gain(site: WeightSite, cov: Covariance, h: np.ndarray, bits: int) -> tuple[float, float, float]:
    """(scalar, pair) distortion at `bits` per value, both rounded to nearest, importance H_ii,
    and the pair codebook's bits per value."""
    a = site.array
    w = cov.as_rows(a.astype(np.float64))
    imp = np.broadcast_to(np.maximum(np.diag(h), 0)[:, None], w.shape)
    cb = encode_codebook(a, CodebookOptions(bits=bits), importance=cov.from_rows(imp, a.shape).astype(np.float32))
    scalar = cov.as_rows(cb.decoded().astype(np.float64))
    # pairs of neighbours along the output axis, which share their input feature's weight H_ii
    cols = w.shape[1] - w.shape[1] % 2
    points = w[:, :cols].reshape(-1, 2)
    pw = imp[:, :cols].reshape(-1, 2)[:, 0]
    centers = lloyd_2d(points, pw, 1 << (2 * bits), np.random.default_rng(0))
    approx = w.copy()
    approx[:, :cols] = centers[assign_2d(points, centers)].reshape(w.shape[0], cols)
    return distortion(site, cov, scalar), distortion(site, cov, approx), centers.size * 32 / w.size


def output_means(model: onnx.ModelProto, cov: dict[str, Covariance], feed: dict) -> dict[str, np.ndarray]:
    """Per weight, the mean of its consumer's input vector (the row view's reduction axis), in
    the units of its Covariance (calibrate scales E[x x^T] to trace d)."""
    wanted = {}
    for node in model.graph.node:
        for i, name in enumerate(node.input):
            if name in cov and name not in wanted and i == 1 and node.op_type in ("MatMul", "Gemm", "Conv"):
                wanted[name] = (node.input[0], node.op_type, node)
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    acts = sorted({a for a, _, _ in wanted.values()} - set(feed))
    probe.graph.output.extend(onnx.ValueInfoProto(name=n) for n in acts)
    (outs,) = run(session(probe, "probe"), [feed], "probe", acts)
    values = dict(zip(acts, outs, strict=True)) | feed
    means = {}
    for name, (act, op, node) in wanted.items():
        v = np.asarray(values[act], dtype=np.float64)
        d = cov[name].features
        if op == "Conv":  # a patch's mean: its channel's mean at every tap (padding ignored)
            rows = np.moveaxis(v, 1, -1).reshape(-1, v.shape[1])
            taps = d // rows.shape[1]
            mu, trace = np.repeat(rows.mean(axis=0), taps), taps * float((rows**2).sum(axis=1).mean())
        else:
            rows = v.T if op == "Gemm" and any(a.name == "transA" and a.i for a in node.attribute) else v.reshape(-1, v.shape[-1])
            mu, trace = rows.mean(axis=0), float((rows**2).sum(axis=1).mean())
        if mu.size == d and trace > 0:
            means[name] = mu * np.sqrt(d / trace)
    return means


def has_bias(model: onnx.ModelProto, name: str) -> bool:
    """The consumer adds a constant vector already (Gemm's or Conv's C, a MatMul's Add)."""
    consts = {t.name for t in model.graph.initializer}
    for node in model.graph.node:
        if name in node.input and node.op_type in ("Gemm", "Conv") and len(node.input) > 2 and node.input[2]:
            return True
        if name in node.input and node.op_type == "MatMul":
            adds = [n for n in model.graph.node if n.op_type == "Add" and node.output[0] in n.input]
            return any(set(n.input) & consts for n in adds)
    return False


def measure_weight(model, site, cov, mu) -> dict:
    a = site.array
    h = cov.matrix.astype(np.float64)
    w = cov.as_rows(a.astype(np.float64))
    curve, errors = reference_curve(site, cov)
    row = {"weight": site.name, "shape": list(a.shape), "curve": curve}
    norm = float(np.einsum("ij,ij->", w, h @ w))
    extra = 0.0 if has_bias(model, site.name) else 32 * w.shape[1] / w.size
    bias, outl, lowr, pairs = {}, {}, {}, {}
    for bits in TRIAL_BITS:
        if mu is not None:
            shift = float(np.sum((mu @ errors[bits]) ** 2)) / norm
            bias[bits] = bits_saved(curve, bits + extra, curve[bits] - shift)
        outl[bits] = bits_saved(curve, bits + OUTLIER_SHARE * OUTLIER_BITS, with_outliers(site, cov, h, bits))
        best = -np.inf
        for share in LOWRANK_SHARES:
            rank = max(1, int(share * min(w.shape)))
            cost = bits + 16 * rank * (w.shape[0] + w.shape[1]) / w.size
            best = max(best, bits_saved(curve, cost, lowrank_residual(site, cov, h, bits, rank)))
        lowr[bits] = best
    for bits in PAIR_BITS:
        scalar, pair, table_bits = pair_gain(site, cov, h, bits)
        pairs[bits] = float(np.log2(scalar / pair) / 2) - table_bits  # a bit is a 4x lower distortion
    row.update(bias=bias, outliers=outl, lowrank=lowr, pairs=pairs)
    return row


def measure_model(name: str, cache: Path, top: int) -> list[dict]:
    path, feed, _ = model_inputs(name, cache)
    model = load_model(str(path)).model
    sites = select_weights(model, SelectOptions()).weights
    cov = calibrate(model, sites, [feed], covariances=True, classes=False).covariance
    sites = sorted((s for s in sites if s.name in cov), key=lambda s: -s.array.size)[:top]
    means = output_means(model, {s.name: cov[s.name] for s in sites}, feed)
    rows = []
    for site in sites:
        row = measure_weight(model, site, cov[site.name], means.get(site.name))
        row["model"] = name
        rows.append(row)
        print(name, site.name, {k: row[k] for k in ("bias", "outliers", "lowrank", "pairs")}, flush=True)
    return rows


def fmt(d: dict, bits) -> str:
    return " / ".join("n/a" if k not in d or not np.isfinite(d[k]) else f"{d[k]:+.2f}" for k in bits)


def write(rows: list[dict]) -> None:
    head = (
        "# Sub-8-bit encodings at equal size (`python benchmarks/bench_encodings.py`)\n\n"
        "Bits per value saved at equal output distortion against the best compensated per-tensor or scaled "
        "codebook (positive: the candidate wins; one bit is a 4x lower distortion; below the 8-bit reference, "
        "extrapolated along its last step). Columns at "
        f"{'/'.join(map(str, TRIAL_BITS))} bits, pairs at {'/'.join(map(str, PAIR_BITS))} bits.\n\n"
        "| model | weight | shape | bias correction | outliers 0.5% | whitened low rank + residual | pairs (nearest) |\n"
        "|---|---|---|---|---|---|---|\n"
    )
    lines = [
        f"| {r['model']} | {r['weight']} | {'x'.join(map(str, r['shape']))} | {fmt(r['bias'], TRIAL_BITS)} | "
        f"{fmt(r['outliers'], TRIAL_BITS)} | {fmt(r['lowrank'], TRIAL_BITS)} | {fmt(r['pairs'], PAIR_BITS)} |"
        for r in rows
    ]
    means = []
    for key, bits in (("bias", TRIAL_BITS), ("outliers", TRIAL_BITS), ("lowrank", TRIAL_BITS), ("pairs", PAIR_BITS)):
        vals = [[r[key][b] for r in rows if b in r[key] and np.isfinite(r[key][b])] for b in bits]
        means.append(" / ".join(f"{np.median(v):+.2f}" if v else "n/a" for v in vals))
    lines.append(f"| median | | | {' | '.join(means)} |")
    (RESULTS / "encodings.md").write_text(head + "\n".join(lines) + "\n")
    write_json(rows, RESULTS / "encodings.json")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--top", type=int, default=4, help="largest weights per model")
    args = ap.parse_args()
    rows = []
    for name in args.models.split(","):
        rows += measure_model(name, args.cache, args.top)
    write(rows)
    print((RESULTS / "encodings.md").read_text())


if __name__ == "__main__":
    main()
