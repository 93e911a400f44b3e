"""Run the original and the compressed model in onnxruntime and compare outputs."""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from ..errors import CompressError, VerificationError, first_line
from ..options import METRIC_NAMES
from .margins import decision_margins
from .outputs import OutputKind
from .similarity import similarity_shift


@dataclass
class OutputDiff:
    name: str
    max_abs: float
    rel_l2: float  # for an output of parts (outputs.py), its worst part's
    cosine: float
    top1: float | None = None  # share of positions whose argmax agrees, for classifier-like outputs
    kind: str = "dense"  # what the output is (outputs.py), and so how rel_l2 was measured
    flips: float | None = None  # probabilities: the share of decisions at 0.5 that changed
    task: float = 0.0  # the measure its kind reads (task_measure), which --metric task bounds
    measure: str = "rel. L2"  # what `task` is
    # a relative error that moves smoothly with the task measure, for the planner's predictions:
    # decisions (classes, probabilities) change in steps, so there the relative L2 error
    task_smooth: float = 0.0
    decisions: int = 0  # how many decisions a step measure (classes, probabilities) counted over
    rows: int = 0  # embedding: how many rows its similarities were measured over
    # decisions (classes, probabilities), where compare() was asked for them (margins.py): the
    # original's nearest decision to its boundary, and the largest shift of one, in log-odds
    margin_nearest: float | None = None
    margin_shift: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Comparison:
    """Both models' outputs on the same feeds (per feed, per output, in `names` order) and
    how they differ, output by output."""

    names: list[str]
    original: list[list[np.ndarray]]
    compressed: list[list[np.ndarray]]
    diffs: list[OutputDiff]

    def output(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """One output over all feeds, flattened: (original, compressed) in float64."""
        j = self.names.index(name)
        return _flat(self.original, j), _flat(self.compressed, j)


def _flat(outputs: list[list[np.ndarray]], j: int) -> np.ndarray:
    """Output j of every feed, flattened into one float64 vector."""
    return np.concatenate([np.asarray(outs[j], dtype=np.float64).ravel() for outs in outputs])


def session(model: onnx.ModelProto | Path, what: str, quiet: bool = False, fold: bool = True) -> ort.InferenceSession:
    """An onnxruntime session with default options (`quiet`: errors only in its log; `fold`
    False: graph optimizations off, so decoders run at each call instead of being folded at
    load), or a one-line error."""
    src = str(model) if isinstance(model, Path) else model.SerializeToString()
    options = ort.SessionOptions()
    if quiet:
        options.log_severity_level = 3
    if not fold:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        sess = ort.InferenceSession(src, options, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - onnxruntime raises several types
        raise VerificationError(f"onnxruntime {ort.__version__} cannot load {what}: {first_line(e, 200)}") from None
    # onnxruntime keeps a model given as bytes for the session's life, to rebuild it when an
    # accelerator fails; a CPU session never falls back, and the bytes are the model's size
    # (86 MB for MiniLM's gain probes, through the whole plan)
    sess.disable_fallback()
    if isinstance(getattr(sess, "_model_bytes", None), bytes):
        sess._model_bytes = None
    return sess


def load_feeds(path: Path) -> list[dict[str, np.ndarray]]:
    """An .npz of input name -> array (one feed), or NAME@K keys (feed K)."""
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise CompressError(f"--inputs {path}: cannot read it as .npz ({e}); save it with numpy.savez") from None
    feeds: dict[int, dict[str, np.ndarray]] = {}
    for key in data.files:
        m = re.fullmatch(r"(.+)@(\d+)", key)
        name, k = (m.group(1), int(m.group(2))) if m else (key, 0)
        feeds.setdefault(k, {})[name] = data[key]
    if not feeds:
        raise CompressError(f"--inputs {path} holds no arrays")
    return [feeds[k] for k in sorted(feeds)]


def run(
    sess: ort.InferenceSession, feeds: list[dict[str, np.ndarray]], what: str, outputs: list[str] | None = None
) -> list[list[np.ndarray]]:
    """Every feed's outputs (all, or these in this order), or a one-line VerificationError."""
    try:
        return [sess.run(outputs, feed) for feed in feeds]
    except Exception as e:  # noqa: BLE001
        raise VerificationError(f"{what} failed to run in onnxruntime: {first_line(e, 200)}") from None


def compare(
    names: list[str],
    reference: list[list[np.ndarray]],
    candidate: list[list[np.ndarray]],
    kinds: dict[str, OutputKind] | None = None,
    feeds: list[dict[str, np.ndarray]] | None = None,
    margins: bool = False,
) -> list[OutputDiff]:
    """Per output, over all feeds: max abs error, relative L2 error (of the worst part, for an
    output of parts), cosine similarity, top-1 agreement where the output is or looks like class
    scores, and the decisions that flip for probabilities. `kinds`: each output's kind by name
    (outputs.output_kinds of the original); without one an output is dense. `feeds`: the inputs
    the outputs came from, for the attention masks whose padded rows the task measure skips.
    `margins`: also each decision output's margins (margins.py; a pass over the scores the
    planner's many comparisons skip)."""
    diffs = []
    for j, name in enumerate(names):
        kind = (kinds or {}).get(name, DENSE)
        refs, cands = [r[j] for r in reference], [c[j] for c in candidate]
        for a, b in zip(refs, cands, strict=True):
            if np.size(a) != np.size(b):
                raise VerificationError(
                    f"output {name!r} has {np.size(b)} values in the compressed model, {np.size(a)} in the original"
                )
        dd, aa, bb, peak = _sums(refs, cands)
        na, nb = np.sqrt(aa), np.sqrt(bb)
        rel = float(np.sqrt(dd) / na) if na > 0 else float(np.sqrt(dd))
        if kind.kind == "parts" and kind.axis is not None and kind.axis < np.ndim(refs[0]):
            rel = max(rel_l2_of_parts(refs, cands, kind), default=rel)
        # 1 - cos from the difference: exact for equal outputs, and accurate where a @ b / (|a||b|)
        # would round 1 - cos (5e-5 after 8 bits) to its last digits
        cos = float(1 - max(dd - (na - nb) ** 2, 0.0) / (2 * na * nb)) if na > 0 and nb > 0 else float(na == nb)
        labels = _class_labels(name, refs, cands, kind)  # once: the OCR model's output is 158 MB
        changed = None if labels is None else _changed_share(*labels)
        top1 = None if changed is None else 1.0 - changed
        flips = _flips(refs, cands) if kind.kind == "probabilities" else None
        rows = _rows_kept(kind, feeds, refs, cands) or (refs, cands)
        measure, task = task_measure(kind, *rows, rel, labels, changed, flips)
        if not np.isfinite(peak) and kind.kind != "ignore":  # a NaN argmax can land on the original's class
            measure, task = "not finite", math.inf
        smooth = rel if kind.kind in ("classes", "probabilities") else task
        count = _decisions(measure, refs, kind)
        diff = OutputDiff(name, float(peak), rel, cos, top1, kind.describe(), flips, task, measure, smooth, count)
        if measure == SIMILARITY:
            diff.rows = sum(np.size(a) // max(np.shape(a)[-1], 1) for a in rows[0])
        if margins and (found := decision_margins(kind, refs, cands)) is not None:
            diff.margin_nearest, diff.margin_shift = found.nearest, found.largest_shift
        diffs.append(diff)
    return diffs


def task_measure(
    kind: OutputKind,
    refs: list[np.ndarray],
    cands: list[np.ndarray],
    rel: float,
    labels: tuple[list[np.ndarray], list[np.ndarray]] | None,
    changed: float | None,
    flips: float | None,
) -> tuple[str, float]:
    """What the output's task reads, as (what it is, value), lower is better; --max-error E with
    the default metric bounds it by E on every output:
    - classes: the share of positions whose argmax along the class axis changes; for
      sequences (classes along the last of 3 or more axes: a text line) the share of sequences
      (entries of the first axis) that a CTC decoder reads differently (_changed_sequences; the
      OCR model lost a line with 0.24% of its positions changed, and kept every line with 41%
      of them changed somewhere: labels that moved within a run or beside a blank);
    - probabilities: the share of decisions at 0.5 that flip;
    - embedding: the largest change of a cosine similarity between a compressed row and an
      original row, its own included (similarity.py): what search and clustering read;
    - dense: the relative L2 error of the worst channel (slice along the feature axis: axis 1
      of a 4-D map, else the last axis), so no channel hides behind a larger one (a dead
      channel is measured against QUIET_CHANNEL of the typical one);
    - parts: the worst part's relative L2 error;
    - state: where it is fed back (runtime/sequence.py), 0: the next call's outputs measure
      it; else its relative L2 error;
    - ignore: not measured (0)."""
    k = kind.kind
    if k == "classes" and labels is not None and changed is not None:
        if np.ndim(refs[0]) >= 3 and (kind.axis is None or kind.axis in (-1, np.ndim(refs[0]) - 1)):
            return "sequences read differently", _changed_sequences(*labels)
        return "changed class", changed
    if k == "probabilities" and flips is not None:
        return "flipped at 0.5", flips
    if k == "embedding" and np.ndim(refs[0]) >= 1:
        return SIMILARITY, similarity_shift(refs, cands)
    if k == "dense" and np.ndim(refs[0]) >= 2:
        axis = 1 if np.ndim(refs[0]) == 4 else np.ndim(refs[0]) - 1
        return "rel. L2, worst channel", max(rel_l2_of_parts(refs, cands, OutputKind("parts", axis), QUIET_CHANNEL))
    if k == "ignore":
        return "not measured", 0.0
    if k == "state" and kind.feeds_back is not None:
        return "via the next call", 0.0
    return ("rel. L2, worst part" if k == "parts" else "rel. L2"), rel


def _rows_kept(
    kind: OutputKind, feeds: list[dict[str, np.ndarray]] | None, refs: list[np.ndarray], cands: list[np.ndarray]
) -> tuple[list[np.ndarray], list[np.ndarray]] | None:
    """Where an attention mask pads rows of this output: the rows (over its first two axes)
    that the mask keeps, per feed, as [rows, ...] for both sides; None to measure all rows (no
    mask, or a feed without it or of another shape)."""
    if kind.mask is None or feeds is None or len(feeds) != len(refs):
        return None
    masks = [np.asarray(feed.get(kind.mask, np.empty(0))) != 0 for feed in feeds]
    if any(m.ndim != 2 or np.shape(a)[:2] != m.shape for m, a in zip(masks, refs, strict=True)):
        return None
    pick = lambda outs: [np.asarray(a)[m] for a, m in zip(outs, masks, strict=True)]  # noqa: E731
    return pick(refs), pick(cands)


def _decisions(measure: str, refs: list[np.ndarray], kind: OutputKind) -> int:
    """How many decisions a step measure counted: positions, sequences or values at 0.5."""
    if measure == "changed class":
        axis = kind.axis if kind.axis is not None else -1
        return sum(np.size(a) // np.shape(a)[axis] for a in refs)
    if measure == "sequences read differently":
        return sum(np.shape(a)[0] for a in refs)
    if measure == "flipped at 0.5":
        return sum(np.size(a) for a in refs)
    return 0


DENSE = OutputKind("dense")
SIMILARITY = "similarity shift, worst pair"
# A dense output's channel whose norm is below this share of the channels' RMS norm is measured
# against that floor: MiniLM's last LayerNorm has three dead channels (gamma and beta 1e-32 to
# 1e-9, outputs 1e-32 to 1e-7 where the median channel's RMS is 0.37) whose relative error is
# float noise, 10% and more at any compression.
QUIET_CHANNEL = 1e-5


def _sums(refs: list[np.ndarray], cands: list[np.ndarray]) -> tuple[float, float, float, float]:
    """Sum of squared differences, of squares of each side, and the largest absolute difference."""
    dd = aa = bb = 0.0
    peak = np.float64(0.0)
    for ref, cand in zip(refs, cands, strict=True):
        a, b = np.asarray(ref).reshape(-1), np.asarray(cand).reshape(-1)
        # float64 a block at a time: the sums stay exact enough for a cosine of 1 - 1e-12,
        # without a float64 copy of the whole output (the planner compares ~60 times)
        for start in range(0, a.size, _BLOCK):
            x = a[start : start + _BLOCK].astype(np.float64)
            y = b[start : start + _BLOCK].astype(np.float64)
            d = y - x
            dd, aa, bb = dd + float(d @ d), aa + float(x @ x), bb + float(y @ y)
            peak = np.maximum(peak, np.abs(d).max())  # np.maximum, not max(): a NaN must show
    return dd, aa, bb, float(peak)


def rel_l2_of_parts(refs: list[np.ndarray], cands: list[np.ndarray], kind: OutputKind, quiet: float = 0.0) -> list[float]:
    """Each part's relative L2 error over all feeds: the spans of kind.sizes along kind.axis, or
    every slice along it. A part's norm counts as at least `quiet` times the parts' RMS norm; a
    part that is zero in the original (and `quiet` 0) counts its absolute error."""
    extent = np.shape(refs[0])[kind.axis]
    starts = np.cumsum((0, *kind.sizes))[:-1] if kind.sizes and sum(kind.sizes) == extent else np.arange(extent)
    dd = np.zeros(extent)
    aa = np.zeros(extent)
    for ref, cand in zip(refs, cands, strict=True):
        a = np.moveaxis(np.asarray(ref, dtype=np.float64), kind.axis, 0).reshape(extent, -1)
        d = np.moveaxis(np.asarray(cand, dtype=np.float64), kind.axis, 0).reshape(extent, -1) - a
        dd += np.einsum("ij,ij->i", d, d)
        aa += np.einsum("ij,ij->i", a, a)
    dd, aa = np.add.reduceat(dd, starts), np.add.reduceat(aa, starts)
    aa = np.maximum(aa, quiet**2 * float(np.mean(aa)))
    return [float(np.sqrt(d / a)) if a > 0 else float(np.sqrt(d)) for d, a in zip(dd, aa, strict=True)]


def _flips(refs: list[np.ndarray], cands: list[np.ndarray]) -> float:
    changed = sum(int(np.sum((np.asarray(a) > 0.5) != (np.asarray(b) > 0.5))) for a, b in zip(refs, cands, strict=True))
    total = sum(np.size(a) for a in refs)
    return changed / total if total else 0.0


_BLOCK = 1 << 16
# Rows enough to tell softmax rows from other scores, without a pass over a large output.
_SOFTMAX_CHECK_ROWS = 256
_CLASSIFIER_NAME = re.compile(r"prob|logit|score|class|label|softmax", re.IGNORECASE)


def _class_labels(
    name: str, reference: list[np.ndarray], candidate: list[np.ndarray], kind: OutputKind = DENSE
) -> tuple[list[np.ndarray], list[np.ndarray]] | None:
    """Each feed's argmax along the class axis, original and candidate, for outputs that are
    class scores (a Softmax or LogSoftmax made them: along its axis) or look like them (a name
    that says so, or rows that sum to one: along the last axis); None for other outputs."""
    first = np.asarray(reference[0])
    classes = kind.kind == "classes"
    axis = kind.axis if classes and kind.axis is not None and -first.ndim <= kind.axis < first.ndim else -1
    if first.dtype.kind != "f" or first.ndim < (1 if classes else 2) or not 2 <= first.shape[axis] <= 1_000_000:
        return None
    if not classes:
        rows = first.reshape(-1, first.shape[-1])[:_SOFTMAX_CHECK_ROWS].astype(np.float64)
        softmax = bool(np.all(rows >= 0) and np.allclose(rows.sum(axis=1), 1.0, atol=1e-3))
        if not (softmax or _CLASSIFIER_NAME.search(name)):
            return None
    return [np.argmax(np.asarray(a), axis=axis) for a in reference], [np.argmax(np.asarray(b), axis=axis) for b in candidate]


def _changed_share(original: list[np.ndarray], candidate: list[np.ndarray]) -> float:
    """The share of positions whose label changed, exact (1 - agreement rounds 4/400 to
    0.010000000000000009)."""
    changed = sum(int(np.sum(a != b)) for a, b in zip(original, candidate, strict=True))
    total = sum(a.size for a in original)
    return changed / total if total else 0.0


def _changed_sequences(original: list[np.ndarray], candidate: list[np.ndarray]) -> float:
    """The share of entries along the first axis that read differently, from each feed's labels
    along the last axis, read as a CTC decoder does: repeats merged, then the blank removed
    (the class most of the original's positions hold). A label that only moves within a run or
    next to a blank changes nothing."""
    blank = int(np.argmax(np.bincount(np.concatenate([f.ravel() for f in original]))))
    changed = total = 0
    for ia, ib in zip(original, candidate, strict=True):
        ia, ib = ia.reshape(ia.shape[0], -1), ib.reshape(ib.shape[0], -1)
        changed += sum(not np.array_equal(_read(x, blank), _read(y, blank)) for x, y in zip(ia, ib, strict=True))
        total += ia.shape[0]
    return changed / total if total else 0.0


def _read(labels: np.ndarray, blank: int) -> np.ndarray:
    """A label sequence as CTC reads it: each run of repeats once, without the blank."""
    if not labels.size:
        return labels
    merged = labels[np.concatenate(([True], labels[1:] != labels[:-1]))]
    return merged[merged != blank]


def error_of(diffs: list[OutputDiff], metric: str) -> float:
    """One number, lower is better: the worst of the outputs' task measures (task_measure), the
    worst relative L2, 1 - the lowest cosine, the worst max abs error, or 1 - the lowest top-1
    agreement over the outputs."""
    if metric == "task":
        return max((d.task for d in diffs), default=0.0)
    if metric == "task-smooth":  # the planner's gains (OutputDiff.task_smooth)
        return max((d.task_smooth for d in diffs), default=0.0)
    if metric == "rel-l2":
        return max(d.rel_l2 for d in diffs)
    if metric == "cosine":
        return 1.0 - min(d.cosine for d in diffs)
    if metric == "max-abs":
        return max(d.max_abs for d in diffs)
    if metric == "top1":
        scored = [d.top1 for d in diffs if d.top1 is not None]
        if not scored:
            raise CompressError("--metric top1: no output looks like class scores (softmax rows or a name like *prob*, *logits*)")
        return 1.0 - min(scored)
    raise CompressError(f"--metric must be one of {', '.join(METRIC_NAMES)}; got {metric!r}")
