"""The builder: a recipe made into a model. Each chosen weight is encoded (or taken from the
decision's trials, encoded.Encoder) and the graph rewritten: pairs first (their factors become
weights), then every codebook's decoder (the factors' too) and every float16 weight's."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import onnx

from ..encoding.blocks import Blocks
from ..encoding.codebook import Codebook
from ..encoding.encoded import EncodedWeight, Encoder
from ..graph.rewrite import default_opset, rewrite_graph
from ..graph.rewrite_lowrank import rewrite_pairs
from ..io.select import WeightSite
from ..progress import Progress
from ..recipe import Recipe


@dataclass
class BuiltModel:
    model: onnx.ModelProto
    encoded: list[EncodedWeight]  # in the recipe's order
    stored: dict[str, str]  # how each codebook's indices are stored, by weight name


def build(
    source: onnx.ModelProto,
    recipe: Recipe,
    sites: dict[str, WeightSite],
    encoder: Encoder,
    target_ort: tuple[int, ...] = (1, 16),
    progress: Progress = False,
) -> BuiltModel:
    encoded = encoder.encode([(sites[name], c) for name, c in recipe.encoded().items()], progress)
    model, stored = assemble(source, encoded, target_ort)
    return BuiltModel(model, encoded, stored)


def assemble(
    model: onnx.ModelProto, encoded: list[EncodedWeight], target_ort: tuple[int, ...] = (1, 16)
) -> tuple[onnx.ModelProto, dict[str, str]]:
    """The rewritten model, and how each codebook's indices are stored, by weight name."""
    pairs = [(e.site, e.pair) for e in encoded if e.pair is not None]
    out = rewrite_pairs(model, pairs, default_opset(model)) if pairs else model
    codebooks: list[tuple[WeightSite, Codebook | Blocks]] = [(e.site, e.codebook) for e in encoded if e.codebook is not None]
    codebooks += [factor for e in encoded for factor in e.factors or []]
    codebooks += [(e.site, e.blocks) for e in encoded if e.blocks is not None]
    halves = [(e.site, e.half) for e in encoded if e.half is not None]
    if not codebooks and not halves:
        return out, {}
    return rewrite_graph(out, codebooks, target_ort, halves)


class LastBuild:
    """build() that keeps its latest result: a planner asks for the same recipe's model again
    (its size, then its measurement, then the result), and each build rewrites the graph."""

    def __init__(
        self,
        source: onnx.ModelProto,
        sites: dict[str, WeightSite],
        encoder: Encoder,
        target_ort: tuple[int, ...],
        progress: Progress = False,
    ) -> None:
        self.make = partial(build, source, sites=sites, encoder=encoder, target_ort=target_ort, progress=progress)
        self.last: tuple[dict, BuiltModel] | None = None

    def __call__(self, recipe: Recipe) -> BuiltModel:
        if self.last is None or self.last[0] != recipe.choices:
            self.last = (dict(recipe.choices), self.make(recipe))
        return self.last[1]
