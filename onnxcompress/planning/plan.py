"""The planner: per tensor, how to store it (bits and layout, float16, a low-rank pair, or as it
is) so that the model meets an output-error target with the fewest bytes, or a size with the
least error. It only decides: it returns a Recipe.

Each tensor's candidates get bytes and distortion (candidates.py), the distortion scaled by the
tensor's gain (probe.py); ladder.py decides on those numbers; a candidate plan is measured by
feeding its decoded weights to the probe, and the chosen plan is confirmed on the model that
the pipeline's `build` function makes of it (this module never imports the builder).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from functools import partial

import numpy as np
import onnx

from ..encoding.blocks import BLOCK_BITS
from ..encoding.codebook import Codebook
from ..encoding.compensate import compensate
from ..encoding.encoded import EncodedWeight, Encoder, weight_bytes
from ..errors import TargetError, VerificationError
from ..graph.decode import BLOCKS_MIN_ORT, BLOCKS_OPSET, blocks_stay_packed
from ..graph.rewrite import default_opset
from ..io.load import tensor_bytes
from ..io.select import WeightSite
from ..memory import release_free_heap
from ..options import PlanOptions
from ..progress import Progress
from ..recipe import AsCodebook, AsFloat16, Keep, Recipe
from ..runtime.fusion import fused_blocks
from ..runtime.sequence import run_twice
from ..runtime.verify import run, session
from .candidates import DECODER_BYTES, long_channel_choice, pair_options, tensor_options
from .ladder import (
    Plan,
    PlanTrace,
    TensorOptions,
    hold_to_ram,
    ladder,
    least_ram,
    lighten,
    lighter_ladder,
    lower_hull,
    search_error,
    unbounded_within,
    within_size,
)
from .probe import Calibration, Probe, compensation_ratios, halves, output_gains

# Added to each input feature's mean square (in units of their mean) in the importances the
# planner weighs by: from few inputs a feature's mean square is noisy, and one quiet on them
# may not be quiet elsewhere. Planned on 16 of the OCR model's 32 lines, --max-error 0.01
# measured 0.0100 on them and 0.029 on the 16 others without it, 0.0082 with it (a plan of
# 5.06 MB instead of 4.49); the other models' plans kept their size within 3%.
FEATURE_FLOOR = 0.1

Build = Callable[[Recipe], onnx.ModelProto]


def make_plan(
    source: onnx.ModelProto,
    weights: list[WeightSite],
    plan_o: PlanOptions,
    calib: Calibration,
    file_bytes: int,
    encoder: Encoder,
    build: Build,
    progress: Progress = False,
    target_ort: tuple[int, ...] = (1, 16),
) -> tuple[Recipe, dict]:
    """The recipe that meets the target, and what the search did (for the report). Codebooks
    weigh by the encoder's importances, and those of a weight with a covariance compensate.
    Raises TargetError when no plan that compresses anything meets the target."""
    t0 = time.perf_counter()
    sizes = {w.name: weight_bytes(w) for w in weights}
    # The 8-bit codebooks come first: their k-means runs also give every per-tensor option's
    # distortion (sse_by_k), and the gain probes and compensation start from them.
    eight = {e.site.name: e.codebook for e in encoder.encode([(w, AsCodebook(8)) for w in weights], progress)}
    # and over values scaled per channel, and per long channel (opset 11: GatherElements): one
    # more k-means run each gives all their widths
    opset = default_opset(source)
    low_bits = opset >= 11  # below 8 bits and per channel need BitShift / GatherElements (Cast: any)
    scalable = [(w, AsCodebook(8, "scaled")) for w in weights if w.array.ndim >= 2]
    scaled = {e.site.name: e.codebook for e in encoder.encode(scalable, progress)}
    long = [(w, c) for w in weights if low_bits and (c := long_channel_choice(w)) is not None]
    columns = {e.site.name: e.codebook for e in encoder.encode(long, progress)}
    block_bits = _block_widths(source, weights, opset, target_ort)
    tensors = _candidates(weights, eight, scaled, columns, sizes, opset, encoder, block_bits, target_ort)
    release_free_heap()  # the spectra and per-channel runs just freed
    try:
        probe: Probe | None = Probe(source, weights)
    except VerificationError:  # a model that cannot take its weights as inputs: build every candidate
        probe = None
    _weigh(tensors, weights, eight, encoder, probe, calib)
    release_free_heap()
    products = any(c.op_type == "MatMul" for w in weights for c in w.consumers)
    newer = products and (opset < BLOCKS_OPSET or tuple(target_ort) < BLOCKS_MIN_ORT[4])
    ram = _hold_to_ram(tensors, plan_o, tensor_bytes(source), sum(sizes.values()), newer)
    load_budget = plan_o.load_budget(tensor_bytes(source))
    light = None if load_budget is None else partial(lighten, tensors=tensors, budget=load_budget)
    unbounded = ladder(tensors)
    plans = unbounded if light is None else lighter_ladder(unbounded, light)
    if light is not None and not any(p.compressed() for p in plans):
        raise TargetError(
            f"cannot compress anything within --load-peak {plan_o.load_peak:g}: every option adds more to onnxruntime's "
            f"load-time peak than its budget ({load_budget / 1e3:.3g} KB) allows; raise --load-peak, or pass --load-peak 0 "
            "where memory at load does not matter"
        )
    measure = _Measure(weights, encoder, calib, probe, build, progress)
    del probe  # the measure owns it, and lets it go before the chosen plan is confirmed
    other_bytes = file_bytes - sum(sizes.values())
    trace = PlanTrace()
    bound_cost = None  # a size target's better plan that --load-peak ruled out
    if plan_o.max_error is not None:
        held = f" with the weights held to --max-ram {plan_o.max_ram}" if ram else ""
        target, best = _meet_error(plans, tensors, plan_o, measure, trace, held, light)
    elif plan_o.target_size is not None or plan_o.ratio is not None:
        target, best = _meet_size(plans, tensors, plan_o, measure, file_bytes, other_bytes, light)
        if light is not None:
            bound_cost = unbounded_within(tensors, unbounded, best, _size_budget(plan_o, file_bytes) - other_bytes)
    else:  # --max-ram alone: the least distorted plan that fits
        target, best = "", plans[-1]
        best.measured = measure.built(best.recipe())
    if ram:
        target = ", ".join(t for t in (target, f"--max-ram {ram['budget'] / 1e6:.3g} MB") if t)
        ram["estimated"] = ram.pop("other") + best.ram
    # what folding the plan's decoders adds at load (an estimate), and under --load-peak its budget
    # and the tensors moved for it
    load = {"estimated": best.load, "budget": load_budget, "held": list(best.lightened), "peak": plan_o.load_peak}
    if bound_cost:
        load["unbounded"] = {**bound_cost, "bytes": bound_cost["bytes"] + other_bytes}
    info = {
        "target": target,
        "measured": best.measured,
        # the chosen plan on halves of the inputs: a half over an error target means too few inputs
        "halves": measure.on_halves(),
        "max_error": plan_o.max_error,
        "plans_on_ladder": len(plans),
        "candidates": [{"bytes": b + other_bytes, "error": e} for b, e in trace.evaluations],
        "estimated_bytes": best.bytes + other_bytes,
        # the same estimate for uniform 8 bits per tensor, so the report can say what planning bought
        "eight_bit_bytes": other_bytes + sum(min(sizes[w.name], eight[w.name].stored_bytes() + DECODER_BYTES) for w in weights),
        "seconds": time.perf_counter() - t0,
        "ram": ram or None,  # --max-ram: the budget, the original's weights and the plan's, in bytes
        "load": load,
    }
    return best.recipe(), info


def _hold_to_ram(tensors: list[TensorOptions], plan_o: PlanOptions, original: int, selected: int, newer: bool) -> dict:
    """Holds the tensors to --max-ram (ladder.hold_to_ram); what the report needs of it, or {}
    without one. Raises TargetError when even the least RAM the options allow is over, saying
    so when MatMul weights could stay packed at a `newer` opset and onnxruntime."""
    budget = plan_o.ram_budget(original)
    if budget is None:
        return {}
    other = original - selected  # the weights left out of the selection stay as they are
    if original <= budget and plan_o.max_error is None and plan_o.target_size is None and plan_o.ratio is None:
        raise TargetError(
            f"the original's weights ({original / 1e6:.3g} MB) already fit --max-ram {plan_o.max_ram}: nothing needs "
            "compressing; add --max-error E or --target-size MB for a smaller file"
        )
    if hold_to_ram(tensors, budget - other) is None:
        least = other + least_ram(tensors)
        raise TargetError(
            f"cannot meet --max-ram {plan_o.max_ram} ({budget / 1e6:.3g} MB): the weights onnxruntime holds once loaded "
            f"come to at least {least / 1e6:.3g} MB ({least / original:.0%} of the original's), since only lookup tables, "
            "low-rank pairs and integer blocks before a MatMul stay smaller than float in RAM; raise --max-ram"
            + (", or pass --opset 21 --target-ort 1.32 to let MatMul weights stay packed as integer blocks" if newer else "")
        )
    return {"budget": budget, "original": original, "other": other}


def _candidates(
    weights: list[WeightSite],
    eight: dict[str, Codebook],
    scaled: dict[str, Codebook],
    columns: dict[str, Codebook],
    sizes: dict[str, int],
    opset: int,
    encoder: Encoder,
    block_bits: dict[str, tuple[int, ...]],
    target_ort: tuple[int, ...],
) -> list[TensorOptions]:
    """Each tensor's options on all cores; the pairs' encodings go to the encoder. Below opset
    11 only 8 bits per tensor and float16 (pairs of 8-bit codebooks need the same opset)."""
    imp = encoder.importance
    low_bits = opset >= 11
    with ThreadPoolExecutor(max(1, min(len(weights), os.cpu_count() or 1))) as pool:
        futures = [
            pool.submit(
                tensor_options,
                w,
                imp.get(w.name),
                sizes[w.name],
                _curve(eight[w.name]),
                low_bits,
                encoder.can_compensate(w.name),
                scaled.get(w.name),
                columns.get(w.name),
                opset,
                block_bits.get(w.name, ()),
                target_ort,
            )
            for w in weights
        ]
        pair_futures = [pool.submit(pair_options, w, imp.get(w.name), encoder.codebook_o) for w in weights] if low_bits else []
        tensors = [f.result() for f in futures]
        for t, pf in zip(tensors, pair_futures, strict=False):
            pair_opts, pair_encodings = pf.result()
            for e in pair_encodings:
                encoder.add(e)
            t.options = lower_hull(t.options + pair_opts)
            t.smaller_in_ram = lower_hull(t.smaller_in_ram + [o for o in pair_opts if o.ram < sizes[t.site.name]])
    if not low_bits:
        for t in tensors:
            t.options = lower_hull([o for o in t.options if _allowed_below_opset_11(o.choice)])
            t.smaller_in_ram = lower_hull([o for o in t.smaller_in_ram if _allowed_below_opset_11(o.choice)])
    return tensors


def _block_widths(
    source: onnx.ModelProto, weights: list[WeightSite], opset: int, target_ort: tuple[int, ...]
) -> dict[str, tuple[int, ...]]:
    """Per weight, the widths of integer blocks offered: those the target onnxruntime would keep
    packed (decode.blocks_stay_packed) and this one does fuse in this graph (runtime/fusion.py)."""
    out: dict[str, tuple[int, ...]] = {}
    for bits in BLOCK_BITS:
        fused = fused_blocks(source, [w for w in weights if blocks_stay_packed(w, bits, opset, target_ort)], bits)
        for name in fused:
            out[name] = (*out.get(name, ()), bits)
    return out


def _allowed_below_opset_11(choice) -> bool:
    return isinstance(choice, Keep | AsFloat16) or (
        isinstance(choice, AsCodebook) and choice.bits == 8 and choice.layout in ("tensor", "scaled")
    )


def _weigh(
    tensors: list[TensorOptions],
    weights: list[WeightSite],
    eight: dict[str, Codebook],
    encoder: Encoder,
    probe: Probe | None,
    calib: Calibration,
) -> None:
    """Scales each option's distortion by its tensor's gain, and a compensated codebook's also
    by how much compensation lowered its 8-bit output distortion; the compensated 8-bit
    codebooks go to the encoder."""
    gains = output_gains(probe, weights, encoder.importance, eight, calib) if probe is not None else {}
    compensated: dict[str, Codebook] = {}
    names = [w.name for w in weights if encoder.can_compensate(w.name)]
    if names:
        sites = {w.name: w for w in weights}
        with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
            made = pool.map(lambda n: compensate(sites[n].array, eight[n], encoder.covariance[n]), names)
            compensated = dict(zip(names, made, strict=True))
        for n, cb in compensated.items():
            encoder.add(
                EncodedWeight(sites[n], AsCodebook(8, "tensor", True), codebook=cb, rel_error=cb.rel_error, seconds=cb.seconds)
            )
    ratios = compensation_ratios(weights, eight, compensated, encoder.covariance) if compensated else {}
    for n in names:
        encoder.covariance[n].keep_factor_only()
    for t in tensors:
        g, r = gains.get(t.site.name, 1.0), ratios.get(t.site.name, 1.0)
        for field in ("options", "smaller_in_ram"):
            scaled = [
                replace(o, distortion=o.distortion * g * (r if getattr(o.choice, "compensate", False) else 1.0))
                for o in getattr(t, field)
            ]
            setattr(t, field, lower_hull(scaled))


class _Measure:
    """A plan's error on the calibration inputs: through the probe when it can feed every
    chosen weight, else on the built model."""

    def __init__(self, weights, encoder: Encoder, calib: Calibration, probe: Probe | None, build: Build, progress: Progress):
        self.sites = {w.name: w for w in weights}
        self.encoder, self.calib, self.probe, self.build, self.progress = encoder, calib, probe, build, progress
        self.outputs: list[list[np.ndarray]] = []  # the last built plan's outputs on the calibration inputs

    def __call__(self, plan: Plan) -> float:
        recipe = plan.recipe()
        items = [(self.sites[name], c) for name, c in recipe.encoded().items()]
        encoded = self.encoder.encode(items, self.progress)
        if self.probe is None or not all(e.site.name in self.probe.covers for e in encoded):
            return self.built(recipe)
        values = {e.site.name: e.decoded().astype(e.site.array.dtype, copy=False) for e in encoded}
        probe = self.probe
        outputs = run_twice(lambda feeds: probe.run(feeds, values), self.calib.feeds, self.calib.fed_back)
        return self.calib.error(self.calib.reference, outputs, self.calib.feeds)

    def built(self, recipe: Recipe) -> float:
        self.outputs = []  # the last plan's outputs go before the next plan's arrive (158 MB on the OCR model)
        release_free_heap()  # what the probe runs freed, before the build and its session take theirs
        self.outputs = _run_built(self.build(recipe), self.calib)
        release_free_heap()  # the session just freed holds a copy of every weight
        return self.calib.error(self.calib.reference, self.outputs, self.calib.feeds)

    def on_halves(self) -> list[float]:
        """The last built plan's error on each half of the calibration inputs (probe.halves)."""
        cuts = halves(self.calib.feeds, self.calib.reference, self.outputs)
        return [self.calib.error(ref, cand, feeds) for feeds, ref, cand in cuts]


