"""compress() as a sequence of named stages: prepare -> reference outputs -> select ->
measure inputs (calibrate) -> decide and build (fixed settings or the planner) -> save ->
report -> verify. Each stage is a function of what the earlier ones produced; api.compress
reads as that sequence."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx.version_converter

from ..encoding.compensate import Covariance
from ..encoding.encoded import EncodedWeight, Encoder
from ..errors import CompressError, VerificationError, first_line
from ..graph.decode import check_opset
from ..graph.rewrite import default_opset, record
from ..io.load import LoadedModel, load_model, read_external
from ..io.save import check_output_path, save_model
from ..io.select import Selection, Skipped, select_weights
from ..memory import release_free_heap
from ..options import (
    CodebookOptions,
    LowRankOptions,
    MethodOptions,
    PlanOptions,
    SelectOptions,
    TargetOptions,
    VerifyOptions,
    groups_from_kwargs,
)
from ..planning.fixed import decide_fixed
from ..planning.plan import FEATURE_FLOOR, make_plan
from ..planning.probe import Calibration
from ..progress import Progress
from ..recipe import Recipe
from ..runtime.calibrate import calibrate
from ..runtime.outputs import OutputKind, output_kinds
from ..runtime.sequence import extended, feedback, run_twice
from ..runtime.synthesize import first_running_feed
from ..runtime.verify import Comparison, compare, error_of, load_feeds, run, session
from .build import LastBuild
from .report import Report, TensorReport

ModelSource = str | os.PathLike | onnx.ModelProto
FeedList = list[dict[str, np.ndarray]]
# Models larger than this are verified with onnxruntime's graph optimizations off (see verify).
UNFOLDED_VERIFY_BYTES = 1_000_000_000


@dataclass(frozen=True)
class Settings:
    """compress()'s keyword arguments, one dataclass per option group (options.py)."""

    select: SelectOptions
    method: str
    codebook: CodebookOptions
    lowrank: LowRankOptions
    plan: PlanOptions
    target: TargetOptions
    verify: VerifyOptions
    real_inputs: bool  # calibration or --inputs given: sensitivity and compensation can run

    @classmethod
    def of(cls, options: dict[str, Any], calibration: Any) -> Settings:
        groups = groups_from_kwargs(options)
        s = cls(
            groups[SelectOptions],
            groups[MethodOptions].method,
            groups[CodebookOptions],
            groups[LowRankOptions],
            groups[PlanOptions],
            groups[TargetOptions],
            groups[VerifyOptions],
            calibration is not None or groups[VerifyOptions].inputs is not None,
        )
        if s.plan.active() and s.method != "codebook":
            raise CompressError("--max-error, --target-size and --ratio plan codebooks per tensor; drop --method")
        return s

    def streams(self) -> bool:
        """Codebooks at fixed bits stream a model's external data: each weight is mapped from its
        file while it is encoded, never all at once. Every other path reads the whole model."""
        fixed = self.method == "codebook" and not self.plan.active() and self.target.opset is None
        return fixed and not ((self.plan.sensitivity or self.plan.compensate) and self.real_inputs)


@dataclass
class Prepared:
    loaded: LoadedModel
    source: onnx.ModelProto  # the model to rewrite (converted when --opset asks)
    out_path: Path | None
    opset: int


def prepare(model: ModelSource, output: Any, force: bool, report_json: Any, s: Settings) -> Prepared:
    """Load, check where the results go, convert the opset if asked, and refuse what cannot
    work before any of it starts."""
    loaded = load_model(model, defer_external=s.streams())
    out_path = Path(output) if output is not None else None
    if out_path is not None:
        check_output_path(out_path, loaded.path, force)
    if report_json is not None and not Path(report_json).parent.is_dir():
        raise CompressError(f"cannot write the report {report_json}: its folder does not exist; create it first")
    source = convert_opset(loaded.model, s.target.opset) if s.target.opset is not None else loaded.model
    _check_method(s.method, s.lowrank)
    opset = default_opset(source)
    if s.method != "lowrank" and not s.plan.active():
        check_opset(s.codebook.bits, s.codebook.granularity.split(":")[0], opset, "the model")
    return Prepared(loaded, source, out_path, opset)


@dataclass
class Reference:
    """The inputs the work is measured on and the original's outputs there (both empty when
    nothing needs them), with the output names."""

    feeds: FeedList
    outputs: list[list[np.ndarray]]
    names: list[str]
    kinds: dict[str, OutputKind]  # what each output means, so its error is measured as its task reads it
    fed_back: dict[int, str] = field(default_factory=dict)  # state outputs run again as inputs (runtime/sequence.py)


