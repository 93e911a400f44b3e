"""Rebuilds the JupyterLab extension into onnxcompress/labextension (committed, so installing
onnxcompress never needs node): npm install, tsc, then JupyterLab's builder against the
installed jupyterlab's core packages. Run after changing anything here:

    python labextension/build.py

Needs node, npm and jupyterlab (the browser extra). Writes source.sha256 beside the build, which
tests/test_labextension.py holds against these sources: a change that was not rebuilt fails there.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BUILT = HERE.parent / "onnxcompress" / "labextension"
SOURCES = ["package.json", "tsconfig.json", "src/index.ts"]


def source_hash() -> str:
    digest = hashlib.sha256()
    for name in SOURCES:
        digest.update(name.encode() + b"\0" + (HERE / name).read_bytes() + b"\0")
    return digest.hexdigest()


def main() -> int:
    import jupyterlab

    core = Path(jupyterlab.__file__).parent / "staging"
    npm = ["npm", "install", "--no-audit", "--no-fund", "--ignore-scripts"]
    builder = ["node", "node_modules/@jupyterlab/builder/lib/build-labextension.js", "--core-path", str(core), "."]
    for command in (npm, ["npx", "tsc"], builder):
        subprocess.run(command, cwd=HERE, check=True)
    (BUILT / "source.sha256").write_text(source_hash() + "\n")
    print(f"built {BUILT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
