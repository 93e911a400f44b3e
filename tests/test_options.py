"""One dataclass per option group drives both the CLI flags and compress()'s keywords."""

from __future__ import annotations

import dataclasses

import pytest

from onnxcompress.cli import _compress_parser
from onnxcompress.errors import CompressError
from onnxcompress.options import OPTION_GROUPS, CodebookOptions, groups_from_args, groups_from_kwargs


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
    names = {f.name for cls in OPTION_GROUPS for f in dataclasses.fields(cls)}
    assert {
        "bits",
        "granularity",
        "codebook_dtype",
        "kmeans",
        "min_elements",
        "include",
        "exclude",
        "target_ort",
        "opset",
        "verify",
        "inputs",
        "seed",
    } == names