def reference_outputs(p: Prepared, s: Settings, calibration: Any) -> Reference:
    """onnxruntime must run the original, on these inputs, before any work."""
    sess = _original_session(p.loaded, p.source, s.target.opset is not None)
    names = [o.name for o in sess.get_outputs()]
    kinds = output_kinds(p.source, s.verify.output_kinds())
    feeds: FeedList = []
    reference: list = []
    fed_back: dict[int, str] = {}
    if s.verify.verify or s.plan.active() or s.real_inputs:
        if calibration is not None:
            feeds = calibration_feeds(calibration)
        elif s.verify.inputs:
            feeds = load_feeds(s.verify.inputs)
        else:  # made up: the first feed the original runs on (runtime/synthesize.py)
            feed, reference = first_running_feed(p.source, s.verify.seed, lambda f: run(sess, [f], "the original model"))
            feeds = [feed]
        try:
            reference = reference or run(sess, feeds, "the original model")
            fed_back = feedback(names, kinds, feeds, reference)
            reference = run_twice(lambda f: run(sess, f, "the original model"), feeds, fed_back, reference)
        except VerificationError as e:
            hint = "check the --inputs file" if s.real_inputs else "pass --inputs FILE.npz with real inputs, or --no-verify"
            raise CompressError(f"{e}; {hint}") from None
    names, kinds = extended(names, kinds, fed_back)
    return Reference(feeds, reference, names, kinds, fed_back)


def select(p: Prepared, s: Settings) -> Selection:
    selection = select_weights(p.source, s.select, p.loaded.data_dir)
    read_external(p.loaded, keep={w.name for w in selection.weights})  # the small rest, kept as they are
    if not selection.weights:
        raise CompressError(
            f"nothing to compress: no float weight with at least {s.select.min_elements} values"
            + (f" ({len(selection.skipped)} left alone, see inspect)" if selection.skipped else "")
            + "; lower --min-elements or check --include/--exclude"
        )
    return selection


@dataclass
class Measured:
    """What the calibration inputs say about each weight (calibrate.py); empty when not asked."""

    importance: dict[str, np.ndarray] = field(default_factory=dict)
    covariance: dict[str, Covariance] = field(default_factory=dict)


def measure_inputs(p: Prepared, s: Settings, selection: Selection, ref: Reference) -> Measured:
    if not ((s.plan.sensitivity or s.plan.compensate) and s.real_inputs and s.method != "lowrank"):
        return Measured()
    # Not for the planner: weighing a head's classes by the few the calibration finds likely
    # let it take the OCR model's head to 4-5 bits, which met 0.0076 on the 16 lines it
    # planned on and measured 0.034-0.045 on 16 others (0.0092 without the weighting). The
    # planner also floors every feature's mean square (plan.FEATURE_FLOOR), for the same reason.
    measured = calibrate(
        p.source,
        selection.weights,
        ref.feeds,
        covariances=s.plan.compensate and s.method == "codebook",
        classes=not s.plan.active(),
        floor=FEATURE_FLOOR if s.plan.active() else 0.0,
    )
    release_free_heap()  # the activations just freed: 0.19 GB on MiniLM
    return Measured(measured.importance if s.plan.sensitivity else {}, measured.covariance)


@dataclass
class Decision:
    recipe: Recipe
    plan: dict | None  # what the planner aimed at and measured; None for fixed settings
    builder: LastBuild  # builds a recipe with the decision's trial encodings


def decide(p: Prepared, s: Settings, selection: Selection, ref: Reference, measured: Measured, progress: Progress) -> Decision:
    """Fixed settings or the planner choose each weight's encoding."""
    encoder = Encoder(s.codebook, s.lowrank, measured.importance, measured.covariance)
    sites = {w.name: w for w in selection.weights}
    builder = LastBuild(p.source, sites, encoder, s.target.ort_version(), progress)
    planned = None
    if not s.plan.active():
        recipe = decide_fixed(selection.weights, s.method, s.codebook, s.lowrank, encoder, progress)
    else:
        metric = _plan_metric(s.plan.metric, ref.names, ref.kinds)
        gain_metric = "task-smooth" if s.plan.metric == "task" else "rel-l2"
        calib = Calibration(ref.feeds, ref.outputs, metric, ref.names, ref.kinds, ref.fed_back, gain_metric)
        recipe, planned = make_plan(
            p.source,
            selection.weights,
            s.plan,
            calib,
            p.loaded.file_bytes,
            encoder,
            lambda r: builder(r).model,
            progress,
            s.target.ort_version(),
        )
    encoder.keep_only(recipe.encoded())
    return Decision(recipe, planned, builder)


@dataclass
class Built:
    encoded: list[EncodedWeight]
    model: onnx.ModelProto
    stored: dict[str, str]  # how each codebook's indices are stored, by weight name
    plan: dict | None
    recipe: Recipe


def build(p: Prepared, s: Settings, selection: Selection, decision: Decision) -> Built:
    """The recipe made into a model, recorded in its metadata; the weights it keeps join the
    selection's skipped ones."""
    recipe = decision.recipe
    sites = {w.name: w for w in selection.weights}
    selection.skipped += [Skipped(name, tuple(sites[name].array.shape), reason) for name, reason in recipe.kept().items()]
    read_external(p.loaded, keep=set(recipe.encoded()))  # those kept stay as they were
    if not recipe.encoded():
        hint = "try a lower --energy or --rank, or --method lowrank+kmeans" if s.method == "lowrank" else "try fewer --bits"
        raise CompressError(f"nothing to compress: no weight gets smaller with these settings; {hint}")
    made = decision.builder(recipe)
    record(made.model, "plan" if decision.plan else s.method, {e.site.name: _metadata(e, made.stored) for e in made.encoded})
    return Built(made.encoded, made.model, made.stored, decision.plan, recipe)


