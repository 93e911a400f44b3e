"""What can go wrong, for users: one base class, each kind with its command-line exit code
and a one-line message naming the problem and what to do."""


class OnnxCompressError(Exception):
    """Base of every error onnxcompress raises on purpose. The command line prints
    "onnxcompress: <what>: <message>" as one line and exits with `exit_code`."""

    exit_code = 1
    what = "error"


class CompressError(OnnxCompressError):
    """Bad input or an impossible request."""

    exit_code = 2


class VerificationError(OnnxCompressError):
    """The compressed model failed to load or run in onnxruntime."""

    what = "verification failed"


class TargetError(OnnxCompressError):
    """A --max-error, --target-size or --ratio target cannot be met."""

    what = "target not met"


def first_line(e: BaseException, limit: int = 160) -> str:
    """The first line of an exception's message (or its type), cut to `limit` characters."""
    text = str(e).strip()
    return text.splitlines()[0][:limit] if text else type(e).__name__
