"""The planner: per tensor, how to store it (bits and granularity, float16, a low-rank pair, or
as it is) so that the model meets an output-error target with the fewest bytes, or a size
with the least error.

Here each tensor's options get their bytes and distortion: the sensitivity-weighted SSE of
the weight over its weighted squared norm, for every bit width from one k-means run
(sse_by_k), times the tensor's gain (how strongly its distortion reaches the outputs, probed in
onnxruntime). ladder.py decides on those numbers alone (the equal-slope ladder and the searches
along it); make_plan gives it the function that measures a plan (decoded weights fed to one
onnxruntime session) and confirms the chosen plan on the built model.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

import numpy as np
import onnx

from .compensate import Covariance, compensate, output_distortion
from .encode import Codebook, channel_rows, codebook_size, encode_codebook, per_tensor_widths, relative_error, storage_dtype
from .errors import TargetError, VerificationError
from .kmeans import kmeans1d_batched
from .ladder import Option, Plan, PlanTrace, TensorOptions, lower_hull, ladder, search_error, within_size
from .lowrank import (
    as_matrix,
    break_even_rank,
    encode_lowrank,
    factor_kind,
    rank_for_energy,
    singular_values,
    truncated_svd,
)
from .methods import EncodedWeight, assemble, encode_codebooks, weight_bytes
from .options import CodebookOptions, LowRankOptions, PlanOptions, TargetOptions
from .progress import Progress
from .rewrite import default_opset
from .rewrite_lowrank import factor_sites
from .select import Skipped, WeightSite
from .verify import compare, error_of, run, session

# What a codebook's decode nodes cost in the file beyond indices and centroids (names, shapes,
# node protos), measured on MiniLM's rewrites; it matters only for small tensors.
DECODER_BYTES = 600
# Per-channel options cost a batched k-means run at k = 16; skipped above this many values.
CHANNEL_OPTION_LIMIT = 1 << 22
# Added to each input feature's mean square (in units of their mean) in the importances the
# planner weighs by: from few inputs a feature's mean square is noisy, and one quiet on them
# may not be quiet elsewhere. Planned on 16 of the OCR model's 32 lines, --max-error 0.01
# measured 0.0100 on them and 0.029 on the 16 others without it, 0.0082 with it (a plan of
# 5.06 MB instead of 4.49); the other models' plans kept their size within 3%.
FEATURE_FLOOR = 0.1
# Low-rank plan options: float pairs at the ranks holding these shares of the squared norm, and
# at the middle one a pair of 8-bit codebooks too.
PAIR_ENERGIES = (0.999, 0.9999, 0.99999)
# The gain probes run on a quarter of the calibration rows, 4 to 12 of them, spread over the
# batch: one probe per tensor, so their cost must stay well below the candidates' runs (on
# MiniLM, 12 rows give the same plan as 24, and 24 the same as 48 to 0.1% of its bytes).
PROBE_ROWS = (4, 12)


@dataclass
class Calibration:
    """The inputs a plan is measured on, the original's outputs there, and the error function."""

    feeds: list[dict[str, np.ndarray]]
    reference: list[list[np.ndarray]]
    error: Callable[[list[list[np.ndarray]], list[list[np.ndarray]]], float]


def tensor_options(
    site: WeightSite, importance: np.ndarray | None, original_bytes: int, curve: np.ndarray, per_channel: bool = True
) -> TensorOptions:
    """Every option's bytes and distortion for one weight; `curve`: the (weighted) SSE of its
    best per-tensor clustering for 1..256 levels (Codebook.sse_by_k of its 8-bit codebook)."""
    a = site.array
    if importance is not None and not importance.any():
        importance = None  # no value matters on the calibration inputs: clustered plainly (encode.py)
    w = np.ones(a.shape) if importance is None else importance.astype(np.float64)
    norm = float(np.sum(w * a.astype(np.float64) ** 2)) or 1.0  # all zero: every option is exact
    entry = storage_dtype(a.dtype, "auto").itemsize
    options = [Option(None, bytes=original_bytes, distortion=0.0)]
    if _float16_is_an_option(a):
        half = a.astype(np.float16).astype(np.float64)
        options.append(Option(16, "float16", a.size * 2 + DECODER_BYTES, float(np.sum(w * (half - a) ** 2)) / norm))
    for bits, size, sse in per_tensor_widths(a.size, curve, entry, _lowest_bits(site)):
        options.append(Option(bits, "tensor", size + DECODER_BYTES, sse / norm))
    if per_channel and a.ndim >= 2 and a.size <= CHANNEL_OPTION_LIMIT:
        axis = site.channel_axis()
        rows = channel_rows(a, axis)
        rw = None if importance is None else channel_rows(np.broadcast_to(importance, a.shape), axis, np.float32)
        k_max = min(16, rows.shape[1])
        by_k = kmeans1d_batched(rows, k_max, rw).sse_by_k.sum(axis=0)
        for bits in range(_lowest_bits(site), 5):
            k = 1 << bits
            if k > rows.shape[1]:
                break
            size = codebook_size(a.size, bits, rows.shape[0], k, entry) + DECODER_BYTES
            options.append(Option(bits, "channel", size, max(float(by_k[k - 1]), 0.0) / norm))
    return TensorOptions(site, lower_hull(options))


