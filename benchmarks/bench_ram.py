"""Issue 20's `--max-ram` on MiniLM: what each way of storing the weights holds in RAM after
load and a run, its latency and its task result, in fresh processes.

- the original, and this tool's plans: `--max-error 0.01`, the same with `--max-ram 65%`, and
  `--max-ram 30%` at the model's opset 17 (refused: the least RAM its options allow is printed)
  and at opset 21 for onnxruntime 1.32, where MatMul weights can be integer blocks, at 0.01,
  0.06, 0.2 and 0.05 on the sentence embedding alone;
- every MatMul weight as a blocked DequantizeLinear (opset 21, INT8 or INT4, absmax blocks of 32
  along the reduction axis, plain rounding), which onnxruntime runs as MatMulNBits with the
  weight packed, the lookup tables packed as the plan packs them. Measured at the session's
  default MatMulNBits accuracy (level 4 in onnxruntime 1.32: the activations are quantized to
  int8 too) and at level 0 (float compute), with the session option
  `session.qdq_matmulnbits_accuracy_level`.

Each model runs in three fresh processes with one thread (medians): VmHWM once loaded, VmRSS
after a run on all 64 sentences and about 2 s of runs on 8 of them, the median latency of those,
and the outputs on all 64 for the task (harness.task_result) and the tool's measure (the largest shift of a
similarity, on the token vectors and on the sentence embedding: what `--max-error` bounds).

    python benchmarks/bench_ram.py [--cache DIR]

Writes benchmarks/results/ram.md and ram.json.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
from harness import DEFAULT_CACHE, LATENCY_SLICE, MISSING, model_inputs, native_probe, task_result, write_json
from onnx import helper, numpy_helper, version_converter

import onnxcompress as oc
from onnxcompress.runtime.outputs import output_kinds
from onnxcompress.runtime.verify import compare

RESULTS = Path(__file__).parent / "results"
BLOCK = 32
REPEATS = 3
ORIGINAL = "original"
BLOCKS = ["--opset", "21", "--target-ort", "1.32"]  # what lets MatMul weights stay packed as integer blocks
INT8_BLOCKS = "MatMul INT8 blocks, tables packed"  # measured at both accuracies: what int8 activations cost


def blocked(model: onnx.ModelProto, bits: int) -> onnx.ModelProto:
    """Every 2-D float weight read only as a MatMul's right operand, as DequantizeLinear from
    signed `bits`-bit integers with one float32 scale per block of BLOCK values along the
    reduction axis (absmax: the largest magnitude maps to 2^(bits-1) - 1)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    readers: dict[str, list[tuple[str, int]]] = {}
    for node in graph.node:
        for i, name in enumerate(node.input):
            readers.setdefault(name, []).append((node.op_type, i))
    front, keep = [], []
    qmax = (1 << (bits - 1)) - 1
    for t in graph.initializer:
        a = numpy_helper.to_array(t)
        uses = readers.get(t.name, [])
        products = bool(uses) and all(use == ("MatMul", 1) for use in uses)
        if t.data_type != onnx.TensorProto.FLOAT or a.ndim != 2 or a.shape[0] % BLOCK or not products:
            keep.append(t)
            continue
        k, n = a.shape
        blocks = a.reshape(k // BLOCK, BLOCK, n)
        scale = np.abs(blocks).max(axis=1) / qmax
        scale[scale == 0] = 1.0
        q = np.clip(np.round(blocks / scale[:, None, :]), -qmax - 1, qmax).astype(np.int8).reshape(k, n)
        if bits == 8:
            values = numpy_helper.from_array(q, t.name + "::q")
        else:  # two signed nibbles a byte, the first in the low bits
            flat = (q.reshape(-1) & 0x0F).astype(np.uint8)
            packed = (flat[0::2] | (flat[1::2] << 4)).astype(np.uint8)
            values = helper.make_tensor(t.name + "::q", onnx.TensorProto.INT4, [k, n], packed.tobytes(), raw=True)
        keep += [values, numpy_helper.from_array(scale.astype(np.float32), t.name + "::scale")]
        front.append(helper.make_node("DequantizeLinear", [values.name, t.name + "::scale"], [t.name], axis=0, block_size=BLOCK))
    del graph.initializer[:]
    graph.initializer.extend(keep)
    nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(front + nodes)
    return out


def run(path: Path, feed: Path, out: Path, level: str = "default", repeats: int = REPEATS) -> dict:
    """The medians of `repeats` fresh processes (RSS after runs moves by 10% between them)."""
    runs = [native_probe(path, feed, LATENCY_SLICE["minilm_l6"], out, level) for _ in range(repeats)]
    return {key: (float(np.median([r[key] for r in runs])) if key != "ort" else runs[0][key]) for key in runs[0]}


def measures(kinds: dict, ref: dict, got: dict, feed: dict) -> dict[str, float]:
    """Each output's task measure as the tool computes it (runtime/verify.py; for MiniLM's two
    embeddings the largest shift of a similarity, on the rows the attention mask keeps):
    what `--max-error` bounds."""
    names = list(kinds)
    diffs = compare(names, [[ref[n] for n in names]], [[got[n] for n in names]], kinds, [feed])
    return {d.name: d.task for d in diffs}


def cli(model: Path, feed: Path, out: Path, *flags: str) -> str | None:
    """Runs onnxcompress as a user would; None when it wrote `out`, else its one-line refusal."""
    args = [sys.executable, "-m", "onnxcompress", str(model), "--inputs", str(feed), "-o", str(out), "-q", *flags]
    done = subprocess.run(args, capture_output=True, text=True)
    return None if done.returncode == 0 else done.stderr.strip().splitlines()[-1]


def variants(model: Path, feed: Path, folder: Path) -> tuple[dict[str, tuple[Path, str]], dict[str, str]]:
    """name: (model file, MatMulNBits accuracy level), and the refusals by name."""
    made: dict[str, tuple[Path, str]] = {ORIGINAL: (model, "default")}
    refused: dict[str, str] = {}
    for name, flags in {
        "plan --max-error 0.01": ["--max-error", "0.01"],
        "plan --max-error 0.01 --max-ram 65%": ["--max-error", "0.01", "--max-ram", "65%"],
        "plan --max-error 0.01 --max-ram 30%": ["--max-error", "0.01", "--max-ram", "30%"],
        "plan --max-error 0.01 --max-ram 30% at opset 21": ["--max-error", "0.01", "--max-ram", "30%", *BLOCKS],
        "plan --max-error 0.015 --max-ram 30% at opset 21": ["--max-error", "0.015", "--max-ram", "30%", *BLOCKS],
        "plan --max-error 0.03 --max-ram 30% at opset 21": ["--max-error", "0.03", "--max-ram", "30%", *BLOCKS],
        "plan --max-error 0.01 --max-ram 30% at opset 21, sentence embedding only": [
            *["--max-error", "0.01", "--max-ram", "30%", *BLOCKS, "--output-kind", "last_hidden_state=ignore"]
        ],
    }.items():
        path = folder / (name.replace(" ", "_").replace("%", "") + ".onnx")
        message = cli(model, feed, path, *flags)
        if message:
            refused[name] = message
        else:
            made[name] = (path, "default")
    # the tables packed as the plan packs them, at opset 21 for DequantizeLinear's blocks (held to
    # the load peak, which keeps them at widths that stay packed: 7 bits per column folded: 660 MiB)
    opset21 = version_converter.convert_version(onnx.load(model), 21)
    opset21.ir_version = 10
    tables = oc.compress(opset21, include="embeddings", max_error=0.01, load_peak=1.2, calibration=str(feed), verify=False).model
    for bits in (8, 4):
        path = folder / f"blocked{bits}.onnx"
        onnx.save(blocked(tables, bits), path)
        made[f"MatMul INT{bits} blocks, tables packed (default accuracy)"] = (path, "default")
        made[f"MatMul INT{bits} blocks, tables packed (accuracy 0)"] = (path, "0")
    return made, refused


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    if not (args.cache / "models" / "minilm_l6.onnx").exists():
        print(f"minilm_l6 is not in {args.cache}: {MISSING}", file=sys.stderr)
        return 2
    model, feed, labels = model_inputs("minilm_l6", args.cache)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        feed_path = folder / "feed.npz"
        np.savez(feed_path, **feed)
        made, refused = variants(Path(model), feed_path, folder)
        outputs = {}
        for name, (path, level) in made.items():
            m = run(path, feed_path, folder / "out.npz", level)
            outputs[name] = dict(np.load(folder / "out.npz"))
            rows.append({"variant": name, "mb": path.stat().st_size / 1e6, **m})
    ref = outputs[ORIGINAL]
    kinds = output_kinds(onnx.load(model, load_external_data=False))
    base = rows[0]
    for r in rows:
        r["measure"] = measures(kinds, ref, outputs[r["variant"]], feed)
        r["task"] = task_result("minilm_l6", Path(model), outputs[r["variant"]], ref, labels)
        r["rss_ratio"], r["ms_ratio"] = r["rss"] / base["rss"], r["ms"] / base["ms"]
    lines = [
        "# Weights in RAM after load (`python benchmarks/bench_ram.py`)",
        "",
        f"MiniLM, onnxruntime {base['ort']}, medians of {REPEATS} fresh processes per row, one thread: the load peak, "
        "the RSS after a run on all 64 "
        f"sentences and 2 s of runs on {LATENCY_SLICE['minilm_l6']}, their median latency, the tool's measure (the largest "
        "shift of a similarity, token vectors on their unpadded rows / sentence embedding; `--max-error 0.01` bounds "
        "both) and the task "
        "(harness.task_result).",
        "",
        "| variant | MB | load peak MiB | RSS after MiB | vs original | latency | measure (tokens / sentence) | task |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        d = r["measure"]
        lines.append(
            f"| {r['variant']} | {r['mb']:.1f} | {r['peak']:.0f} | {r['rss']:.0f} | {r['rss_ratio']:.2f}x | "
            f"{r['ms_ratio']:.2f}x | {d['last_hidden_state']:.4f} / {d['sentence_embedding']:.4f} | "
            f"{'kept' if r['task']['kept'] else 'lost'}: {r['task']['summary']} |"
        )
    # the same INT8 weights at the default accuracy against float compute: what MatMulNBits'
    # int8 activations alone cost, a floor for every plan whose MatMul weights stay packed
    float_compute, int8_compute = outputs[f"{INT8_BLOCKS} (accuracy 0)"], outputs[f"{INT8_BLOCKS} (default accuracy)"]
    alone = measures(kinds, float_compute, int8_compute, feed)
    lines += [
        "",
        f"MatMulNBits' int8 activations alone ({INT8_BLOCKS}, default accuracy against accuracy 0): "
        f"{alone['last_hidden_state']:.4f} / {alone['sentence_embedding']:.4f}.",
    ]
    lines += ["", *[f"- {name}: refused: `{message}`" for name, message in refused.items()]]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ram.md").write_text("\n".join(lines) + "\n")
    write_json({"rows": rows, "refused": refused, "activations_alone": alone}, args.out / "ram.json")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
