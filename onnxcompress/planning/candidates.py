"""Each tensor's candidate encodings for the planner, with their bytes and distortion: the
sensitivity-weighted SSE of the weight over its weighted squared norm. Every per-tensor
codebook width comes from one k-means run (its 8-bit codebook's sse_by_k), per-channel widths
from one batched run, float16 and low-rank pairs from the values and one SVD."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from ..encoding.blocks import encode_blocks
from ..encoding.codebook import Codebook, channel_rows, codebook_size, per_tensor_widths, storage_dtype, weighted_sse
from ..encoding.encoded import EncodedWeight, pair_encoding
from ..encoding.kmeans import kmeans1d_batched
from ..encoding.lowrank import (
    as_matrix,
    break_even_rank,
    encode_lowrank,
    factor_kind,
    rank_for_energy,
    singular_values,
    truncated_svd,
)
from ..graph.decode import load_per_value
from ..graph.halves import LOAD_PER_HALF_VALUE, reads_from_table
from ..graph.lookup import stays_packed
from ..io.select import WeightSite
from ..options import CodebookOptions, LowRankOptions
from ..recipe import AsBlocks, AsCodebook, AsFloat16, AsPair, Keep
from .ladder import Option, TensorOptions, lower_hull

# What a codebook's decode nodes cost in the file beyond indices and centroids (names, shapes,
# node protos), measured on MiniLM's rewrites; it matters only for small tensors.
DECODER_BYTES = 600
# Per-channel options cost a batched k-means run at k = 16; skipped above this many values.
CHANNEL_OPTION_LIMIT = 1 << 22
# A lookup table's channel this long (values per channel) also gets codebooks per channel up to
# 8 bits, the 8-bit levels costing at most 1/8 of its indices in float32: an embedding table's
# columns (MiniLM's 384 columns of 30522 values: 8 bits per column turned its token vectors
# 14x less than 8 bits per tensor, 0.0035 against 0.051, for 3% more bytes).
LONG_CHANNEL = 8192
# Low-rank plan options: float pairs at the ranks holding these shares of the squared norm, and
# at the middle one a pair of 8-bit codebooks too.
PAIR_ENERGIES = (0.999, 0.9999, 0.99999)
# Ops whose weight input is summed over (a product's reduction averages the rounding errors
# out); a weight read only by other ops (a bias, a scale) reaches the outputs value by value.
PRODUCT_OPS = {"MatMul", "Gemm", "Conv", "ConvTranspose", "Gather", "LSTM", "GRU", "RNN", "Einsum"}
# ... and is not offered below this many bits: its 8-bit probe cannot see a coarse codebook's
# damage on inputs the calibration lacks (the OCR model's 18710 class biases at 1 bit, planned
# on 16 lines: 0.009 on them, 0.033 on 16 others)
LOWEST_ADDITIVE_BITS = 4
KEPT = Keep("the plan keeps it in float (too sensitive for its size)")
# How much of the bytes a weight that stays packed saves comes off the load-time peak: MiniLM at
# 8 bits, its 47 MB word embedding packed to 11.7 MB, peaked 10 MiB under the original while its
# other 43 MB of weights folded through 8-bit decoders (about 11 MB): 0.6 of the 35 MB saved.
PACKED_LOAD_CREDIT = 0.5


def tensor_options(
    site: WeightSite,
    importance: np.ndarray | None,
    original_bytes: int,
    curve: np.ndarray,
    per_channel: bool = True,
    compensate: bool = False,
    scaled: Codebook | None = None,
    long_channels: Codebook | None = None,
    opset: int = 11,
    block_bits: tuple[int, ...] = (),
    target_ort: tuple[int, ...] = (1, 16),
) -> TensorOptions:
    """Every option's bytes and distortion for one weight; `curve`: the (weighted) SSE of its
    best per-tensor clustering for 1..256 levels (Codebook.sse_by_k of its 8-bit codebook), and
    `scaled`'s the same over values scaled per channel (its 8-bit "scaled" codebook), and
    `long_channels`'s summed over its channels (its 8-bit codebook per long channel, see
    long_channel_choice); `compensate`: its codebooks will be compensated (the planner scales
    their distortion); `opset`: the model's, for which codebooks stay packed in RAM; `block_bits`:
    the widths of integer blocks onnxruntime keeps packed for it (runtime/fusion.py); `target_ort`:
    the onnxruntime the decoders are made for (what folding them costs at load)."""
    a = site.array
    if importance is not None and not importance.any():
        importance = None  # no value matters on the calibration inputs: clustered plainly (codebook.py)
    norm = weighted_sse(a, None, importance) or 1.0  # all zero: every option is exact
    entry = storage_dtype(a.dtype, "auto").itemsize
    options = [Option(KEPT, bytes=original_bytes, distortion=0.0)]
    if float16_is_an_option(a):
        half = weighted_sse(a, a.astype(np.float16), importance)
        options.append(Option(AsFloat16(), a.size * 2 + DECODER_BYTES, half / norm))
    for bits, size, sse in per_tensor_widths(a.size, curve, entry, _lowest_bits(site)):
        options.append(Option(AsCodebook(bits, "tensor", compensate), size + DECODER_BYTES, sse / norm))
    if scaled is not None and scaled.sse_by_k is not None and scaled.scale is not None:
        for bits, size, sse in per_tensor_widths(a.size, scaled.sse_by_k, entry, _lowest_bits(site)):
            if per_channel or bits == 8:  # below 8 bits needs opset 11
                cost = size + scaled.scale.nbytes + DECODER_BYTES
                options.append(Option(AsCodebook(bits, "scaled", compensate), cost, sse / norm))
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
            options.append(Option(AsCodebook(bits, "channel", compensate), size, max(float(by_k[k - 1]), 0.0) / norm))
    if long_channels is not None and long_channels.sse_by_k is not None:
        options += _long_channel_options(site, long_channels, compensate, norm, entry, {o.choice for o in options})
    for bits in block_bits:
        blocks = encode_blocks(a, bits)
        distortion = weighted_sse(a, blocks.decoded(), importance) / norm
        options.append(Option(AsBlocks(bits, blocks.block, compensate), blocks.stored_bytes() + DECODER_BYTES, distortion))
    options = [replace(o, ram=_ram(site, o, original_bytes, opset)) for o in options]
    options = [replace(o, load=_load(site, o, opset, target_ort, original_bytes)) for o in options]
    return TensorOptions(site, lower_hull(options), lower_hull([o for o in options if o.ram < original_bytes]))


def _ram(site: WeightSite, o: Option, original_bytes: int, opset: int) -> int:
    """What onnxruntime holds for the weight stored as `o` once loaded: a codebook of a lookup
    table decoded after the lookup, or integer blocks (offered only where they stay packed),
    its file bytes; every other option the weight itself."""
    c = o.choice
    if isinstance(c, AsBlocks) or (isinstance(c, AsCodebook) and stays_packed(site, c.bits, c.layout, opset)):
        return o.bytes - DECODER_BYTES
    return original_bytes


def _load(site: WeightSite, o: Option, opset: int, target_ort: tuple[int, ...], original_bytes: int) -> int:
    """What the option adds to onnxruntime's peak while it loads the model: a codebook that
    folds, its decoder's intermediates (decode.load_per_value); a weight that stays packed (a
    lookup table decoded after the lookup, integer blocks) less than the original's float
    (PACKED_LOAD_CREDIT of the bytes it saves); float16 its INT32 positions (nothing where a
    Cast reads it: halves.reads_from_table)."""
    c = o.choice
    if o.ram < original_bytes:
        return -int(PACKED_LOAD_CREDIT * (original_bytes - o.ram))
    if isinstance(c, AsFloat16):
        return int(site.array.size * LOAD_PER_HALF_VALUE) if reads_from_table(site.onnx_dtype, opset) else 0
    if not isinstance(c, AsCodebook):
        return 0
    return int(site.array.size * load_per_value(c.bits, c.layout, opset, target_ort))


def long_channel_choice(site: WeightSite, bits: int = 8) -> AsCodebook | None:
    """Codebooks per channel along the axis of a 2-D float lookup table (read by Gather only)
    whose channels hold at least LONG_CHANNEL values (the longer one when both do), or None.
    Not for product weights: on the OCR model's 120 x 18710 head, 4 bits per row looked cheap to
    the planner and measured worse; its plan at 0.01 fell from 4.19x to 3.86x (5.34x to 4.71x
    planned on half the lines)."""
    a = site.array
    if a.ndim != 2 or a.dtype.kind != "f" or not site.is_lookup_table:
        return None
    axis = max((0, 1), key=lambda ax: a.size // a.shape[ax])
    if a.size // a.shape[axis] < LONG_CHANNEL:
        return None
    return AsCodebook(bits, "channel", axis=None if axis == site.channel_axis() else axis)


def _long_channel_options(
    site: WeightSite, cb: Codebook, compensate: bool, norm: float, entry: int, present: set
) -> list[Option]:
    assert cb.sse_by_k is not None
    options = []
    channels = cb.centroids.shape[0]
    axis = None if cb.axis == site.channel_axis() % site.array.ndim else cb.axis  # as long_channel_choice gave it
    for bits in range(_lowest_bits(site), 9):
        k = 1 << bits
        choice = AsCodebook(bits, "channel", compensate, axis)
        if k > cb.sse_by_k.size or choice in present:
            continue
        size = codebook_size(cb.n_values, bits, channels, k, entry) + DECODER_BYTES
        options.append(Option(choice, size, max(float(cb.sse_by_k[k - 1]), 0.0) / norm))
    return options


def float16_is_an_option(a: np.ndarray) -> bool:
    """A wider float weight whose values all fit float16's range."""
    return a.dtype in (np.float32, np.float64) and float(np.abs(a).max(initial=0.0)) < 65504


