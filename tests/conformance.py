"""The conformance oracle over onnx's own operator test cases (about 1,900 single-node models).

For each case, every float input with at least 16 values becomes an initializer (from the
case's first data set), so that every kind of consumer meets a weight. Each setting compresses
it with `min_elements=16`; the result must pass the checker, load in onnxruntime and match the
original with every compressed weight replaced by what the compressed model computes from it
(its decoded value, or the product of its factors). Anything else is a skip with a stated
reason: the case itself (onnxruntime cannot run the original, no float input, ...), or a
refusal, a CompressError from compress for one setting (nothing to compress, an opset too old,
...), counted apart so that a weight wrongly refused shows as a count that moved.

    python tests/conformance.py            # the whole sweep, with counts per setting and reason
"""

from __future__ import annotations

import collections
import sys
import warnings
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnxruntime as ort
from decoded import encoded_weights, substitute_decoded
from onnx import numpy_helper

import onnxcompress as oc
from onnxcompress.io.select import select_weights
from onnxcompress.options import CodebookOptions, LowRankOptions, SelectOptions

ort.set_default_logger_severity(4)  # the originals onnxruntime rejects are counted, not logged

SETTINGS = {
    "8 bit tensor": ("codebook", {"bits": 8}),
    "4 bit tensor": ("codebook", {"bits": 4}),
    "2 bit channel": ("codebook", {"bits": 2, "granularity": "channel"}),
    "3 bit group:16": ("codebook", {"bits": 3, "granularity": "group:16"}),
    "lowrank rank 2": ("lowrank", {"rank": 2}),
}
MIN_ELEMENTS = 16


@dataclass
class Tally:
    passed: collections.Counter = field(default_factory=collections.Counter)
    skipped: collections.Counter = field(default_factory=collections.Counter)  # ("all", reason): the case
    refused: collections.Counter = field(default_factory=collections.Counter)  # (setting, reason): a CompressError
    failed: list[tuple[str, str, str]] = field(default_factory=list)  # (case, setting, what)


