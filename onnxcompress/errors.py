"""The one error type users see: a one-line message naming the problem and what to do."""


class CompressError(Exception):
    """Bad input or an impossible request. The command line prints it as one line and exits 2."""


def first_line(e: BaseException, limit: int = 160) -> str:
    """The first line of an exception's message (or its type), cut to `limit` characters."""
    text = str(e).strip()
    return text.splitlines()[0][:limit] if text else type(e).__name__


class VerificationError(Exception):
    """The compressed model failed to load or run in onnxruntime (exit code 1)."""


class TargetError(VerificationError):
    """A --max-error, --target-size or --ratio target cannot be met (exit code 1)."""
