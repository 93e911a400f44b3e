"""The decision record (recipe.py) and the builder (pipeline/build.py): a recipe is data that
fixed settings and the planner emit; built from nothing it gives the same model, byte for byte,
as built with the decision's trial encodings."""

from __future__ import annotations

import numpy as np
import pytest
from models import low_rank_weight

from onnxcompress.encoding.encoded import Encoder
from onnxcompress.io.select import select_weights
from onnxcompress.options import CodebookOptions, LowRankOptions, SelectOptions
from onnxcompress.pipeline import stages
from onnxcompress.pipeline.build import build
from onnxcompress.planning.fixed import decide_fixed
from onnxcompress.recipe import AsCodebook, AsFloat16, AsPair, Keep, Recipe, describe


def two_layers():
    """W: rank 6 plus noise (a pair replaces it); V: full rank (only a codebook shrinks it)."""
    return low_rank_weight(256, 192, rank=6)


CASES = {
    "codebook 4 bits": ("codebook", {"bits": 4}, {}),
    "codebook 3 bits per channel": ("codebook", {"bits": 3, "granularity": "channel"}, {}),
    "lowrank rank 8": ("lowrank", {}, {"rank": 8}),
    "lowrank+kmeans rank 8": ("lowrank+kmeans", {}, {"rank": 8}),
    "auto": ("auto", {}, {}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_fixed_settings_recipe_built_from_nothing_is_the_same_model(case):
    method, cb_options, low_options = CASES[case]
    model = two_layers()
    weights = select_weights(model, SelectOptions(min_elements=64)).weights
    cb, low = CodebookOptions(**cb_options), LowRankOptions(svd="full", **low_options)
    trials = Encoder(cb, low)
    recipe = decide_fixed(weights, method, cb, low, trials)
    sites = {w.name: w for w in weights}
    decided = build(model, recipe, sites, trials).model
    fresh = build(model, recipe, sites, Encoder(cb, low)).model
    assert decided.SerializeToString() == fresh.SerializeToString()
    if method in ("lowrank", "lowrank+kmeans", "auto"):
        assert isinstance(recipe.choices["W"], AsPair), recipe.choices
    if method == "auto":  # V is full rank: no pair holds it within the codebook's error
        assert isinstance(recipe.choices["V"], AsCodebook)


def test_the_planners_recipe_built_from_nothing_is_the_same_model():
    model = two_layers()
    x = np.random.default_rng(0).normal(size=(64, 256)).astype(np.float32)
    s = stages.Settings.of({"min_elements": 64, "max_error": 0.02}, {"x": x})
    p = stages.prepare(model, None, False, None, s)
    ref = stages.reference_outputs(p, s, {"x": x})
    selection = stages.select(p, s)
    measured = stages.measure_inputs(p, s, selection, ref)
    decision = stages.decide(p, s, selection, ref, measured, False)
    assert set(decision.recipe.choices) == {"W", "V"}
    decided = decision.builder(decision.recipe).model
    sites = {w.name: w for w in selection.weights}
    encoder = Encoder(s.codebook, LowRankOptions(svd="full"), measured.importance, measured.covariance)
    fresh = build(p.source, decision.recipe, sites, encoder).model
    assert decided.SerializeToString() == fresh.SerializeToString()


def test_kept_weights_reach_the_report_with_their_reason():
    import onnxcompress as oc

    # rank 60: W's pair (256+192)*60 values is under its 256*192, V's (192+64)*60 over its 192*64
    r = oc.compress(two_layers(), min_elements=64, method="lowrank", rank=60, verify=False)
    skipped = {x["name"]: x["reason"] for x in r.report.skipped}
    assert [t.name for t in r.report.tensors] == ["W"]
    assert skipped == {"V": "low rank: the pair at rank 60 is not smaller than the weight"}


def test_a_recipe_says_what_it_keeps_and_what_it_encodes():
    recipe = Recipe({"a": AsCodebook(4, "channel"), "b": Keep("too sensitive"), "c": AsFloat16(), "d": AsPair(12, "matrix", 8)})
    assert list(recipe.encoded()) == ["a", "c", "d"] and recipe.kept() == {"b": "too sensitive"}
    labels = [describe(c) for c in recipe.choices.values()]
    assert labels == ["4 channel", "keep", "float16", "rank 12 + 8 tensor"]
    assert len({AsCodebook(4), AsCodebook(4), AsCodebook(4, compensate=True)}) == 2  # choices key the encodings


def test_the_encoder_keeps_only_the_chosen_encodings():
    """A planner measures several widths per weight; after the decision only the chosen ones
    stay (each holds a byte per value until compress() returns)."""
    weights = select_weights(two_layers(), SelectOptions(min_elements=64)).weights
    encoder = Encoder(CodebookOptions())
    w = weights[0]
    four, eight = encoder.encode([(w, AsCodebook(4))])[0], encoder.encode([(w, AsCodebook(8))])[0]
    assert encoder.encode([(w, AsCodebook(4))])[0] is four  # made once
    encoder.keep_only({w.name: AsCodebook(8)})
    assert encoder.encode([(w, AsCodebook(8))])[0] is eight
    assert encoder.encode([(w, AsCodebook(4))])[0] is not four  # dropped, made again
