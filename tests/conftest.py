"""Hypothesis runs derandomized here: the README's test command gives the same examples on every
run and machine, so a red run is never luck. Random exploration, at ten times the examples,
is .ci/sanitize's job (ONNXCOMPRESS_HYPOTHESIS=explore)."""

from __future__ import annotations

import os

from hypothesis import settings

settings.register_profile("repeatable", derandomize=True, database=None, print_blob=True)
settings.register_profile("explore", derandomize=False, print_blob=True)
settings.load_profile(os.environ.get("ONNXCOMPRESS_HYPOTHESIS", "repeatable"))