def _run_built(model: onnx.ModelProto, calib: Calibration) -> list[list[np.ndarray]]:
    """A built plan's outputs on the calibration inputs (its session gone when this returns)."""
    sess = session(model, "a planned model")
    return run_twice(lambda feeds: run(sess, feeds, "a planned model"), calib.feeds, calib.fed_back)


def _meet_error(
    plans: list[Plan],
    tensors: list[TensorOptions],
    plan_o: PlanOptions,
    measure: _Measure,
    trace: PlanTrace,
    held: str = "",
    light: Callable[[Plan], Plan] | None = None,
) -> tuple[str, Plan]:
    """The smallest plan measured within --max-error, confirmed on the built model; `held` says
    what restricted the plans (--max-ram), for the error; `light`: --load-peak's lighten."""
    assert plan_o.max_error is not None
    metric = plan_o.metric if isinstance(plan_o.metric, str) else "your metric"
    target = f"--max-error {plan_o.max_error:g} ({metric})"
    best = search_error(plans, plan_o.max_error, measure, trace, tensors, light=light)
    measure.probe = None  # from here on every plan is built; its session held a copy of the weights
    # the probe runs without onnxruntime's fusions (constant weights; integer blocks, whose
    # MatMulNBits quantizes the activations too): confirm on the built model, and step up the
    # ladder when that puts it over the target
    built_errors: list[float] = []
    if best is not None and (built := measure.built(best.recipe())) > plan_o.max_error:
        built_errors.append(built)
        larger = sorted((p for p in plans if p.bytes > best.bytes and p.compressed()), key=lambda p: p.bytes)
        best, built = _smallest_built_within(larger, plan_o.max_error, measure, built_errors)
    if best is None:
        if not built_errors:  # the probe's measures can be lower than the built model's: say what it measures
            most = max((p for p in plans if p.compressed()), key=lambda p: p.bytes, default=None)
            built_errors = [measure.built(most.recipe())] if most is not None else []
        tried = min(built_errors, default=float("nan"))
        raise TargetError(
            f"cannot meet {target}: the most faithful plan that still compresses something measured {tried:.3g} on "
            f"these inputs{held}; raise --max-error{', or --max-ram' if held else ''}, or pass --include/--exclude to keep "
            "sensitive tensors out"
        )
    best.measured = built
    return target, best


