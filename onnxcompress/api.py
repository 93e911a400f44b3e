"""The entry points: `compress()` runs the pipeline's stages in order (pipeline/stages.py);
`compare_models()` and `run_models()` run two models on the same inputs; `inspect()` shows what
each bit width would give without writing anything."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from .encoding.codebook import per_tensor_widths, sse_curve, storage_dtype
from .encoding.encoded import weight_bytes
from .errors import CompressError, VerificationError
from .io.load import load_model
from .io.select import Selection, select_weights
from .options import SelectOptions, VerifyOptions
from .pipeline.report import Report
from .pipeline.stages import (
    ModelSource,
    Settings,
    build,
    calibration_feeds,
    centroids,
    decide,
    make_report,
    measure_inputs,
    prepare,
    reference_outputs,
    save,
    select,
    verify,
)
from .progress import Progress
from .runtime.outputs import output_kinds
from .runtime.sequence import extended, feedback, run_twice
from .runtime.synthesize import first_running_feed
from .runtime.verify import Comparison, OutputDiff, compare, run, session
from .threads import one_blas_thread

__all__ = ["ModelSource", "CompressResult", "compress", "compare_models", "run_models", "Candidate", "inspect"]


@dataclass
class CompressResult:
    model: onnx.ModelProto
    report: Report
    # each codebook's levels by weight name (a factor's under its own name): [groups, k], one
    # row per tensor, channel or group; small enough to keep, and what a histogram marks
    centroids: dict[str, np.ndarray] = field(default_factory=dict)
    # both models' outputs on the verification feeds, with keep_outputs=True (for plots)
    comparison: Comparison | None = None


@one_blas_thread()
def compress(
    model: ModelSource,
    output: str | os.PathLike | None = None,
    *,
    force: bool = False,
    report_json: str | os.PathLike | None = None,
    progress: Progress = False,
    calibration: str | os.PathLike | dict | list[dict] | None = None,
    keep_outputs: bool = False,
    **options: Any,
) -> CompressResult:
    """Replace every large float weight of `model` by a k-means codebook and packed indices,
    or (method="lowrank", "lowrank+kmeans", "auto") by a pair of low-rank factors.

    Options (see `onnxcompress --help`): min_elements, include, exclude, method, bits,
    granularity, codebook_dtype, kmeans, rank, rank_ratio, energy, svd, max_error, metric,
    target_size, ratio, max_ram, load_peak, sensitivity, compensate, target_ort, opset, verify,
    inputs, seed, output_kind.

    With max_error, target_size, ratio or max_ram, a planner picks bits and granularity per
    tensor (see planning/plan.py). `max_ram` ("30%" of the original's weights, or megabytes)
    bounds what onnxruntime holds of the weights once loaded (graph/lookup.py: lookup tables stay
    packed). `load_peak` (1.2 by default; 0: no bound) holds a plan's decoders to about that
    many times the original's memory peak while onnxruntime folds them at load. The default
    metric, "task", measures each output as its kind reads it
    (runtime/outputs.py, runtime/verify.task_measure; `output_kind` "NAME=KIND,..." overrides the
    kinds read from the graph, or "NAME=ignore" leaves an output out); `metric` may also be a
    callable(original_outputs, compressed_outputs) -> error, each a list (one per feed) of
    {output name: array}; where a model's state is fed back (runtime/sequence.py), the next
    call's outputs are there too. `calibration`: inputs as an .npz path, one feed {name: array}
    or a list of feeds (like `inputs`); they drive the sensitivity weighting, the planner's
    measurements and the verification.

    `keep_outputs`: keep both models' outputs from the verification on the result
    (`result.comparison`), so that plots need not run the models again.

    `progress`: True for a bar on stderr, or a callable(stage, done, total) called after each
    tensor of a stage ("codebooks", "low rank") and around the "verify" stage.

    With `output`, the result is written atomically (never over the input; an existing file
    only with force=True). Raises CompressError for bad input, VerificationError when
    onnxruntime cannot load or run the result, and TargetError when a target cannot be met.
    """
    t0 = time.perf_counter()
    s = Settings.of(options, calibration)
    prepared = prepare(model, output, force, report_json, s)
    reference = reference_outputs(prepared, s, calibration)
    selection = select(prepared, s)
    measured = measure_inputs(prepared, s, selection, reference)
    decision = decide(prepared, s, selection, reference, measured, progress)
    built = build(prepared, s, selection, decision)
    written = save(prepared, built)
    report = make_report(prepared, s, selection, built, measured, written)
    comparison = verify(prepared, built, reference, report, progress) if s.verify.verify else None
    report.seconds = time.perf_counter() - t0
    if report_json is not None:
        report.write_json(Path(report_json))
    return CompressResult(built.model, report, centroids(built.encoded), comparison if keep_outputs else None)


# -- compare ------------------------------------------------------------------------------------


@one_blas_thread()
def compare_models(
    original: ModelSource,
    compressed: ModelSource,
    inputs: str | os.PathLike | dict | list[dict] | None = None,
    seed: int = 0,
    output_kind: str | None = None,
) -> list[OutputDiff]:
    """Run both models in onnxruntime on the same inputs (an .npz path, one feed, a list of
    feeds, or synthesized from the original's input types) and compare every output: max abs
    error, relative L2 error, cosine similarity, top-1 agreement for class scores, and the
    measure its kind reads (`output_kind`: NAME=KIND[,...] where the graph does not say it)."""
    return run_models(original, compressed, inputs, seed, output_kind).diffs


def run_models(
    original: ModelSource,
    compressed: ModelSource,
    inputs: str | os.PathLike | dict | list[dict] | None = None,
    seed: int = 0,
    output_kind: str | None = None,
) -> Comparison:
    """As compare_models, keeping both models' outputs (for plots) beside the differences."""
    chosen = VerifyOptions(output_kind=output_kind).output_kinds()
    first, second = load_model(original), load_model(compressed)
    sessions = []
    for loaded, what in ((first, "the original model"), (second, "the compressed model")):
        try:
            sessions.append(session(loaded.path if loaded.path is not None else loaded.model, what))
        except VerificationError as e:
            raise CompressError(f"{e}; both models must run in onnxruntime") from None
    if inputs is not None:
        feeds = calibration_feeds(inputs)
    else:  # the first made-up feed the original runs on
        feeds = [first_running_feed(first.model, seed, lambda f: run(sessions[0], [f], "the original model"))[0]]
    names = [o.name for o in sessions[0].get_outputs()]
    if sorted(names) != sorted(o.name for o in sessions[1].get_outputs()):
        raise CompressError("the two models have different outputs; compare a model with its own compressed copy")
    kinds = output_kinds(first.model, chosen)
    results: list = []
    pairs: dict[int, str] = {}
    for sess, what in zip(sessions, ("the original model", "the compressed model"), strict=True):
        try:
            once = run(sess, feeds, what, names)
            pairs = pairs or feedback(names, kinds, feeds, once)  # the original's, for both
            results.append(run_twice(lambda f, sess=sess, what=what: run(sess, f, what, names), feeds, pairs, once))
        except VerificationError as e:
            raise CompressError(f"{e}; check --inputs") from None
    names, kinds = extended(names, kinds, pairs)
    return Comparison(names, results[0], results[1], compare(names, results[0], results[1], kinds, feeds, margins=True))


# -- inspect ------------------------------------------------------------------------------------


@dataclass
class Candidate:
    name: str
    shape: list[int]
    consumers: list[str]
    bytes: int
    method: str
    by_bits: dict[int, tuple[int, float]]  # bits -> (bytes after, relative weight error)


def inspect(model: ModelSource, *, kmeans: str = "auto", **select_options: Any) -> tuple[list[Candidate], Selection]:
    """Candidate weights and, for 1..8 bits, the bytes and weight error each would give
    (one k-means run per tensor yields the whole curve). Writes nothing."""
    select_o = SelectOptions(**select_options)
    select_o.validate()
    loaded = load_model(model, defer_external=True)  # one weight at a time, as compress streams them
    selection = select_weights(loaded.model, select_o, loaded.data_dir)
    out = []
    for site in selection.weights:
        curve, method = sse_curve(site.array, 256, kmeans)
        total = float(np.sum(site.array.astype(np.float64) ** 2))
        entry = storage_dtype(site.array.dtype, "auto").itemsize  # as compress stores the codebook
        by_bits = {
            bits: (size, float(np.sqrt(sse / total)) if total else 0.0)
            for bits, size, sse in per_tensor_widths(site.array.size, curve, entry)
        }
        out.append(Candidate(site.name, list(site.array.shape), site.consumer_ops, weight_bytes(site), method, by_bits))
    return out, selection
