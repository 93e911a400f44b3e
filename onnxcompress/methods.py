"""Step 3: encode each selected weight as --method says: a codebook, a low-rank pair, a pair
whose factors are codebooks, or (auto) the smallest of these at the codebook's weight error."""

from __future__ import annotations

import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

import numpy as np
import onnx

from .compensate import Covariance, compensate
from .dtypes import itemsize
from .encode import Codebook, encode_codebook, relative_error
from .lowrank import LowRankPair, as_matrix, break_even_rank, encode_lowrank, factor_kind, truncated_svd
from .options import CodebookOptions, LowRankOptions
from .progress import Progress, progress_bar
from .rewrite import default_opset, rewrite_casts, rewrite_graph
from .rewrite_lowrank import factor_sites, rewrite_pairs
from .select import Skipped, WeightSite


@dataclass
class EncodedWeight:
    """One weight as it will be stored: a codebook, or a pair (its factors plain or codebooks)."""

    site: WeightSite
    codebook: Codebook | None = None
    pair: LowRankPair | None = None
    factors: list[tuple[WeightSite, Codebook]] | None = None  # the pair's factors as codebooks
    half: np.ndarray | None = None  # or the weight stored as float16 (a planner option)
    rel_error: float = float("nan")
    seconds: float = 0.0
    note: str = ""  # why a weight took another encoding than --method asked for

    @classmethod
    def of_codebook(cls, site: WeightSite, cb: Codebook) -> EncodedWeight:
        return cls(site, codebook=cb, rel_error=cb.rel_error, seconds=cb.seconds)

    @property
    def encoding(self) -> str:
        if self.half is not None:
            return "float16"
        if self.pair is None:
            return "codebook"
        return "lowrank+kmeans" if self.factors else "lowrank"

    def decoded(self) -> np.ndarray:
        """The weight as the compressed model computes it (the product of the decoded factors)."""
        if self.half is not None:
            return self.half.astype(np.float64)
        if self.pair is None:
            assert self.codebook is not None
            return self.codebook.decoded()
        if not self.factors:
            return self.pair.decoded()
        rows, cols = as_matrix(self.site.array, self.pair.kind).shape
        left = self.factors[0][1].decoded().astype(np.float64).reshape(rows, self.pair.rank)
        right = self.factors[1][1].decoded().astype(np.float64).reshape(self.pair.rank, cols)
        return (left @ right).reshape(self.site.array.shape)

    def stored_bytes(self) -> int:
        if self.half is not None:
            return int(self.half.nbytes)
        if self.factors:
            return sum(cb.stored_bytes() for _, cb in self.factors)
        if self.pair is not None:
            return self.pair.stored_bytes()
        assert self.codebook is not None
        return self.codebook.stored_bytes()


def assemble(
    model: onnx.ModelProto, encoded: list[EncodedWeight], target_ort: tuple[int, ...] = (1, 16)
) -> tuple[onnx.ModelProto, dict[str, str]]:
    """The rewritten model: pairs first (their factors become weights), then every codebook's
    decoder (the factors' too), then the float16 casts. Also how each codebook's indices are
    stored, by weight name."""
    pairs = [(e.site, e.pair) for e in encoded if e.pair is not None]
    out = rewrite_pairs(model, pairs, default_opset(model)) if pairs else model
    codebooks = [(e.site, e.codebook) for e in encoded if e.codebook is not None]
    codebooks += [factor for e in encoded for factor in e.factors or []]
    stored: dict[str, str] = {}
    if codebooks:
        out, stored = rewrite_graph(out, codebooks, target_ort)
    halves = [(e.site, e.half) for e in encoded if e.half is not None]
    return (rewrite_casts(out, halves) if halves else out), stored


def weight_bytes(site: WeightSite) -> int:
    return site.array.size * itemsize(site.onnx_dtype)


