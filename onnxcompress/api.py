"""The entry points: `compress()` runs load -> select -> encode -> rewrite -> save -> verify ->
report; `inspect()` shows what each bit width would give without writing anything."""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx.version_converter

from .decode import check_opset
from .calibrate import calibrate
from .encode import per_tensor_widths, sse_curve, storage_dtype
from .errors import CompressError, VerificationError, first_line
from .load import LoadedModel, load_model, read_external
from .lowrank import multiply_adds
from .methods import EncodedWeight, assemble, encode_weights, weight_bytes
from .options import (
    CodebookOptions,
    LowRankOptions,
    MethodOptions,
    PlanOptions,
    SelectOptions,
    TargetOptions,
    VerifyOptions,
    groups_from_kwargs,
)
from .plan import FEATURE_FLOOR, Calibration, make_plan
from .progress import Progress
from .report import Report, TensorReport
from .rewrite import default_opset, record
from .save import check_output_path, save_model
from .select import Selection, select_weights
from .threads import one_blas_thread
from .verify import Comparison, OutputDiff, compare, error_of, load_feeds, run, session, synthesize_feed

ModelSource = str | os.PathLike | onnx.ModelProto
# Models larger than this are verified with onnxruntime's graph optimizations off (see compress).
UNFOLDED_VERIFY_BYTES = 1_000_000_000


@dataclass
class CompressResult:
    model: onnx.ModelProto
    report: Report
    # each codebook's levels by weight name (a factor's under its own name): [groups, k], one
    # row per tensor, channel or group; small enough to keep, and what a histogram marks
    centroids: dict[str, np.ndarray] = field(default_factory=dict)