def save(p: Prepared, built: Built) -> int:
    """Bytes of the result: written atomically where asked, else as it would be."""
    return save_model(built.model, p.out_path) if p.out_path is not None else built.model.ByteSize()


def make_report(p: Prepared, s: Settings, selection: Selection, built: Built, measured: Measured, after: int) -> Report:
    settings = {
        "method": s.method,
        **asdict(s.codebook),
        **asdict(s.lowrank),
        **asdict(s.select),
        "target_ort": s.target.target_ort,
        "opset": p.opset,
        "sensitivity_weighted": bool(measured.importance),
        "compensated": sum(1 for e in built.encoded if e.codebook is not None and e.codebook.method.endswith("compensated")),
        **({"metric": s.plan.metric if isinstance(s.plan.metric, str) else "callable"} if built.plan else {}),
    }
    return Report(
        model=str(p.loaded.path) if p.loaded.path else "<ModelProto>",
        output=str(p.out_path) if p.out_path else None,
        settings=settings,
        plan=built.plan,
        tensors=[TensorReport.of(e, built.stored, built.recipe.notes.get(e.site.name, "")) for e in built.encoded],
        skipped=[{"name": x.name, "shape": list(x.shape), "reason": x.reason} for x in selection.skipped],
        file_bytes_before=p.loaded.file_bytes,
        file_bytes_after=after,
    )


def verify(p: Prepared, built: Built, ref: Reference, report: Report, progress: Progress) -> Comparison:
    """The compressed model (the written file where there is one) run in onnxruntime on the
    feeds, its outputs compared with the original's into the report; returns both models'
    outputs. A result onnxruntime cannot run is never left where a good one is expected."""
    if callable(progress):
        progress("verify", 0, 1)
    # onnxruntime's constant folding keeps every decoded intermediate until its pass ends
    # (6.5 GiB at load for a 2.4 GB model of nine big weights); unfolded, the same ops
    # decode one weight at a time as the model runs (1.2 GiB in onnxruntime)
    report.verified_unfolded = p.loaded.file_bytes > UNFOLDED_VERIFY_BYTES
    try:
        target = p.out_path if p.out_path is not None else built.model
        sess = session(target, "the compressed model", fold=not report.verified_unfolded)
        candidate = run_twice(lambda f: run(sess, f, "the compressed model"), ref.feeds, ref.fed_back)
        report.outputs = compare(ref.names, ref.outputs, candidate, ref.kinds, ref.feeds, margins=True)
    except VerificationError as e:
        if p.out_path is not None:
            p.out_path.unlink(missing_ok=True)
            raise VerificationError(f"{e} (the output was removed; please report this with the model)") from None
        raise
    report.verified = True
    if callable(progress):
        progress("verify", 1, 1)
    return Comparison(ref.names, ref.outputs, candidate, report.outputs)


def centroids(encoded: list[EncodedWeight]) -> dict[str, np.ndarray]:
    """Each codebook's levels by weight name (a factor's under its own name)."""
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


def calibration_feeds(calibration: Any) -> FeedList:
    """Feeds from an .npz path, one {name: array} or a list of them."""
    if isinstance(calibration, dict):
        return [calibration]
    if isinstance(calibration, list):
        if not calibration or not all(isinstance(f, dict) for f in calibration):
            raise CompressError("calibration must be an .npz path, a dict of input arrays, or a non-empty list of such dicts")
        return calibration
    return load_feeds(Path(calibration))


def _original_session(loaded: LoadedModel, source: onnx.ModelProto, converted: bool):
    try:
        if loaded.path is not None and not converted:  # from the file: no re-serialization
            return session(loaded.path, "the original model")
        return session(source, "the original model")
    except VerificationError as e:
        raise CompressError(f"{e}; the input must run in onnxruntime (try --opset N to convert it)") from None


def _plan_metric(metric, names: list[str], kinds: dict[str, OutputKind]):
    """The planner's measure: the error of a model's outputs against the original's."""

    def measure(reference: list[list[np.ndarray]], candidate: list[list[np.ndarray]], feeds: list[dict]) -> float:
        if callable(metric):
            as_dicts = [dict(zip(names, outs, strict=True)) for outs in reference]
            return float(metric(as_dicts, [dict(zip(names, outs, strict=True)) for outs in candidate]))
        return error_of(compare(names, reference, candidate, kinds, feeds), metric)

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
        return {"dtype": "float16", "values": stored[e.site.name]}
    if e.blocks is not None:
        return {"bits": e.blocks.bits, "block": e.blocks.block, "values": stored[e.site.name]}
    if e.pair is None:
        assert e.codebook is not None
        return codebook(e.site.name, e.codebook)
    entry: dict = {"rank": e.pair.rank, "kind": e.pair.kind}
    if e.factors:
        entry["factors"] = {site.name: codebook(site.name, cb) for site, cb in e.factors}
    return entry
