"""Compressed models on the onnxruntimes users deploy to: the oldest supported (1.16), a middle
one and the newest from the registry, each in its own virtual environment, and onnxruntime-node
and onnxruntime-web (its wasm build, run by node) from npm. Every decoder pattern, lookup
tables decoded after the lookup, integer blocks before a MatMul (opset 21), low-rank pairs,
float16, a plan, weights in Constant nodes and in If branches; each run with onnxruntime's
default options (every decoder must fold at load), with the constant-folding size cap lowered
below every decoded weight (1.27 and later: nothing folds and the decoders run at each call) and
with graph optimizations off. Outputs must match what this environment's onnxruntime computes
(integer blocks: stay as close to the original's as here, see error_here).

The environments are made on first use under ~/.cache/onnxcompress-compat (pip and npm from the
registries; about 60 s). Where they cannot be made the test is skipped with the reason, except
under .ci/run, which sets ONNXCOMPRESS_COMPAT=1 so that a missing runtime fails instead."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from models import ALL, columns_table, feed_for, low_rank_weight, matmul_chain

import onnxcompress as oc
from onnxcompress.planning.candidates import LONG_CHANNEL

pytestmark = [pytest.mark.slow, pytest.mark.compat]

HERE = Path(__file__).resolve().parent
CACHE = Path(os.environ.get("ONNXCOMPRESS_COMPAT_CACHE", Path.home() / ".cache" / "onnxcompress-compat"))
PYTHON_RUNTIMES = {"1.16.3": "onnxruntime==1.16.3", "1.24.4": "onnxruntime==1.24.4", "newest": "onnxruntime"}
NPM_PACKAGES = ["onnxruntime-node@1.31.1", "onnxruntime-web@1.31.1"]
CAP_BYTES = 64  # below every decoded weight here: under the cap nothing folds


def _per_column_table() -> tuple[onnx.ModelProto, dict]:
    model, _ = columns_table(LONG_CHANNEL)
    ids = np.random.default_rng(12).integers(0, LONG_CHANNEL, size=(16, 32)).astype(np.int64)
    return model, {"calibration": {"ids": ids}, "max_error": 0.01}


def _cases() -> dict[str, tuple[onnx.ModelProto, dict, tuple[int, ...]]]:
    """name: (original, compress() options, the oldest onnxruntime that must run it)."""
    x = np.random.default_rng(5).normal(size=(40, 256)).astype(np.float32)
    x21 = np.random.default_rng(6).normal(size=(16, 256)).astype(np.float32)
    blocks21 = matmul_chain("W", (256, 256), "V", (256, 64), "Sigmoid", 21)  # both MatMuls fuse (test_blocks.py)
    table, table_options = _per_column_table()
    return {
        "8-bit-tensor": (ALL["matmul"](), {"bits": 8}, (0,)),
        "3-bit-planes": (ALL["matmul"](), {"bits": 3}, (0,)),
        "3-bit-planes-in-uint8": (ALL["matmul"](), {"bits": 3, "target_ort": "1.21"}, (1, 21)),
        "2-bit-channel-conv": (ALL["conv"](), {"bits": 2, "granularity": "channel"}, (0,)),
        "3-bit-group-gemm": (ALL["gemm_transB"](), {"bits": 3, "granularity": "group:16"}, (0,)),
        "4-bit-scaled": (ALL["matmul"](), {"bits": 4, "granularity": "scaled"}, (0,)),
        "4-bit-uint4-opset21": (ALL["matmul"](), {"bits": 4, "opset": 21, "target_ort": "1.24.4"}, (1, 24, 4)),
        "lowrank-pair": (low_rank_weight(), {"method": "lowrank", "rank": 6}, (0,)),
        "lowrank-pair-8-bit": (low_rank_weight(), {"method": "lowrank+kmeans", "rank": 6}, (0,)),
        "plan-with-float16": (matmul_chain("A", (256, 192), "B", (192, 64)), {"max_error": 5e-4, "calibration": {"x": x}}, (0,)),
        "plan-per-column-table": (table, table_options, (0,)),
        "4-bit-lookup-rows": (ALL["embedding"](), {"bits": 4}, (0,)),
        "8-bit-lookup-scaled": (ALL["embedding"](), {"bits": 8, "granularity": "scaled"}, (0,)),
        "1-bit-lookup-channel-padded": (columns_table(512)[0], {"bits": 1, "granularity": "channel"}, (0,)),
        "7-bit-lookup-planes": (ALL["embedding"](), {"bits": 7}, (0,)),
        "3-bit-lookup-scaled-padded": (columns_table(512)[0], {"bits": 3, "granularity": "scaled"}, (0,)),
        "int4-blocks-plan": (blocks21, {"max_ram": "20%", "target_ort": "1.24.4", "calibration": {"x": x21}}, (1, 24, 4)),
        "int8-blocks-plan": (blocks21, {"max_ram": "40%", "target_ort": "1.32", "calibration": {"x": x21}}, (1, 32)),
        "constant-node": (ALL["constant_node"](), {"bits": 4}, (0,)),
        "if-branch": (ALL["if_branch"](), {"bits": 8}, (0,)),
        "if-branch-constants": (ALL["if_branch_constants"](), {"bits": 4}, (0,)),
        "lstm": (ALL["lstm"](), {"bits": 5}, (0,)),
    }


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> tuple[Path, dict[str, dict[str, np.ndarray]]]:
    """The cases written out (originals, compressed models, feeds as .npz and raw), and this
    environment's outputs of each compressed model."""
    folder = tmp_path_factory.mktemp("compat")
    cases, expected = [], {}
    for name, (model, options, min_ort) in _cases().items():
        feed = feed_for(model, seed=1) if "calibration" not in options else {k: v[:4] for k, v in options["calibration"].items()}
        result = oc.compress(model, min_elements=64, **options)
        original, compressed = folder / f"{name}.onnx", folder / f"{name}.compressed.onnx"
        onnx.save(model, original)
        onnx.save(result.model, compressed)
        np.savez(folder / f"{name}.feeds.npz", **feed)
        raw = {}
        for key, value in feed.items():
            value = np.ascontiguousarray(value)
            (folder / f"{name}.{key}.bin").write_bytes(value.tobytes())
            raw[key] = {"dtype": str(value.dtype), "shape": list(value.shape), "file": str(folder / f"{name}.{key}.bin")}
        cases.append(
            {
                "name": name,
                "original": str(original),
                "compressed": str(compressed),
                "feeds": str(folder / f"{name}.feeds.npz"),
                "feeds_raw": raw,
                "cap": CAP_BYTES,
                "min_ort": list(min_ort),
                # decoders, codebooks' or float16 weights' (a float pair has none)
                "decoders": any("::decode.Gather" in n.name for n in result.model.graph.node),
                # integer blocks run in MatMulNBits, whose kernels differ between onnxruntimes
                # (1.32 quantizes the activations to int8 by default): each runtime's outputs are
                # held to the error measured here against the original instead of to ours
                "error_here": _error(model, compressed, feed) if "blocks" in name else None,
            }
        )
        sess = ort.InferenceSession(str(compressed), providers=["CPUExecutionProvider"])
        expected[name] = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feed), strict=True))
    path = folder / "manifest.json"
    path.write_text(json.dumps({"cases": cases}, indent=1))
    return path, expected


