"""Does the test suite notice when the code breaks? Apply each change below (a "mutant"), one at
a time, to a copy of the repository, run the tests, and report which changes survive.

    python tests/mutants.py              # every mutant: its likely tests first, the whole suite for survivors
    python tests/mutants.py --quick      # the likely tests only (a survivor there is "survived (quick)")
    python tests/mutants.py -k floor     # only mutants whose name contains "floor"
    python tests/mutants.py --list       # the mutants, nothing run
    python tests/mutants.py -k unary --tests tests/test_conformance.py   # does this test alone notice?

A tool, not a test: the README's test command does not run it (2.5 minutes when every mutant dies early). Each mutant
is a real defect someone could write; each must fail at least one test of the README command
(every one did when last run, each within 5-10 s of its likely tests: docs/testing.md).
A mutant whose text no longer matches the code is reported as "stale": update its snippet.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUN_SECONDS = 1500  # one pytest run; the whole suite takes 2.5-5 minutes


@dataclass(frozen=True)
class Mutant:
    name: str
    path: str  # relative to the repository
    old: str  # must occur exactly once
    new: str
    tests: tuple[str, ...]  # the tests most likely to notice, run first


UNARY_OPS = (
    "Abs Acos Acosh Asin Asinh Atan Atanh Ceil Celu Cos Cosh Elu Erf Exp Floor Gelu HardSigmoid HardSwish Hardmax "
    "Identity IsInf IsNaN LeakyRelu Log LogSoftmax Mish Neg Reciprocal Relu Round Selu Shrink Sigmoid Sign Sin Sinh "
    "Softmax Softplus Softsign Sqrt Tan Tanh ThresholdedRelu"
).split()
REDUCE_OPS = "ReduceSum ReduceMean ReduceMax ReduceMin ReduceProd ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceSumSquare"

MUTANTS = [
    Mutant(
        "error_of: the task metric takes the best output",
        "onnxcompress/runtime/verify.py",
        "return max((d.task for d in diffs), default=0.0)",
        "return min((d.task for d in diffs), default=0.0)",
        ("tests/test_targets.py", "tests/test_sequence.py"),
    ),
    Mutant(
        "task measure: CTC lines read without merging repeats",
        "onnxcompress/runtime/verify.py",
        "merged = labels[np.concatenate(([True], labels[1:] != labels[:-1]))]",
        "merged = labels",
        ("tests/test_outputs.py",),
    ),
    Mutant(
        "task measure: dense outputs measured whole, not per channel",
        "onnxcompress/runtime/verify.py",
        'return "rel. L2, worst channel", max(rel_l2_of_parts(refs, cands, OutputKind("parts", axis), QUIET_CHANNEL))',
        'return "rel. L2, worst channel", rel',
        ("tests/test_outputs.py", "tests/test_targets.py"),
    ),
    Mutant(
        "sequence: the state is not fed back on the next call",
        "onnxcompress/runtime/sequence.py",
        "again = [{**feed, **{target: outs[j] for j, target in pairs.items()}} for feed, outs in zip(feeds, first, strict=True)]",
        "again = feeds",
        ("tests/test_sequence.py",),
    ),
    Mutant(
        "scaled codebook: k-means not weighed by the scale",
        "onnxcompress/encoding/codebook.py",
        "scaled_importance = (np.broadcast_to(shaped**2, array.shape) * (1.0 if importance is None else importance)).astype(",
        "scaled_importance = (np.broadcast_to(shaped**0, array.shape) * (1.0 if importance is None else importance)).astype(",
        ("tests/test_scaled.py",),
    ),
    Mutant(
        "error_of: the best output instead of the worst",
        "onnxcompress/runtime/verify.py",
        "return max(d.rel_l2 for d in diffs)",
        "return min(d.rel_l2 for d in diffs)",
        ("tests/test_verify.py", "tests/test_targets.py"),
    ),
    Mutant(
        "error_of: top1 always 0",
        "onnxcompress/runtime/verify.py",
        "return 1.0 - min(scored)",
        "return 0.0",
        ("tests/test_verify.py", "tests/test_targets.py"),
    ),
    Mutant(
        "planner: no confirmation on the built model",
        "onnxcompress/planning/plan.py",
        "(built := measure.built(best.recipe())) > plan_o.max_error:",
        "(built := measure.built(best.recipe())) > plan_o.max_error * 1e9:",
        ("tests/test_targets.py",),
    ),
    Mutant(
        "planner: every gain and compensation ratio 1",
        "onnxcompress/planning/plan.py",
        "g, r = gains.get(t.site.name, 1.0), ratios.get(t.site.name, 1.0)",
        "g, r = 1.0, 1.0",
        ("tests/test_targets.py",),
    ),
    Mutant(
        "planner: FEATURE_FLOOR 0",
        "onnxcompress/planning/plan.py",
        "FEATURE_FLOOR = 0.1",
        "FEATURE_FLOOR = 0.0",
        ("tests/test_targets.py",),
    ),
    Mutant(
        "planner imports the builder",
        "onnxcompress/planning/plan.py",
        "from ..recipe import AsCodebook, AsFloat16, Keep, Recipe\n",
        "from ..recipe import AsCodebook, AsFloat16, Keep, Recipe\nfrom ..pipeline.build import LastBuild  # noqa: F401\n",
        ("tests/test_layers.py",),
    ),
    Mutant(
        "the Encoder ignores a choice's compensate",
        "onnxcompress/encoding/encoded.py",
        "for site, c in codebooks if c.compensate}",
        "for site, c in codebooks if False}",
        ("tests/test_compensate.py", "tests/test_recipe.py"),
    ),
    Mutant(
        "an output of parts measured whole",
        "onnxcompress/runtime/verify.py",
        'if kind.kind == "parts" and kind.axis is not None',
        'if kind.kind == "parts" and kind.axis is None',
        ("tests/test_outputs.py",),
    ),
    Mutant(
        "no warning when half the inputs miss the target",
        "onnxcompress/pipeline/summary.py",
        "if limit is None or not parts or max(parts) <= limit:",
        "if limit is None or not parts or max(parts) <= limit or True:",
        ("tests/test_targets.py",),
    ),
    Mutant(
        "within_size: no slope bisection",
        "onnxcompress/planning/ladder.py",
        "budget: int, steps: int = 8, light",
        "budget: int, steps: int = 0, light",
        ("tests/test_plan.py",),
    ),
    Mutant(
        "search_error: no refinement",
        "onnxcompress/planning/ladder.py",
        "refine: int = 4,",
        "refine: int = 0,",
        ("tests/test_plan.py",),
    ),
    Mutant(
        "compare --tolerance judged at 10x",
        "onnxcompress/cli.py",
        "if error > args.tolerance:",
        "if error > args.tolerance * 10:",
        ("tests/test_cli.py",),
    ),
    Mutant(
        "JSON report without outputs",
        "onnxcompress/pipeline/report.py",
        'd["ratio"] = self.ratio',
        'd["ratio"] = self.ratio\n        d["outputs"] = []',
        ("tests/test_report.py",),
    ),
    Mutant(
        "NAME@K keys read as one feed",
        "onnxcompress/runtime/verify.py",
        "name, k = (m.group(1), int(m.group(2))) if m else (key, 0)",
        "name, k = (m.group(1), 0) if m else (key, 0)",
        ("tests/test_verify.py", "tests/test_report.py"),
    ),
    Mutant(
        "demo: the 'after' accuracy of the original",
        "onnxcompress/cli.py",
        "accuracy(output, pixels, labels)",
        "accuracy(example_model(), pixels, labels)",
        ("tests/test_cli.py",),
    ),
    Mutant(
        "binned k-means: no Lloyd polish",
        "onnxcompress/encoding/codebook.py",
        "polish_rounds: int = 2,",
        "polish_rounds: int = 0,",
        ("tests/test_encode.py",),
    ),
    Mutant(
        "randomized SVD: no power iterations",
        "onnxcompress/encoding/lowrank.py",
        "POWER_ITERATIONS = 5",
        "POWER_ITERATIONS = 0",
        ("tests/test_lowrank.py",),
    ),
    Mutant(
        "--method auto: a pair at 3x the codebook's error",
        "onnxcompress/planning/fixed.py",
        "got.rel_error <= budget * (1 + 1e-6)",
        "got.rel_error <= budget * 3",
        ("tests/test_lowrank.py",),
    ),
    Mutant(
        "compensation damping 0.3",
        "onnxcompress/encoding/compensate.py",
        "DAMPING = 0.01",
        "DAMPING = 0.3",
        ("tests/test_compensate.py",),
    ),
    Mutant(
        "unary and Reduce ops read as non-data inputs",
        "onnxcompress/io/select.py",
        '    "ReduceSumSquare": {1},\n}',
        '    "ReduceSumSquare": {1},\n'
        + f"    **{{op: {{0}} for op in {tuple(UNARY_OPS)!r}}},\n"
        + f"    **{{op: {{0, 1}} for op in {tuple(REDUCE_OPS.split())!r}}},\n}}",
        ("tests/test_select.py",),
    ),
    Mutant(
        "bit planes moved up by one bit too many",
        "onnxcompress/graph/decode.py",
        '_shift(b, x, "LEFT", f"up{offset}", [offset])',
        '_shift(b, x, "LEFT", f"up{offset}", [offset + 1])',
        ("tests/test_decode.py",),
    ),
    Mutant(
        "8-bit indices made INT32 by a Cast (hot in onnxruntime-web's V8)",
        "onnxcompress/graph/decode.py",
        "if cb.bits == 8 and opset >= INT32_BY_PRODUCT_OPSET:",
        "if cb.bits == 8 and opset >= 99:",
        ("tests/test_decode.py",),
    ),
    Mutant(
        "float16 weights read through a Cast again (hot in onnxruntime-web's V8)",
        "onnxcompress/graph/halves.py",
        "return opset >= INT32_BY_PRODUCT_OPSET and numpy_dtype(onnx_dtype) is not None",
        "return opset >= 99 and numpy_dtype(onnx_dtype) is not None",
        ("tests/test_halves.py",),
    ),
    Mutant(
        "the float16 table's negative values one place off",
        "onnxcompress/graph/halves.py",
        "return np.where(bits < 0x8000, bits, bits - 1024)",
        "return np.where(bits < 0x8000, bits, bits - 1023)",
        ("tests/test_halves.py",),
    ),
    Mutant(
        "graph outputs typed from a shapeless value_info",
        "onnxcompress/graph/rewrite.py",
        "                v.type.CopyFrom(declared[v.name])",
        "                pass",
        ("tests/test_compress.py",),
    ),
    Mutant(
        "size bisection stops when a midpoint repeats an end",
        "onnxcompress/planning/ladder.py",
        "        if p.choices == low.choices:\n            a = mid\n"
        "        elif p.choices == high.choices:\n            b = mid\n        else:\n            return p",
        "        return None if p.choices in (low.choices, high.choices) else p",
        ("tests/test_plan.py",),
    ),
    Mutant(
        "C core: no boundary fix pass",
        "native/kmeans1d.c",
        "for (int pass = 0, moved = 1; moved && pass < 64; pass++) {",
        "for (int pass = 0, moved = 1; moved && pass < 0; pass++) {",
        ("tests/test_kmeans.py",),
    ),
    Mutant(
        "bit planes combined in uint8 for onnxruntime 1.16",
        "onnxcompress/graph/decode.py",
        "UINT8_ADD_MIN_ORT = (1, 21)",
        "UINT8_ADD_MIN_ORT = (1, 16)",
        ("tests/test_compat.py",),
    ),
    Mutant(
        "codebooks per long channel along the short axis",
        "onnxcompress/planning/candidates.py",
        "axis = max((0, 1), key=lambda ax: a.size // a.shape[ax])",
        "axis = min((0, 1), key=lambda ax: a.size // a.shape[ax])",
        ("tests/test_plan.py",),
    ),
    Mutant(
        "made-up inputs: sizing the last axis alone sizes every unknown",
        "onnxcompress/runtime/synthesize.py",
        "elif axis == 0 or (last_only and axis != rank - 1):",
        "elif axis == 0:",
        ("tests/test_synthesize.py",),
    ),
    Mutant(
        "a covariance kept as its factor loses the matrix's shrinkage",
        "onnxcompress/encoding/compensate.py",
        "d = self.features",
        "d = 1",
        ("tests/test_memory.py", "tests/test_compensate.py"),
    ),
    Mutant(
        "lookup tables: the columns' levels offset by k - 1",
        "onnxcompress/graph/lookup.py",
        'out["offsets"] = gs.Constant(f"{name}::column_first_level", (np.arange(cb.shape[1], dtype=np.int32) * k))',
        'out["offsets"] = gs.Constant(f"{name}::column_first_level", (np.arange(cb.shape[1], dtype=np.int32) * (k - 1)))',
        ("tests/test_lookup.py",),
    ),
    Mutant(
        "decoders: a codebook of fewer levels than 2^bits repeated to 256 as if whole",
        "onnxcompress/graph/decode.py",
        'return single_plane and cb.layout in ("tensor", "scaled") and cb.centroids.shape[-1] == 1 << cb.bits',
        'return single_plane and cb.layout in ("tensor", "scaled")',
        ("tests/test_decode.py",),
    ),
    Mutant(
        "lookup tables: a plane's values left at its low bits",
        "onnxcompress/graph/lookup.py",
        "        if offset:\n",
        "        if False:\n",
        ("tests/test_lookup.py",),
    ),
    Mutant(
        "--max-ram: a held tensor counted at its smallest option",
        "onnxcompress/planning/ladder.py",
        "        return max(o.ram for o in options)",
        "        return min(o.ram for o in options)",
        ("tests/test_max_ram.py",),
    ),
    Mutant(
        "--max-ram alone takes the smallest plan",
        "onnxcompress/planning/plan.py",
        'target, best = "", plans[-1]',
        'target, best = "", plans[0]',
        ("tests/test_max_ram.py",),
    ),
    Mutant(
        "report: a lookup table's RAM is its float size",
        "onnxcompress/pipeline/report.py",
        'if stored.get(e.site.name) == "rows" or e.blocks is not None:',
        "if e.blocks is not None:",
        ("tests/test_report.py", "tests/test_max_ram.py"),
    ),
    Mutant(
        "integer blocks: INT8 offered for onnxruntime 1.24.4",
        "onnxcompress/graph/decode.py",
        "BLOCKS_MIN_ORT = {4: (1, 24, 4), 8: (1, 32)}",
        "BLOCKS_MIN_ORT = {4: (1, 24, 4), 8: (1, 24, 4)}",
        ("tests/test_blocks.py",),
    ),
    Mutant(
        "integer blocks: every candidate taken as fused",
        "onnxcompress/runtime/fusion.py",
        'return {site.name for site in sites if not any(name.startswith(f"{site.name}::decode.") for name in left)}',
        "return {site.name for site in sites}",
        ("tests/test_blocks.py",),
    ),
    Mutant(
        "integer blocks: the largest magnitude one step past the grid",
        "onnxcompress/encoding/blocks.py",
        "    top = (1 << (bits - 1)) - 1\n    grid =",
        "    top = 1 << (bits - 1)\n    grid =",
        ("tests/test_blocks.py",),
    ),
    Mutant(
        "attention masks: the written model verified on every row",
        "onnxcompress/pipeline/stages.py",
        "compare(ref.names, ref.outputs, candidate, ref.kinds, ref.feeds, margins=True)",
        "compare(ref.names, ref.outputs, candidate, ref.kinds, margins=True)",
        ("tests/test_padding.py",),
    ),
    Mutant(
        "attention masks: ids entering a Gather as indices taken for a mask",
        "onnxcompress/runtime/outputs.py",
        'if node.op_type in MASK_STEPS and (node.op_type != "Gather" or node.input[0] == value):',
        "if node.op_type in MASK_STEPS:",
        ("tests/test_padding.py",),
    ),
    Mutant(
        "--load-peak: a lighter option may be more distorted",
        "onnxcompress/planning/ladder.py",
        "if o.load < now.load and o.distortion <= plan.choices[name].distortion",
        "if o.load < now.load",
        ("tests/test_load_peak.py",),
    ),
    Mutant(
        "--load-peak: further bit planes cost nothing at load",
        "onnxcompress/graph/decode.py",
        'LOAD_PER_EXTRA_PLANE = {"int32": 14.0, "uint8": 6.0}',
        'LOAD_PER_EXTRA_PLANE = {"int32": 0.0, "uint8": 0.0}',
        ("tests/test_load_peak.py",),
    ),
    Mutant(
        "embedding measure: against compressed rows instead of the original ones",
        "onnxcompress/runtime/similarity.py",
        "anchors = ua[picks].astype(np.float32).T",
        "anchors = ub[picks].astype(np.float32).T",
        ("tests/test_outputs.py",),
    ),
    Mutant(
        "embedding measure: only each row against its own original",
        "onnxcompress/runtime/similarity.py",
        "worst = max(worst, float(np.abs(block).max(initial=0.0)))",
        "worst = worst",
        ("tests/test_outputs.py", "tests/test_padding.py"),
    ),
    Mutant(
        "margins: probabilities compared unlogged",
        "onnxcompress/runtime/margins.py",
        "        sa, sb = np.log(np.maximum(sa, _FLOOR)), np.log(np.maximum(sb, _FLOOR))",
        "        pass",
        ("tests/test_margins.py",),
    ),
    Mutant(
        "margins: the note also where decisions near the boundary were tested",
        "onnxcompress/pipeline/summary.py",
        "0 < d.margin_shift < d.margin_nearest",
        "0 < d.margin_shift",
        ("tests/test_margins.py",),
    ),
    Mutant(
        "few rows: an embedding measured over 20 rows gets no note",
        "onnxcompress/pipeline/summary.py",
        "few = [d for d in outputs if 0 < d.rows < FEW_ROWS]",
        "few = [d for d in outputs if 0 < d.rows < 8]",
        ("tests/test_outputs.py",),
    ),
]


def copy_repository(dest: Path) -> None:
    """The files git tracks, the untracked ones it does not ignore, and the built core."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT, capture_output=True, check=True
    ).stdout.decode()
    for rel in filter(None, listed.split("\0")):
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    for built in (ROOT / "onnxcompress").glob("_kmeans_native*.so"):
        shutil.copy2(built, dest / "onnxcompress" / built.name)


