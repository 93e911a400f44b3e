"""Runs inside another onnxruntime's virtual environment for tests/test_compat.py, with only numpy
and onnxruntime: every case of a manifest, original and compressed, under each session setting.

    python compat_run.py MANIFEST.json OUT_DIR

Settings: `default` (onnxruntime's own options: the decoders fold at load), `cap` (from 1.27
on, the constant-folding size cap lowered below every decoded weight: nothing folds, the
decoders run at each call) and `unfolded` (graph optimizations off). Writes OUT_DIR/NAME.SETTING.npz
(the outputs, `original:` and `compressed:` keys) and OUT_DIR/results.json: per case and setting,
"ok" or why not, and how many decode nodes the optimized graph kept (0: all folded)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort

CAP_KEY = "optimization.constant_folding_max_output_size_in_bytes"
CAP_SINCE = (1, 27)
SETTINGS = ("default", "cap", "unfolded")


def version() -> tuple[int, ...]:
    return tuple(int(p) for p in ort.__version__.split(".")[:3] if p.isdigit())


def options(setting: str, case: dict, optimized: Path | None) -> ort.SessionOptions:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if setting == "unfolded":
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if setting == "cap":
        so.add_session_config_entry(CAP_KEY, str(case["cap"]))
    if optimized is not None:
        so.optimized_model_filepath = str(optimized)
    return so


def decode_nodes(path: Path) -> int:
    """Decode nodes left in an optimized model file, counted without the onnx package: their
    names, `<weight>::decode.<Op>.<n>`, appear as strings in the protobuf."""
    return path.read_bytes().count(b"::decode.")


def run_case(case: dict, setting: str, out_dir: Path) -> dict:
    if version() < tuple(case.get("min_ort", [0])):
        return {"status": f"skipped: needs onnxruntime {'.'.join(map(str, case['min_ort']))}"}
    if setting == "cap" and version() < CAP_SINCE:
        return {"status": "skipped: no constant-folding cap before 1.27"}
    feeds = dict(np.load(case["feeds"]))
    outputs, kept = {}, None
    for role in ("original", "compressed"):
        optimized = None
        if role == "compressed" and setting != "unfolded":
            optimized = out_dir / f"{case['name']}.{setting}.optimized.onnx"
        try:
            sess = ort.InferenceSession(case[role], options(setting, case, optimized), providers=["CPUExecutionProvider"])
            for name, value in zip([o.name for o in sess.get_outputs()], sess.run(None, feeds), strict=True):
                outputs[f"{role}:{name}"] = value
        except Exception as e:  # noqa: BLE001 - reported per case, the suite goes on
            return {"status": f"error: {role}: {str(e).splitlines()[0][:300]}"}
        if optimized is not None and optimized.exists():
            kept = decode_nodes(optimized)
            optimized.unlink()
    np.savez(out_dir / f"{case['name']}.{setting}.npz", **outputs)
    return {"status": "ok", "decode_nodes_kept": kept}


def main(argv: list[str]) -> int:
    manifest, out_dir = json.loads(Path(argv[0]).read_text()), Path(argv[1])
    out_dir.mkdir(parents=True, exist_ok=True)
    results = {"onnxruntime": ort.__version__, "cases": {}}
    for case in manifest["cases"]:
        results["cases"][case["name"]] = {s: run_case(case, s, out_dir) for s in SETTINGS}
    (out_dir / "results.json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