def _error(model: onnx.ModelProto, compressed: Path, feed: dict) -> float:
    """The worst relative L2 error of the compressed model's outputs against the original's."""
    sources = (model.SerializeToString(), str(compressed))
    runs = [ort.InferenceSession(m, providers=["CPUExecutionProvider"]).run(None, feed) for m in sources]
    return max(_rel_l2(a, b) for a, b in zip(*runs, strict=True))


def _rel_l2(reference: np.ndarray, candidate: np.ndarray) -> float:
    return float(np.linalg.norm(candidate - reference) / (np.linalg.norm(reference) or 1.0))


def _unavailable(what: str, detail: str):
    message = f"{what} could not be set up here ({detail.strip().splitlines()[-1][:200] if detail.strip() else 'no output'})"
    if os.environ.get("ONNXCOMPRESS_COMPAT") == "1":
        pytest.fail(message)
    pytest.skip(message)


def _python_for(runtime: str) -> Path:
    """A virtual environment with this onnxruntime and numpy only, made once."""
    venv = CACHE / f"ort-{runtime}"
    python = venv / "bin" / "python"
    if (venv / "ready").exists():
        return python
    shutil.rmtree(venv, ignore_errors=True)
    made = subprocess.run([sys.executable, "-m", "venv", str(venv)], capture_output=True, text=True)
    if made.returncode != 0:
        _unavailable(f"a venv for onnxruntime {runtime}", made.stderr)
    numpy = "numpy<2" if runtime == "1.16.3" else "numpy"  # 1.16 was built against numpy 1.x
    pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", PYTHON_RUNTIMES[runtime], numpy]
    installed = subprocess.run(pip, capture_output=True, text=True)
    if installed.returncode != 0:
        _unavailable(f"onnxruntime {runtime}", installed.stderr)
    (venv / "ready").touch()
    return python