def weights_from_inputs(model: onnx.ModelProto, inputs: list[np.ndarray]) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """The model with its large float inputs turned into initializers, and the feed for the rest."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    feed, keep = {}, []
    for info, value in zip(list(graph.input), inputs, strict=False):
        value = np.asarray(value) if not isinstance(value, list) else value
        if isinstance(value, np.ndarray) and value.dtype in (np.float32, np.float16, np.float64) and value.size >= MIN_ELEMENTS:
            graph.initializer.append(numpy_helper.from_array(value, info.name))
        else:
            keep.append(info)
            feed[info.name] = value
    del graph.input[:]
    graph.input.extend(keep)
    return out, feed


def run(model: onnx.ModelProto, feed: dict) -> list:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feed)


def check_case(case, tally: Tally) -> None:
    if not case.data_sets:
        tally.skipped[("all", "no data set")] += 1
        return
    inputs, _ = case.data_sets[0]
    if any(not isinstance(v, np.ndarray) for v in inputs):
        tally.skipped[("all", "sequence or optional inputs")] += 1
        return
    model, feed = weights_from_inputs(case.model, list(inputs))
    if not model.graph.initializer:
        tally.skipped[("all", "no float input of 16 values or more")] += 1
        return
    try:
        onnx.checker.check_model(model)
        want_shape = run(model, feed)
    except Exception:  # noqa: BLE001 - a case onnxruntime cannot run is a skip, not ours to fix
        tally.skipped[("all", "onnxruntime cannot run the original")] += 1
        return
    del want_shape
    for label, (method, options) in SETTINGS.items():
        try:
            result = oc.compress(model, method=method, min_elements=MIN_ELEMENTS, verify=False, **options)
        except oc.CompressError as e:
            tally.refused[(label, _reason(str(e)))] += 1
            continue
        except Exception as e:  # noqa: BLE001 - any other exception is a crash: a failure
            tally.failed.append((case.name, label, f"compress raised {type(e).__name__}: {str(e)[:200]}"))
            continue
        try:
            onnx.checker.check_model(result.model)
            got = run(result.model, feed)
        except Exception as e:  # noqa: BLE001
            tally.failed.append((case.name, label, f"compressed model: {type(e).__name__}: {str(e).splitlines()[0][:200]}"))
            continue
        reference = decoded_reference(model, method, options)
        want = run(reference, feed)
        rtol = 1e-4 if method == "lowrank" else 1e-5  # a pair reassociates the products
        for g, w in zip(got, want, strict=True):
            if not _close(g, w, rtol):
                tally.failed.append((case.name, label, "outputs differ from the decoded-weights model"))
                break
        else:
            tally.passed[label] += 1


def decoded_reference(model: onnx.ModelProto, method: str, options: dict) -> onnx.ModelProto:
    """The original with each compressed weight replaced by what the compressed model computes."""
    low = LowRankOptions(rank=options.get("rank")) if method == "lowrank" else LowRankOptions()
    cb = CodebookOptions(**{k: v for k, v in options.items() if k in ("bits", "granularity")})
    sel = select_weights(model, SelectOptions(min_elements=MIN_ELEMENTS))
    encoded = encoded_weights(sel.weights, method, cb, low)
    return substitute_decoded(model, [(e.site, e) for e in encoded])


def _close(g, w, rtol: float) -> bool:
    if isinstance(w, list) or isinstance(g, list):  # sequence outputs
        if not (isinstance(g, list) and isinstance(w, list) and len(g) == len(w)):
            return False
        return all(_close(a, b, rtol) for a, b in zip(g, w, strict=True))
    g, w = np.asarray(g), np.asarray(w)
    if g.shape != w.shape or g.dtype != w.dtype:
        return False
    if g.dtype.kind not in "fc":
        return bool(np.array_equal(g, w))
    g64, w64 = (
        g.astype(np.complex128 if g.dtype.kind == "c" else np.float64),
        w.astype(np.complex128 if w.dtype.kind == "c" else np.float64),
    )
    if g.dtype.kind == "c":
        return bool(np.allclose(g64, w64, rtol=rtol, atol=rtol))
    both_nan = np.isnan(g64) & np.isnan(w64)
    same_inf = np.isinf(w64) & (g64 == w64)
    ok = both_nan | same_inf
    finite = ~ok & np.isfinite(w64)
    scale = max(float(np.abs(w64[finite]).max(initial=0.0)), 1e-6)
    tol = rtol * scale * (100 if g.dtype == np.float16 else 1)
    with np.errstate(invalid="ignore"):  # inf - inf where both are the same infinity: already ok
        return bool(np.all(ok | (np.abs(g64 - w64) <= tol)))


def _reason(message: str) -> str:
    for key in ("nothing to compress", "need opset", "cannot", "must"):
        if key in message:
            return message.split(";")[0][:90]
    return message[:90]


def sweep(limit: int | None = None) -> Tally:
    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cases = collect_testcases(None)
    tally = Tally()
    for case in cases[:limit]:
        check_case(case, tally)
    return tally


def summary(tally: Tally) -> str:
    lines = ["passed, by setting:"] + [f"  {k}: {v}" for k, v in sorted(tally.passed.items())]
    lines.append("cases skipped, by reason:")
    lines += [f"  {n:5d}  {r}" for (_, r), n in sorted(tally.skipped.items(), key=lambda kv: -kv[1])]
    lines.append("refused by compress, by setting and reason:")
    lines += [f"  {n:5d}  {s}: {r}" for (s, r), n in sorted(tally.refused.items(), key=lambda kv: -kv[1])]
    lines.append(f"failed: {len(tally.failed)}")
    lines += [f"  {c} [{s}]: {w}" for c, s, w in tally.failed[:50]]
    return "\n".join(lines)


if __name__ == "__main__":
    t = sweep()
    print(summary(t))
    sys.exit(1 if t.failed else 0)
