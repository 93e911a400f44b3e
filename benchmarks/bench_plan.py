"""The planner on real models: error targets, and error at equal size against onnxruntime's
quantizers, in one run.

    python benchmarks/fetch_models.py     # once
    pip install -e ".[bench]"
    python benchmarks/bench_plan.py [--cache DIR] [--models a,b]

Per model, on its real inputs (which also serve as the calibration data):
- uniform 8 bits per tensor (the reference size), and 8 bits with the inputs as calibration
  (sensitivity-weighted, error-compensated rounding);
- `--max-error 0.01` (the default metric: each output's task measure, runtime/verify.py):
  size, measured error, task result, planning time;
- the same target, and the looser LOOSER ones, planned on the first half of the inputs and
  judged on the second half: the task kept there (harness.KEPT_CHANGES) is the target, with at
  least 6x smaller than the original in geometric mean and 4.5x on each model;
- quantize_dynamic (int8) and MatMulNBits (4 bits, block 32), then the planner with
  `--target-size` at each one's file size: worst relative L2 error of both side by side.
  Target: at least 2x lower error at equal size, where the peer applies (changes the model).
Writes benchmarks/results/plan.md and plan.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
from harness import (
    DEFAULT_CACHE,
    MISSING,
    compress_checked,
    half_labels,
    model_inputs,
    session,
    task_result,
    missing_earlier,
    with_earlier_rows,
    write_json,
)

import onnxcompress
from onnxcompress.runtime.verify import error_of

sys.path.insert(0, str(Path(__file__).parent))
from run import matmul_nbits_4, quantize_dynamic_int8  # noqa: E402

RESULTS = Path(__file__).parent / "results"
MODELS = ["digits_mlp", "minilm_l6", "ppocrv6_rec_small", "silero_vad_seq", "mtcnn_onet"]
MAX_ERROR = 0.01
LOOSER = (0.02, 0.05)
# What an application reads, where a model returns more: sentence-transformers' users read the
# sentence embedding, not the token vectors
READS = {"minilm_l6": "last_hidden_state=ignore"}


def evaluate(name, src, path, feed, labels, ref, out_names, output_kind=None) -> dict:
    """The file's size, its worst relative L2 error and task measure (as compress() measures
    them: a fed-back state through the next call) and its task result, on `feed`."""
    outs = dict(zip(out_names, session(path).run(out_names, feed), strict=True))
    diffs = onnxcompress.compare_models(src, path, feed, output_kind=output_kind)
    return {
        "bytes": path.stat().st_size,
        "rel_l2": max(d.rel_l2 for d in diffs if d.name in ref),  # the first call's outputs, as before
        "task_error": error_of(diffs, "task"),
        "task": task_result(name, path, outs, ref, labels),
    }


def held_out(name, src, feed, labels, out_names, tmp: Path, max_error: float, output_kind=None) -> dict:
    """Planned on the first half of the inputs, judged on the second."""
    first, second = halves(feed)
    cut = max(v.shape[0] for v in feed.values() if v.ndim) // 2
    held = tmp / "held_out.onnx"
    compress_checked(src, held, force=True, max_error=max_error, calibration=first, output_kind=output_kind)
    ref = dict(zip(out_names, session(src).run(out_names, second), strict=True))
    judged = evaluate(name, src, held, second, half_labels(name, labels, cut), ref, out_names, output_kind)
    return {"max_error": max_error, **judged}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--keep-others", action="store_true", help="keep the other models' rows from the earlier results")
    args = ap.parse_args(argv)
    earlier = args.out / "plan.json"
    if missing_earlier(earlier, args.keep_others):
        return 2
    warnings.filterwarnings("ignore")
    logging.getLogger().setLevel(logging.ERROR)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name in args.models.split(","):
            if name != "digits_mlp" and not (args.cache / "models" / f"{name}.onnx").exists():
                print(f"{name}: not in {args.cache} ({MISSING}); skipped")
                continue
            src, feed, labels = model_inputs(name, args.cache)
            out_names = [o.name for o in session(src).get_outputs()]
            ref = dict(zip(out_names, session(src).run(out_names, feed), strict=True))
            row: dict = {"model": name, "bytes": Path(src).stat().st_size}

            eight = tmp / "eight.onnx"
            compress_checked(src, eight, force=True, bits=8, verify=False)
            row["uniform8"] = evaluate(name, src, eight, feed, labels, ref, out_names)

            calibrated = tmp / "calibrated.onnx"
            compress_checked(src, calibrated, force=True, bits=8, verify=False, calibration=feed)
            row["calibrated8"] = evaluate(name, src, calibrated, feed, labels, ref, out_names)

            row["held_out"] = [held_out(name, src, feed, labels, out_names, tmp, e) for e in (MAX_ERROR, *LOOSER)]

            planned = tmp / "planned.onnx"
            t0 = time.perf_counter()
            r = compress_checked(src, planned, force=True, max_error=MAX_ERROR, calibration=feed)
            seconds = time.perf_counter() - t0  # the whole command, before the task is scored
            row["planned"] = {
                **evaluate(name, src, planned, feed, labels, ref, out_names),
                "seconds": seconds,
                "plan_seconds": r.report.plan["seconds"],  # the planner's own clock
                "candidates": len(r.report.plan["candidates"]),
                "mix": sorted({t.describe() for t in r.report.tensors}),
                "kept": sum("plan keeps" in s["reason"] for s in r.report.skipped),
                "halves": r.report.plan["halves"],  # the plan on halves of the inputs (a warning above the target)
            }

            row["planned"]["cli_seconds"], row["planned"]["cli_plan_seconds"], row["planned"]["cli_peak_mib"] = command_line(
                src, feed, tmp
            )
            if name in READS:
                row["reads"] = reads_only(name, src, feed, labels, out_names, ref, tmp, READS[name])

            for peer, tool in (("int8", quantize_dynamic_int8), ("nbits4", matmul_nbits_4)):
                dst = tmp / f"{peer}.onnx"
                try:
                    tool(Path(src), dst)
                except Exception as e:  # noqa: BLE001 - a peer that cannot handle a model is a result too
                    row[peer] = {"error": str(e).splitlines()[0][:100]}
                    continue
                theirs = evaluate(name, src, dst, feed, labels, ref, out_names)
                if theirs["bytes"] >= 0.98 * row["bytes"]:
                    row[peer] = {**theirs, "applies": False}
                    continue
                mine = tmp / f"plan_{peer}.onnx"
                try:
                    compress_checked(src, mine, force=True, target_size=theirs["bytes"] / 1e6, calibration=feed)
                    ours = evaluate(name, src, mine, feed, labels, ref, out_names)
                except onnxcompress.TargetError as e:
                    ours = {"error": str(e)[:100]}
                row[peer] = {**theirs, "applies": True, "ours": ours}
            rows.append(row)
            p, u = row["planned"], row["uniform8"]
            print(
                f"{name:18s} 8 bit {u['bytes'] / 1e6:7.2f} MB rel {u['rel_l2']:.1e} | planned {p['bytes'] / 1e6:7.2f} MB "
                f"({row['bytes'] / p['bytes']:.2f}x smaller than the original) task error {p['task_error']:.1e} "
                f"{p['seconds']:.1f} s (plan {p['plan_seconds']:.1f} s), {p['task']['summary']}",
                flush=True,
            )
            for h in row["held_out"]:
                print(
                    f"{'':18s} planned on half at {h['max_error']:g}: {row['bytes'] / h['bytes']:.2f}x, task error on the "
                    f"other half {h['task_error']:.1e}, {h['task']['summary']} (kept: {h['task']['kept']})",
                    flush=True,
                )
            for peer in ("int8", "nbits4"):
                q = row.get(peer, {})
                if q.get("applies"):
                    ours = q["ours"].get("rel_l2", float("nan"))
                    print(f"{'':18s} {peer}: {q['bytes'] / 1e6:.2f} MB rel {q['rel_l2']:.1e} | ours rel {ours:.1e}")
    args.out.mkdir(parents=True, exist_ok=True)
    if args.keep_others:
        rows = with_earlier_rows(rows, earlier, MODELS)
    write_json(rows, args.out / "plan.json")
    (args.out / "plan.md").write_text(render(rows))
    print(render(rows))
    return 0


# The command line's main in a fresh process, then its peak RSS (VmHWM, MiB) on stderr's last line.
CLI_SNIPPET = """
import sys
from onnxcompress.cli import main
code = main(sys.argv[1:])
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(hwm // 1024, file=sys.stderr)
sys.exit(code)
"""


def reads_only(name, src, feed, labels, out_names, ref, tmp: Path, output_kind: str) -> dict:
    """The plan and the held-out check with --output-kind saying which outputs the application reads."""
    planned = tmp / "reads.onnx"
    compress_checked(src, planned, force=True, max_error=MAX_ERROR, calibration=feed, output_kind=output_kind)
    return {
        "output_kind": output_kind,
        "planned": evaluate(name, src, planned, feed, labels, ref, out_names, output_kind),
        "held_out": held_out(name, src, feed, labels, out_names, tmp, MAX_ERROR, output_kind),
    }


def command_line(src, feed: dict, tmp: Path) -> tuple[float, float, int]:
    """Wall seconds of `onnxcompress SRC --max-error 0.01 --inputs FEED.npz` in a fresh process,
    as a user runs it (start-up and imports included), its planner's own clock (the in-process
    run above follows other work in the same process, which can slow it), and its peak RSS in MiB."""
    inputs, report = tmp / "feed.npz", tmp / "report.json"
    np.savez(inputs, **feed)
    args = [str(src), "-o", str(tmp / "cli.onnx"), "--force", "-q", "--max-error", str(MAX_ERROR), "--inputs", str(inputs)]
    t0 = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", CLI_SNIPPET, *args, "--report", str(report)], check=True, stderr=subprocess.PIPE, text=True
    )
    seconds = time.perf_counter() - t0
    return seconds, json.loads(report.read_text())["plan"]["seconds"], int(done.stderr.strip().splitlines()[-1])


def halves(feed: dict) -> tuple[dict, dict]:
    """The feed's batch (its inputs' longest leading axis) cut into a first and a second half;
    inputs without that axis (recurrent states) go to both."""
    lead = max(v.shape[0] for v in feed.values() if v.ndim)
    cut = lead // 2
    first = {k: v[:cut] if v.ndim and v.shape[0] == lead else v for k, v in feed.items()}
    second = {k: v[cut:] if v.ndim and v.shape[0] == lead else v for k, v in feed.items()}
    return first, second


def render(rows: list[dict]) -> str:
    out = [
        f"# The planner (`python benchmarks/bench_plan.py`), --max-error {MAX_ERROR} and equal-size comparisons",
        "",
        "Sizes as times smaller than the original. Task error: the worst output's task measure (what --max-error bounds by "
        "default). Kept: the task rules of benchmarks/harness.py (at most 1% of decisions changed, every line read the same, "
        "every neighbour among the two nearest).",
        "",
        "| model | original MB | 8 bit: x, task error, kept | --max-error 0.01: x, task error, kept | mix | "
        + " | ".join(f"planned on half at {e:g}: x, on the other half: task error, kept" for e in (MAX_ERROR, *LOOSER))
        + " |",
        "|---|---|---|---|---|" + "---|" * (1 + len(LOOSER)),
    ]
    for r in rows:
        u, p = r["uniform8"], r["planned"]
        held = " | ".join(_judged(r["bytes"], h) for h in r["held_out"])
        out.append(
            f"| {r['model']} | {r['bytes'] / 1e6:.2f} | {_judged(r['bytes'], u)} | {_judged(r['bytes'], p)} | "
            f"{', '.join(p['mix'])}" + (f"; {p['kept']} kept" if p["kept"] else "") + f" | {held} |"
        )
    for r in rows:
        if "reads" in r:
            q = r["reads"]
            out.append(
                f"| {r['model']} with `--output-kind {q['output_kind']}` | | | {_judged(r['bytes'], q['planned'])} | | "
                f"{_judged(r['bytes'], q['held_out'])} |" + " |" * len(LOOSER)
            )
    geo = [_geomean([r["bytes"] / r["planned"]["bytes"] for r in rows])]
    geo += [_geomean([r["bytes"] / r["held_out"][i]["bytes"] for r in rows]) for i in range(1 + len(LOOSER))]
    out.append(
        f"| geometric mean | | {_geomean([r['bytes'] / r['uniform8']['bytes'] for r in rows]):.2f}x | {geo[0]:.2f}x | | "
        + " | ".join(f"{g:.2f}x" for g in geo[1:])
        + " |"
    )
    out += [
        "",
        "Detail of the --max-error 0.01 plan on all inputs:",
        "",
        "| model | 8 bit calibrated: rel. L2 | planned: MB, rel. L2 | vs 8 bit | whole command (plan) | "
        "command line, fresh process (plan), peak RSS | task result (planned) | halves of the inputs: task error |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        u, c, p = r["uniform8"], r["calibrated8"], r["planned"]
        out.append(
            f"| {r['model']} | {c['rel_l2']:.1e} | {p['bytes'] / 1e6:.2f}, {p['rel_l2']:.1e} | "
            f"{u['bytes'] / p['bytes']:.2f}x smaller | {p['seconds']:.1f} s (plan {p['plan_seconds']:.1f} s), "
            f"{p['candidates']} measured | {p['cli_seconds']:.1f} s (plan {p['cli_plan_seconds']:.1f} s), "
            f"peak {p['cli_peak_mib']} MiB | {p['task']['summary']} | {_halves_cell(p['halves'])} |"
        )
    out += [
        "",
        "At equal file size: the peer's worst relative L2 error against the planner's with `--target-size` at the peer's size.",
        "",
        "| model | peer | size MB | peer rel. L2 | onnxcompress rel. L2 | error ratio |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        for peer, label in (("int8", "quantize_dynamic int8"), ("nbits4", "MatMulNBits 4 bit")):
            q = r.get(peer)
            if not q or "error" in q:
                out.append(f"| {r['model']} | {label} | failed: {q.get('error') if q else ''} | | | |")
            elif not q["applies"]:
                out.append(f"| {r['model']} | {label} | {q['bytes'] / 1e6:.2f} (does not change the model) | | | |")
            elif "error" in q["ours"]:
                out.append(f"| {r['model']} | {label} | {q['bytes'] / 1e6:.2f} | {q['rel_l2']:.1e} | {q['ours']['error']} | |")
            else:
                o = q["ours"]
                ratio = q["rel_l2"] / o["rel_l2"] if o["rel_l2"] else float("inf")
                out.append(
                    f"| {r['model']} | {label} | {q['bytes'] / 1e6:.2f} | {q['rel_l2']:.1e} | {o['rel_l2']:.1e} "
                    f"({o['bytes'] / 1e6:.2f} MB) | {ratio:.1f}x lower |"
                )
    return "\n".join(out) + "\n"


def _judged(original: int, r: dict) -> str:
    kept = {True: "kept", False: "**not kept**", None: "?"}[r["task"]["kept"]]
    return f"{original / r['bytes']:.2f}x, {r['task_error']:.1e}, {kept}"


def _geomean(values: list[float]) -> float:
    return float(np.exp(np.mean(np.log(values)))) if values else float("nan")


def _halves_cell(errors: list[float]) -> str:
    """The plan's error on halves of the inputs, flagged where the report warns."""
    if not errors:
        return "cannot be halved"
    return f"{min(errors):.1e} to {max(errors):.1e}" + (" (warns)" if max(errors) > MAX_ERROR else "")


if __name__ == "__main__":
    sys.exit(main())
