"""The one error type users see: a one-line message naming the problem and what to do."""


class CompressError(Exception):
    """Bad input or an impossible request. The command line prints it as one line and exits 2."""


class VerificationError(Exception):
    """The compressed model failed to load or run in onnxruntime (exit code 1)."""
