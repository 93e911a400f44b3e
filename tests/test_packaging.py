"""The package as pip sees it: `python -m build` makes the sdist from a copy of the tracked
files, then the wheel from that sdist (as pip does when no wheel fits), so a file the sdist
lacks fails here. Needs the registry for the build's own environment (setuptools, cffi)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent


def _tracked_copy(dest: Path) -> Path:
    """The checkout's tracked files only (no build products, no venvs), as a fresh clone has."""
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout.split(b"\0")
    for name in filter(None, (n.decode() for n in listed)):
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if (ROOT / name).is_file():
            shutil.copy2(ROOT / name, target)
    return dest


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, Path]:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs a git checkout to know the tracked files")
    source = _tracked_copy(tmp_path_factory.mktemp("source"))
    out = tmp_path_factory.mktemp("dist")
    run = subprocess.run([sys.executable, "-m", "build", "--outdir", str(out), str(source)], capture_output=True, text=True)
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    (sdist,) = out.glob("*.tar.gz")
    (wheel,) = out.glob("*.whl")
    return sdist, wheel


def test_the_sdist_holds_what_building_needs(built):
    sdist, _ = built
    with tarfile.open(sdist) as tar:
        names = {Path(*Path(n).parts[1:]).as_posix() for n in tar.getnames()}
    assert {"native/build_kmeans.py", "native/kmeans1d.c", "native/kmeans1d.h", "setup.py", "LICENSE"} <= names
    assert "onnxcompress/examples/digits_mlp.onnx" in names
    assert {"labextension/src/index.ts", "labextension/install.json", "onnxcompress/labextension/package.json"} <= names


def test_the_wheel_built_from_the_sdist_is_abi3_and_holds_the_core_and_the_license(built):
    _, wheel = built
    assert "-cp310-abi3-" in wheel.name  # one wheel per platform for Python 3.10 and later
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        metadata = next(z.read(n).decode() for n in names if n.endswith(".dist-info/METADATA"))
    assert any(n.startswith("onnxcompress/_kmeans_native") for n in names)
    assert {"onnxcompress/py.typed", "onnxcompress/examples/digits_mlp.onnx"} <= set(names)
    assert "License-Expression: MIT" in metadata
    assert any(n.endswith("licenses/LICENSE") for n in names)


def test_the_wheel_installs_the_prebuilt_jupyterlab_extension(built):
    """Where JupyterLab and Notebook 7 find it: share/jupyter/labextensions/onnxcompress-jupyter
    in the environment (the wheel's .data/data folder), with its remote entry and install.json."""
    _, wheel = built
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
    shared = [n.split(".data/data/", 1)[1] for n in names if ".data/data/" in n]
    folder = "share/jupyter/labextensions/onnxcompress-jupyter/"
    assert {folder + "package.json", folder + "install.json"} <= set(shared)
    assert any(n.startswith(folder + "static/remoteEntry.") and n.endswith(".js") for n in shared)