def build_core(copy: Path) -> Path:
    """Compile the copy's C core; the interpreter's own suffix is looked up before .abi3.so."""
    with tempfile.TemporaryDirectory() as build:
        shutil.copytree(copy / "native", Path(build) / "native")
        subprocess.run([sys.executable, "native/build_kmeans.py", "."], cwd=build, capture_output=True, check=True)
        (so,) = Path(build, "onnxcompress").glob("_kmeans_native*.so")
        target = copy / "onnxcompress" / so.name
        shutil.copy2(so, target)
        return target


def run_tests(copy: Path, tests: list[str]) -> tuple[str, str]:
    """('killed', first failing test) or ('survived', '') or ('timeout', '')."""
    env = {**os.environ, "PYTHONPATH": str(copy), "PYTHONDONTWRITEBYTECODE": "1"}
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
    try:
        out = subprocess.run(cmd, cwd=copy, env=env, capture_output=True, text=True, timeout=RUN_SECONDS)
    except subprocess.TimeoutExpired:
        return "timeout", ""
    if out.returncode == 0:
        return "survived", ""
    if out.returncode in (3, 4, 5):  # internal error, bad usage, nothing collected: not a kill
        return "error", f"pytest exit {out.returncode}: {out.stdout.strip().splitlines()[-1:]}"
    failed = re.search(r"^(?:FAILED|ERROR) (\S+)", out.stdout, re.MULTILINE)
    return "killed", failed.group(1) if failed else f"pytest exit {out.returncode}: {out.stdout.strip().splitlines()[-1:]}"


