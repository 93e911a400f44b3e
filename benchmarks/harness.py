"""Measuring helpers shared by the benchmarks: feeds, task results, load cost, latency."""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

import onnxcompress

# where fetch_models.py puts the real models and their inputs
DEFAULT_CACHE = Path(os.environ.get("ONNXCOMPRESS_MODELS", Path.home() / ".cache" / "onnxcompress" / "models"))
MISSING = "run `python benchmarks/fetch_models.py` first"
# a slice of each feed for the latency loop (batch-like first axis), so a run takes ~10-100 ms
LATENCY_SLICE = {"minilm_l6": 8, "ppocrv6_rec_small": 4, "silero_vad_seq": 256, "mtcnn_onet": 16, "digits_mlp": 64}


def write_json(rows, path: Path) -> None:
    """Rows as JSON; numpy scalars become plain numbers."""
    path.write_text(json.dumps(rows, indent=1, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


def missing_earlier(path: Path, keep_others: bool) -> bool:
    """Whether --keep-others was asked for without earlier results at `path` to keep; says so."""
    if keep_others and not path.exists():
        print(f"--keep-others: no earlier results in {path} (JSON results are not committed); run all models", file=sys.stderr)
        return True
    return False


def with_earlier_rows(rows: list[dict], path: Path, order: list[str]) -> list[dict]:
    """`rows` and, for the models they leave out, the rows of an earlier run's JSON at `path`,
    in `order` (a benchmark run on some models with --keep-others keeps the others' results)."""
    ran = {r["model"] for r in rows}
    earlier = [r for r in json.loads(path.read_text()) if r["model"] not in ran] if path.exists() else []
    position = {name: i for i, name in enumerate(order)}
    return sorted(earlier + rows, key=lambda r: position.get(r["model"], len(order)))


def model_inputs(name: str, cache: Path) -> tuple[Path, dict, dict]:
    """(model path, feed, labels) of a real model from the cache, or of the bundled example."""
    if name == "digits_mlp":
        from onnxcompress.demo import example_data, example_model

        pixels, labels = example_data()
        return example_model(), {"pixels": pixels}, {"labels": labels.tolist()}
    labels = json.loads((cache / "inputs" / f"{name}.labels.json").read_text())
    return cache / "models" / f"{name}.onnx", load_feed(cache / "inputs" / f"{name}.npz"), labels


def load_feed(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as d:
        feeds: dict[int, dict] = {}
        for key in d.files:
            m = re.fullmatch(r"(.+)@(\d+)", key)
            name, k = (m.group(1), int(m.group(2))) if m else (key, 0)
            feeds.setdefault(k, {})[name] = d[key]
    return feeds[0]


def session(path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


# -- task results -------------------------------------------------------------------------------

# A task is kept when at most this share of its decisions change (classes, faces, speech frames),
# every text line reads the same, and every sentence keeps its neighbour among its two nearest.
# "unchanged" asks for every decision the same: one of the 360 digits flips at plain 8 bits.
KEPT_CHANGES = 0.01


def ctc_greedy(probs: np.ndarray, charset: list[str]) -> str:
    ids, out, prev = probs.argmax(-1), [], -1
    for i in ids:
        if i != prev and i != 0 and i < len(charset):
            out.append(charset[i])
        prev = i
    return "".join(out)


def edit_distance(a: str, b: str) -> int:
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        diag, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            diag, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, diag + (ca != cb))
    return row[len(b)]


def task_result(name: str, model_path: Path, outs: dict, ref: dict, labels: dict) -> dict:
    if name == "minilm_l6":
        e, r = outs["sentence_embedding"], ref["sentence_embedding"]
        cos = (e * r).sum(1) / (np.linalg.norm(e, axis=1) * np.linalg.norm(r, axis=1))

        def neighbours(x):
            s = x @ x.T
            np.fill_diagonal(s, -np.inf)
            return s.argmax(1)

        nn = float((neighbours(e) == neighbours(r)).mean())
        # near ties: one of the kit's 64 sentences has its two nearest 2.3e-5 apart in cosine, so
        # "kept" asks that each original neighbour stays among the two nearest
        in_two = float(np.mean([n in top2 for n, top2 in zip(neighbours(r), two_nearest(e), strict=True)]))
        return {
            "summary": f"cos mean {cos.mean():.4f} min {cos.min():.4f}, same neighbour {nn:.1%}, in the two nearest {in_two:.1%}",
            "min_cos": float(cos.min()),
            "nn_agreement": nn,
            "unchanged": bool(nn == 1.0 and cos.min() > 0.99),
            "kept": bool(in_two == 1.0 and cos.min() >= 0.99),
        }
    if name == "ppocrv6_rec_small":
        meta = {p.key: p.value for p in onnx.load(str(model_path), load_external_data=False).metadata_props}
        charset = ["blank"] + meta["character"].splitlines() + [" "]
        probs = next(iter(outs.values()))
        preds = [ctc_greedy(probs[i], charset) for i in range(probs.shape[0])]
        truth = labels["texts"]
        exact = sum(p == t for p, t in zip(preds, truth, strict=True))
        cer = float(np.mean([edit_distance(p, t) / max(1, len(t)) for p, t in zip(preds, truth, strict=True)]))
        return {
            "summary": f"exact {exact}/{len(truth)}, CER {cer:.3f}",
            "exact": exact,
            "cer": cer,
            "unchanged": exact == len(truth),
            "kept": exact == len(truth) or preds == [ctc_greedy(q, charset) for q in next(iter(ref.values()))],
        }
    if name == "silero_vad_seq":
        p = outs["speech_probs"]
        t = (labels.get("first_frame", 0) + np.arange(len(p)) + 0.5) * labels.get("frame_s", 0.032)
        truth = np.zeros(len(p), bool)
        for a, b, _ in labels["speech_segments_s"]:
            truth |= (t >= a) & (t < b)
        return decisions(p, ref["speech_probs"], truth, "vs speech times")
    if name == "digits_mlp":
        pred, pred_ref, truth = outs["probabilities"].argmax(1), ref["probabilities"].argmax(1), np.array(labels["labels"])
        acc, acc_ref = float((pred == truth).mean()), float((pred_ref == truth).mean())
        same = float((pred == pred_ref).mean())
        return {
            "summary": f"accuracy {acc:.4f} (original {acc_ref:.4f}), same prediction {same:.1%}",
            "accuracy": acc,
            "unchanged": same == 1.0,
            "kept": same >= 1 - KEPT_CHANGES,
        }
    if name == "mtcnn_onet":
        return decisions(outs["face_prob"][:, 1], ref["face_prob"][:, 1], np.array(labels["is_face"]) == 1, "accuracy")
    return {"summary": "", "unchanged": None, "kept": None}


def two_nearest(x: np.ndarray) -> np.ndarray:
    s = x @ x.T
    np.fill_diagonal(s, -np.inf)
    return np.argsort(-s, axis=1)[:, :2]


def half_labels(name: str, labels: dict, cut: int) -> dict:
    """The labels of the inputs from row `cut` on (the second half of a feed)."""
    if name == "digits_mlp":
        return {"labels": labels["labels"][cut:]}
    if name == "ppocrv6_rec_small":
        return {**labels, "texts": labels["texts"][cut:]}
    if name == "silero_vad_seq":
        return {**labels, "first_frame": labels.get("first_frame", 0) + cut}
    if name == "mtcnn_onet":
        return {**labels, "is_face": labels["is_face"][cut:]}
    return labels


def decisions(p: np.ndarray, ref: np.ndarray, truth: np.ndarray, what: str) -> dict:
    """Binary decisions at p > 0.5: agreement with the original's, and accuracy on the labels.
    Unchanged means every decision is the same."""
    same = float(((p > 0.5) == (ref > 0.5)).mean())
    acc, acc_ref = float(((p > 0.5) == truth).mean()), float(((ref > 0.5) == truth).mean())
    return {
        "summary": f"same decisions {same:.1%}, {what} {acc:.3f} (original {acc_ref:.3f})",
        "agreement": same,
        "accuracy": acc,
        "unchanged": same == 1.0,
        "kept": same >= 1 - KEPT_CHANGES,
    }


# -- load and latency ------------------------------------------------------------------------------

# VmHWM, not ru_maxrss: ru_maxrss survives execve, so a child would report its parent's peak
LOAD_SNIPPET = """
import sys, time
import onnxruntime as ort
def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
base = hwm()
t0 = time.perf_counter()
s = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
print(time.perf_counter() - t0, hwm(), base)
"""


# A fresh Python process, one thread: the peak while loading (VmHWM), one run on the whole feed
# (its outputs saved where asked), then the median latency of about 2 s of runs on its first
# `part` rows and the RSS after them. `level`: onnxruntime's MatMulNBits accuracy level.
NATIVE_PROBE = """
import json, sys, time
import numpy as np, onnxruntime as ort
def status(key):
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith(key)) / 1024
path, feed_path, outputs, level, part = sys.argv[1:6]
feed = dict(np.load(feed_path))
options = ort.SessionOptions()
options.intra_op_num_threads = 1
options.log_severity_level = 3
if level != "default":
    options.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", level)
session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
peak = status("VmHWM")
results = session.run(None, feed)
if outputs != "-":
    np.savez(outputs, **{o.name: v for o, v in zip(session.get_outputs(), results)})
part = {k: v[:int(part)] for k, v in feed.items()}
times, end = [], time.perf_counter() + 2.0
while time.perf_counter() < end or len(times) < 5:
    t0 = time.perf_counter(); session.run(None, part); times.append(time.perf_counter() - t0)
print(json.dumps({"peak": peak, "rss": status("VmRSS"), "ms": 1e3 * float(np.median(times)), "ort": ort.__version__}))
"""


def native_probe(path: Path, feed: Path, part: int, outputs: Path | None = None, level: str = "default") -> dict:
    """NATIVE_PROBE's numbers for one model: peak and rss in MiB, ms, and the onnxruntime version."""
    args = [sys.executable, "-c", NATIVE_PROBE, str(path), str(feed), str(outputs or "-"), level, str(part)]
    return json.loads(subprocess.run(args, capture_output=True, text=True, check=True).stdout)


def load_cost(path: Path, repeats: int = 3) -> tuple[float, float]:
    """(best load seconds, peak RSS in MiB of a fresh process that imports onnxruntime and
    creates a session with default options)."""
    best_t, peak = float("inf"), 0.0
    for _ in range(repeats):
        out = subprocess.run([sys.executable, "-c", LOAD_SNIPPET, str(path)], capture_output=True, text=True, check=True)
        t, rss, _ = out.stdout.split()
        best_t, peak = min(best_t, float(t)), max(peak, int(rss) / 1024)
    return best_t, peak


def latency_ratio(a: ort.InferenceSession, b: ort.InferenceSession, feed: dict, seconds: float = 6.0) -> tuple[float, float]:
    """Median time of b over a, runs interleaved so drift hits both alike. Returns (ratio, a's ms)."""
    for s in (a, b):
        s.run(None, feed)
    ta, tb = [], []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(ta) < 5:
        for s, acc in ((a, ta), (b, tb)):
            t0 = time.perf_counter()
            s.run(None, feed)
            acc.append(time.perf_counter() - t0)
    return statistics.median(tb) / statistics.median(ta), statistics.median(ta) * 1e3


def sliced(feed: dict, n: int) -> dict:
    lead = max(v.shape[0] for v in feed.values() if v.ndim)
    return {k: (v[:n] if v.ndim and v.shape[0] == lead else v) for k, v in feed.items()}


_PASSES_FULL_CHECK: dict[str, bool] = {}


def compress_checked(src, dst, **options):
    """onnxcompress.compress, then onnx's full check on the written file wherever the original
    passes it (a compressed file must never be less valid than its source)."""
    result = onnxcompress.compress(src, dst, **options)
    key = str(Path(src).resolve())
    if key not in _PASSES_FULL_CHECK:
        try:
            onnx.checker.check_model(str(src), full_check=True)
            _PASSES_FULL_CHECK[key] = True
        except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError):
            _PASSES_FULL_CHECK[key] = False
    if _PASSES_FULL_CHECK[key]:
        onnx.checker.check_model(str(dst), full_check=True)
    return result
