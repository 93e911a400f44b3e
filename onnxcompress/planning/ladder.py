"""The planner's decision, on numbers only: each tensor's options (bytes, distortion), the
equal-slope (Lagrangian) ladder of plans from the smallest to the least distorted, and the
searches along it for a size budget or a measured error target. Nothing here encodes, builds
or runs a model: an error search receives the function that measures a plan."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..io.select import WeightSite
from ..recipe import Choice, Keep, Recipe, describe

# Slopes on the ladder's log grid; the searches bisect between its plans where it jumps.
LADDER_STEPS = 96


@dataclass(frozen=True)
class Option:
    choice: Choice
    bytes: int = 0
    distortion: float = 0.0  # weighted SSE / weighted ||W||^2
    ram: int = 0  # what onnxruntime holds for it once loaded (the weight's float bytes unless it stays smaller)
    load: int = 0  # what folding its decoder adds to onnxruntime's peak while it loads the model (an estimate)

    def key(self, name: str) -> tuple[str, Choice]:
        """What weight `name` stored this way is, whatever its bytes and distortion."""
        return (name, self.choice)

    @property
    def label(self) -> str:
        return describe(self.choice)


@dataclass
class TensorOptions:
    site: WeightSite
    options: list[Option]  # the lower convex hull of (bytes, distortion), fewest bytes first
    # the same hull over the options that stay smaller in RAM than the weight (lookup tables
    # decoded after the lookup, low-rank pairs): what --max-ram can hold it to
    smaller_in_ram: list[Option] = field(default_factory=list)

    def choose(self, slope: float) -> Option:
        return min(self.options, key=lambda o: o.bytes + slope * o.distortion)


@dataclass
class Plan:
    choices: dict[str, Option]
    bytes: int
    distortion: float
    measured: float | None = None  # the metric on the calibration inputs, once built
    slope: float = 0.0  # the Lagrangian slope that picked it
    lightened: tuple[str, ...] = ()  # tensors moved to lighter decoders for --load-peak (lighten)

    def compressed(self) -> list[str]:
        return [name for name, o in self.choices.items() if not isinstance(o.choice, Keep)]

    @property
    def ram(self) -> int:
        return sum(o.ram for o in self.choices.values())

    @property
    def load(self) -> int:
        return sum(o.load for o in self.choices.values())

    def recipe(self) -> Recipe:
        return Recipe({name: o.choice for name, o in self.choices.items()})


@dataclass
class PlanTrace:
    """What the search did, for the report."""

    evaluations: list[tuple[int, float]] = field(default_factory=list)  # (bytes, measured error)
    seconds: float = 0.0


def lower_hull(options: list[Option]) -> list[Option]:
    """The options a Lagrangian can pick: Pareto-efficient and on the convex hull."""
    pts = sorted(options, key=lambda o: (o.bytes, o.distortion))
    pareto: list[Option] = []
    for o in pts:
        if not pareto or o.distortion < pareto[-1].distortion:
            pareto.append(o)
    hull: list[Option] = []
    for o in pareto:
        while len(hull) >= 2:
            a, b = hull[-2], hull[-1]
            # drop b when it lies strictly above the segment a -> o
            if (b.distortion - a.distortion) * (o.bytes - a.bytes) > (o.distortion - a.distortion) * (b.bytes - a.bytes):
                hull.pop()
            else:
                break
        hull.append(o)
    return hull


def hold_to_ram(tensors: list[TensorOptions], budget: int) -> list[str] | None:
    """Restricts tensors to their options that stay smaller in RAM, the largest saving first,
    until every plan over them holds at most `budget` bytes once loaded (each tensor counted at
    its largest option's RAM, so whatever the search then picks fits); then, while still over,
    drops the forced tensors' largest options. The names restricted, or None when no choice of
    options fits."""

    def worst(options: list[Option]) -> int:
        return max(o.ram for o in options)

    total = sum(worst(t.options) for t in tensors)
    order = sorted((t for t in tensors if t.smaller_in_ram), key=lambda t: worst(t.smaller_in_ram) - worst(t.options))
    forced: list[TensorOptions] = []
    for t in order:
        if total <= budget:
            break
        total -= worst(t.options) - worst(t.smaller_in_ram)
        t.options = t.smaller_in_ram
        forced.append(t)
    while total > budget:
        t = max((t for t in forced if len(t.options) > 1), key=lambda t: worst(t.options), default=None)
        if t is None:
            return None
        largest = worst(t.options)
        t.options = [o for o in t.options if o.ram < largest]
        total -= largest - worst(t.options)
    return [t.site.name for t in forced]


def lighten(plan: Plan, tensors: list[TensorOptions], budget: int) -> Plan:
    """`plan`, or while its decoders add more than `budget` bytes to onnxruntime's peak as it
    folds them at load, the plan with one tensor after another moved to an option that adds
    less and is no more distorted than the plan's own (more bits, or float16: the error cannot
    grow), each time the move costing fewest bytes per byte of load saved. When no move is
    left, every tensor is at its lightest such option: no plan that distorts no tensor more is
    lighter."""
    options = {t.site.name: t.options for t in tensors}
    choices, moved = dict(plan.choices), list(plan.lightened)
    while sum(o.load for o in choices.values()) > budget:
        moves = [
            ((o.bytes - now.bytes) / (now.load - o.load), name, o)
            for name, now in choices.items()
            for o in options[name]
            if o.load < now.load and o.distortion <= plan.choices[name].distortion
        ]
        if not moves:
            break
        _, name, o = min(moves, key=lambda m: m[0])
        choices[name] = o
        moved.append(name)
    if len(moved) == len(plan.lightened):
        return plan
    bytes_, distortion = sum(o.bytes for o in choices.values()), sum(o.distortion for o in choices.values())
    return Plan(choices, bytes_, distortion, slope=plan.slope, lightened=tuple(dict.fromkeys(moved)))


def lighter_ladder(plans: list[Plan], lighten_plan: Callable[[Plan], Plan]) -> list[Plan]:
    """The ladder's plans lightened (lighten with a budget), smallest first, each once."""
    out: dict[tuple, Plan] = {}
    for plan in plans:
        light = lighten_plan(plan)
        out.setdefault(tuple(sorted((n, o.choice) for n, o in light.choices.items())), light)
    return sorted(out.values(), key=lambda p: (p.bytes, p.distortion))


