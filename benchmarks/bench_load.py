"""Load-time memory where users deploy (issue 20): the peak RSS of a fresh process that loads a
model with default options, for the original and for the compressed model at 8 bits, 4 bits
and planned at `--max-error 0.01` on the model's inputs, held to the default `--load-peak 1.2`
and unbounded (`--load-peak 0`):
- native onnxruntime: VmHWM of a Python process;
- onnxruntime-web's wasm build run by node: RSS once the session is made and settled (the wasm
  heap never shrinks, so its load-time peak stays for the process's life), with V8's baseline
  compiler alone and with its default tiers (WEB_MODES);
- onnxruntime-web in a Chromium tab (browser_rss.py): the renderer's most RSS over the 4 s after
  the session is made, and its RSS at their end.

    python benchmarks/fetch_models.py     # once
    python benchmarks/bench_load.py [--cache DIR] [--models a,b] [--npm DIR]

onnxruntime-web comes from npm on first use (`npm install --ignore-scripts` into --npm, by default
the test suite's cache); without node or npm the wasm columns stay empty, without playwright (the
`browser` extra) or Chromium the tab's. Target: at most 1.2x the original's peak, for every
setting, natively, in node and in the tab. Writes benchmarks/results/load.md and load.json.
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
import browser_rss
from harness import (
    DEFAULT_CACHE,
    LATENCY_SLICE,
    MISSING,
    missing_earlier,
    model_inputs,
    native_probe,
    sliced,
    with_earlier_rows,
    write_json,
)

import onnxcompress

RESULTS = Path(__file__).parent / "results"
MODELS = ["digits_mlp", "minilm_l6", "ppocrv6_rec_small", "silero_vad_seq", "mtcnn_onet"]
SETTINGS = {
    "8 bits": {"bits": 8},
    "4 bits": {"bits": 4},
    "plan 0.01": {"max_error": 0.01},
    "plan 0.01, --load-peak 0": {"max_error": 0.01, "load_peak": 0},
}
UNBOUNDED = "plan 0.01, --load-peak 0"  # for comparison; not held to the target
TARGET = 1.2
NPM_DEFAULT = Path.home() / ".cache" / "onnxcompress-compat" / "npm"
WEB_VERSION = "1.31.1"

# node: the process's RSS once onnxruntime-web (wasm, one thread) has made the session, and the
# most it reaches over the 2 s after (V8 compiles the kernels that ran hot while the decoders
# folded, on the main thread, after the session is made)
WEB_SNIPPET = """
const fs = require("fs");
const ort = require("onnxruntime-web");
ort.env.wasm.numThreads = 1;
(async () => {
  const bytes = new Uint8Array(fs.readFileSync(process.argv[2]));
  const session = await ort.InferenceSession.create(bytes, { executionProviders: ["wasm"] });
  const made = process.memoryUsage().rss;
  let settled = made;
  for (let i = 0; i < 10; i++) {
    await new Promise((resolve) => setTimeout(resolve, 200));
    settled = Math.max(settled, process.memoryUsage().rss);
  }
  console.log(JSON.stringify({ made, settled, inputs: session.inputNames.length }));
})().catch((e) => { console.error(String(e)); process.exit(1); });
"""
# V8 flags per wasm column: Liftoff alone (no optimizing compiler) leaves the wasm heap and a
# fixed baseline code; with the default tiers, the optimizing compiler's memory comes on top at
# times that vary with what ran hot (the face net at 8 bits: 197 MiB when the session was made,
# 299 MiB 1.2 s later; Liftoff alone 142 against the original's 137).
WEB_MODES = {"web_mib": ["--liftoff-only"], "web_jit_mib": []}


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


def web_rss_mib(model: Path, modules: Path, script: Path, flags: list[str], repeats: int = 3) -> float:
    """Median over fresh node processes of the RSS once the session is made and settled, MiB."""
    seen = []
    for _ in range(repeats):
        out = subprocess.run(
            ["node", *flags, str(script), str(model)],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "NODE_PATH": str(modules)},
        )
        seen.append(json.loads(out.stdout)["settled"] / 2**20)
    return float(np.median(seen))


def measure(name: str, cache: Path, work: Path, modules: Path | None, script: Path, dist: Path | None) -> list[dict]:
    """Rows per setting of one model; `dist`: onnxruntime-web's files for the Chromium tab, None
    where the tab cannot be measured."""
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
        web = {key: web_rss_mib(path, modules, script, flags) if modules else None for key, flags in WEB_MODES.items()}
        tab = browser_rss.renderer_rss_mib(path, dist) if dist else (None, None)
        web["browser_mib"], web["browser_after_mib"] = tab
        rows.append(
            {"model": name, "setting": label, "mb": path.stat().st_size / 1e6, "native_mib": native, "rss_mib": rss, "ms": ms}
            | web
        )
        wasm = f"  wasm {web['web_mib']:6.0f} MiB (default tiers {web['web_jit_mib']:6.0f})" if modules else ""
        wasm += f"  Chromium tab {tab[0]:6.0f} MiB ({tab[1]:6.0f} 4 s later)" if dist else ""
        print(
            f"{name:18s} {label:26s} {path.stat().st_size / 1e6:7.2f} MB  native {native:6.0f} MiB, after runs {rss:6.0f} MiB, "
            f"{ms:7.2f} ms{wasm}",
            flush=True,
        )
    return rows


# the wasm columns, in the table's order
WASM_COLUMNS = {
    "web_mib": "node RSS MiB (Liftoff)",
    "web_jit_mib": "node RSS MiB (default tiers)",
    "browser_mib": "Chromium tab MiB",
    "browser_after_mib": "4 s later",
}
# where the target holds: natively, and where users run onnxruntime-web (node's default tiers, a tab)
TARGET_COLUMNS = {"native": "native", "web_jit_mib": "node", "browser_mib": "Chromium"}


def table(rows: list[dict]) -> list[str]:
    heads = " | ".join(f"{h} | vs original" for h in WASM_COLUMNS.values())
    lines = [
        f"| model | setting | MB on disk | native load peak MiB | vs original | RAM after runs MiB | latency | {heads} |",
        "|---|---|---|---|---|---|---|" + "---|---|" * len(WASM_COLUMNS),
    ]
    misses = []
    for r in rows:
        base = next(b for b in rows if b["model"] == r["model"] and b["setting"] == "original")
        ratio = {k: r.get(k) / base[k] if r.get(k) is not None and base.get(k) else None for k in WASM_COLUMNS}
        ratio["native"] = r["native_mib"] / base["native_mib"]
        if r["setting"] not in ("original", UNBOUNDED):
            over = [(where, ratio[k]) for k, where in TARGET_COLUMNS.items() if ratio[k] and ratio[k] > TARGET]
            misses += [f"{r['model']} {r['setting']} {where} {x:.2f}x" for where, x in over]
        cells = [f"{r[k]:.0f} | {ratio[k]:.2f}x" if ratio[k] is not None else " | " for k in WASM_COLUMNS]
        native = f"{r['native_mib']:.0f} | {ratio['native']:.2f}x | {r['rss_mib']:.0f} | {r['ms'] / base['ms']:.2f}x"
        lines.append(f"| {r['model']} | {r['setting']} | {r['mb']:.2f} | {native} | {' | '.join(cells)} |")
    verdict = "**met**" if not misses else "**not met**: " + "; ".join(misses)
    where = " and ".join(TARGET_COLUMNS.values())
    lines += ["", f"Target: at most {TARGET}x the original's, {where}, every setting but the unbounded plan: {verdict}."]
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--npm", type=Path, default=NPM_DEFAULT, help="where onnxruntime-web is (or goes) under node_modules")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--keep-others", action="store_true", help="keep the other models' rows from the earlier results")
    args = ap.parse_args(argv)
    earlier = args.out / "load.json"
    if missing_earlier(earlier, args.keep_others):
        return 2
    modules = web_modules(args.npm)
    no_tab = browser_rss.available() if modules else "no node or npm"
    if no_tab:
        print(f"# the Chromium tab column stays empty: {no_tab}", file=sys.stderr)
    dist = None if no_tab else modules / "onnxruntime-web" / "dist"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "load_web.cjs"
        script.write_text(WEB_SNIPPET)
        for name in args.models.split(","):
            if name != "digits_mlp" and not (args.cache / "models" / f"{name}.onnx").exists():
                print(f"# {name}: not in {args.cache} ({MISSING}); skipped", file=sys.stderr)
                continue
            rows += measure(name, args.cache, Path(tmp), modules, script, dist)
    if args.keep_others:
        rows = with_earlier_rows(rows, earlier, MODELS)
    lines = [
        "# Load-time memory (`python benchmarks/bench_load.py`)",
        "",
        "Native: a fresh Python process that imports onnxruntime and makes a session (default options, one thread): "
        "VmHWM once loaded, VmRSS after about 2 s of runs on a slice of the inputs, and their median latency against "
        "the original's. "
        f"wasm: RSS of a fresh node process once onnxruntime-web {WEB_VERSION} (one thread) has made the session, the most "
        "over the 2 s after, median of three; with V8's baseline compiler alone (`--liftoff-only`: the wasm heap and "
        "a fixed code size), and with its default tiers, where the optimizing compiler's memory for the kernels that ran "
        "hot comes on top. Chromium tab: the renderer process's RSS, the most over the 4 s after the session is made "
        "and at their end, median of three fresh headless browsers.",
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
