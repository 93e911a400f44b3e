"""The entry points: `compress()` runs load -> select -> encode -> rewrite -> save -> verify ->
report; `inspect()` shows what each bit width would give without writing anything."""

from __future__ import annotations

import os
import time
from contextlib import nullcontext
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx.version_converter
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from .decode import check_opset
from .encode import Codebook, encode_codebook, sse_curve, storage_dtype
from .errors import CompressError, VerificationError, first_line
from .load import LoadedModel, load_model
from .options import CodebookOptions, SelectOptions, TargetOptions, VerifyOptions, groups_from_kwargs
from .report import Report, TensorReport
from .rewrite import default_opset, rewrite_graph
from .save import check_output_path, save_model
from .select import Selection, Skipped, WeightSite, select_weights
from .verify import compare, load_feeds, run, session, synthesize_feed

ModelSource = str | os.PathLike | onnx.ModelProto


@dataclass
class CompressResult:
    model: onnx.ModelProto
    report: Report


def compress(
    model: ModelSource,
    output: str | os.PathLike | None = None,
    *,
    force: bool = False,
    report_json: str | os.PathLike | None = None,
    progress: bool = False,
    **options: Any,
) -> CompressResult:
    """Replace every large float weight of `model` by a k-means codebook and packed indices.

    Options (see `onnxcompress --help`): min_elements, include, exclude, bits, granularity,
    codebook_dtype, kmeans, target_ort, opset, verify, inputs, seed. With `output`, the result
    is written atomically (never over the input; an existing file only with force=True).
    Raises CompressError for bad input and VerificationError when onnxruntime cannot load or
    run the result.
    """
    t0 = time.perf_counter()
    opts = groups_from_kwargs(options)
    select_o: SelectOptions = opts[SelectOptions]
    codebook_o: CodebookOptions = opts[CodebookOptions]
    target_o: TargetOptions = opts[TargetOptions]
    verify_o: VerifyOptions = opts[VerifyOptions]

    loaded = load_model(model)
    out_path = Path(output) if output is not None else None
    if out_path is not None:
        check_output_path(out_path, loaded.path, force)
    if report_json is not None and not Path(report_json).parent.is_dir():
        raise CompressError(f"cannot write the report {report_json}: its folder does not exist; create it first")
    source = loaded.model
    if target_o.opset is not None:
        source = convert_opset(source, target_o.opset)
    layout = codebook_o.granularity.split(":")[0]
    check_opset(codebook_o.bits, layout, default_opset(source), "the model")  # before any work

    # onnxruntime must run the original (and, to verify, on these inputs) before any work
    reference_sess = _original_session(loaded, source, target_o.opset is not None)
    feeds, reference = [], []
    if verify_o.verify:
        feeds = load_feeds(verify_o.inputs) if verify_o.inputs else [synthesize_feed(source, verify_o.seed)]
        try:
            reference = run(reference_sess, feeds, "the original model")
        except VerificationError as e:
            hint = "check the --inputs file" if verify_o.inputs else "pass --inputs FILE.npz with real inputs, or --no-verify"
            raise CompressError(f"{e}; {hint}") from None
    output_names = [o.name for o in reference_sess.get_outputs()]
    del reference_sess

    selection = select_weights(source, select_o)
    if not selection.weights:
        raise CompressError(
            f"nothing to compress: no float weight with at least {select_o.min_elements} values"
            + (f" ({len(selection.skipped)} left alone, see inspect)" if selection.skipped else "")
            + "; lower --min-elements or check --include/--exclude"
        )
    encoded = encode_all(selection.weights, codebook_o, progress)
    # a codebook per channel can outweigh what its indices save: such a tensor stays as it is
    kept = []
    for site, cb in encoded:
        after = cb.stored_bytes()
        if after < _weight_bytes(site):
            kept.append((site, cb))
        else:
            reason = f"not smaller as a codebook ({_weight_bytes(site)} -> {after} bytes)"
            selection.skipped.append(Skipped(site.name, tuple(site.array.shape), reason))
    encoded = kept
    if not encoded:
        raise CompressError(
            "nothing to compress: no weight gets smaller with these settings; try fewer --bits or --granularity tensor"
        )
    compressed, stored = rewrite_graph(source, encoded, target_o.ort_version())

    after = save_model(compressed, out_path) if out_path is not None else compressed.ByteSize()
    report = Report(
        model=str(loaded.path) if loaded.path else "<ModelProto>",
        output=str(out_path) if out_path else None,
        settings={**asdict(codebook_o), **asdict(select_o), "target_ort": target_o.target_ort, "opset": default_opset(source)},
        tensors=[_tensor_report(site, cb, stored[site.name]) for site, cb in encoded],
        skipped=[{"name": s.name, "shape": list(s.shape), "reason": s.reason} for s in selection.skipped],
        file_bytes_before=loaded.file_bytes,
        file_bytes_after=after,
    )
    if verify_o.verify:
        try:
            sess = session(out_path if out_path is not None else compressed, "the compressed model")
            report.outputs = compare(output_names, reference, run(sess, feeds, "the compressed model"))
        except VerificationError as e:
            if out_path is not None:  # never leave a broken model where a good one is expected
                out_path.unlink(missing_ok=True)
                raise VerificationError(f"{e} (the output was removed; please report this with the model)") from None
            raise
        report.verified = True
    report.seconds = time.perf_counter() - t0
    if report_json is not None:
        report.write_json(Path(report_json))
    return CompressResult(compressed, report)


