"""The sha256 of each compressed file, for checking that a refactor changed no output:

    python benchmarks/hash_outputs.py [--cache DIR] > after.txt
    python benchmarks/hash_outputs.py --repo ../before > before.txt   # another checkout, its C core built
    diff before.txt after.txt

The bundled digits MLP and the four real models (fetch_models.py), each at 8 bits, 4 bits per
channel, --method auto and --max-error 0.01 with its inputs, through the command line of the
checkout given (verification off: it does not change the file).
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from harness import DEFAULT_CACHE, MISSING

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = [["--bits", "8"], ["--bits", "4", "--granularity", "channel"], ["--method", "auto"], ["--max-error", "0.01"]]
REAL = ["mtcnn_onet", "silero_vad_seq", "ppocrv6_rec_small", "minilm_l6"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    ap.add_argument("--repo", type=Path, default=ROOT, help="the checkout whose onnxcompress runs (default: this one)")
    args = ap.parse_args(argv)
    root = args.repo.resolve()
    with tempfile.TemporaryDirectory() as tmp:
        digits_inputs = Path(tmp) / "digits.npz"
        with np.load(root / "onnxcompress" / "examples" / "digits_test.npz") as d:
            np.savez(digits_inputs, pixels=d["pixels"])
        models = {"digits_mlp": (root / "onnxcompress" / "examples" / "digits_mlp.onnx", digits_inputs)}
        for name in REAL:
            model, inputs = args.cache / "models" / f"{name}.onnx", args.cache / "inputs" / f"{name}.npz"
            if model.exists() and inputs.exists():
                models[name] = (model, inputs)
            else:
                print(f"# {name}: not in {args.cache} ({MISSING}); skipped", file=sys.stderr)
        for name, (model, inputs) in models.items():
            for setting in SETTINGS:
                extra = ["--inputs", str(inputs)] if "--max-error" in setting else []
                out = Path(tmp) / "out.onnx"
                cmd = [sys.executable, "-m", "onnxcompress", str(model), "-o", str(out), "--force", "-q", "--no-verify"]
                subprocess.run([*cmd, *setting, *extra], check=True, cwd=root, capture_output=True)
                digest = hashlib.sha256(out.read_bytes()).hexdigest()[:16]
                print(f"{name} {' '.join(setting)}: {digest} {out.stat().st_size}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
