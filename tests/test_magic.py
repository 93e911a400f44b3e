"""%load_ext onnxcompress and %onnxcompress in a real IPython shell: the command line's arguments
and subcommands, the report's tables, and errors as one line (no traceback, no usage text)."""

from __future__ import annotations

import pytest

IPython = pytest.importorskip("IPython", reason="the magic runs in IPython (the notebook extra)")


@pytest.fixture(scope="module")
def shell():
    from IPython.core.interactiveshell import InteractiveShell

    ip = InteractiveShell.instance()
    ip.extension_manager.load_extension("onnxcompress")
    return ip


@pytest.fixture
def digits(tmp_path):
    from onnxcompress.demo import example_model

    return example_model()


def test_the_magic_compresses_with_the_command_lines_arguments(shell, digits, tmp_path, capsys):
    out = tmp_path / "small.onnx"
    shell.run_line_magic("onnxcompress", f"{digits} --bits 4 --granularity channel -o {out}")
    text = capsys.readouterr().out
    assert out.exists() and "Compressed tensors" in text and "4 channel" in text and "smaller" in text


def test_the_magic_runs_the_subcommands(shell, digits, tmp_path, capsys):
    out = tmp_path / "small.onnx"
    shell.run_line_magic("onnxcompress", f"{digits} --bits 8 -q -o {out}")
    shell.run_line_magic("onnxcompress", f"compare {digits} {out}")
    shell.run_line_magic("onnxcompress", f"inspect {digits}")
    text = capsys.readouterr().out
    assert "relative L2" in text and "candidate weights" in text


@pytest.mark.parametrize(
    "line, says",
    [
        ("{digits} --bits 0", "invalid choice"),
        ("missing.onnx", "missing.onnx"),
        ("{digits} --granularity 'group:", "cannot read the arguments"),
        ("compare {digits}", "required"),
    ],
)
def test_errors_show_as_one_line(shell, digits, capsys, line, says):
    shell.run_line_magic("onnxcompress", line.format(digits=digits))
    captured = capsys.readouterr()
    lines = [x for x in captured.err.strip().splitlines() if x.strip()]
    assert len(lines) == 1 and says in lines[0] and "usage:" not in captured.err and "Traceback" not in captured.err
    assert lines[0].startswith("onnxcompress:")