def _smallest_built_within(plans: list[Plan], limit: float, measure: _Measure, errors: list[float]) -> tuple[Plan | None, float]:
    """The smallest of `plans` (smallest first) whose built model measures within `limit`, by
    bisection (the error falls as plans grow), and its error; each built error joins `errors`.
    Stepping up one plan at a time took up to one build per plan of the ladder where integer
    blocks' activation rounding keeps every built model above the probe's estimate."""
    lo, hi, found, last = 0, len(plans) - 1, (None, float("nan")), None
    while lo <= hi:
        last = (lo + hi) // 2
        error = measure.built(plans[last].recipe())
        if error <= limit:
            found, hi = (plans[last], error), last - 1
        else:
            errors.append(error)
            lo = last + 1
    if found[0] is not None and found[0] is not plans[last]:  # the measure keeps the last built outputs
        measure.built(found[0].recipe())
    return found


def _meet_size(
    plans: list[Plan],
    tensors: list[TensorOptions],
    plan_o: PlanOptions,
    measure: _Measure,
    file_bytes: int,
    other_bytes: int,
    light: Callable[[Plan], Plan] | None = None,
) -> tuple[str, Plan]:
    budget = _size_budget(plan_o, file_bytes)
    target = f"--target-size {budget / 1e6:g} MB" if plan_o.target_size is not None else f"--ratio {plan_o.ratio:g}"
    for p in within_size(tensors, [p for p in plans if p.compressed()], budget - other_bytes, light=light):
        if measure.build(p.recipe()).ByteSize() <= budget:  # the estimate leaves out small proto overheads: check
            p.measured = measure.built(p.recipe())
            return target, p
    smallest = min(p.bytes for p in plans) + other_bytes
    raise TargetError(
        f"cannot meet {target}: the smallest plan (every tensor at 1 bit) is about {smallest / 1e6:.2f} MB; "
        "raise the size or lower --ratio"
    )


def _size_budget(plan_o: PlanOptions, file_bytes: int) -> int:
    return int(plan_o.target_size * 1e6) if plan_o.target_size is not None else int(file_bytes / (plan_o.ratio or 1.0))


def _curve(cb: Codebook) -> np.ndarray:
    assert cb.sse_by_k is not None, "a per-tensor codebook carries its curve"
    return cb.sse_by_k