def encode_all(weights: list[WeightSite], options: CodebookOptions, progress: bool = False) -> list[tuple[WeightSite, Codebook]]:
    """Encode the tensors on all cores (the k-means core releases the GIL), largest first."""
    order = sorted(weights, key=lambda w: -w.array.size)
    workers = max(1, min(len(order), os.cpu_count() or 1))
    with _progress(progress) as bar, ThreadPoolExecutor(workers) as pool:
        task = bar.add_task("encoding", total=len(order)) if bar else None
        futures = [pool.submit(encode_codebook, w.array, options, w.channel_axis()) for w in order]
        results = {}
        for w, f in zip(order, futures, strict=True):
            results[w.name] = f.result()
            if bar:
                bar.advance(task)
    return [(w, results[w.name]) for w in weights]


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


def _weight_bytes(site: WeightSite) -> int:
    itemsize = (
        2 if site.onnx_dtype == onnx.TensorProto.BFLOAT16 else onnx.helper.tensor_dtype_to_np_dtype(site.onnx_dtype).itemsize
    )
    return site.array.size * itemsize


def _tensor_report(site: WeightSite, cb: Codebook, indices: str) -> TensorReport:
    return TensorReport(
        name=site.name,
        shape=list(site.array.shape),
        consumers=site.consumer_ops,
        bits=cb.bits,
        layout=cb.layout if cb.layout != "group" else f"group:{cb.group_size}",
        method=cb.method,
        bytes_before=_weight_bytes(site),
        bytes_after=cb.stored_bytes(),
        rel_error=cb.rel_error,
        indices=indices,
        seconds=cb.seconds,
    )


def _progress(enabled: bool):
    if not enabled:
        return nullcontext()
    from rich.console import Console

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} tensors"),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    )


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
    loaded = load_model(model)
    selection = select_weights(loaded.model, select_o)
    out = []
    for site in selection.weights:
        curve, method = sse_curve(site.array, 256, kmeans)
        total = float(np.sum(site.array.astype(np.float64) ** 2))
        entry = storage_dtype(site.array.dtype, "auto").itemsize  # as compress stores the codebook
        by_bits = {}
        for bits in range(1, 9):
            k = 1 << bits
            sse = curve[min(k, len(curve)) - 1]
            error = float(np.sqrt(max(sse, 0.0) / total)) if total else 0.0
            by_bits[bits] = ((site.array.size * bits + 7) // 8 + k * entry, error)
        out.append(Candidate(site.name, list(site.array.shape), site.consumer_ops, _weight_bytes(site), method, by_bits))
    return out, selection
