"""The plan's line in the report and the notes under it: what planning bought against 8 bits,
the RAM and load-time estimates, and the warnings for a target the inputs cannot vouch for."""

from __future__ import annotations

import math

from ..graph.decode import load_per_value, plane_widths
from ..options import LOAD_BASE, LOAD_PEAK, LOAD_PER_WEIGHT_BYTE, TargetOptions
from ..runtime.verify import OutputDiff

# Fixed settings are not held to a load-time peak; they get a note when the estimate passes half
# the original's estimated peak. The OCR model at --bits 3 or 5 (estimated +100 MB) measured
# 1.80x; at --bits 4 (+22 MB, no note) 1.18x.
FIXED_LOAD_NOTE = 0.5
# Embedding outputs measured over fewer rows than this get a note (few_rows)
FEW_ROWS = 64


def heavy_load(plan: dict, original_bytes: int) -> str | None:
    """The note for a plan unbounded by --load-peak 0 whose decoders hold more than the whole
    original model while onnxruntime folds them at load (MiniLM at 0.05 before its table stayed
    packed: about 491 MB for a 90 MB model, a load peak of 3.8x the original's), or None."""
    load = plan.get("load") or {}
    if load.get("budget") is not None or load.get("estimated", 0) <= original_bytes:
        return None
    return (
        f"note: folding these decoders at load may take about {human(load['estimated'])}, more than the whole original "
        f"model ({human(original_bytes)}); the default --load-peak {LOAD_PEAK:g} holds a plan near the original's load-time peak"
    )


def load_bound_cost(plan: dict) -> str | None:
    """The note for a size target that --load-peak held to a more distorted plan, or None."""
    free = (plan.get("load") or {}).get("unbounded")
    if not free:
        return None
    return (
        f"note: --load-peak {plan['load']['peak']:g} ruled out a plan of {human(free['bytes'])} about "
        f"{1 / free['distortion']:.1f}x less distorted (an estimate), whose decoders would add about "
        f"{human(max(free['load'], 0))} at load; --load-peak 0 allows it"
    )


def fixed_load(tensors: list, settings: dict, original_bytes: int) -> str | None:
    """The note for fixed settings whose decoders fold heavily at load (bit planes combined
    in INT32), or None. `tensors`: the report's TensorReports."""
    target = TargetOptions(target_ort=str(settings.get("target_ort", "1.16"))).ort_version()
    opset = int(settings.get("opset", 11))
    folding = [t for t in tensors if t.encoding == "codebook" and t.indices in ("uint8", "planes", "uint4", "uint2")]
    added = sum(math.prod(t.shape) * load_per_value(t.bits, t.layout or "tensor", opset, target) for t in folding)
    if added <= FIXED_LOAD_NOTE * (LOAD_BASE + LOAD_PER_WEIGHT_BYTE * original_bytes):
        return None
    widths = sorted({t.bits for t in folding if len(plane_widths(t.bits)) > 1})
    why = f": {', '.join(map(str, widths))}-bit indices fold through several bit planes" if widths else ""
    return (
        f"note: folding these decoders at load may add about {human(int(added))} to onnxruntime's memory peak (an "
        f"estimate, for a {human(original_bytes)} model){why}; --bits 4 or 8 fold lighter, and plans hold it to "
        f"about {LOAD_PEAK:g}x the original's (--load-peak)"
    )


def too_few_inputs(plan: dict) -> str | None:
    """The warning for an error target the plan met on all the inputs but not on half of them:
    on the benchmark models, the plans this flags (the OCR model, MiniLM) were also the ones
    that missed the target on inputs they had not seen (3x and 1.4x)."""
    limit, parts = plan.get("max_error"), plan.get("halves") or []
    if limit is not None and not parts:
        return (
            "note: the target could not be checked on halves of the inputs (one feed whose inputs share no batch); "
            "pass several feeds (NAME@K keys) to have it checked"
        )
    if limit is None or not parts or max(parts) <= limit:
        return None
    return (
        f"warning: the target is met on all the inputs ({plan['measured']:.3g}), but halves of them measure "
        f"{min(parts):.3g} to {max(parts):.3g}: too few inputs for the target to be sure of; pass more of them "
        "(and check the result on others with `onnxcompress compare`), or a lower --max-error"
    )


