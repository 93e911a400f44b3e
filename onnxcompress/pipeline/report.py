"""What was done, as tables for people and JSON for machines."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from ..encoding.encoded import EncodedWeight, weight_bytes
from ..encoding.lowrank import multiply_adds
from ..runtime.verify import OutputDiff
from .summary import (
    against_eight_bits,
    few_rows,
    fixed_load,
    heavy_load,
    human,
    load_bound_cost,
    load_line,
    ram_line,
    too_few_decisions,
    too_few_inputs,
    untested_decisions,
)


@dataclass
class TensorReport:
    name: str
    shape: list[int]
    consumers: list[str]
    encoding: str  # codebook, lowrank, lowrank+kmeans, blocks or float16
    bits: int | None  # codebook bits (of the factors under lowrank+kmeans); None for a float pair
    layout: str | None  # tensor, channel or group:N
    method: str | None  # k-means: exact or binned
    rank: int | None  # of the pair
    full_rank: int | None
    bytes_before: int
    bytes_after: int  # packed indices plus codebooks, or the two factors
    rel_error: float  # ||W - W'|| / ||W||
    seconds: float
    indices: str | None = "uint8"  # uint8, planes, uint4, uint2, rows (lookup.py), int8/int4 blocks, table (float16)
    macs_before: int = 0  # multiply-adds per output row or position of its consumers (0 for a Gather)
    macs_after: int = 0
    note: str = ""  # why it took another encoding than asked for
    # what onnxruntime holds for it once loaded: codebooks and float16 fold back into the
    # weight's own type (bench_resident.py), a pair's factors stay as floats of their size, a
    # lookup table decoded after each lookup keeps its packed rows (graph/lookup.py)
    ram_after: int = 0

    @classmethod
    def of(cls, e: EncodedWeight, stored: dict[str, str], note: str = "") -> TensorReport:
        """One encoded weight's row; `stored`: how each codebook's indices are stored, by name;
        `note`: why it took another encoding than asked for."""
        site = e.site
        first = e.codebook or (e.factors[0][1] if e.factors else None)
        ops = [c.op_type for c in site.consumers]
        kind = e.pair.kind if e.pair is not None else "matrix"
        macs_before = sum(multiply_adds(site.array.shape, kind, op) for op in ops)
        macs_after = sum(multiply_adds(e.pair, kind, op) for op in ops) if e.pair is not None else macs_before
        names = [e.site.name] + [f.name for f, _ in e.factors or []]
        return cls(
            name=site.name,
            shape=list(site.array.shape),
            consumers=site.consumer_ops,
            encoding=e.encoding,
            bits=first.bits if first else e.blocks.bits if e.blocks else None,
            layout=_layout(first, site) if first else f"blocks:{e.blocks.block}" if e.blocks else None,
            method=first.method if first else e.blocks.method if e.blocks else None,
            rank=e.pair.rank if e.pair is not None else None,
            full_rank=e.pair.full_rank if e.pair is not None else None,
            bytes_before=weight_bytes(site),
            bytes_after=e.stored_bytes(),
            rel_error=e.rel_error,
            indices=",".join(sorted({stored[n] for n in names if n in stored})) or None,
            macs_before=macs_before,
            macs_after=macs_after,
            seconds=e.seconds,
            note=note,
            ram_after=ram_after(e, stored),
        )

    def describe(self) -> str:
        """How it is stored: 8 tensor, rank 64/384, rank 64/384, 8 tensor, or float16."""
        if self.encoding == "float16":
            return "float16"
        rank = f"rank {self.rank}/{self.full_rank}" if self.rank is not None else ""
        codebook = f"{self.bits} {self.layout}" if self.bits is not None else ""
        return ", ".join(p for p in (rank, codebook) if p)


def ram_after(e: EncodedWeight, stored: dict[str, str]) -> int:
    """What onnxruntime holds for an encoded weight once loaded (see TensorReport.ram_after)."""
    if stored.get(e.site.name) == "rows" or e.blocks is not None:
        return e.stored_bytes()
    if e.pair is not None:
        return e.pair.stored_bytes()
    return weight_bytes(e.site)


def _layout(cb, site) -> str:
    """group:N, a channel layout along another axis than the weight's own channels (an
    embedding's columns: "channel axis 1"), or the layout's name."""
    if cb.layout == "group":
        return f"group:{cb.group_size}"
    if cb.layout == "channel" and cb.shape == tuple(site.array.shape) and cb.axis != site.channel_axis() % len(cb.shape):
        return f"channel axis {cb.axis}"
    return cb.layout


# onnxruntime's default optimization.constant_folding_max_output_size_in_bytes (1.27 and later)
FOLDING_CAP_BYTES = 1 << 30


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
    verified_unfolded: bool = False  # verified with graph optimizations off (a model over 1 GB)
    plan: dict | None = None  # what the planner aimed at, measured and built (see plan.make_plan)

    @property
    def ratio(self) -> float:
        return self.file_bytes_before / self.file_bytes_after if self.file_bytes_after else 0.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ratio"] = self.ratio
        return d

    def write_json(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1) + "\n")

    def tensor_rows(self) -> tuple[list[str], list[list[str]]]:
        """The per-tensor table, largest first, as text cells: (header, rows). The terminal
        table and the notebook widgets both show it."""
        factored = any(r.rank is not None for r in self.tensors)
        header = ["tensor", "shape", "used by", "encoding", "k-means", "before", "after", "in RAM", "weight error"]
        header += ["multiply-adds"] if factored else []
        rows = []
        for r in sorted(self.tensors, key=lambda r: -r.bytes_before):
            row = [r.name, "x".join(map(str, r.shape)), ",".join(r.consumers), r.describe(), r.method or "-"]
            row += [human(r.bytes_before), human(r.bytes_after), human(r.ram_after), f"{r.rel_error:.2e}"]
            rows.append(row + ([_compute_change(r)] if factored else []))
        return header, rows

    def skipped_rows(self) -> tuple[list[str], list[list[str]]]:
        """The weights left alone and why, as text cells: (header, rows)."""
        return ["tensor", "shape", "why"], [[s["name"], "x".join(map(str, s["shape"])), s["reason"]] for s in self.skipped]

    def render(self, console: Console | None = None) -> None:
        console = console or make_console()
        t = Table(title=f"Compressed tensors ({len(self.tensors)})", title_justify="left")
        header, rows = self.tensor_rows()
        for col in header:
            left = col in ("tensor", "shape", "used by", "k-means")
            t.add_column(col, justify="left" if left else "right", overflow="fold", no_wrap=col != "tensor")
        for row in rows:
            t.add_row(*map(Text, row))  # plain text: a name like layer[0] is not markup
        console.print(t)
        if self.tensors:
            before, after = sum(r.bytes_before for r in self.tensors), sum(r.ram_after for r in self.tensors)
            console.print(
                f"in RAM once loaded: {human(after)} (before: {human(before)}); of these, only lookup tables, integer "
                "blocks and low-rank pairs stay smaller",
                markup=False,
                highlight=False,
            )
        factored = any(r.rank is not None for r in self.tensors)
        notes = [r for r in self.tensors if r.note]
        for r in notes[:8]:
            console.print(
                f"codebook instead of a pair: {r.name}: {r.note.removesuffix('; codebook instead')}",
                markup=False,
                highlight=False,
            )
        if len(notes) > 8:
            console.print(f"... and {len(notes) - 8} more codebooks instead of pairs (see the JSON report)")
        if factored:
            before = sum(r.macs_before for r in self.tensors if r.rank is not None)
            after = sum(r.macs_after for r in self.tensors if r.rank is not None)
            console.print(
                f"factored weights: {sum(r.rank is not None for r in self.tensors)}; multiply-adds per row of their "
                f"consumers {before:,} -> {after:,}",
                highlight=False,
            )
        if self.skipped:
            s = Table(title=f"Left alone ({len(self.skipped)})", title_justify="left")
            header, rows = self.skipped_rows()
            for col in header:
                s.add_column(col, overflow="fold" if col == "tensor" else "ellipsis")
            for row in rows:
                s.add_row(*map(Text, row))
            console.print(s)
        render_outputs(self.outputs, console)
        if note := unchanged_outputs(self.outputs, self.tensors):
            console.print(Text(note, style="yellow"))
        if note := over_folding_cap(self.tensors):
            console.print(Text(note, style="yellow"))
        if note := blocks_note(self.tensors):
            console.print(Text(note, style="yellow"))
        if self.verified_unfolded:
            console.print(
                "verified with onnxruntime's graph optimizations off (a model over 1 GB: folding the decoders at load "
                "would hold them all at once; the outputs come from the same ops)",
                highlight=False,
            )
        if self.plan:
            p = self.plan
            bits: dict[str, int] = {}
            for r in self.tensors:
                bits[r.describe()] = bits.get(r.describe(), 0) + 1
            mix = ", ".join(f"{n} x {label}" for label, n in sorted(bits.items(), key=lambda kv: -kv[1]))
            kept = sum(1 for s in self.skipped if "plan keeps" in s["reason"])
            console.print(
                f"plan for {p['target']}: measured {p['measured']:.3g}; {mix}"
                + (f", {kept} kept in float" if kept else "")
                + f"; {len(p['candidates'])} candidates measured, {p['seconds']:.1f} s"
                + against_eight_bits(p)
                + ram_line(p)
                + load_line(p),
                highlight=False,
            )
            if warning := too_few_inputs(p):
                console.print(Text(warning, style="yellow"))
            notes = (
                heavy_load(p, self.file_bytes_before),
                load_bound_cost(p),
                too_few_decisions(self.outputs, p, self.settings.get("metric")),
                untested_decisions(self.outputs),
                few_rows(self.outputs, p, self.settings.get("metric")),
            )
        else:
            notes = (fixed_load(self.tensors, self.settings, self.file_bytes_before), untested_decisions(self.outputs))
        for note in filter(None, notes):
            console.print(Text(note, style="yellow"))
        where = f"\nwrote {escape(str(self.output))}" if self.output else ""
        console.print(
            f"[bold]{human(self.file_bytes_before)} -> {human(self.file_bytes_after)}[/bold] "
            f"({self.ratio:.2f}x smaller) in {self.seconds:.1f} s{where}"
        )


def unchanged_outputs(outputs: list[OutputDiff], tensors: list[TensorReport]) -> str | None:
    """The warning for outputs that did not move at all although weights did: the inputs
    probably never reached those weights (made-up inputs can take a model's fallback path: the
    If-branch voice detector at 256 samples), so the verification says nothing about them."""
    if not outputs or any(d.max_abs != 0 for d in outputs) or not any(r.rel_error > 0 for r in tensors):
        return None
    return (
        "warning: no output changed at all on these inputs, though the weights did: the inputs may not reach "
        "the compressed weights (made-up inputs can take a model's fallback path); verify with real ones (--inputs)"
    )


def over_folding_cap(tensors: list[TensorReport]) -> str | None:
    """The note for codebooks whose decode nodes output more than onnxruntime's constant-folding
    cap (their INT32 indices are 4 bytes a value, as much as a float32 weight or more): from
    1.27 such a node is not folded at load, so the weight decodes at every call."""
    over = [r for r in tensors if r.encoding == "codebook" and 4 * math.prod(r.shape) > FOLDING_CAP_BYTES]
    if not over:
        return None
    listed = ", ".join(f"{r.name} ({human(4 * math.prod(r.shape))})" for r in over[:3]) + (" ..." if len(over) > 3 else "")
    return (
        f"note: {listed} decode to more than onnxruntime's constant-folding cap (1 GB by default from 1.27): there "
        "they are not folded at load and decode at every call; raise the session option "
        "optimization.constant_folding_max_output_size_in_bytes to fold them"
    )


def blocks_note(tensors: list[TensorReport]) -> str | None:
    """The note for integer blocks: onnxruntime runs them in MatMulNBits, which by default also
    rounds the activations to int8 (1.32), so their error depends on the runtime's kernel."""
    names = [r.name for r in tensors if r.encoding == "blocks"]
    if not names:
        return None
    return (
        f"note: {len(names)} weights are integer blocks, which onnxruntime runs in its MatMulNBits kernel; by default "
        "that also rounds the activations to int8 (session option session.qdq_matmulnbits_accuracy_level), and the "
        "errors above were measured so, in this onnxruntime: check the result in the runtime you deploy to"
    )