# Ops whose weight input is summed over (a product's reduction averages the rounding errors
# out); a weight read only by other ops (a bias, a scale) reaches the outputs value by value.
PRODUCT_OPS = {"MatMul", "Gemm", "Conv", "ConvTranspose", "Gather", "LSTM", "GRU", "RNN", "Einsum"}
# ... and is not offered below this many bits: its 8-bit probe cannot see a coarse codebook's
# damage on inputs the calibration lacks (the OCR model's 18710 class biases at 1 bit, planned
# on 16 lines: 0.009 on them, 0.033 on 16 others)
LOWEST_ADDITIVE_BITS = 4


def _float16_is_an_option(a: np.ndarray) -> bool:
    """A wider float weight whose values all fit float16's range."""
    return a.dtype in (np.float32, np.float64) and float(np.abs(a).max(initial=0.0)) < 65504


def _lowest_bits(site: WeightSite) -> int:
    return 1 if any(c.op_type in PRODUCT_OPS for c in site.consumers) else LOWEST_ADDITIVE_BITS


def pair_options(
    site: WeightSite, importance: np.ndarray | None, codebook_o: CodebookOptions
) -> tuple[list[Option], dict[tuple[str, int | None, str], EncodedWeight]]:
    """Low-rank options for a weight a pair can replace: float pairs at the ranks holding
    PAIR_ENERGIES of the squared norm, and at the middle one also the pair of 8-bit codebooks;
    only ranks whose pair is smaller than the weight. Returns the options and their encodings."""
    kind, _ = factor_kind(site)
    if kind is None:
        return [], {}
    a = site.array
    rows, cols = as_matrix(a, kind).shape
    weight = np.ones(a.shape) if importance is None else np.broadcast_to(importance, a.shape).astype(np.float64)
    norm = float(np.sum(weight * a.astype(np.float64) ** 2))
    matrix: np.ndarray = as_matrix(a, kind).astype(np.float64 if a.dtype == np.float64 else np.float32)
    s = singular_values(matrix)  # first only the spectrum: most trained weights stop here
    total = float(np.sum(s**2))
    # A float pair must be smaller than the weight in float16, which is far more faithful
    # (MiniLM's embedding holds 0.999 of its energy at rank 377 of 384: a pair twice the
    # float16 table); the 8-bit pair must be smaller than the weight (then also than its
    # 8-bit codebook, near enough).
    eight_bit_limit = break_even_rank(rows, cols)
    float_limit = eight_bit_limit
    if _float16_is_an_option(a):
        float_limit = (a.size * 2 - 1) // ((rows + cols) * a.dtype.itemsize)
    ranks = {}
    for energy in PAIR_ENERGIES:
        r = rank_for_energy(s, total, energy)
        if r is not None and r <= (eight_bit_limit if energy == PAIR_ENERGIES[1] else float_limit):
            ranks[energy] = r
    if not ranks:
        return [], {}
    u, s, vt, _ = truncated_svd(matrix, None, 1.0, "full")
    options: list[Option] = []
    encoded: dict[tuple[str, int | None, str], EncodedWeight] = {}
    for energy, r in ranks.items():
        pair = encode_lowrank(a, kind, LowRankOptions(rank=r, svd="full"), u_s_vt=(u, s, vt))
        candidates = [(0, f"rank {r}", EncodedWeight(site, pair=pair, rel_error=pair.rel_error))] if r <= float_limit else []
        if energy == PAIR_ENERGIES[1]:
            sites = factor_sites(site, pair)
            eight = replace(codebook_o, bits=8, granularity="tensor")
            factors = [(fs, encode_codebook(fs.array, eight, fs.channel_axis())) for fs in sites]
            quantized = EncodedWeight(site, pair=pair, factors=factors)
            quantized.rel_error = relative_error(a, quantized.decoded())
            candidates.append((8, f"rank {r} + 8 tensor", quantized))
        for bits, label, e in candidates:
            distortion = float(np.sum(weight * (e.decoded() - a) ** 2)) / norm if norm > 0 else 0.0
            option = Option(bits, label, e.stored_bytes() + DECODER_BYTES, distortion)
            options.append(option)
            encoded[option.key(site.name)] = e
    return options, encoded


