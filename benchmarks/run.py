"""The benchmark suite: onnxcompress against the tools users would pick instead, on real models.

    python benchmarks/fetch_models.py                   # once: the four real models
    pip install -e ".[bench]"                           # the peer tools
    python benchmarks/run.py [--quick] [--cache DIR]

Per model and tool/setting, measured in one run: file size, gzip size, compression time, load
time and load-time peak RSS (a fresh process each), steady-state latency relative to the
original (interleaved in one process), output fidelity (worst relative L2 error, lowest
cosine over the outputs) and the model's task result, on the model's real inputs.

Tools: onnxcompress codebooks at 8, 6, 4 and 3 bits per tensor and per channel; low-rank
pairs at energies 0.999, 0.99 and 0.95, pairs of 8-bit codebooks at 0.99, and --method auto
at 8 and 4 bits;
onnxruntime's quantize_dynamic (int8); MatMulNBitsQuantizer (4 bits, block 32, symmetric);
float16 conversion with onnxconverter-common. A tool that fails on a model is reported with
its error. --quick: the three small models and fewer settings, in under five minutes.
Writes benchmarks/results/suite.md, suite.json and suite.png.
"""

from __future__ import annotations

import argparse
import gzip
import logging
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import onnx
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
REAL = ["minilm_l6", "ppocrv6_rec_small", "silero_vad_seq", "mtcnn_onet"]
QUICK = ["digits_mlp", "silero_vad_seq", "mtcnn_onet"]


# -- the tools: each writes a compressed copy of src to dst --------------------------------------


def onnxcompress_tool(**options):
    def run(src: Path, dst: Path) -> None:
        compress_checked(src, dst, force=True, verify=False, **options)

    return run


def quantize_dynamic_int8(src: Path, dst: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)


def matmul_nbits_4(src: Path, dst: Path) -> None:
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    q = MatMulNBitsQuantizer(onnx.load(str(src)), bits=4, block_size=32, is_symmetric=True)
    q.process()
    onnx.save_model(q.model.model, str(dst))


def float16(src: Path, dst: Path) -> None:
    from onnxconverter_common import float16 as f16

    onnx.save_model(f16.convert_float_to_float16(onnx.load(str(src)), keep_io_types=True), str(dst))


def tools(quick: bool) -> dict:
    settings = (
        [(8, "tensor"), (4, "tensor"), (4, "channel")] if quick else [(b, g) for g in ("tensor", "channel") for b in (8, 6, 4, 3)]
    )
    out = {
        f"onnxcompress {b} bit" + (" channel" if g == "channel" else ""): onnxcompress_tool(bits=b, granularity=g)
        for b, g in settings
    }
    energies = [0.99] if quick else [0.999, 0.99, 0.95]
    out.update({f"onnxcompress lowrank e{e}": onnxcompress_tool(method="lowrank", energy=e) for e in energies})
    out["onnxcompress lowrank+kmeans e0.99 8 bit"] = onnxcompress_tool(method="lowrank+kmeans", energy=0.99, bits=8)
    for b in [8] if quick else [8, 4]:
        out[f"onnxcompress auto {b} bit"] = onnxcompress_tool(method="auto", bits=b)
    out.update({"quantize_dynamic int8": quantize_dynamic_int8, "MatMulNBits 4 bit b32": matmul_nbits_4, "float16": float16})
    return out


# -- measuring one tool on one model ----------------------------------------------------------------


def _why(e: Exception) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}"