def check_copy_is_imported(copy: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(copy)}
    where = subprocess.run(
        [sys.executable, "-c", "import onnxcompress; print(onnxcompress.__file__)"],
        cwd=copy,
        env=env,
        capture_output=True,
        text=True,
    ).stdout.strip()
    if not where.startswith(str(copy)):
        sys.exit(f"mutants: the copy is not what Python imports ({where}); run from a checkout with the package built")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-k", default="", help="only mutants whose name contains this")
    ap.add_argument("--quick", action="store_true", help="run only each mutant's likely tests")
    ap.add_argument("--list", action="store_true", help="list the mutants and stop")
    ap.add_argument("--tests", nargs="+", metavar="PATH", help="run these tests instead of each mutant's likely ones")
    args = ap.parse_args()
    chosen = [m for m in MUTANTS if args.k.lower() in m.name.lower()]
    if args.list:
        for m in chosen:
            print(f"{m.name}  ({m.path}; first {', '.join(m.tests)})")
        return 0
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp)
        copy_repository(copy)
        check_copy_is_imported(copy)
        for m in chosen:
            t0 = time.perf_counter()
            target = copy / m.path
            original = target.read_text()
            if original.count(m.old) != 1:
                rows.append((m.name, "stale", f"its text occurs {original.count(m.old)} times in {m.path}", 0.0))
                continue
            target.write_text(original.replace(m.old, m.new))
            built = build_core(copy) if m.path.endswith(".c") else None
            try:
                first = args.tests or [t for t in m.tests if (copy / t).exists()] or ["tests"]
                result, by = run_tests(copy, first)
                if result == "survived":
                    result, by = ("survived (quick)", "") if args.quick else run_tests(copy, [])
            finally:
                target.write_text(original)
                if built is not None:
                    built.unlink()
            rows.append((m.name, result, by, time.perf_counter() - t0))
            print(f"{result:>16}  {m.name}  {by}  ({rows[-1][3]:.0f} s)", flush=True)
    print("\n| mutant | result | first failing test | seconds |\n|---|---|---|---|")
    for name, result, by, seconds in rows:
        print(f"| {name} | {result} | {by} | {seconds:.0f} |")
    survivors = [r for r in rows if r[1] != "killed"]
    print(f"\n{len(rows) - len(survivors)} of {len(rows)} killed" + (f"; not killed: {len(survivors)}" if survivors else ""))
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main())