class Probe:
    """One onnxruntime session of the original with its weights as overridable inputs, so a
    candidate is measured by feeding decoded weights: no rewrite, no new session. Weights in
    Constant nodes cannot be fed; `covers` says which can."""

    def __init__(self, source: onnx.ModelProto, weights: list[WeightSite]) -> None:
        inits = {t.name for t in source.graph.initializer}
        self.covers = {w.name for w in weights if w.name in inits}
        probe = onnx.ModelProto()
        probe.CopyFrom(source)
        declared = {i.name for i in probe.graph.input}
        for w in weights:
            if w.name in self.covers and w.name not in declared:
                probe.graph.input.append(onnx.helper.make_tensor_value_info(w.name, w.onnx_dtype, list(w.array.shape)))
        self.sess = session(probe, "the model with its weights as inputs", quiet=True)  # it warns per weight input

    def run(self, feeds: list[dict[str, np.ndarray]], weights: dict[str, np.ndarray]) -> list[list[np.ndarray]]:
        return run(self.sess, [{**feed, **weights} for feed in feeds], "a planned model")


def output_gains(
    probe: Probe, weights: list[WeightSite], importance: dict[str, np.ndarray], eight: dict[str, Codebook], calib: Calibration
) -> dict[str, float]:
    """How strongly each tensor's distortion reaches the outputs: each weight alone as its
    8-bit codebook (`eight`), the rest exact, measured on a sample of the calibration inputs; gain = (worst relative L2
    error of an output)^2 / distortion, whatever the target's metric (a step metric such as
    top-1 would read zero for most single tensors). Weights the probe cannot feed get the
    median gain."""
    feed = [_sample(calib.feeds[0], PROBE_ROWS)]
    base = probe.run(feed, {})
    gains: dict[str, float] = {}
    for w in weights:
        if w.name not in probe.covers:
            continue
        imp = importance.get(w.name)
        weight = np.ones(w.array.shape) if imp is None else imp.astype(np.float64)
        a = w.array.astype(np.float64)
        decoded = eight[w.name].decoded().astype(w.array.dtype)
        distortion = float(np.sum(weight * (decoded - a) ** 2) / max(np.sum(weight * a * a), 1e-300))
        got = probe.run(feed, {w.name: decoded})
        err = error_of(compare([str(i) for i in range(len(got[0]))], base, got), "rel-l2")
        if distortion > 0 and np.isfinite(err):
            gains[w.name] = max(err, 1e-12) ** 2 / distortion
    if gains:
        median = float(np.median(list(gains.values())))
        gains.update({w.name: median for w in weights if w.name not in gains})
    return gains


def compensation_ratios(
    weights: list[WeightSite], eight: dict[str, Codebook], compensated: dict[str, Codebook], covariance: dict[str, Covariance]
) -> dict[str, float]:
    """Per weight with a covariance, how much compensated rounding lowers the output
    distortion of its 8-bit codebook (its ratio to nearest rounding's); the planner scales the
    weight's codebook options by it (on MiniLM it ranges 2-9x, slowly rising at fewer bits, so
    the 8-bit ratio slightly understates the lower widths' gain; measurement settles it)."""
    ratios = {}
    for w in weights:
        if w.name not in compensated:
            continue
        cov = covariance[w.name]
        plain = output_distortion(w.array, eight[w.name].decoded(), cov)
        if plain > 0:
            ratios[w.name] = min(1.0, output_distortion(w.array, compensated[w.name].decoded(), cov) / plain)
    return ratios


def _curve(cb: Codebook) -> np.ndarray:
    assert cb.sse_by_k is not None, "a per-tensor codebook carries its curve"
    return cb.sse_by_k


def _is_codebook(o: Option) -> bool:
    return o.bits is not None and o.granularity in ("tensor", "channel")