def least_ram(tensors: list[TensorOptions]) -> int:
    """The least RAM any plan over these tensors holds once loaded."""
    return sum(min(o.ram for o in t.options + t.smaller_in_ram) for t in tensors)


def plan_at(tensors: list[TensorOptions], slope: float) -> Plan:
    choices = {t.site.name: t.choose(slope) for t in tensors}
    return Plan(choices, sum(o.bytes for o in choices.values()), sum(o.distortion for o in choices.values()), slope=slope)


def ladder(tensors: list[TensorOptions]) -> list[Plan]:
    """Distinct plans from the smallest to the largest (least distorted), one per slope on a
    log grid wide enough to reach both ends."""
    slopes = []
    for t in tensors:
        for a, b in zip(t.options, t.options[1:], strict=False):
            if a.distortion > b.distortion:
                slopes.append((b.bytes - a.bytes) / (a.distortion - b.distortion))
    if not slopes:
        return [plan_at(tensors, 0.0)]
    lo, hi = min(slopes) / 2, max(slopes) * 2
    grid = np.exp(np.linspace(math.log(max(lo, 1e-300)), math.log(hi), LADDER_STEPS))
    plans: list[Plan] = [plan_at(tensors, 0.0)]
    for s in grid:
        p = plan_at(tensors, float(s))
        if p.choices != plans[-1].choices:
            plans.append(p)
    return plans


def plan_between(
    tensors: list[TensorOptions], low: Plan, high: Plan, tries: int = 60, light: Callable[[Plan], Plan] | None = None
) -> Plan | None:
    """A plan at a slope between `low`'s and `high`'s whose choices differ from both (after
    `light`, when the plans are lightened: lighten), or None when the two are neighbours on the
    frontier. Bisects the slope in log space and only
    computes choices (no measuring), so a midpoint that repeats an end just narrows the range:
    stopping there instead missed every plan in between (10 tensors with 3 options each gave
    a ladder of 50, 100 and 200 bytes, and a 150-byte budget got 100)."""
    a, b = low.slope, high.slope
    for _ in range(tries):
        mid = math.sqrt(max(a, 1e-300) * b)
        if not a < mid < b:
            return None
        p = plan_at(tensors, mid) if light is None else light(plan_at(tensors, mid))
        if p.choices == low.choices:
            a = mid
        elif p.choices == high.choices:
            b = mid
        else:
            return p
    return None


