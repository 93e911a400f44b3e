"""The decision under fixed settings (--method, --bits, --granularity, --rank...): each weight's
choice, found by encoding it as the settings say (the trial encodings go to the Encoder, so the
builder reuses them). A weight no encoding makes smaller is kept, with the reason; under
lowrank+kmeans and auto a weight no pair can replace (or whose pair is no smaller than its
codebook) becomes a codebook, with a note saying why."""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

from ..encoding.encoded import EncodedWeight, Encoder, pair_encoding, weight_bytes
from ..encoding.lowrank import LowRankPair, as_matrix, break_even_rank, encode_lowrank, factor_kind, truncated_svd
from ..io.select import WeightSite
from ..options import CodebookOptions, LowRankOptions
from ..progress import Progress, progress_bar
from ..recipe import AsCodebook, AsPair, Keep, Recipe


def decide_fixed(
    weights: list[WeightSite],
    method: str,
    codebook_o: CodebookOptions,
    lowrank_o: LowRankOptions,
    encoder: Encoder,
    progress: Progress = False,
) -> Recipe:
    """Every weight's choice under `method`. Codebooks weigh by the encoder's importances; under
    method codebook a weight with a covariance gets compensated rounding (pairs are chosen
    against the codebook's weight error, which compensation raises on purpose)."""
    kinds = {site.name: factor_kind(site) for site in weights}
    codebooks: dict[str, EncodedWeight] = {}
    if method != "lowrank":
        items = [(w, _codebook_choice(w, method, codebook_o, encoder)) for w in weights]
        codebooks = {e.site.name: e for e in encoder.encode(items, progress)}
    pairs = _factored(weights, kinds, codebooks, method, codebook_o, lowrank_o, progress)
    recipe = Recipe()
    for site in weights:
        kind, why = kinds[site.name]
        best = codebooks.get(site.name)
        if method != "codebook" and kind is None:
            why = why or "low rank: no pair can replace it"
        elif site.name in pairs:
            best, why = pairs[site.name]
        if best is None or best.stored_bytes() >= weight_bytes(site):
            recipe.choices[site.name] = Keep(why if method == "lowrank" else _not_smaller(site, codebooks.get(site.name)))
            continue
        encoder.add(best)
        recipe.choices[site.name] = best.choice
        if best.pair is None and method != "codebook" and why:
            recipe.notes[site.name] = why.replace("low rank: ", "") + "; codebook instead"
    return recipe


def _codebook_choice(site: WeightSite, method: str, codebook_o: CodebookOptions, encoder: Encoder) -> AsCodebook:
    compensated = method == "codebook" and encoder.can_compensate(site.name)
    return AsCodebook(codebook_o.bits, codebook_o.granularity, compensated)


def _not_smaller(site: WeightSite, cb: EncodedWeight | None) -> str:
    return f"not smaller as a codebook ({weight_bytes(site)} -> {cb.stored_bytes() if cb else '?'} bytes)"


def _factored(
    weights: list[WeightSite],
    kinds: dict[str, tuple[str | None, str]],
    codebooks: dict[str, EncodedWeight],
    method: str,
    codebook_o: CodebookOptions,
    lowrank_o: LowRankOptions,
    progress: Progress,
) -> dict[str, tuple[EncodedWeight | None, str]]:
    """Each weight a pair can replace (not under method codebook): its smallest encoding and
    why it is not a pair. One SVD per core, largest first (BLAS runs one thread each: threads.py)."""
    factored = [] if method == "codebook" else [(w, kind) for w in weights if (kind := kinds[w.name][0]) is not None]
    factored.sort(key=lambda wk: -wk[0].array.size)
    pairs: dict[str, tuple[EncodedWeight | None, str]] = {}
    with progress_bar(progress) as bar, ThreadPoolExecutor(max(1, min(len(factored), os.cpu_count() or 1))) as pool:
        task = bar.add_task("low rank", total=len(factored)) if bar and factored else None
        futures = {
            w.name: pool.submit(_encode_factored, w, kind, codebooks.get(w.name), method, codebook_o, lowrank_o)
            for w, kind in factored
        }
        for name, f in futures.items():
            pairs[name] = f.result()
            if task is not None:
                bar.advance(task)
    return pairs


def _encode_factored(
    site: WeightSite, kind: str, cb: EncodedWeight | None, method: str, codebook_o: CodebookOptions, lowrank_o: LowRankOptions
) -> tuple[EncodedWeight | None, str]:
    """A weight a pair can replace under lowrank, lowrank+kmeans or auto: the smallest
    encoding (the pair, or its codebook `cb` when that is smaller) and why it is not a pair."""
    if method == "auto":
        assert cb is not None
        return _smallest_within(site, kind, cb, codebook_o, lowrank_o), ""
    pair = encode_lowrank(site.array, kind, lowrank_o)
    candidate = _as_pair(site, pair, codebook_o if method == "lowrank+kmeans" else None)
    if candidate is not None and (cb is None or candidate.stored_bytes() < cb.stored_bytes()):
        return candidate, ""
    thing = "weight" if cb is None else "weight's codebook"
    return cb, f"low rank: the pair at rank {pair.rank} is not smaller than the {thing}"


def _as_pair(site: WeightSite, pair: LowRankPair, codebook_o: CodebookOptions | None) -> EncodedWeight | None:
    """The pair (its factors as codebooks of codebook_o's bits and layout when given), or None
    when a pair of this rank is not smaller than the weight."""
    rows, cols = as_matrix(site.array, pair.kind).shape
    if pair.rank > break_even_rank(rows, cols):
        return None
    bits, layout = (codebook_o.bits, codebook_o.granularity) if codebook_o is not None else (None, "tensor")
    return pair_encoding(site, pair, AsPair(pair.rank, pair.kind, bits, layout), codebook_o)


def _smallest_within(
    site: WeightSite, kind: str, cb: EncodedWeight, codebook_o: CodebookOptions, lowrank_o: LowRankOptions
) -> EncodedWeight:
    """--method auto: the codebook, the float pair whose truncation error is at most the
    codebook's, or the quantized pair (truncated to half the error budget in energy) if its
    measured error is within the budget: whichever is smallest."""
    budget = cb.rel_error
    candidates = [cb]
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