def _sample(feed: dict[str, np.ndarray], bounds: tuple[int, int]) -> dict[str, np.ndarray]:
    """A quarter of a batched feed's items (within `bounds`), spread evenly over it, when every
    input shares a leading batch; else the feed as it is. Spread, not the first ones: on MiniLM
    the first 16 sentences showed 0.008 where all 204 showed 0.014 for the same tensor."""
    leads = {v.shape[0] if np.ndim(v) else None for v in feed.values()}
    if len(leads) == 1 and (n := leads.pop()) is not None and n > (rows := max(bounds[0], min(bounds[1], n // 4))):
        pick = np.linspace(0, n - 1, rows).round().astype(int)
        return {k: v[pick] for k, v in feed.items()}
    return feed


def make_plan(
    source: onnx.ModelProto,
    weights: list[WeightSite],
    importance: dict[str, np.ndarray],
    plan_o: PlanOptions,
    codebook_o: CodebookOptions,
    target_o: TargetOptions,
    calib: Calibration,
    file_bytes: int,
    progress: Progress = False,
    covariance: dict[str, Covariance] | None = None,
) -> tuple[list[EncodedWeight], list[Skipped], dict, tuple[onnx.ModelProto, dict[str, str]]]:
    """Plan, build and (for an error target) measure; returns the chosen plan's encodings, the
    tensors it keeps in float, what the search did, and the built model with its index storage
    (as methods.assemble gives them). Weights with a `covariance` get compensated codebooks
    (compensate.py). Raises TargetError when no plan that compresses anything meets the
    target."""
    t0 = time.perf_counter()
    low_bits = default_opset(source) >= 11  # below 8 bits and per channel need BitShift / GatherElements (Cast: any)
    sizes = {w.name: weight_bytes(w) for w in weights}
    pairs: dict[tuple[str, int | None, str], EncodedWeight] = {}
    # The 8-bit codebooks come first: their k-means runs also give every per-tensor option's
    # distortion (sse_by_k), and the gain probes and compensation start from them.
    eight = encode_codebooks(weights, replace(codebook_o, bits=8, granularity="tensor"), progress, importance)
    with ThreadPoolExecutor(max(1, min(len(weights), os.cpu_count() or 1))) as pool:
        futures = [
            pool.submit(tensor_options, w, importance.get(w.name), sizes[w.name], _curve(eight[w.name]), low_bits)
            for w in weights
        ]
        # pairs of 8-bit codebooks need the same opset as the rest
        pair_futures = [pool.submit(pair_options, w, importance.get(w.name), codebook_o) for w in weights] if low_bits else []
        tensors = [f.result() for f in futures]
        for t, pf in zip(tensors, pair_futures, strict=False):
            pair_opts, pair_encodings = pf.result()
            pairs.update(pair_encodings)
            t.options = lower_hull(t.options + pair_opts)
    if not low_bits:
        for t in tensors:
            allowed = [o for o in t.options if (o.bits in (None, 8) and o.granularity == "tensor") or o.granularity == "float16"]
            t.options = lower_hull(allowed)
    try:
        probe: Probe | None = Probe(source, weights)
    except VerificationError:  # a model that cannot take its weights as inputs: build every candidate
        probe = None
    cache: dict[tuple[str, int | None, str], EncodedWeight] = {}
    gains: dict[str, float] = {}
    sites = {w.name: w for w in weights}
    covariance = {n: c for n, c in (covariance or {}).items() if n in sites}
    compensation: dict[str, float] = {}
    if probe is not None:
        gains = output_gains(probe, weights, importance, eight, calib)
    done: dict[str, Codebook] = {}
    if covariance:
        with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
            names = list(covariance)
            done = dict(zip(names, pool.map(lambda n: compensate(sites[n].array, eight[n], covariance[n]), names), strict=True))
        compensation = compensation_ratios(weights, eight, done, covariance)
    for w in weights:  # the 8-bit codebooks are plan options too
        cache[Option(8, "tensor").key(w.name)] = EncodedWeight.of_codebook(w, done.get(w.name, eight[w.name]))
    for t in tensors:
        g, r = gains.get(t.site.name, 1.0), compensation.get(t.site.name, 1.0)
        t.options = [replace(o, distortion=o.distortion * g * (r if _is_codebook(o) else 1.0)) for o in t.options]
        t.options = lower_hull(t.options)
    plans = ladder(tensors)

    def encodings(plan: Plan) -> list[EncodedWeight]:
        chosen = [(w, plan.choices[w.name]) for w in weights if plan.choices[w.name].bits is not None]
        todo = [(w, o) for w, o in chosen if o.key(w.name) not in cache]
        for w, o in todo:
            if o.granularity.startswith("rank"):
                cache[o.key(w.name)] = pairs[o.key(w.name)]
            elif o.granularity == "float16":
                half = w.array.astype(np.float16)
                cache[o.key(w.name)] = EncodedWeight(
                    w, half=half, rel_error=relative_error(w.array, half.astype(np.float64))
                )
        todo = [(w, o) for w, o in todo if o.key(w.name) not in cache]
        if todo:
            per = {w.name: replace(codebook_o, bits=o.bits or 8, granularity=o.granularity) for w, o in todo}
            done = encode_codebooks([w for w, _ in todo], per, progress, importance, covariance=covariance)
            for w, o in todo:
                cache[o.key(w.name)] = EncodedWeight.of_codebook(w, done[w.name])
        return [cache[o.key(w.name)] for w, o in chosen]

    last: list = [None, None]  # (choices, (model, stored)) of the latest build: the result is built once

    def build(plan: Plan) -> onnx.ModelProto:
        if last[0] != plan.choices:
            last[:] = [plan.choices, assemble(source, encodings(plan), target_o.ort_version())]
        return last[1][0]

    def measure_built(model: onnx.ModelProto) -> float:
        return calib.error(calib.reference, run(session(model, "a planned model"), calib.feeds, "a planned model"))

    def measure(plan: Plan) -> float:
        encoded = encodings(plan)
        if probe is None or not all(e.site.name in probe.covers for e in encoded):
            return measure_built(build(plan))
        values = {e.site.name: e.decoded().astype(e.site.array.dtype) for e in encoded}
        return calib.error(calib.reference, probe.run(calib.feeds, values))

    trace = PlanTrace()
    other_bytes = file_bytes - sum(sizes.values())
    if plan_o.max_error is not None:
        target = f"--max-error {plan_o.max_error:g} ({plan_o.metric if isinstance(plan_o.metric, str) else 'your metric'})"
        best = search_error(plans, plan_o.max_error, measure, trace, tensors)
        # the probe runs without onnxruntime's constant-weight fusions: confirm on the built
        # model, and step up the ladder in the rare case rounding puts it over the target
        while best is not None and (built := measure_built(build(best))) > plan_o.max_error:
            larger = [p for p in plans if p.bytes > best.bytes and p.compressed()]
            best = min(larger, key=lambda p: p.bytes) if larger else None
        if best is not None:
            best.measured = built
        if best is None:
            tried = min((e for _, e in trace.evaluations), default=float("nan"))
            raise TargetError(
                f"cannot meet {target}: the most faithful plan that still compresses something measured {tried:.3g} on "
                "these inputs; raise --max-error, or pass --include/--exclude to keep sensitive tensors out"
            )
    else:
        budget = int(plan_o.target_size * 1e6) if plan_o.target_size is not None else int(file_bytes / (plan_o.ratio or 1.0))
        target = f"--target-size {budget / 1e6:g} MB" if plan_o.target_size is not None else f"--ratio {plan_o.ratio:g}"
        best = None
        for p in within_size(tensors, [p for p in plans if p.compressed()], budget - other_bytes):
            if build(p).ByteSize() <= budget:  # the estimate leaves out small proto overheads: check
                best = p
                break
        if best is None:
            smallest = min(p.bytes for p in plans) + other_bytes
            raise TargetError(
                f"cannot meet {target}: the smallest plan (every tensor at 1 bit) is about {smallest / 1e6:.2f} MB; "
                "raise the size or lower --ratio"
            )
        best.measured = measure_built(build(best))
    encoded = encodings(best)
    kept = [
        Skipped(w.name, tuple(w.array.shape), "the plan keeps it in float (too sensitive for its size)")
        for w in weights
        if best.choices[w.name].bits is None
    ]
    info = {
        "target": target,
        "measured": best.measured,
        "plans_on_ladder": len(plans),
        "candidates": [{"bytes": b + other_bytes, "error": e} for b, e in trace.evaluations],
        "estimated_bytes": best.bytes + other_bytes,
        # the same estimate for uniform 8 bits per tensor, so the report can say what planning bought
        "eight_bit_bytes": other_bytes + sum(min(sizes[w.name], eight[w.name].stored_bytes() + DECODER_BYTES) for w in weights),
        "seconds": time.perf_counter() - t0,
    }
    build(best)
    return encoded, kept, info, last[1]