def within_size(
    tensors: list[TensorOptions], plans: list[Plan], budget: int, steps: int = 8, light: Callable[[Plan], Plan] | None = None
) -> list[Plan]:
    """The ladder's plans whose estimated bytes fit `budget`, least distorted first, after up to
    `steps` new plans found between the largest that fits and the smallest that does not: the
    ladder's grid can jump over many choices at once (on the OCR model from 4.75 to 5.26 MB of
    weights, where a 5.14 MB plan lay between)."""
    fitting = [p for p in plans if p.bytes <= budget]
    over = [p for p in plans if p.bytes > budget]
    if fitting and over:
        lo, hi = max(fitting, key=lambda p: p.bytes), min(over, key=lambda p: p.bytes)
        for _ in range(steps):
            p = plan_between(tensors, lo, hi, light=light)
            if p is None:
                break
            if p.bytes <= budget:
                fitting.append(p)
                lo = p
            else:
                hi = p
    return sorted(fitting, key=lambda p: p.distortion)


def search_error(
    plans: list[Plan],
    target: float,
    measure: Callable[[Plan], float],
    trace: PlanTrace,
    tensors: list[TensorOptions] | None = None,
    refine: int = 4,
    light: Callable[[Plan], Plan] | None = None,
) -> Plan | None:
    """The smallest plan on the ladder whose measured error is at most `target` (the measured
    error falls, not always strictly, as plans grow), then up to `refine` bisection steps on
    the slope between the last plan that missed and the first that met it (the ladder's grid
    can jump over many choices at once). None when even the largest plan that compresses
    anything misses it.

    A plan's distortion predicts its squared error (the gains are measured that way), so each
    step measures the plan where the prediction, rescaled by the last measured / predicted
    ratio, crosses the target: on MiniLM the ratio stays within 1.05-1.16 and the search ends
    in 2-3 runs where bisection took 6. When the ratio moves by more than half from one run to
    the next (3-10x off, and changing, on the OCR model), the next step bisects instead, and
    the guesses stop after log2(plans) + 1 of them: never more than about twice bisection's
    runs."""
    t0 = time.perf_counter()
    candidates = [p for p in plans if p.compressed()]
    best = None
    lo, hi = 0, len(candidates) - 1  # the smallest plan that meets it is in [lo, hi], if any
    scale, guided, guesses = 1.0, True, math.log2(max(len(candidates), 1)) + 1
    while lo <= hi:
        if guided and guesses > 0:
            guesses -= 1
            limit = (target / scale) ** 2
            pick = next((i for i in range(lo, hi + 1) if candidates[i].distortion <= limit), hi)
        else:
            pick = (lo + hi) // 2
        p = candidates[pick]
        p.measured = measure(p)
        trace.evaluations.append((p.bytes, p.measured))
        if p.distortion > 0 and np.isfinite(p.measured) and p.measured > 0:
            ratio = p.measured / math.sqrt(p.distortion)
            guided, scale = 2 / 3 < ratio / scale < 3 / 2, ratio  # guess again only while the ratio holds
        else:
            guided = False
        if p.measured <= target:
            best, hi = p, pick - 1
        else:
            lo = pick + 1
    missed = candidates[lo - 1] if best is not None and lo > 0 else None
    for _ in range(refine if tensors and missed is not None and best is not None else 0):
        assert best is not None and missed is not None and tensors is not None
        p = plan_between(tensors, missed, best, light=light)
        if p is None:
            break
        p.measured = measure(p)
        trace.evaluations.append((p.bytes, p.measured))
        if p.measured <= target and p.bytes < best.bytes:
            best = p
        elif p.measured > target:
            missed = p
        else:
            break
    trace.seconds += time.perf_counter() - t0
    return best


def unbounded_within(tensors: list[TensorOptions], plans: list[Plan], chosen: Plan, budget: int) -> dict | None:
    """What --load-peak cost a size target: the least distorted plan within `budget` with no
    load bound (`plans`: the ladder before lighten), when it is at least 10% less distorted (by
    the estimate) than `chosen`, else None. On the face net, --target-size 0.40 gave 340 KB at
    0.027 held, 383 KB at 0.010 unbounded."""
    free = within_size(tensors, [p for p in plans if p.compressed()], budget)
    if not free or free[0].distortion >= 0.9 * chosen.distortion:
        return None
    return {"bytes": free[0].bytes, "load": free[0].load, "distortion": free[0].distortion / max(chosen.distortion, 1e-30)}