@one_blas_thread()
def compress(
    model: ModelSource,
    output: str | os.PathLike | None = None,
    *,
    force: bool = False,
    report_json: str | os.PathLike | None = None,
    progress: Progress = False,
    calibration: str | os.PathLike | dict | list[dict] | None = None,
    **options: Any,
) -> CompressResult:
    """Replace every large float weight of `model` by a k-means codebook and packed indices,
    or (method="lowrank", "lowrank+kmeans", "auto") by a pair of low-rank factors.

    Options (see `onnxcompress --help`): min_elements, include, exclude, method, bits,
    granularity, codebook_dtype, kmeans, rank, rank_ratio, energy, svd, max_error, metric,
    target_size, ratio, sensitivity, compensate, target_ort, opset, verify, inputs, seed.

    With max_error, target_size or ratio, a planner picks bits and granularity per tensor (see
    plan.py); `metric` may also be a callable(original_outputs, compressed_outputs) -> error,
    each a list (one per feed) of {output name: array}. `calibration`: inputs as an .npz path,
    one feed {name: array} or a list of feeds (like `inputs`); they drive the sensitivity
    weighting, the planner's measurements and the verification.

    `progress`: True for a bar on stderr, or a callable(stage, done, total) called after each
    tensor of a stage ("codebooks", "low rank") and around the "verify" stage.

    With `output`, the result is written atomically (never over the input; an existing file
    only with force=True). Raises CompressError for bad input, VerificationError when
    onnxruntime cannot load or run the result, and TargetError when a target cannot be met.
    """
    t0 = time.perf_counter()
    opts = groups_from_kwargs(options)
    select_o: SelectOptions = opts[SelectOptions]
    method = opts[MethodOptions].method
    codebook_o: CodebookOptions = opts[CodebookOptions]
    lowrank_o: LowRankOptions = opts[LowRankOptions]
    plan_o: PlanOptions = opts[PlanOptions]
    target_o: TargetOptions = opts[TargetOptions]
    verify_o: VerifyOptions = opts[VerifyOptions]
    if plan_o.active() and method != "codebook":
        raise CompressError("--max-error, --target-size and --ratio plan codebooks per tensor; drop --method")

    real_inputs = calibration is not None or verify_o.inputs is not None
    # Codebooks at fixed bits stream a model's external data: each weight is mapped from its
    # file while it is encoded, never all at once. Every other step reads the whole model.
    streams = method == "codebook" and not plan_o.active() and target_o.opset is None
    streams = streams and not ((plan_o.sensitivity or plan_o.compensate) and real_inputs)
    loaded = load_model(model, defer_external=streams)
    out_path = Path(output) if output is not None else None
    if out_path is not None:
        check_output_path(out_path, loaded.path, force)
    if report_json is not None and not Path(report_json).parent.is_dir():
        raise CompressError(f"cannot write the report {report_json}: its folder does not exist; create it first")
    source = loaded.model
    if target_o.opset is not None:
        source = convert_opset(source, target_o.opset)
    _check_method(method, lowrank_o)
    opset = default_opset(source)
    if method != "lowrank" and not plan_o.active():  # before any work
        check_opset(codebook_o.bits, codebook_o.granularity.split(":")[0], opset, "the model")

    # onnxruntime must run the original (and, to verify, on these inputs) before any work
    reference_sess = _original_session(loaded, source, target_o.opset is not None)
    feeds, reference = [], []
    if verify_o.verify or plan_o.active() or real_inputs:
        if calibration is not None:
            feeds = _calibration_feeds(calibration)
        else:
            feeds = load_feeds(verify_o.inputs) if verify_o.inputs else [synthesize_feed(source, verify_o.seed)]
        try:
            reference = run(reference_sess, feeds, "the original model")
        except VerificationError as e:
            hint = "check the --inputs file" if real_inputs else "pass --inputs FILE.npz with real inputs, or --no-verify"
            raise CompressError(f"{e}; {hint}") from None
    output_names = [o.name for o in reference_sess.get_outputs()]
    del reference_sess

    selection = select_weights(source, select_o, loaded.data_dir)
    read_external(loaded, keep={w.name for w in selection.weights})  # the small rest, kept as they are
    if not selection.weights:
        raise CompressError(
            f"nothing to compress: no float weight with at least {select_o.min_elements} values"
            + (f" ({len(selection.skipped)} left alone, see inspect)" if selection.skipped else "")
            + "; lower --min-elements or check --include/--exclude"
        )
    importance, covariance = {}, {}
    if (plan_o.sensitivity or plan_o.compensate) and real_inputs and method != "lowrank":
        # Not for the planner: weighing a head's classes by the few the calibration finds likely
        # let it take the OCR model's head to 4-5 bits, which met 0.0076 on the 16 lines it
        # planned on and measured 0.034-0.045 on 16 others (0.0092 without the weighting). The
        # planner also floors every feature's mean square (plan.FEATURE_FLOOR), for the same reason.
        measured = calibrate(
            source,
            selection.weights,
            feeds,
            covariances=plan_o.compensate and method == "codebook",
            classes=not plan_o.active(),
            floor=FEATURE_FLOOR if plan_o.active() else 0.0,
        )
        importance = measured.importance if plan_o.sensitivity else {}
        covariance = measured.covariance
    planned: dict | None = None
    if plan_o.active():
        calib = Calibration(feeds, reference, _plan_metric(plan_o.metric, output_names))
        encoded, skipped, planned, built = make_plan(
            source, selection.weights, importance, plan_o, codebook_o, target_o, calib, loaded.file_bytes, progress, covariance
        )
    else:
        encoded, skipped = encode_weights(selection.weights, method, codebook_o, lowrank_o, progress, importance, covariance)
    selection.skipped += skipped
    read_external(loaded, keep={e.site.name for e in encoded})  # those no smaller as codebooks stay as they were
    if not encoded:
        hint = "try a lower --energy or --rank, or --method lowrank+kmeans" if method == "lowrank" else "try fewer --bits"
        raise CompressError(f"nothing to compress: no weight gets smaller with these settings; {hint}")
    compressed, stored = built if planned else assemble(source, encoded, target_o.ort_version())
    record(compressed, "plan" if planned else method, {e.site.name: _metadata(e, stored) for e in encoded})

    after = save_model(compressed, out_path) if out_path is not None else compressed.ByteSize()
    report = Report(
        model=str(loaded.path) if loaded.path else "<ModelProto>",
        output=str(out_path) if out_path else None,
        settings={
            "method": method,
            **asdict(codebook_o),
            **asdict(lowrank_o),
            **asdict(select_o),
            "target_ort": target_o.target_ort,
            "opset": opset,
            "sensitivity_weighted": bool(importance),
            "compensated": sum(1 for e in encoded if e.codebook is not None and e.codebook.method.endswith("compensated")),
            **({"metric": plan_o.metric if isinstance(plan_o.metric, str) else "callable"} if planned else {}),
        },
        plan=planned,
        tensors=[_tensor_report(e, stored) for e in encoded],
        skipped=[{"name": s.name, "shape": list(s.shape), "reason": s.reason} for s in selection.skipped],
        file_bytes_before=loaded.file_bytes,
        file_bytes_after=after,
    )
    if verify_o.verify:
        if callable(progress):
            progress("verify", 0, 1)
        # onnxruntime's constant folding keeps every decoded intermediate until its pass ends
        # (6.5 GiB at load for a 2.4 GB model of nine big weights); unfolded, the same ops
        # decode one weight at a time as the model runs (1.2 GiB in onnxruntime)
        report.verified_unfolded = loaded.file_bytes > UNFOLDED_VERIFY_BYTES
        try:
            target = out_path if out_path is not None else compressed
            sess = session(target, "the compressed model", fold=not report.verified_unfolded)
            report.outputs = compare(output_names, reference, run(sess, feeds, "the compressed model"))
        except VerificationError as e:
            if out_path is not None:  # never leave a broken model where a good one is expected
                out_path.unlink(missing_ok=True)
                raise VerificationError(f"{e} (the output was removed; please report this with the model)") from None
            raise
        report.verified = True
        if callable(progress):
            progress("verify", 1, 1)
    report.seconds = time.perf_counter() - t0
    if report_json is not None:
        report.write_json(Path(report_json))
    return CompressResult(compressed, report, _centroids(encoded))


