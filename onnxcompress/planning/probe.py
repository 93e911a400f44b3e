"""Measuring candidates without building them: one onnxruntime session of the original with its
weights as overridable inputs, so a candidate runs by feeding decoded weights (no rewrite, no
new session); and from it each tensor's gain, how strongly its distortion reaches the outputs."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import onnx

from ..encoding.codebook import Codebook, weighted_sse
from ..encoding.compensate import Covariance, output_distortion
from ..io.select import WeightSite
from ..runtime.outputs import OutputKind
from ..runtime.verify import compare, error_of, run, session

# The gain probes run on a quarter of the calibration rows, 4 to 12 of them, spread over the
# batch: one probe per tensor, so their cost must stay well below the candidates' runs (on
# MiniLM, 12 rows give the same plan as 24, and 24 the same as 48 to 0.1% of its bytes).
PROBE_ROWS = (4, 12)


@dataclass
class Calibration:
    """The inputs a plan is measured on, the original's outputs there, and the error function."""

    feeds: list[dict[str, np.ndarray]]
    reference: list[list[np.ndarray]]
    # (reference outputs, candidate outputs, the feeds they came from) -> error
    error: Callable[[list[list[np.ndarray]], list[list[np.ndarray]], list[dict[str, np.ndarray]]], float]
    names: list[str] = field(default_factory=list)  # the outputs, in the order the runs give them
    kinds: dict[str, OutputKind] = field(default_factory=dict)  # what each means (runtime/outputs.py)
    fed_back: dict[int, str] = field(default_factory=dict)  # state outputs run again as inputs (runtime/sequence.py)
    gain_metric: str = "rel-l2"  # what the gain probes measure: a smooth stand-in for the target's metric


class Probe:
    """One onnxruntime session of the original with its weights as overridable inputs, so a
    candidate is measured by feeding decoded weights: no rewrite, no new session. Weights in
    Constant nodes cannot be fed; `covers` says which can."""

    def __init__(self, source: onnx.ModelProto, weights: list[WeightSite]) -> None:
        inits = {t.name for t in source.graph.initializer}
        self.covers = {w.name for w in weights if w.name in inits}
        probe = onnx.ModelProto()
        probe.CopyFrom(source)
        declared = {i.name for i in probe.graph.input}
        for w in weights:
            if w.name in self.covers and w.name not in declared:
                probe.graph.input.append(onnx.helper.make_tensor_value_info(w.name, w.onnx_dtype, list(w.array.shape)))
        self.sess = session(probe, "the model with its weights as inputs", quiet=True)  # it warns per weight input

    def run(self, feeds: list[dict[str, np.ndarray]], weights: dict[str, np.ndarray]) -> list[list[np.ndarray]]:
        return run(self.sess, [{**feed, **weights} for feed in feeds], "a planned model")


def output_gains(
    probe: Probe, weights: list[WeightSite], importance: dict[str, np.ndarray], eight: dict[str, Codebook], calib: Calibration
) -> dict[str, float]:
    """How strongly each tensor's distortion reaches the outputs: each weight alone as its
    8-bit codebook (`eight`), the rest exact, measured on a sample of the calibration inputs;
    gain = (worst output's error)^2 / distortion, the error by calib.gain_metric: the relative
    L2 error, or the task measures' smooth stand-ins (a step metric such as changed classes
    would read zero for most single tensors). Weights the probe cannot feed get the median
    gain."""
    feed = [_sample(calib.feeds[0], PROBE_ROWS)]
    base = probe.run(feed, {})
    gains: dict[str, float] = {}
    names = (calib.names or [str(i) for i in range(len(base[0]))])[: len(base[0])]  # one call: no fed-back state
    for w in weights:
        if w.name not in probe.covers:
            continue
        imp = importance.get(w.name)
        decoded = eight[w.name].decoded().astype(w.array.dtype, copy=False)
        distortion = weighted_sse(w.array, decoded, imp) / max(weighted_sse(w.array, None, imp), 1e-300)
        got = probe.run(feed, {w.name: decoded})
        err = error_of(compare(names, base, got, calib.kinds, feed), calib.gain_metric)
        if distortion > 0 and np.isfinite(err):
            gains[w.name] = max(err, 1e-12) ** 2 / distortion
    if gains:
        median = float(np.median(list(gains.values())))
        gains.update({w.name: median for w in weights if w.name not in gains})
    return gains


def compensation_ratios(
    weights: list[WeightSite], eight: dict[str, Codebook], compensated: dict[str, Codebook], covariance: dict[str, Covariance]
) -> dict[str, float]:
    """Per weight with a covariance, how much compensated rounding lowers the output
    distortion of its 8-bit codebook (its ratio to nearest rounding's); the planner scales the
    weight's codebook options by it (on MiniLM it ranges 2-9x, slowly rising at fewer bits, so
    the 8-bit ratio slightly understates the lower widths' gain; measurement settles it)."""
    ratios = {}
    for w in weights:
        if w.name not in compensated:
            continue
        cov = covariance[w.name]
        plain = output_distortion(w.array, eight[w.name].decoded(), cov)
        if plain > 0:
            ratios[w.name] = min(1.0, output_distortion(w.array, compensated[w.name].decoded(), cov) / plain)
    return ratios


def shared_batch(feed: dict[str, np.ndarray]) -> int | None:
    """The leading extent every input of the feed shares (its batch), or None."""
    leads = {v.shape[0] if np.ndim(v) else None for v in feed.values()}
    return leads.pop() if len(leads) == 1 else None


def _sample(feed: dict[str, np.ndarray], bounds: tuple[int, int]) -> dict[str, np.ndarray]:
    """A quarter of a batched feed's items (within `bounds`), spread evenly over it, when every
    input shares a leading batch; else the feed as it is. Spread, not the first ones: on MiniLM
    the first 16 sentences showed 0.008 where all 204 showed 0.014 for the same tensor."""
    n = shared_batch(feed)
    if n is not None and n > (rows := max(bounds[0], min(bounds[1], n // 4))):
        pick = np.linspace(0, n - 1, rows).round().astype(int)
        return {k: v[pick] for k, v in feed.items()}
    return feed


def halves(
    feeds: list[dict[str, np.ndarray]], reference: list[list[np.ndarray]], candidate: list[list[np.ndarray]]
) -> Iterator[tuple[list[dict[str, np.ndarray]], list[list[np.ndarray]], list[list[np.ndarray]]]]:
    """The calibration inputs cut in halves two ways (first and second, even and odd: by feed
    when there are several, else by the rows of a batch that every input and output shares),
    as (feeds, reference outputs, candidate outputs), one at a time and as views (the OCR model's outputs
    are 158 MB); none when the inputs cannot be cut. A plan measured
    on all of them may miss its target on half: on the kit's OCR lines a plan at 8.6e-3 on all
    32 measured 1.13e-2 on the second 16, and 3.0e-2 on lines it had not seen."""
    if len(feeds) >= 2:
        for pick in _half_picks(len(feeds)):
            yield feeds[pick], reference[pick], candidate[pick]
        return
    n = shared_batch(feeds[0])
    outs = [*reference[0], *candidate[0]]
    if n is None or n < 4 or any(np.ndim(o) == 0 or np.shape(o)[0] != n for o in outs):
        return
    for pick in _half_picks(n):
        yield [{k: v[pick] for k, v in feeds[0].items()}], [[o[pick] for o in reference[0]]], [[o[pick] for o in candidate[0]]]


def _half_picks(n: int) -> list[slice]:
    return [slice(0, n // 2), slice(n // 2, n), slice(0, n, 2), slice(1, n, 2)]
