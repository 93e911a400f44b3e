"""Step 7: what was done, as tables for people and JSON for machines."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

from .verify import OutputDiff


@dataclass
class TensorReport:
    name: str
    shape: list[int]
    consumers: list[str]
    bits: int
    layout: str
    method: str  # k-means: exact or binned
    bytes_before: int
    bytes_after: int  # packed indices plus codebook
    rel_error: float  # ||W - W'|| / ||W||
    seconds: float
    indices: str = "uint8"  # how the indices are stored: uint8, planes, uint4 or uint2


@dataclass
class Report:
    model: str
    output: str | None
    settings: dict
    tensors: list[TensorReport] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)
    file_bytes_before: int = 0
    file_bytes_after: int = 0
    seconds: float = 0.0
    outputs: list[OutputDiff] = field(default_factory=list)
    verified: bool = False

    @property
    def ratio(self) -> float:
        return self.file_bytes_before / self.file_bytes_after if self.file_bytes_after else 0.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ratio"] = self.ratio
        return d

    def write_json(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1) + "\n")

    def render(self, console: Console | None = None) -> None:
        console = console or make_console()
        t = Table(title=f"Compressed tensors ({len(self.tensors)})", title_justify="left")
        for col, just in [
            ("tensor", "left"),
            ("shape", "left"),
            ("used by", "left"),
            ("bits", "right"),
            ("k-means", "left"),
            ("before", "right"),
            ("after", "right"),
            ("weight error", "right"),
        ]:
            t.add_column(col, justify="left" if just == "left" else "right", overflow="fold", no_wrap=col != "tensor")
        for r in sorted(self.tensors, key=lambda r: -r.bytes_before):
            t.add_row(
                r.name,
                "x".join(map(str, r.shape)),
                ",".join(r.consumers),
                f"{r.bits} {r.layout}",
                r.method,
                human(r.bytes_before),
                human(r.bytes_after),
                f"{r.rel_error:.2e}",
            )
        console.print(t)
        if self.skipped:
            s = Table(title=f"Left alone ({len(self.skipped)})", title_justify="left")
            s.add_column("tensor", overflow="fold")
            s.add_column("shape")
            s.add_column("why")
            for item in self.skipped:
                s.add_row(item["name"], "x".join(map(str, item["shape"])), item["reason"])
            console.print(s)
        if self.outputs:
            o = Table(title="Outputs, original vs compressed", title_justify="left")
            for col in ("output", "max abs error", "relative L2", "cosine"):
                o.add_column(col, justify="left" if col == "output" else "right")
            for d in self.outputs:
                o.add_row(d.name, f"{d.max_abs:.3e}", f"{d.rel_l2:.3e}", f"{d.cosine:.6f}")
            console.print(o)
        where = f"\nwrote {self.output}" if self.output else ""
        console.print(
            f"[bold]{human(self.file_bytes_before)} -> {human(self.file_bytes_after)}[/bold] "
            f"({self.ratio:.2f}x smaller) in {self.seconds:.1f} s{where}"
        )


def make_console(stderr: bool = False) -> Console:
    """A console at least 120 columns wide: piped output keeps whole tables."""
    probe = Console(stderr=stderr)
    return Console(stderr=stderr, width=None if probe.is_terminal else max(probe.width, 140))


def human(n: int) -> str:
    value = float(n)
    for unit in ("B", "KB", "MB"):
        if abs(value) < 1000:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} GB"
