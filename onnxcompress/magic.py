"""The command line in a notebook: `%load_ext onnxcompress`, then

    %onnxcompress model.onnx --bits 4 -o small.onnx
    %onnxcompress compare model.onnx small.onnx --inputs x.npz
    %onnxcompress inspect model.onnx

Every argument and subcommand of `onnxcompress`; the report's tables render in the notebook
(rich draws them as HTML there), and a bad argument or bad input shows as one line, never a
traceback or the usage text."""

from __future__ import annotations

import shlex
from typing import Any

from . import cli


def load_ipython_extension(ipython: Any) -> None:
    """Registers %onnxcompress (IPython calls this on `%load_ext onnxcompress`)."""
    ipython.register_magic_function(onnxcompress_magic, "line", "onnxcompress")


def onnxcompress_magic(line: str) -> None:
    """%onnxcompress ARGS: `onnxcompress ARGS` in this kernel."""
    try:
        argv = shlex.split(line)
    except ValueError as e:  # an unclosed quote
        cli.print_error(f"cannot read the arguments ({e})")
        return
    with cli.one_line_errors():
        try:
            cli.main(argv)
        except SystemExit:  # argparse has printed its one line (or --help, --version their text)
            pass