def _lowest_bits(site: WeightSite) -> int:
    return 1 if any(c.op_type in PRODUCT_OPS for c in site.consumers) else LOWEST_ADDITIVE_BITS


def pair_options(
    site: WeightSite, importance: np.ndarray | None, codebook_o: CodebookOptions
) -> tuple[list[Option], list[EncodedWeight]]:
    """Low-rank options for a weight a pair can replace: float pairs at the ranks holding
    PAIR_ENERGIES of the squared norm, and at the middle one also the pair of 8-bit codebooks;
    only ranks whose pair is smaller than the weight. Returns the options and their encodings."""
    kind, _ = factor_kind(site)
    if kind is None:
        return [], []
    a = site.array
    rows, cols = as_matrix(a, kind).shape
    norm = weighted_sse(a, None, importance)
    matrix: np.ndarray = as_matrix(a, kind).astype(np.float64 if a.dtype == np.float64 else np.float32)
    s = singular_values(matrix)  # first only the spectrum: most trained weights stop here
    total = float(np.sum(s**2))
    # A float pair must be smaller than the weight in float16, which is far more faithful
    # (MiniLM's embedding holds 0.999 of its energy at rank 377 of 384: a pair twice the
    # float16 table); the 8-bit pair must be smaller than the weight (then also than its
    # 8-bit codebook, near enough).
    eight_bit_limit = break_even_rank(rows, cols)
    float_limit = eight_bit_limit
    if float16_is_an_option(a):
        float_limit = (a.size * 2 - 1) // ((rows + cols) * a.dtype.itemsize)
    ranks = {}
    for energy in PAIR_ENERGIES:
        r = rank_for_energy(s, total, energy)
        if r is not None and r <= (eight_bit_limit if energy == PAIR_ENERGIES[1] else float_limit):
            ranks[energy] = r
    if not ranks:
        return [], []
    u, s, vt, _ = truncated_svd(matrix, None, 1.0, "full")
    options: list[Option] = []
    encoded: list[EncodedWeight] = []
    for energy, r in ranks.items():
        pair = encode_lowrank(a, kind, LowRankOptions(rank=r, svd="full"), u_s_vt=(u, s, vt))
        choices = [AsPair(r, kind)] if r <= float_limit else []
        if energy == PAIR_ENERGIES[1]:
            choices.append(AsPair(r, kind, 8, "tensor"))
        for choice in choices:
            e = pair_encoding(site, pair, choice, codebook_o)
            distortion = weighted_sse(a, e.decoded(), importance) / norm if norm > 0 else 0.0
            # in RAM the factors are floats, whether or not their file holds codebooks
            options.append(Option(choice, e.stored_bytes() + DECODER_BYTES, distortion, ram=pair.stored_bytes()))
            encoded.append(e)
    return options, encoded