def _centroids(encoded: list[EncodedWeight]) -> dict[str, np.ndarray]:
    out = {}
    for e in encoded:
        if e.codebook is not None:
            out[e.site.name] = e.codebook.centroids
        for factor, cb in e.factors or []:
            out[factor.name] = cb.centroids
    return out


def convert_opset(model: onnx.ModelProto, opset: int) -> onnx.ModelProto:
    current = default_opset(model)
    if opset == current:
        return model
    try:
        converted = onnx.version_converter.convert_version(model, opset)
        converted.ir_version = max(model.ir_version, onnx.helper.find_min_ir_version_for([onnx.helper.make_opsetid("", opset)]))
        onnx.checker.check_model(converted)
    except Exception as e:  # noqa: BLE001 - the converter raises many types
        raise CompressError(f"cannot convert the model from opset {current} to {opset}: {first_line(e, 160)}") from None
    return converted


def _original_session(loaded: LoadedModel, source: onnx.ModelProto, converted: bool):
    try:
        if loaded.path is not None and not converted:  # from the file: no re-serialization
            return session(loaded.path, "the original model")
        return session(source, "the original model")
    except VerificationError as e:
        raise CompressError(f"{e}; the input must run in onnxruntime (try --opset N to convert it)") from None


def _calibration_feeds(calibration) -> list[dict[str, np.ndarray]]:
    if isinstance(calibration, dict):
        return [calibration]
    if isinstance(calibration, list):
        if not calibration or not all(isinstance(f, dict) for f in calibration):
            raise CompressError("calibration must be an .npz path, a dict of input arrays, or a non-empty list of such dicts")
        return calibration
    return load_feeds(Path(calibration))


def _plan_metric(metric, names: list[str]):
    """The planner's measure: the error of a model's outputs against the original's."""

    def measure(reference: list[list[np.ndarray]], candidate: list[list[np.ndarray]]) -> float:
        if callable(metric):
            as_dicts = [dict(zip(names, outs, strict=True)) for outs in reference]
            return float(metric(as_dicts, [dict(zip(names, outs, strict=True)) for outs in candidate]))
        return error_of(compare(names, reference, candidate), metric)

    return measure