def measure(name, src, feed, labels, ref, out_names, tool, dst, latency_s, repeats) -> dict:
    row: dict = {"model": name}
    t0 = time.perf_counter()
    try:
        tool(src, dst)
    except Exception as e:  # noqa: BLE001 - a peer that cannot handle a model is a result too
        return {**row, "error": f"compress: {_why(e)}"}
    row["compress_s"] = time.perf_counter() - t0
    data = dst.read_bytes()
    row["bytes"] = len(data)
    row["gzip_bytes"] = len(gzip.compress(data, compresslevel=6))
    try:
        comp = session(dst)
        outs = dict(zip(out_names, comp.run(None, feed), strict=True))
    except Exception as e:  # noqa: BLE001
        return {**row, "error": f"run: {_why(e)}"}
    diffs = compare(out_names, [[ref[n] for n in out_names]], [[outs[n] for n in out_names]])
    row["rel_l2"] = max(d.rel_l2 for d in diffs)
    row["cosine"] = min(d.cosine for d in diffs)
    row["task"] = task_result(name, dst, outs, ref, labels)
    row["load_s"], row["peak_rss_mib"] = load_cost(dst, repeats)
    row["latency_ratio"], _ = latency_ratio(session(src), comp, sliced(feed, LATENCY_SLICE[name]), latency_s)
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="the three small models, fewer settings (under five minutes)")
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="fetch_models.py's cache (default %(default)s)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")  # the peer tools warn at length; their results speak
    logging.getLogger().setLevel(logging.ERROR)
    t_start = time.perf_counter()
    names = QUICK if args.quick else ["digits_mlp", *REAL]
    latency_s, repeats = (1.5, 1) if args.quick else (4.0, 3)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            if name != "digits_mlp" and not (args.cache / "models" / f"{name}.onnx").exists():
                print(f"{name}: not in {args.cache} ({MISSING}); skipped", flush=True)
                continue
            src, feed, labels = model_inputs(name, args.cache)
            orig = session(src)
            out_names = [o.name for o in orig.get_outputs()]
            ref = dict(zip(out_names, orig.run(None, feed), strict=True))
            base = {
                "model": name,
                "tool": "original",
                "bytes": src.stat().st_size,
                "gzip_bytes": len(gzip.compress(src.read_bytes(), compresslevel=6)),
            }
            base["load_s"], base["peak_rss_mib"] = load_cost(src, repeats)
            rows.append(base)
            for label, tool in tools(args.quick).items():
                dst = Path(tmp) / f"{name}.onnx"
                row = {**measure(name, src, feed, labels, ref, out_names, tool, dst, latency_s, repeats), "tool": label}
                rows.append(row)
                print(line(row, base), flush=True)
                dst.unlink(missing_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "suite_quick" if args.quick else "suite"
    write_json(rows, args.out / f"{stem}.json")
    report = render(rows, time.perf_counter() - t_start)
    (args.out / f"{stem}.md").write_text(report)
    plot(rows, args.out / f"{stem}.png")
    print(report)
    return 0


def line(r: dict, base: dict) -> str:
    if "error" in r:
        return f"{r['model']:18s} {r['tool']:28s} {r['error']}"
    return (
        f"{r['model']:18s} {r['tool']:28s} {base['bytes'] / r['bytes']:5.2f}x  "
        f"gzip {base['gzip_bytes'] / r['gzip_bytes']:5.2f}x  {r['compress_s']:5.1f}s  "
        f"load {r['load_s']:.2f}s {r['peak_rss_mib']:.0f} MiB  latency x{r['latency_ratio']:.2f}  "
        f"rel L2 {r['rel_l2']:.1e}  {r['task']['summary']}"
    )


def render(rows: list[dict], seconds: float) -> str:
    out = [
        "# onnxcompress against the alternatives",
        "",
        f"onnxcompress {onnxcompress.__version__}, onnxruntime {ort.__version__}, {os.cpu_count()} cores, "
        f"{seconds / 60:.1f} min. "
        "Ratios are the original's bytes over the result's (file, and gzip -6 of the file); load time and peak RSS from a "
        "fresh process with default session options; latency is the median over the original's, interleaved, one thread; "
        "fidelity and task results on each model's real inputs.",
    ]
    for name in dict.fromkeys(r["model"] for r in rows):
        base = next(r for r in rows if r["model"] == name and r["tool"] == "original")
        out += [
            "",
            f"## {name}: {base['bytes'] / 1e6:.2f} MB, load {base['load_s']:.2f} s, peak RSS {base['peak_rss_mib']:.0f} MiB",
            "",
            "| tool | size | gzip | compress s | load s | peak RSS MiB | latency | worst rel. L2 | lowest cosine | task result |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            if r["model"] != name or r["tool"] == "original":
                continue
            if "error" in r:
                out.append(f"| {r['tool']} | failed: {r['error']} |  |  |  |  |  |  |  |  |")
                continue
            out.append(
                f"| {r['tool']} | {base['bytes'] / r['bytes']:.2f}x | {base['gzip_bytes'] / r['gzip_bytes']:.2f}x | "
                f"{r['compress_s']:.1f} | {r['load_s']:.2f} | {r['peak_rss_mib']:.0f} | {r['latency_ratio']:.2f}x | "
                f"{r['rel_l2']:.1e} | {r['cosine']:.4f} | "
                f"{r['task']['summary']} |"
            )
    return "\n".join(out) + "\n"


def family(tool: str) -> str:
    words = tool.split()
    if words[0] == "onnxcompress" and words[1].startswith("lowrank"):
        return "onnxcompress lowrank"
    return "onnxcompress auto" if words[:2] == ["onnxcompress", "auto"] else words[0]


def plot(rows: list[dict], path: Path) -> None:
    """Per model: file size against output error, one point per tool and setting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = plt.subplots(1, len(names), figsize=(3.6 * len(names), 3.8), dpi=110, squeeze=False)
    styles = {
        "onnxcompress": ("o", "tab:blue"),
        "onnxcompress lowrank": ("P", "tab:purple"),
        "onnxcompress auto": ("*", "tab:orange"),
        "quantize_dynamic": ("s", "tab:red"),
        "MatMulNBits": ("^", "tab:green"),
        "float16": ("D", "tab:gray"),
    }
    for ax, name in zip(axes[0], names, strict=True):
        base = next(r for r in rows if r["model"] == name and r["tool"] == "original")
        for r in rows:
            if r["model"] != name or r["tool"] == "original" or "error" in r:
                continue
            marker, color = styles[family(r["tool"])]
            filled = "channel" not in r["tool"]
            ax.plot(
                100 * r["bytes"] / base["bytes"],
                max(r["rel_l2"], 1e-5),
                marker=marker,
                color=color,
                markerfacecolor=color if filled else "none",
                linestyle="none",
                markersize=7,
            )
            ax.annotate(
                r["tool"]
                .replace("onnxcompress ", "")
                .replace("lowrank+kmeans ", "lr+k ")
                .replace("lowrank ", "lr ")
                .replace(" channel", "c")
                .replace("quantize_dynamic ", "")
                .replace("MatMulNBits 4 bit b32", "nbits4")
                .replace(" bit", ""),
                (100 * r["bytes"] / base["bytes"], max(r["rel_l2"], 1e-5)),
                textcoords="offset points",
                xytext=(4, 3),
                fontsize=6,
            )
        ax.set_yscale("log")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("size, % of original", fontsize=8)
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("worst output relative L2 error", fontsize=8)
    handles = [plt.Line2D([], [], marker=m, color=c, linestyle="none", label=k) for k, (m, c) in styles.items()]
    fig.legend(handles=handles, loc="lower center", ncol=len(styles), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
