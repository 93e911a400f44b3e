"""Choices made into encodings: each (weight, choice) is encoded once, on all cores, and kept,
so a decision's trial encodings (fixed settings, the planner's candidates) are the ones the
builder uses."""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

import numpy as np

from ..dtypes import itemsize
from ..io.select import WeightSite
from ..options import CodebookOptions, LowRankOptions
from ..progress import Progress, progress_bar
from ..recipe import AsBlocks, AsCodebook, AsFloat16, AsPair, Choice
from .blocks import Blocks, compensate_blocks, encode_blocks
from .codebook import Codebook, encode_codebook, relative_error
from .compensate import Covariance, compensate
from .lowrank import LowRankPair, as_matrix, encode_lowrank, factor_sites


@dataclass
class EncodedWeight:
    """One weight as it will be stored, by its choice: a codebook, a pair (its factors plain or
    codebooks), integer blocks, or float16."""

    site: WeightSite
    choice: Choice
    codebook: Codebook | None = None
    pair: LowRankPair | None = None
    factors: list[tuple[WeightSite, Codebook]] | None = None  # the pair's factors as codebooks
    half: np.ndarray | None = None
    blocks: Blocks | None = None
    rel_error: float = float("nan")
    seconds: float = 0.0

    @property
    def encoding(self) -> str:
        if self.half is not None:
            return "float16"
        if self.blocks is not None:
            return "blocks"
        if self.pair is None:
            return "codebook"
        return "lowrank+kmeans" if self.factors else "lowrank"

    def decoded(self) -> np.ndarray:
        """The weight as the compressed model computes it (the product of the decoded factors)."""
        if self.half is not None:
            return self.half.astype(np.float32)  # exactly the float16 values
        if self.blocks is not None:
            return self.blocks.decoded()
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
        if self.blocks is not None:
            return self.blocks.stored_bytes()
        if self.factors:
            return sum(cb.stored_bytes() for _, cb in self.factors)
        if self.pair is not None:
            return self.pair.stored_bytes()
        assert self.codebook is not None
        return self.codebook.stored_bytes()


def weight_bytes(site: WeightSite) -> int:
    """What the weight costs in the file as it is."""
    return site.array.size * itemsize(site.onnx_dtype)


class Encoder:
    """Encodes (weight, choice) items, each once. Codebooks use the settings of `codebook_o`
    other than bits and layout (k-means, dtype, seed), the weight's `importance` when given, and
    its `covariance` when the choice compensates; a pair not yet made is truncated from an SVD as
    `lowrank_o.svd` says."""

    def __init__(
        self,
        codebook_o: CodebookOptions,
        lowrank_o: LowRankOptions | None = None,
        importance: dict[str, np.ndarray] | None = None,
        covariance: dict[str, Covariance] | None = None,
    ) -> None:
        self.codebook_o = codebook_o
        self.lowrank_o = lowrank_o or LowRankOptions()
        self.importance = importance or {}
        self.covariance = covariance or {}
        self._done: dict[tuple[str, Choice], EncodedWeight] = {}

    def can_compensate(self, name: str) -> bool:
        return name in self.covariance

    def add(self, e: EncodedWeight) -> None:
        """An encoding made elsewhere (a decision's trial), used for its choice from now on."""
        self._done[(e.site.name, e.choice)] = e

    def keep_only(self, chosen: dict[str, Choice]) -> None:
        """Drops the trial encodings no chosen (name, choice) uses: a planner measures several
        widths per weight, and each holds a byte per value until compress() returns."""
        self._done = {key: e for key, e in self._done.items() if key in chosen.items()}

    def encode(self, items: list[tuple[WeightSite, Choice]], progress: Progress = False) -> list[EncodedWeight]:
        """Each item's encoding, in order (one item per weight, no Keep); the codebooks not made
        yet run on all cores."""
        todo = [(site, c) for site, c in items if (site.name, c) not in self._done]
        codebooks = [(site, c) for site, c in todo if isinstance(c, AsCodebook)]
        if codebooks:
            per = {site.name: self.codebook_options(c) for site, c in codebooks}
            cov = {site.name: self.covariance[site.name] for site, c in codebooks if c.compensate}
            axes = {site.name: c.axis for site, c in codebooks if c.axis is not None}
            made = encode_codebooks([site for site, _ in codebooks], per, progress, self.importance, covariance=cov, axes=axes)
            for site, c in codebooks:
                cb = made[site.name]
                self.add(EncodedWeight(site, c, codebook=cb, rel_error=cb.rel_error, seconds=cb.seconds))
        for site, c in todo:
            if isinstance(c, AsFloat16):
                half = site.array.astype(np.float16)
                self.add(EncodedWeight(site, c, half=half, rel_error=relative_error(site.array, half)))
            elif isinstance(c, AsBlocks):
                blocks = encode_blocks(site.array, c.bits, c.block)
                if c.compensate:
                    blocks = compensate_blocks(site.array, blocks, self.covariance[site.name])
                self.add(EncodedWeight(site, c, blocks=blocks, rel_error=blocks.rel_error, seconds=blocks.seconds))
            elif isinstance(c, AsPair):
                pair = encode_lowrank(site.array, c.kind, replace(self.lowrank_o, rank=c.rank, rank_ratio=None, energy=None))
                self.add(pair_encoding(site, pair, c, self.codebook_o))
        return [self._done[(site.name, c)] for site, c in items]

    def codebook_options(self, c: AsCodebook) -> CodebookOptions:
        return replace(self.codebook_o, bits=c.bits, granularity=c.layout)