def encode_weights(
    weights: list[WeightSite],
    method: str,
    codebook_o: CodebookOptions,
    lowrank_o: LowRankOptions,
    progress: Progress = False,
    importance: dict[str, np.ndarray] | None = None,
    covariance: dict[str, Covariance] | None = None,
) -> tuple[list[EncodedWeight], list[Skipped]]:
    """Every weight that gets smaller, and the others with the reason they were left alone.
    Under lowrank+kmeans and auto, a weight no pair can replace (or whose pair would not be
    smaller than its codebook) becomes a codebook, with a note saying why. `importance` (per
    weight name) weights the codebooks' k-means (see calibrate.py); under method codebook, a
    weight's `covariance` compensates its rounding (compensate.py)."""
    kinds = {site.name: factor_kind(site) for site in weights}
    # pairs are chosen against the codebook's weight error, which compensation raises on purpose
    cov = covariance if method == "codebook" else None
    codebooks = encode_codebooks(weights, codebook_o, progress, importance, covariance=cov) if method != "lowrank" else {}
    factored = [] if method == "codebook" else [(w, kind) for w in weights if (kind := kinds[w.name][0]) is not None]
    factored.sort(key=lambda wk: -wk[0].array.size)
    pairs: dict[str, tuple[EncodedWeight | None, str]] = {}
    with progress_bar(progress) as bar, ThreadPoolExecutor(max(1, min(len(factored), os.cpu_count() or 1))) as pool:
        # one SVD per core, largest first (BLAS runs one thread each: threads.py)
        task = bar.add_task("low rank", total=len(factored)) if bar and factored else None
        futures = {
            w.name: pool.submit(_encode_factored, w, kind, codebooks.get(w.name), method, codebook_o, lowrank_o)
            for w, kind in factored
        }
        for name, f in futures.items():
            pairs[name] = f.result()
            if task is not None:
                bar.advance(task)
    out: list[EncodedWeight] = []
    skipped: list[Skipped] = []
    for site in weights:
        kind, why = kinds[site.name]
        cb = codebooks.get(site.name)
        best = EncodedWeight.of_codebook(site, cb) if cb else None
        if method != "codebook" and kind is None:
            why = why or "low rank: no pair can replace it"
        elif site.name in pairs:
            best, why = pairs[site.name]
        if best is None or best.stored_bytes() >= weight_bytes(site):
            reason = (
                why
                if method == "lowrank"
                else (f"not smaller as a codebook ({weight_bytes(site)} -> {cb.stored_bytes() if cb else '?'} bytes)")
            )
            skipped.append(Skipped(site.name, tuple(site.array.shape), reason))
            continue
        if best.pair is None and method != "codebook":
            best.note = why.replace("low rank: ", "") + "; codebook instead" if why else ""
        out.append(best)
    return out, skipped


def _encode_factored(
    site: WeightSite, kind: str, cb: Codebook | None, method: str, codebook_o: CodebookOptions, lowrank_o: LowRankOptions
) -> tuple[EncodedWeight | None, str]:
    """A weight a pair can replace under lowrank, lowrank+kmeans or auto: the smallest
    encoding (the pair, or its codebook `cb` when that is smaller) and why it is not a pair."""
    as_codebook = EncodedWeight.of_codebook(site, cb) if cb else None
    if method == "auto":
        assert cb is not None
        return _smallest_within(site, kind, cb, codebook_o, lowrank_o), ""
    pair = encode_lowrank(site.array, kind, lowrank_o)
    candidate = _as_pair(site, pair, codebook_o if method == "lowrank+kmeans" else None)
    if candidate is not None and (as_codebook is None or candidate.stored_bytes() < as_codebook.stored_bytes()):
        return candidate, ""
    thing = "weight" if as_codebook is None else "weight's codebook"
    return as_codebook, f"low rank: the pair at rank {pair.rank} is not smaller than the {thing}"


