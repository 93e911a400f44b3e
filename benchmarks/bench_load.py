"""Load-time memory where users deploy (issue 20): the peak RSS of a fresh process that loads a
model with default options, in native onnxruntime (VmHWM of a Python process) and in
onnxruntime-web's wasm build run by node (RSS after the session is made: the wasm heap never
shrinks, so its load-time peak stays for the page's life), for the original and for the
compressed model at 8 bits, 4 bits and planned at `--max-error 0.01` on the model's inputs,
with and without `--load-peak 1.2`.

    python benchmarks/fetch_models.py     # once
    python benchmarks/bench_load.py [--cache DIR] [--models a,b] [--npm DIR]

onnxruntime-web comes from npm on first use (`npm install --ignore-scripts` into --npm, by default
the test suite's cache); without node or npm the wasm column stays empty. Target: at most 1.2x
the original's peak, for every setting. Writes benchmarks/results/load.md and load.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from harness import DEFAULT_CACHE, LATENCY_SLICE, MISSING, model_inputs, native_probe, sliced, write_json

import onnxcompress

RESULTS = Path(__file__).parent / "results"
MODELS = ["digits_mlp", "minilm_l6", "ppocrv6_rec_small", "silero_vad_seq", "mtcnn_onet"]
SETTINGS = {
    "8 bits": {"bits": 8},
    "4 bits": {"bits": 4},
    "plan 0.01": {"max_error": 0.01},
    "plan 0.01, --load-peak 1.2": {"max_error": 0.01, "load_peak": 1.2},
}
TARGET = 1.2
NPM_DEFAULT = Path.home() / ".cache" / "onnxcompress-compat" / "npm"
WEB_VERSION = "1.31.1"

# node: the process's RSS once onnxruntime-web (wasm, one thread) has made the session
WEB_SNIPPET = """
const fs = require("fs");
const ort = require("onnxruntime-web");
ort.env.wasm.numThreads = 1;
(async () => {
  const bytes = new Uint8Array(fs.readFileSync(process.argv[2]));
  const session = await ort.InferenceSession.create(bytes, { executionProviders: ["wasm"] });
  console.log(JSON.stringify({ rss: process.memoryUsage().rss, inputs: session.inputNames.length }));
})().catch((e) => { console.error(String(e)); process.exit(1); });
"""


def web_modules(folder: Path) -> Path | None:
    """node_modules holding onnxruntime-web, installed there once; None without node and npm."""
    if (folder / "node_modules" / "onnxruntime-web").is_dir():
        return folder / "node_modules"
    if shutil.which("node") is None or shutil.which("npm") is None:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    npm = [
        "npm",
        "install",
        "--ignore-scripts",
        "--no-audit",
        "--no-fund",
        "--prefix",
        str(folder),
        f"onnxruntime-web@{WEB_VERSION}",
    ]
    subprocess.run(npm, check=True, capture_output=True)
    return folder / "node_modules"


def web_rss_mib(model: Path, modules: Path, script: Path, repeats: int = 2) -> float:
    peak = 0.0
    for _ in range(repeats):
        out = subprocess.run(
            ["node", str(script), str(model)],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "NODE_PATH": str(modules)},
        )
        peak = max(peak, json.loads(out.stdout)["rss"] / 2**20)
    return peak


def measure(name: str, cache: Path, work: Path, modules: Path | None, script: Path) -> list[dict]:
    model, feed, _ = model_inputs(name, cache)
    inputs = work / f"{name}.npz"
    np.savez(inputs, **feed)
    rows = []
    variants = {"original": Path(model)}
    for label, options in SETTINGS.items():
        out = work / f"{name}.{label.replace(' ', '_')}.onnx"
        extra = {"inputs": str(inputs)} if "max_error" in options else {}
        onnxcompress.compress(model, out, force=True, verify=False, **options, **extra)
        variants[label] = out
    sliced_inputs = work / f"{name}.sliced.npz"
    part = LATENCY_SLICE.get(name, 8)
    np.savez(sliced_inputs, **sliced(feed, part))
    for label, path in variants.items():
        runs = [native_probe(path, sliced_inputs, part) for _ in range(2)]
        native, rss, ms = max(r["peak"] for r in runs), min(r["rss"] for r in runs), min(r["ms"] for r in runs)
        web = web_rss_mib(path, modules, script) if modules is not None else None
        rows.append(
            {"model": name, "setting": label, "mb": path.stat().st_size / 1e6, "native_mib": native, "rss_mib": rss, "ms": ms}
            | {"web_mib": web}
        )
        print(
            f"{name:18s} {label:26s} {path.stat().st_size / 1e6:7.2f} MB  native {native:6.0f} MiB, after runs {rss:6.0f} MiB, "
            f"{ms:7.2f} ms" + (f"  web {web:6.0f} MiB" if web is not None else ""),
            flush=True,
        )
    return rows


def table(rows: list[dict]) -> list[str]:
    lines = [
        "| model | setting | MB on disk | native load peak MiB | vs original | RAM after runs MiB | latency "
        "| wasm RSS MiB | vs original |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    met = True
    for r in rows:
        base = next(b for b in rows if b["model"] == r["model"] and b["setting"] == "original")
        native = r["native_mib"] / base["native_mib"]
        web = r["web_mib"] / base["web_mib"] if r["web_mib"] is not None and base["web_mib"] else None
        if r["setting"] != "original":
            met &= native <= TARGET and (web is None or web <= TARGET)
        lines.append(
            f"| {r['model']} | {r['setting']} | {r['mb']:.2f} | {r['native_mib']:.0f} | {native:.2f}x | {r['rss_mib']:.0f} | "
            f"{r['ms'] / base['ms']:.2f}x | " + (f"{r['web_mib']:.0f} | {web:.2f}x |" if web is not None else "| |")
        )
    lines += ["", f"Target: at most {TARGET}x the original's, every setting: **{'met' if met else 'not met'}**."]
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--npm", type=Path, default=NPM_DEFAULT, help="where onnxruntime-web is (or goes) under node_modules")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    modules = web_modules(args.npm)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "load_web.cjs"
        script.write_text(WEB_SNIPPET)
        for name in args.models.split(","):
            if name != "digits_mlp" and not (args.cache / "models" / f"{name}.onnx").exists():
                print(f"# {name}: not in {args.cache} ({MISSING}); skipped", file=sys.stderr)
                continue
            rows += measure(name, args.cache, Path(tmp), modules, script)
    lines = [
        "# Load-time memory (`python benchmarks/bench_load.py`)",
        "",
        "Native: a fresh Python process that imports onnxruntime and makes a session (default options, one thread): "
        "VmHWM once loaded, VmRSS after about 2 s of runs on a slice of the inputs, and their median latency against "
        "the original's. "
        f"wasm: RSS of a fresh node process once onnxruntime-web {WEB_VERSION} (one thread) has made the session.",
        "",
        *table(rows),
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "load.md").write_text("\n".join(lines) + "\n")
    write_json(rows, args.out / "load.json")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
