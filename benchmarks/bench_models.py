"""Codebook compression of the four real models (fetch_models.py), measured end to end.

    python benchmarks/fetch_models.py              # once: fetches the models into the cache
    python benchmarks/bench_models.py [--cache DIR] [--settings 8,4,4c]

Per model and setting: file size and ratio, compression time (the whole `compress()` call as
the command line makes it: verification on synthesized inputs included), output fidelity on
the model's real inputs, load time and load-time peak RSS (a fresh
process each), steady-state latency relative to the original (interleaved in one process),
output fidelity, and the model's task result:
  minilm_l6          sentence embeddings: cosine to the original's, nearest-neighbour agreement
  ppocrv6_rec_small  text lines read exactly, character error rate (greedy CTC)
  silero_vad_seq     frame speech decisions (p > 0.5): agreement with the original and with the clip's speech times
  mtcnn_onet         face decisions (p > 0.5): agreement with the original, accuracy on the labels
Writes benchmarks/results/models.md and models.json. The models are never copied here.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import onnxruntime as ort
from harness import (
    DEFAULT_CACHE,
    MISSING,
    LATENCY_SLICE,
    compress_checked,
    latency_ratio,
    load_cost,
    model_inputs,
    session,
    sliced,
    task_result,
    write_json,
)

import onnxcompress
from onnxcompress.runtime.verify import compare

RESULTS = Path(__file__).parent / "results"
MODELS = ["minilm_l6", "ppocrv6_rec_small", "silero_vad_seq", "mtcnn_onet"]
SETTINGS = {"8": dict(bits=8), "4": dict(bits=4), "4c": dict(bits=4, granularity="channel")}


# -- main -------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="fetch_models.py's cache (default %(default)s)")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--settings", default="8,4", help=f"comma list of {sorted(SETTINGS)}")
    ap.add_argument("--latency-seconds", type=float, default=6.0)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    if not (args.cache / "models").is_dir():
        print(f"no models in {args.cache}: {MISSING} (skipping)")
        return 0

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            if not (args.cache / "models" / f"{name}.onnx").exists():
                print(f"{name}: not in the cache, skipped")
                continue
            src, feed, labels = model_inputs(name, args.cache)
            orig = session(src)
            out_names = [o.name for o in orig.get_outputs()]
            ref = dict(zip(out_names, orig.run(None, feed), strict=True))
            base_load, base_rss = load_cost(src)
            for setting in args.settings.split(","):
                dst = Path(tmp) / f"{name}.{setting}.onnx"
                t0 = time.perf_counter()
                result = compress_checked(src, dst, force=True, **SETTINGS[setting])
                seconds = time.perf_counter() - t0
                comp = session(dst)
                outs = dict(zip(out_names, comp.run(None, feed), strict=True))
                fidelity = compare(out_names, [[ref[n] for n in out_names]], [[outs[n] for n in out_names]])
                task = task_result(name, dst, outs, ref, labels)
                load_t, rss = load_cost(dst)
                lat, base_ms = latency_ratio(orig, comp, sliced(feed, LATENCY_SLICE[name]), args.latency_seconds)
                rep = result.report
                row = {
                    "model": name,
                    "setting": setting,
                    "bytes_before": rep.file_bytes_before,
                    "bytes_after": rep.file_bytes_after,
                    "ratio": rep.ratio,
                    "compress_s": seconds,
                    "load_s": load_t,
                    "load_s_original": base_load,
                    "peak_rss_mib": rss,
                    "peak_rss_mib_original": base_rss,
                    "latency_ratio": lat,
                    "latency_ms_original": base_ms,
                    "outputs": [d.to_dict() for d in fidelity],
                    "task": task,
                    "binned_tensors": sum(t.method == "binned" for t in rep.tensors),
                    "tensors": len(rep.tensors),
                }
                rows.append(row)
                print(
                    f"{name:18s} {setting:3s} {rep.file_bytes_before / 1e6:6.1f} -> {rep.file_bytes_after / 1e6:6.2f} MB "
                    f"({rep.ratio:.2f}x) compress {seconds:5.1f}s  load {base_load:.2f}->{load_t:.2f}s  "
                    f"RSS {base_rss:.0f}->{rss:.0f} MiB  latency x{lat:.2f}  {task['summary']}",
                    flush=True,
                )
            del orig

    report = render(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    plot(rows, args.out / "models.png")
    (args.out / "models.md").write_text(report)
    write_json(rows, args.out / "models.json")
    print(report)
    return 0


def plot(rows, path: Path) -> None:
    """File size against output error, one point per model and setting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    for name, marker in zip(MODELS, "osD^", strict=True):
        pts = [r for r in rows if r["model"] == name]
        if not pts:
            continue
        xs = [100 * r["bytes_after"] / r["bytes_before"] for r in pts]
        ys = [max(o["rel_l2"] for o in r["outputs"]) for r in pts]
        ax.plot(xs, ys, marker=marker, linestyle="none", markersize=8, label=name)
        for x, y, r in zip(xs, ys, pts, strict=True):
            label = {"8": "8 bit", "4": "4 bit", "4c": "4 bit/channel"}.get(r["setting"], r["setting"])
            ax.annotate(label, (x, y), textcoords="offset points", xytext=(6, 3), fontsize=7)
    ax.set_yscale("log")
    ax.set_xlabel("compressed file size, % of the original")
    ax.set_ylabel("worst output relative L2 error")
    ax.set_title("onnxcompress codebooks on four real models")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def render(rows) -> str:
    out = [
        "# Codebook compression of real models",
        "",
        f"onnxcompress {onnxcompress.__version__}, onnxruntime {ort.__version__}, {os.cpu_count()} cores. "
        "Compress time is the whole `compress()` call as the command line makes it (verification on synthesized inputs "
        "included); output errors and task results are on the model's real inputs; load time and "
        "peak RSS come from a fresh process creating a session with default options; latency is the compressed "
        "model's median over the original's, interleaved, one thread.",
        "",
        "| model | bits | MB before | MB after | ratio | compress s | load s (orig) | peak RSS MiB (orig) | latency "
        "| worst output rel. L2 | task result |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        worst = max(o["rel_l2"] for o in r["outputs"]) if r["outputs"] else float("nan")
        out.append(
            f"| {r['model']} | {r['setting']} | {r['bytes_before'] / 1e6:.1f} | {r['bytes_after'] / 1e6:.2f} | "
            f"{r['ratio']:.2f}x | {r['compress_s']:.1f} | {r['load_s']:.2f} ({r['load_s_original']:.2f}) | "
            f"{r['peak_rss_mib']:.0f} ({r['peak_rss_mib_original']:.0f}) | "
            f"{r['latency_ratio']:.2f}x | {worst:.2e} | {r['task']['summary']} |"
        )
    out += ["", "## Targets (issue 3)", ""]
    for ok, text in targets(rows):
        out.append(f"- {'PASS' if ok else 'MISS'}: {text}")
    return "\n".join(out) + "\n"


def targets(rows):
    res = []
    eight = [r for r in rows if r["setting"] == "8"]
    four = [r for r in rows if r["setting"] == "4"]
    if eight:
        res.append(
            (
                all(r["task"]["unchanged"] for r in eight),
                "8 bits: every task result unchanged: " + "; ".join(f"{r['model']}: {r['task']['summary']}" for r in eight),
            )
        )
        ratios = ", ".join(f"{r['ratio']:.2f}x" for r in eight)
        res.append((min(r["ratio"] for r in eight) >= 3.5, f"8 bits about 4x smaller: {ratios}"))
        res.append(
            (
                max(r["peak_rss_mib"] / r["peak_rss_mib_original"] for r in eight) <= 1.5,
                "load-time peak RSS <= 1.5x the original's: "
                + ", ".join(f"{r['peak_rss_mib'] / r['peak_rss_mib_original']:.2f}x" for r in eight),
            )
        )
        res.append(
            (
                max(r["latency_ratio"] for r in eight) <= 1.05,
                "steady-state latency within 5%: " + ", ".join(f"{r['latency_ratio']:.3f}" for r in eight),
            )
        )
    if four:
        ratios = ", ".join(f"{r['ratio']:.2f}x" for r in four)
        res.append((min(r["ratio"] for r in four) >= 6.5, f"4 bits about 8x smaller: {ratios}"))
    for setting, limit in (("8", 20.0), ("4", 5.0)):
        m = [r for r in rows if r["model"] == "minilm_l6" and r["setting"] == setting]
        if m:
            res.append(
                (
                    m[0]["compress_s"] <= limit,
                    f"minilm_l6 at {setting} bits compresses in <= {limit:.0f} s: {m[0]['compress_s']:.1f} s",
                )
            )
    return res


if __name__ == "__main__":
    sys.exit(main())
