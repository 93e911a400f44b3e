"""The package's layers (docs/development.md): no module imports one of a layer above it, so
the planner cannot reach the builder and the encoders cannot reach the graph or onnxruntime."""

from __future__ import annotations

import ast
from pathlib import Path

import onnxcompress

PACKAGE = Path(onnxcompress.__file__).parent
SHARED = {"_version", "errors", "options", "progress", "threads", "memory", "dtypes", "recipe", "_kmeans_native"}
# bottom to top; the package top's other modules (api, cli, widgets, plots, demo) are the faces
LAYERS = ["io", "encoding", "graph", "runtime", "planning", "pipeline"]


def layer_of(dotted: str) -> int:
    """0 for the shared pieces, 1.. for the folders, above them all for the faces."""
    first = dotted.split(".")[0]
    if first in SHARED:
        return 0
    if first in LAYERS:
        return 1 + LAYERS.index(first)
    return 1 + len(LAYERS)


def imports_of(path: Path) -> list[str]:
    """The package modules `path` imports, as dotted names under the package."""
    own = path.relative_to(PACKAGE).with_suffix("").parts
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level > 0:
            base = list(own[: len(own) - node.level])
            target = base + (node.module.split(".") if node.module else [])
            if node.module is None:
                found += [".".join(base + [a.name]) for a in node.names]
            else:
                found.append(".".join(target))
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("onnxcompress."):
            found.append(node.module.removeprefix("onnxcompress."))
    return found


def test_no_module_imports_a_layer_above_its_own():
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        own = ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
        if own.startswith("examples"):
            continue
        for target in imports_of(path):
            if target and layer_of(target) > layer_of(own):
                upward.append(f"{own} -> {target}")
    assert not upward, upward


def test_the_check_sees_an_upward_import(tmp_path):
    """The reader finds relative imports at each depth (a check that reads nothing passes)."""
    sample = PACKAGE / "planning" / "plan.py"
    targets = imports_of(sample)
    assert "planning.ladder" in targets and "encoding.encoded" in targets and "errors" in targets
    assert layer_of("pipeline.build") > layer_of("planning.plan") > layer_of("encoding.codebook") > layer_of("recipe")
