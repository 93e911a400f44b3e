"""onnx's own operator test cases, every large float input made a weight, compressed with
every setting: the result passes the checker, loads, and matches the decoded-weights model
(see tests/conformance.py). About 40 s."""

from __future__ import annotations

import pytest

from conformance import SETTINGS, summary, sweep


@pytest.mark.slow
def test_every_operator_case_passes_or_is_skipped_with_a_reason():
    tally = sweep()
    assert not tally.failed, summary(tally)
    # the sweep reached every consumer kind: most settings compress hundreds of cases
    assert all(tally.passed[label] > 0 for label in SETTINGS), summary(tally)
    assert sum(tally.passed.values()) > 2000, summary(tally)
    assert all(reason for _, reason in tally.skipped), "every skip says why"
