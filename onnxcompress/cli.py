"""The command line.

    onnxcompress MODEL.onnx [-o OUT] [options]   compress (writes MODEL.compressed.onnx)
    onnxcompress inspect MODEL.onnx              what each bit width would give; writes nothing
    onnxcompress compare ORIGINAL COMPRESSED     run both and compare their outputs
    onnxcompress demo                            compress the bundled example and show accuracy

Exit codes: 0 done, 1 the compressed model failed to load or run, or missed its target
(--max-error, --target-size, --ratio, compare's --tolerance), 2 bad input.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn

from rich.markup import escape
from rich.table import Table
from rich.text import Text

from ._version import __version__
from .errors import OnnxCompressError
from .options import METRIC_NAMES, SelectOptions, add_arguments, groups_from_args
from .pipeline.report import make_console, render_outputs

EPILOG = """other commands:
  onnxcompress inspect MODEL.onnx   list the candidate weights and what 1..8 bits would give
  onnxcompress compare A.onnx B.onnx [--inputs FILE.npz] [--tolerance E]
                                    run both models and compare every output
  onnxcompress demo                 compress the bundled example model and compare accuracy

exit codes: 0 done; 1 the compressed model failed to load or run in onnxruntime, or a target
(--max-error, --target-size, --ratio, compare --tolerance) was not met; 2 bad input"""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {"inspect": _inspect, "compare": _compare, "demo": _demo}
    try:
        if argv and argv[0] in commands:
            return commands[argv[0]](argv[1:])
        return _compress(argv)
    except OnnxCompressError as e:
        print_error(str(e), e.what)
        return e.exit_code
    except KeyboardInterrupt:
        return 130


def print_error(message: str, what: str = "error") -> None:
    """One line on stderr; the message as it is (escaped: "[n]" in a shape is not markup)."""
    make_console(stderr=True).print(
        f"[bold red]onnxcompress: {what}:[/bold red] {escape(message)}", highlight=False, soft_wrap=True
    )


@contextmanager
def one_line_errors() -> Iterator[None]:
    """Argument errors without the usage line (the notebook magic: the cell shows one line)."""
    _Parser.usage_line = False
    try:
        yield
    finally:
        _Parser.usage_line = True


class _Parser(argparse.ArgumentParser):
    """A bad flag gets one short usage line and the error, not the whole usage (16 lines for
    the main command)."""

    usage_line = True

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.add_argument("-v", "--verbose", action="store_true", help="also show onnxruntime's own log messages")

    def parse_args(self, args=None, namespace=None):  # type: ignore[override]
        parsed = super().parse_args(args, namespace)
        _onnxruntime_logs(parsed.verbose)
        return parsed

    def error(self, message: str) -> NoReturn:
        positionals = " ".join(a.metavar or a.dest.upper() for a in self._actions if not a.option_strings)
        usage = f"usage: {self.prog} {positionals} [options]".replace("  ", " ")
        if not _Parser.usage_line:
            print_error(f"{message} ({self.prog} --help lists the options)")
            self.exit(2)
        self.exit(2, f"{usage}   ({self.prog} --help lists them)\n{self.prog}: error: {message}\n")


def _onnxruntime_logs(verbose: bool) -> None:
    """onnxruntime's own log lines (coloured, several per failure) reach the terminal only with
    -v; without it, only fatal ones: our one-line error says what went wrong and what to do."""
    import onnxruntime as ort

    ort.set_default_logger_severity(2 if verbose else 4)


def _compress_parser(prog: str = "onnxcompress", with_model: bool = True) -> argparse.ArgumentParser:
    p = _Parser(
        prog=prog,
        description="Make an ONNX model much smaller: k-means codebooks with packed indices, decoded by "
        "standard ONNX nodes that stock onnxruntime folds at load; low-rank pairs that also cut compute; "
        "or a target (--max-error, --target-size, --ratio) that a planner meets per tensor.",
        epilog=EPILOG if with_model else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"onnxcompress {__version__}")
    if with_model:
        p.add_argument("model", type=Path, help="the .onnx model to compress (never modified)")
    p.add_argument("-o", "--output", type=Path, help="where to write (default: MODEL.compressed.onnx beside the input)")
    p.add_argument("--force", action="store_true", help="replace an existing output file")
    p.add_argument("--report", type=Path, metavar="FILE.json", help="also write the report as JSON")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the summary line")
    add_arguments(p)
    return p


def _compress(argv: list[str]) -> int:
    args = _compress_parser().parse_args(argv)
    output = args.output or args.model.with_name(args.model.stem + ".compressed.onnx")
    return _run_compress(args, args.model, output)


def _run_compress(args: argparse.Namespace, model, output) -> int:
    from .api import compress

    groups = groups_from_args(args)
    kwargs = {k: v for opts in groups.values() for k, v in vars(opts).items()}
    result = compress(model, output, force=args.force, report_json=args.report, progress=not args.quiet, **kwargs)
    console = make_console()
    if args.quiet:
        r = result.report
        console.print(f"{r.file_bytes_before} -> {r.file_bytes_after} bytes ({r.ratio:.2f}x) in {r.seconds:.1f} s")
    else:
        result.report.render(console)
    return 0


def _inspect(argv: list[str]) -> int:
    from .api import inspect

    p = _Parser(
        prog="onnxcompress inspect",
        description="List the weights onnxcompress would compress and "
        "what each bit width would give (bytes, relative weight error). Writes nothing.",
    )
    p.add_argument("model", type=Path)
    p.add_argument("--kmeans", choices=["auto", "exact", "binned"], default="auto", help="as for compressing")
    add_arguments(p, (SelectOptions,))
    args = p.parse_args(argv)
    sel = {f.name: getattr(args, f.name) for f in dataclasses.fields(SelectOptions)}
    candidates, selection = inspect(args.model, kmeans=args.kmeans, **sel)
    console = make_console()
    t = Table(
        title=f"{args.model}: {len(candidates)} candidate weights (bytes after / relative weight error)", title_justify="left"
    )
    t.add_column("tensor", overflow="fold")
    t.add_column("shape")
    t.add_column("used by")
    t.add_column("bytes", justify="right")
    for bits in (8, 6, 4, 3, 2, 1):
        t.add_column(f"{bits} bits", justify="right")
    for c in sorted(candidates, key=lambda c: -c.bytes):
        t.add_row(
            Text(c.name),  # plain text: a name like layer[0] is not markup
            "x".join(map(str, c.shape)),
            ",".join(c.consumers),
            f"{c.bytes:,}",
            *[f"{c.by_bits[b][0]:,} / {c.by_bits[b][1]:.1e}" for b in (8, 6, 4, 3, 2, 1)],
        )
    console.print(t)
    for s in selection.skipped:
        console.print(f"left alone: {s.name} {list(s.shape)}: {s.reason}", markup=False, highlight=False)
    return 0


def _compare(argv: list[str]) -> int:
    from .api import compare_models
    from .runtime.verify import error_of

    p = _Parser(
        prog="onnxcompress compare",
        description="Run two models in onnxruntime on the same inputs and compare every output "
        "(max abs error, relative L2 error, cosine similarity, top-1 agreement for class scores).",
    )
    p.add_argument("original", type=Path)
    p.add_argument("compressed", type=Path)
    p.add_argument("--inputs", type=Path, metavar="FILE.npz", help="inputs (name -> array, or NAME@K keys); default: synthesized")
    p.add_argument("--seed", type=int, default=0, help="seed for synthesized inputs")
    p.add_argument("--tolerance", type=float, metavar="E", help="exit 1 when the error (see --metric) is above E")
    p.add_argument("--metric", choices=list(METRIC_NAMES), default="task", help="what --tolerance bounds (default: task)")
    p.add_argument(
        "--output-kind", metavar="NAME=KIND[,...]", help="what an output is where the graph does not say it, or ignore"
    )
    args = p.parse_args(argv)
    diffs = compare_models(args.original, args.compressed, args.inputs, args.seed, args.output_kind)
    error = error_of(diffs, args.metric) if args.tolerance is not None else None
    render_outputs(diffs, make_console())
    if error is not None:
        verdict = "within" if error <= args.tolerance else "above"
        make_console().print(f"{args.metric} error {error:.4g}: {verdict} the tolerance {args.tolerance:g}", highlight=False)
        if error > args.tolerance:
            return 1
    return 0


def _demo(argv: list[str]) -> int:
    import numpy as np

    from .demo import accuracy, example_data, example_model

    p = _compress_parser("onnxcompress demo", with_model=False)
    p.description = "Compress the bundled digits MLP, verify it on its 360 held-out images, and compare accuracy."
    args = p.parse_args(argv)
    pixels, labels = example_data()
    with tempfile.TemporaryDirectory() as tmp:
        inputs = Path(tmp) / "inputs.npz"
        np.savez(inputs, pixels=pixels)
        if args.inputs is None:
            args.inputs = inputs
        output = args.output or Path(tmp) / "digits_mlp.compressed.onnx"
        _run_compress(args, example_model(), output)
        before, after = accuracy(example_model(), pixels, labels), accuracy(output, pixels, labels)
        make_console().print(
            f"accuracy on {len(labels)} held-out digits: [bold]{before:.2%} -> {after:.2%}[/bold]"
            + ("" if args.output else "  (pass -o PATH to keep the compressed model)")
        )
    return 0