def too_few_decisions(outputs: list[OutputDiff], plan: dict, metric: str | None) -> str | None:
    """The note for a share-of-decisions target over fewer decisions than it can resolve: at
    0.01 over the face net's 32 held-out faces, "met" means that none changed there, and one
    change elsewhere is already 3%."""
    limit = plan.get("max_error")
    if limit is None or metric != "task":
        return None
    few = [d for d in outputs if 0 < d.decisions and d.decisions * limit < 1]
    if not few:
        return None
    units = {"changed class": "positions", "sequences read differently": "sequences", "flipped at 0.5": "decisions"}
    listed = ", ".join(f"{d.name} ({d.decisions} {units.get(d.measure, 'decisions')})" for d in few)
    return (
        f"note: --max-error {limit:g} is a share of decisions, and {listed} counted fewer than {1 / limit:.0f}: "
        "there it means that none may change, and one change on other inputs would be a larger share; pass more "
        "inputs to measure a rate"
    )


def few_rows(outputs: list[OutputDiff], plan: dict, metric: str | None) -> str | None:
    """The note for an embedding target measured over few rows: a largest shift over few pairs
    understates the one over many. MiniLM's sentence embedding planned at 0.01 on 32 sentences
    measured 0.0079 there and 0.013 on 32 others (on 16: 0.016, on 8: 0.024); its token vectors,
    about 500 rows, stayed within the target on unseen sentences."""
    if plan.get("max_error") is None or metric != "task":
        return None
    few = [d for d in outputs if 0 < d.rows < FEW_ROWS]
    if not few:
        return None
    listed = ", ".join(f"{d.name} ({d.rows} rows)" for d in few)
    return (
        f"note: an embedding's measure is the largest shift of a similarity among the rows measured, and {listed} "
        f"had fewer than {FEW_ROWS}: among more rows the largest shift grows; pass more inputs, or a lower --max-error"
    )


def untested_decisions(outputs: list[OutputDiff]) -> str | None:
    """The note for decision outputs whose inputs never came near a boundary: each decision's
    margin moved by up to some shift, but the nearest one was further than that, so no count
    of flips there can tell how decisions near a boundary fare (margins.py: the face net's
    confident faces)."""
    far = [
        d
        for d in outputs
        if d.margin_shift is not None and d.margin_nearest is not None and 0 < d.margin_shift < d.margin_nearest
    ]
    if not far:
        return None
    listed = "; ".join(
        f"{d.name}'s moved by up to {d.margin_shift:.2g}, and its nearest was {d.margin_nearest:.2g} from its boundary"
        f" (probabilities {_boundary_band(d.margin_shift)})"
        for d in far
    )
    return (
        f"note: no decision on these inputs came near enough to its boundary to test it: in log-odds, {listed}; "
        "decisions on other inputs that close to it may change. Include such inputs to measure how many"
    )


def _boundary_band(shift: float) -> str:
    """The probabilities of a two-way decision whose log-odds are within `shift` of 0."""
    low = 1.0 / (1.0 + math.exp(shift))
    return f"{low:.3g} to {1 - low:.3g}"


def against_eight_bits(plan: dict) -> str:
    """How the plan's estimated size compares with uniform 8 bits per tensor's."""
    if not plan.get("eight_bit_bytes") or not plan.get("estimated_bytes"):
        return ""
    ratio = plan["eight_bit_bytes"] / plan["estimated_bytes"]
    if ratio >= 1.005:
        than = f"{ratio:.2f}x smaller than"
    elif ratio <= 0.995:
        than = f"{(1 / ratio - 1) * 100:.0f}% larger than"  # the target needs more than 8 bits give
    else:
        than = "about the size of"
    return f"; {than} uniform 8 bits ({human(plan['eight_bit_bytes'])})"


def ram_line(plan: dict) -> str:
    """What the plan's weights take in RAM once loaded, against --max-ram."""
    ram = plan.get("ram")
    if not ram:
        return ""
    share = ram["estimated"] / ram["original"] if ram["original"] else 0.0
    return (
        f"; weights in RAM once loaded {human(ram['estimated'])} ({share:.0%} of the original's), within {human(ram['budget'])}"
    )


def load_line(plan: dict) -> str:
    """What folding the plan's decoders adds at load (an estimate), against --load-peak."""
    load = plan.get("load")
    if not load:
        return ""
    if load["budget"] is None:  # no bound: say what the decoders cost, and what bounds it
        if load["estimated"] <= 0:
            return ""
        return f"; decoders add about {human(load['estimated'])} to the load-time peak (an estimate, unbounded: --load-peak 0)"
    held = f"; {len(load['held'])} tensors held to lighter decoders" if load["held"] else ""
    within = f"within {human(load['budget'])} (--load-peak {load['peak']:g}){held}"
    if load["estimated"] <= 0:  # weights that stay packed save more than the decoders hold
        return f"; load-time peak about the original's or less, {within}"
    return f"; decoders add about {human(load['estimated'])} to the load-time peak, {within}"


def human(n: int) -> str:
    value = float(n)
    for unit in ("B", "KB", "MB"):
        if abs(value) < 1000:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} GB"