def output_rows(outputs: list[OutputDiff]) -> tuple[list[str], list[list[str]]]:
    """The differences per output as text cells: (header, rows), with what each output is, the
    measure its kind reads (what --max-error bounds by default) and its value, a top-1
    column where an output is or looks like class scores, and the decisions that flipped for
    probabilities. The terminal table and the widgets both show it."""
    top1 = any(d.top1 is not None for d in outputs)
    flips = any(d.flips is not None for d in outputs)
    header = ["output", "kind", "task measure", "task error", "max abs error", "relative L2", "cosine"]
    header += (["top-1 agreement"] if top1 else []) + (["decisions flipped"] if flips else [])
    rows = []
    for d in outputs:
        row = [d.name, d.kind, d.measure, f"{d.task:.3e}", f"{d.max_abs:.3e}", f"{d.rel_l2:.3e}", f"{d.cosine:.6f}"]
        row += ["" if d.top1 is None else f"{d.top1:.2%}"] if top1 else []
        rows.append(row + (["" if d.flips is None else f"{d.flips:.2%}"] if flips else []))
    return header, rows


def render_outputs(outputs: list[OutputDiff], console: Console) -> None:
    if not outputs:
        return
    o = Table(title="Outputs, original vs compressed", title_justify="left")
    header, rows = output_rows(outputs)
    for col in header:
        o.add_column(col, justify="left" if col in ("output", "kind", "task measure") else "right")
    for row in rows:
        o.add_row(*map(Text, row))
    console.print(o)


def _compute_change(r: TensorReport) -> str:
    if r.rank is None:
        return ""
    if r.macs_before == 0:  # a Gather becomes a lookup plus a small MatMul
        return f"+{r.macs_after:,} a row"
    return (
        f"{r.macs_before / r.macs_after:.2f}x fewer"
        if r.macs_after < r.macs_before
        else f"{r.macs_after / r.macs_before:.2f}x more"
    )


def make_console(stderr: bool = False) -> Console:
    """A console at least 120 columns wide: piped output keeps whole tables."""
    probe = Console(stderr=stderr)
    return Console(stderr=stderr, width=None if probe.is_terminal else max(probe.width, 140))