def pair_encoding(
    site: WeightSite, pair: LowRankPair, choice: AsPair, codebook_o: CodebookOptions | None = None
) -> EncodedWeight:
    """The pair as `choice` stores it: its factors as they are, or each a codebook of
    choice.factor_bits (plain k-means, the other settings of `codebook_o`)."""
    if choice.factor_bits is None:
        return EncodedWeight(site, choice, pair=pair, rel_error=pair.rel_error, seconds=pair.seconds)
    options = replace(codebook_o or CodebookOptions(), bits=choice.factor_bits, granularity=choice.factor_layout)
    factors = [(fs, encode_codebook(fs.array, options, fs.channel_axis())) for fs in factor_sites(site, pair)]
    encoded = EncodedWeight(site, choice, pair=pair, factors=factors, seconds=pair.seconds + sum(cb.seconds for _, cb in factors))
    encoded.rel_error = relative_error(site.array, encoded.decoded())
    return encoded


def encode_codebooks(
    weights: list[WeightSite],
    options: CodebookOptions | dict[str, CodebookOptions],
    progress: Progress = False,
    importance: dict[str, np.ndarray] | None = None,
    workers: int | None = None,
    covariance: dict[str, Covariance] | None = None,
    axes: dict[str, int] | None = None,
) -> dict[str, Codebook]:
    """Encode the tensors on all cores (the k-means core releases the GIL), largest first;
    `options` for all, or per weight name; `workers` threads (default: one per core). A weight
    with a `covariance` gets error-compensated labels (compensate.py); one in `axes` takes its
    channels along that axis instead of its own channel axis."""
    order = sorted(weights, key=lambda w: -w.array.size)
    workers = max(1, min(len(order), workers or os.cpu_count() or 1))
    results: dict[str, Codebook] = {}
    with progress_bar(progress) as bar, ThreadPoolExecutor(workers) as pool:
        task = bar.add_task("codebooks", total=len(order)) if bar else None
        per = options if isinstance(options, dict) else {w.name: options for w in order}
        imp = importance or {}
        cov = covariance or {}
        axis = {w.name: (axes or {}).get(w.name, w.channel_axis()) for w in order}
        futures = [pool.submit(_encode_one, w, per[w.name], imp.get(w.name), cov.get(w.name), axis[w.name]) for w in order]
        for w, f in zip(order, futures, strict=True):
            results[w.name] = f.result()
            if bar and task is not None:
                bar.advance(task)
    return results


def _encode_one(
    site: WeightSite, options: CodebookOptions, importance: np.ndarray | None, cov: Covariance | None, axis: int
) -> Codebook:
    t0 = time.perf_counter()
    cb = encode_codebook(site.array, options, axis, importance)
    if cov is not None:
        cb = compensate(site.array, cb, cov)
        cb.seconds = time.perf_counter() - t0
    return cb