def _as_pair(site: WeightSite, pair: LowRankPair, codebook_o: CodebookOptions | None) -> EncodedWeight | None:
    """The pair (its factors as codebooks when codebook_o is given), or None when a pair of
    this rank is not smaller than the weight."""
    rows, cols = as_matrix(site.array, pair.kind).shape
    if pair.rank > break_even_rank(rows, cols):
        return None
    if codebook_o is None:
        return EncodedWeight(site, pair=pair, rel_error=pair.rel_error, seconds=pair.seconds)
    sites = factor_sites(site, pair)
    factors = [(fs, encode_codebook(fs.array, codebook_o, fs.channel_axis())) for fs in sites]
    encoded = EncodedWeight(site, pair=pair, factors=factors, seconds=pair.seconds + sum(cb.seconds for _, cb in factors))
    encoded.rel_error = relative_error(site.array, encoded.decoded())
    return encoded


def _smallest_within(
    site: WeightSite, kind: str, cb: Codebook, codebook_o: CodebookOptions, lowrank_o: LowRankOptions
) -> EncodedWeight:
    """--method auto: the codebook, the float pair whose truncation error is at most the
    codebook's, or the quantized pair (truncated to half the error budget in energy) if its
    measured error is within the budget: whichever is smallest."""
    budget = cb.rel_error
    candidates = [EncodedWeight.of_codebook(site, cb)]
    if budget > 0:
        rows, cols = as_matrix(site.array, kind).shape
        # both energy targets truncate one spectrum (--svd auto and full take LAPACK for them)
        svd = None if lowrank_o.svd == "randomized" else truncated_svd(as_matrix(site.array, kind), None, 1.0, "full")[:3]
        for share, quantized in ((1.0, False), (math.sqrt(0.5), True)):
            options = replace(lowrank_o, rank=None, rank_ratio=None, energy=1.0 - (share * budget) ** 2)
            pair = encode_lowrank(site.array, kind, options, u_s_vt=svd)
            if pair.rank > break_even_rank(rows, cols):
                continue
            got = _as_pair(site, pair, codebook_o if quantized else None)
            if got is not None and got.rel_error <= budget * (1 + 1e-6):
                candidates.append(got)
    return min(candidates, key=EncodedWeight.stored_bytes)


def encode_codebooks(
    weights: list[WeightSite],
    options: CodebookOptions | dict[str, CodebookOptions],
    progress: Progress = False,
    importance: dict[str, np.ndarray] | None = None,
    workers: int | None = None,
    covariance: dict[str, Covariance] | None = None,
) -> dict[str, Codebook]:
    """Encode the tensors on all cores (the k-means core releases the GIL), largest first;
    `options` for all, or per weight name; `workers` threads (default: one per core). A weight
    with a `covariance` gets error-compensated labels (compensate.py)."""
    order = sorted(weights, key=lambda w: -w.array.size)
    workers = max(1, min(len(order), workers or os.cpu_count() or 1))
    results: dict[str, Codebook] = {}
    with progress_bar(progress) as bar, ThreadPoolExecutor(workers) as pool:
        task = bar.add_task("codebooks", total=len(order)) if bar else None
        per = options if isinstance(options, dict) else {w.name: options for w in order}
        imp = importance or {}
        cov = covariance or {}
        futures = [pool.submit(_encode_one, w, per[w.name], imp.get(w.name), cov.get(w.name)) for w in order]
        for w, f in zip(order, futures, strict=True):
            results[w.name] = f.result()
            if bar and task is not None:
                bar.advance(task)
    return results


def _encode_one(site: WeightSite, options: CodebookOptions, importance: np.ndarray | None, cov: Covariance | None) -> Codebook:
    t0 = time.perf_counter()
    cb = encode_codebook(site.array, options, site.channel_axis(), importance)
    if cov is not None:
        cb = compensate(site.array, cb, cov)
        cb.seconds = time.perf_counter() - t0
    return cb
