"""Pictures of a compression: weight error per tensor, a weight's histogram with its codebook,
and original against compressed outputs. Each function returns a matplotlib Figure built
without pyplot (no global state, no display backend), so notebooks, widgets and scripts can
show or save it as they like. Needs matplotlib (the `notebook` extra)."""

from __future__ import annotations

import io

import numpy as np
from matplotlib.figure import Figure

from .pipeline.report import Report

ENCODING_COLOURS = {"codebook": "#4C72B0", "lowrank": "#DD8452", "lowrank+kmeans": "#55A868", "float16": "#8172B3"}
MAX_BARS = 40  # past this many tensors the bar chart shows the largest ones
MAX_POINTS = 20_000  # a scatter of more points shows nothing more and renders slowly


def weight_error_figure(report: Report) -> Figure:
    """Relative weight error ||W - W'|| / ||W|| per compressed tensor, largest tensors on top,
    coloured by encoding."""
    tensors = sorted(report.tensors, key=lambda r: -r.bytes_before)[:MAX_BARS]
    fig = Figure(figsize=(7.5, 0.8 + 0.28 * max(len(tensors), 1)), layout="constrained")
    ax = fig.add_subplot()
    names = [f"{r.name}  ({r.describe()})" for r in tensors]
    errors = [max(r.rel_error, 1e-12) for r in tensors]
    ax.barh(range(len(tensors)), errors, color=[ENCODING_COLOURS.get(r.encoding, "grey") for r in tensors])
    ax.set_yticks(range(len(tensors)), names, fontsize=8)
    ax.invert_yaxis()
    if max(errors) > 100 * min(errors):  # spans decades: a log axis keeps the small ones visible
        ax.set_xscale("log")
    ax.set_xlabel("relative weight error  ||W - W'|| / ||W||")
    shown = "" if len(report.tensors) <= MAX_BARS else f" (largest {MAX_BARS} of {len(report.tensors)})"
    ax.set_title(f"Weight error per tensor{shown}", loc="left", fontsize=10)
    for encoding in sorted({r.encoding for r in tensors}):
        ax.bar(0, 0, color=ENCODING_COLOURS.get(encoding, "grey"), label=encoding)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(axis="x", alpha=0.3)
    return fig


def weight_histogram_figure(values: np.ndarray, centroids: np.ndarray | None, name: str, note: str = "") -> Figure:
    """A weight's values with the codebook's levels on top: one line per level for a
    per-tensor codebook, the distribution of all levels for per-channel or group codebooks."""
    fig = Figure(figsize=(7.5, 3.2), layout="constrained")
    ax = fig.add_subplot()
    flat = np.asarray(values, dtype=np.float64).ravel()
    flat = flat[np.isfinite(flat)]
    ax.hist(flat, bins=200, color="#9AA7B8", label=f"values ({flat.size:,})")
    if centroids is not None and centroids.size:
        levels = np.asarray(centroids, dtype=np.float64)
        if levels.shape[0] == 1:
            for i, level in enumerate(levels[0]):
                ax.axvline(level, color="#C44E52", lw=0.7, alpha=0.8, label=f"{levels.shape[1]} levels" if i == 0 else None)
        else:
            twin = ax.twinx()
            twin.hist(levels.ravel(), bins=200, histtype="step", color="#C44E52")
            twin.set_ylabel("levels", color="#C44E52")
            ax.plot([], [], color="#C44E52", label=f"{levels.size:,} levels in {levels.shape[0]:,} codebooks")
    ax.set_yscale("log")
    ax.set_xlabel("weight value")
    ax.set_ylabel("count")
    ax.set_title(f"{name}{'  ' + note if note else ''}", loc="left", fontsize=10)
    ax.legend(fontsize=8, loc="upper right")
    return fig


def outputs_figure(original: np.ndarray, compressed: np.ndarray, name: str, seed: int = 0) -> Figure:
    """Compressed against original output values (a sample of at most MAX_POINTS) beside the
    histogram of their differences."""
    a = np.asarray(original, dtype=np.float64).ravel()
    b = np.asarray(compressed, dtype=np.float64).ravel()
    fig = Figure(figsize=(9, 3.6), layout="constrained")
    scatter, errors = fig.subplots(1, 2)
    pick = np.random.default_rng(seed).choice(a.size, MAX_POINTS, replace=False) if a.size > MAX_POINTS else slice(None)
    scatter.scatter(a[pick], b[pick], s=3, alpha=0.4, color="#4C72B0", linewidths=0)
    if a.size:
        lo, hi = float(min(a.min(), b.min())), float(max(a.max(), b.max()))
        scatter.plot([lo, hi], [lo, hi], color="#C44E52", lw=0.8, label="equal")
        scatter.legend(fontsize=8, loc="upper left")
    sampled = "" if a.size <= MAX_POINTS else f" ({MAX_POINTS:,} of {a.size:,})"
    scatter.set_title(f"{name}: compressed vs original{sampled}", loc="left", fontsize=10)
    scatter.set_xlabel("original")
    scatter.set_ylabel("compressed")
    d = b - a
    errors.hist(d, bins=100, color="#55A868")
    errors.set_yscale("log")
    errors.set_title("compressed - original", loc="left", fontsize=10)
    errors.set_xlabel("difference")
    return fig


def png(fig: Figure, dpi: int = 96) -> bytes:
    """The figure as PNG bytes (for an ipywidgets Image, a file or a report)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()