def _node_modules() -> Path:
    folder = CACHE / "npm"
    if (folder / "ready").exists():
        return folder / "node_modules"
    if shutil.which("node") is None or shutil.which("npm") is None:
        _unavailable("node and npm", "not on PATH")
    folder.mkdir(parents=True, exist_ok=True)
    # --ignore-scripts: onnxruntime-node's install script downloads from outside; its CPU
    # binaries are in the package
    npm = ["npm", "install", "--ignore-scripts", "--no-audit", "--no-fund", "--prefix", str(folder), *NPM_PACKAGES]
    installed = subprocess.run(npm, capture_output=True, text=True)
    if installed.returncode != 0:
        _unavailable("onnxruntime-node and onnxruntime-web", installed.stderr)
    (folder / "ready").touch()
    return folder / "node_modules"


def _check(results: dict, outputs_of, manifest: tuple[Path, dict], python: bool) -> None:
    """Every case ran (or was skipped for its onnxruntime version) under every setting, its
    compressed outputs match this environment's, and decoders folded exactly where they should."""
    path, expected = manifest
    cases = json.loads(path.read_text())["cases"]
    has_decoders = {case["name"]: case["decoders"] for case in cases}
    error_here = {case["name"]: case["error_here"] for case in cases}
    assert set(results["cases"]) == set(expected)
    failures: list[str] = []
    for name, settings in results["cases"].items():
        for setting, result in settings.items():
            status = result["status"]
            if status.startswith("skipped"):
                assert "needs onnxruntime" in status or "too old" in status or setting == "cap", (name, setting, status)
                continue
            if status != "ok":
                failures.append(f"{results['onnxruntime']}: {name} ({setting}): {status}")
                continue
            got = outputs_of(name, setting)
            if error_here[name] is not None:
                for output in expected[name]:
                    error = _rel_l2(got[f"original:{output}"], got[f"compressed:{output}"])
                    limit = 1.5 * error_here[name] + 1e-3
                    assert error <= limit, (results["onnxruntime"], name, setting, error, error_here[name])
                continue
            for output, want in expected[name].items():
                scale = float(np.abs(want).max()) or 1.0
                np.testing.assert_allclose(
                    got[f"compressed:{output}"], want, rtol=1e-4, atol=1e-5 * scale, err_msg=f"{name} {setting}"
                )
            if python and setting == "default":
                assert result["decode_nodes_kept"] == 0, f"{results['onnxruntime']}: {name}: decoders left unfolded at load"
            if python and setting == "cap" and has_decoders[name]:
                assert result["decode_nodes_kept"] > 0, f"{results['onnxruntime']}: {name}: folded under a {CAP_BYTES}-byte cap"
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("runtime", list(PYTHON_RUNTIMES))
def test_compressed_models_run_the_same_in_other_onnxruntimes(runtime, manifest, tmp_path):
    path, expected = manifest
    python = _python_for(runtime)
    ran = subprocess.run([str(python), str(HERE / "compat_run.py"), str(path), str(tmp_path)], capture_output=True, text=True)
    assert ran.returncode == 0, ran.stderr[-2000:]
    results = json.loads((tmp_path / "results.json").read_text())
    if runtime != "newest":
        assert results["onnxruntime"] == runtime
    _check(results, lambda name, setting: dict(np.load(tmp_path / f"{name}.{setting}.npz")), manifest, python=True)


def test_compressed_models_run_the_same_in_onnxruntime_node_and_web(manifest, tmp_path):
    path, expected = manifest
    modules = _node_modules()
    env = {**os.environ, "NODE_PATH": str(modules)}
    script = [str(HERE / "compat_node.cjs"), str(path), str(tmp_path)]
    ran = subprocess.run(["node", *script], capture_output=True, text=True, env=env)
    assert ran.returncode == 0, ran.stderr[-2000:]
    for runtime in ("node", "web"):
        results = json.loads((tmp_path / runtime / "results.json").read_text())

        def outputs_of(name: str, setting: str, runtime: str = runtime) -> dict[str, np.ndarray]:
            folder = tmp_path / runtime / f"{name}.{setting}"
            index = json.loads((folder / "index.json").read_text())
            return {
                key: np.frombuffer((folder / meta["file"]).read_bytes(), dtype=meta["dtype"]).reshape(meta["shape"])
                for key, meta in index.items()
            }

        _check(results, outputs_of, manifest, python=False)