def _check_method(method: str, lowrank_o: LowRankOptions) -> None:
    if method == "auto" and lowrank_o.is_set():
        raise CompressError(
            "--method auto sets each rank from the codebook's weight error; drop --rank, --rank-ratio and --energy, "
            "or use --method lowrank"
        )
    if method == "codebook" and lowrank_o.is_set():
        raise CompressError("--rank, --rank-ratio and --energy apply to low rank; add --method lowrank or lowrank+kmeans")


def _metadata(e: EncodedWeight, stored: dict[str, str]) -> dict:
    def codebook(name: str, cb) -> dict:
        return {"bits": cb.bits, "layout": cb.layout, "k": cb.k, "indices": stored[name]}

    if e.half is not None:
        return {"dtype": "float16"}
    if e.pair is None:
        assert e.codebook is not None
        return codebook(e.site.name, e.codebook)
    entry: dict = {"rank": e.pair.rank, "kind": e.pair.kind}
    if e.factors:
        entry["factors"] = {site.name: codebook(site.name, cb) for site, cb in e.factors}
    return entry


def _tensor_report(e: EncodedWeight, stored: dict[str, str]) -> TensorReport:
    site = e.site
    first = e.codebook or (e.factors[0][1] if e.factors else None)
    ops = [c.op_type for c in site.consumers]
    kind = e.pair.kind if e.pair is not None else "matrix"
    macs_before = sum(multiply_adds(site.array.shape, kind, op) for op in ops)
    macs_after = sum(multiply_adds(e.pair, kind, op) for op in ops) if e.pair is not None else macs_before
    names = [e.site.name] + [f.name for f, _ in e.factors or []]
    return TensorReport(
        name=site.name,
        shape=list(site.array.shape),
        consumers=site.consumer_ops,
        encoding=e.encoding,
        bits=first.bits if first else None,
        layout=(first.layout if first.layout != "group" else f"group:{first.group_size}") if first else None,
        method=first.method if first else None,
        rank=e.pair.rank if e.pair is not None else None,
        full_rank=e.pair.full_rank if e.pair is not None else None,
        bytes_before=weight_bytes(site),
        bytes_after=e.stored_bytes(),
        rel_error=e.rel_error,
        indices=",".join(sorted({stored[n] for n in names if n in stored})) or None,
        macs_before=macs_before,
        macs_after=macs_after,
        seconds=e.seconds,
        note=e.note,
    )


# -- compare ------------------------------------------------------------------------------------


@one_blas_thread()
def compare_models(
    original: ModelSource,
    compressed: ModelSource,
    inputs: str | os.PathLike | dict | list[dict] | None = None,
    seed: int = 0,
) -> list[OutputDiff]:
    """Run both models in onnxruntime on the same inputs (an .npz path, one feed, a list of
    feeds, or synthesized from the original's input types) and compare every output: max abs
    error, relative L2 error, cosine similarity, and top-1 agreement for class scores."""
    return run_models(original, compressed, inputs, seed).diffs


def run_models(
    original: ModelSource,
    compressed: ModelSource,
    inputs: str | os.PathLike | dict | list[dict] | None = None,
    seed: int = 0,
) -> Comparison:
    """As compare_models, keeping both models' outputs (for plots) beside the differences."""
    first, second = load_model(original), load_model(compressed)
    sessions = []
    for loaded, what in ((first, "the original model"), (second, "the compressed model")):
        try:
            sessions.append(session(loaded.path if loaded.path is not None else loaded.model, what))
        except VerificationError as e:
            raise CompressError(f"{e}; both models must run in onnxruntime") from None
    feeds = _calibration_feeds(inputs) if inputs is not None else [synthesize_feed(first.model, seed)]
    names = [o.name for o in sessions[0].get_outputs()]
    if sorted(names) != sorted(o.name for o in sessions[1].get_outputs()):
        raise CompressError("the two models have different outputs; compare a model with its own compressed copy")
    results = []
    for sess, what in zip(sessions, ("the original model", "the compressed model"), strict=True):
        try:
            results.append(run(sess, feeds, what, names))
        except VerificationError as e:
            raise CompressError(f"{e}; check --inputs") from None
    return Comparison(names, results[0], results[1], compare(names, results[0], results[1]))


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
