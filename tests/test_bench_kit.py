"""The benchmarks' model kit (benchmarks/fetch_models.py, benchmarks/kit/): what can be checked
without downloading anything. The inputs are made from fonts and photos; here the fonts are
matplotlib's own and the photos are drawn, so the builders' shapes, scaling and determinism
are checked, not the wheels' contents."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))

from kit import inputs, sources  # noqa: E402


@pytest.fixture(scope="module")
def font_assets(tmp_path_factory):
    import matplotlib

    fonts = tmp_path_factory.mktemp("assets") / "fonts"
    fonts.mkdir()
    for name in ("DejaVuSans.ttf", "DejaVuSerif.ttf", "DejaVuSansMono.ttf"):
        (fonts / name).symlink_to(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / name)
    return fonts.parent


def test_text_lines_are_rendered_at_height_48_scaled_and_right_padded(font_assets):
    feed, labels = inputs.ppocrv6_rec_small(font_assets, n=12)
    x = feed["x"]
    assert x.shape[:3] == (12, 3, 48) and x.dtype == np.float32
    assert x.min() >= -1.0 and x.max() <= 1.0
    assert len(labels["texts"]) == 12 and all(labels["texts"])
    # the narrowest line ends in zero padding; the widest fills the batch
    widths = [int(np.flatnonzero(np.abs(line).sum(axis=(0, 1)) > 0).max()) + 1 for line in x]
    assert min(widths) < x.shape[3] and max(widths) == x.shape[3]
    again, _ = inputs.ppocrv6_rec_small(font_assets, n=12)
    assert np.array_equal(again["x"], x)


def test_line_texts_mix_every_kind():
    texts = inputs.line_texts(12)
    assert any("/" in t for t in texts) and any(t.startswith("+") for t in texts) and any("-" in t for t in texts)
    assert texts == inputs.line_texts(12) and texts != inputs.line_texts(12, seed=12)


def test_face_crops_are_48_pixels_scaled_like_facenet(tmp_path):
    from PIL import Image

    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for name in [*inputs.FACES, *inputs.BACKGROUNDS]:
        Image.fromarray(rng.integers(0, 256, (420, 500, 3), dtype=np.uint8)).save(images / name)
    feed, labels = inputs.mtcnn_onet(tmp_path, per_face=4, backgrounds=5)
    assert feed["input"].shape == (3 * 4 + 5, 3, 48, 48)
    assert labels["is_face"] == [1] * 12 + [0] * 5
    assert -1.0 <= feed["input"].min() and feed["input"].max() <= 127.5 / 128


@pytest.mark.skipif(inputs.espeak_missing() is not None, reason="espeak-ng is not installed")
def test_speech_is_framed_as_silero_reads_a_clip():
    feed, labels = inputs.silero_vad_seq(Path("."))
    blocks = feed["input"]
    assert blocks.shape[1] == inputs.FRAME + inputs.CONTEXT and feed["h"].shape == (1, 1, 128)
    # each frame starts with the last 64 samples of the one before
    assert np.array_equal(blocks[1, : inputs.CONTEXT], blocks[0, -inputs.CONTEXT :])
    inside = inputs.speech_frames(len(blocks), labels)
    assert 0.3 < inside.mean() < 0.9  # utterances with pauses between them


def test_an_unknown_model_name_is_a_one_line_error():
    done = subprocess.run(
        [sys.executable, str(BENCH / "fetch_models.py"), "resnet", "--cache", "/nonexistent"], capture_output=True, text=True
    )
    assert done.returncode == 2 and "no model named resnet" in done.stderr and "Traceback" not in done.stderr


def test_every_model_names_a_pinned_wheel():
    for spec in sources.MODELS.values():
        assert spec.wheel in sources.WHEELS and "==" in spec.wheel


def test_a_run_on_some_models_keeps_the_others_rows(tmp_path):
    """--keep-others: the models run replace their rows, the rest come from the earlier JSON."""
    from harness import with_earlier_rows, write_json

    earlier = tmp_path / "load.json"
    write_json([{"model": "a", "v": 1}, {"model": "b", "v": 1}, {"model": "c", "v": 1}], earlier)
    rows = with_earlier_rows([{"model": "b", "v": 2}], earlier, ["a", "b", "c"])
    assert rows == [{"model": "a", "v": 1}, {"model": "b", "v": 2}, {"model": "c", "v": 1}]
    assert with_earlier_rows([{"model": "b", "v": 2}], tmp_path / "none.json", ["a", "b"]) == [{"model": "b", "v": 2}]


def test_keep_others_without_earlier_results_is_refused(tmp_path, capsys):
    from harness import missing_earlier

    assert missing_earlier(tmp_path / "plan.json", keep_others=True)
    assert "no earlier results" in capsys.readouterr().err
    assert not missing_earlier(tmp_path / "plan.json", keep_others=False)
    (tmp_path / "plan.json").write_text("[]")
    assert not missing_earlier(tmp_path / "plan.json", keep_others=True)
