"""One dataclass per option group drives both the CLI flags and compress()'s keywords."""

from __future__ import annotations

import argparse
import dataclasses

import pytest
from models import ALL

from onnxcompress import compress
from onnxcompress.cli import _compress_parser
from onnxcompress.errors import CompressError
from onnxcompress.options import (
    OPTION_GROUPS,
    CodebookOptions,
    LowRankOptions,
    add_arguments,
    groups_from_args,
    groups_from_kwargs,
)


def test_every_field_is_a_flag_with_the_same_default():
    args = _compress_parser().parse_args(["m.onnx"])
    groups = groups_from_args(args)
    for cls in OPTION_GROUPS:
        assert groups[cls] == cls(), cls


def test_flags_reach_the_option_groups():
    args = _compress_parser().parse_args(
        ["m.onnx", "--bits", "3", "--granularity", "group:64", "--no-verify", "--min-elements", "10", "--opset", "13"]
    )
    groups = groups_from_args(args)
    cb = groups[CodebookOptions]
    assert (cb.bits, cb.granularity, cb.group_size()) == (3, "group:64", 64)
    flat = {k: v for g in groups.values() for k, v in vars(g).items()}
    assert flat["verify"] is False and flat["min_elements"] == 10 and flat["opset"] == 13


def test_keywords_are_validated_like_flags():
    with pytest.raises(CompressError, match="--bits"):
        groups_from_kwargs({"bits": 0})
    with pytest.raises(CompressError, match="group:N"):
        groups_from_kwargs({"granularity": "group:1"})
    with pytest.raises(CompressError, match="only one"):
        groups_from_kwargs({"rank": 4, "energy": 0.9})
    with pytest.raises(CompressError, match=r"--energy must be in \(0, 1\]"):
        groups_from_kwargs({"energy": 1.5})
    with pytest.raises(CompressError, match="--rank must be at least 1"):
        groups_from_kwargs({"rank": 0})
    with pytest.raises(CompressError, match=r"--exclude takes one regular expression, not a list; join names with \|"):
        groups_from_kwargs({"exclude": ["a", "b"]})
    # every option is documented where Python users look for it
    import onnxcompress

    names = {f.name for cls in OPTION_GROUPS for f in dataclasses.fields(cls)}
    assert names == {n for n in names if n in (onnxcompress.compress.__doc__ or "")}
    assert {"bits", "method", "rank", "energy", "svd", "verify"} <= names


def test_float_and_optional_flags():
    p = argparse.ArgumentParser()
    add_arguments(p)
    args = p.parse_args(["--method", "lowrank", "--energy", "0.95", "--svd", "full"])
    low = groups_from_args(args)[LowRankOptions]
    assert (low.energy, low.rank, low.svd) == (0.95, None, "full")
    assert low.energy_target() == 0.95 and low.fixed_rank(100) is None
    assert LowRankOptions(rank_ratio=0.25).fixed_rank(10) == 2  # 2.5 rounds to even
    assert LowRankOptions(rank=500).fixed_rank(64) == 64
    assert LowRankOptions().energy_target() == 0.99


@pytest.mark.parametrize(
    "options,message",
    [
        ({"method": "lowrank", "rank": 4, "energy": 0.9}, "--rank and --energy both set the rank; pass only one"),
        ({"max_error": 0.01, "ratio": 4.0}, "--max-error and --ratio are two targets; pass only one"),
        ({"max_error": 0.01, "target_size": 1.0, "ratio": 4.0}, "--max-error and --target-size and --ratio are two targets"),
    ],
)
def test_flags_that_exclude_each_other_are_one_clear_error(options, message):
    with pytest.raises(CompressError, match=message):
        compress(ALL["matmul"](), min_elements=64, verify=False, **options)
