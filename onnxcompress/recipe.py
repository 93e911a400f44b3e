"""The decision as data: what each weight becomes. Fixed settings and the planner both emit a
Recipe; the builder (build.py) turns one into a model. A choice says what to store, never how
to compute it: the same recipe built twice gives the same model."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Keep:
    """Left as it is, and why."""

    reason: str = ""


@dataclass(frozen=True)
class AsFloat16:
    """Stored as float16, cast back to the weight's type at load."""


@dataclass(frozen=True)
class AsCodebook:
    """A k-means codebook of 2^bits levels per group plus packed indices. `layout`: tensor,
    channel, scaled or group:N. `compensate`: labels chosen against the weight's input
    covariance (compensate.py) instead of nearest rounding. `axis`: the channel axis of a
    channel or scaled layout when it is not the weight's output channels (WeightSite.channel_axis),
    such as an embedding table's columns."""

    bits: int
    layout: str = "tensor"
    compensate: bool = False
    axis: int | None = None


@dataclass(frozen=True)
class AsPair:
    """Two factors of rank `rank` (`kind`: how the weight is read as a matrix, lowrank.py)
    whose product replaces the weight; with `factor_bits`, each factor is itself a codebook."""

    rank: int
    kind: str
    factor_bits: int | None = None
    factor_layout: str = "tensor"


@dataclass(frozen=True)
class AsBlocks:
    """Signed `bits`-bit integers with a float scale per `block` values along the reduction
    axis, read by a DequantizeLinear (opset 21) that onnxruntime fuses into its MatMul:
    the weight stays packed in RAM (encoding/blocks.py). `compensate`: as AsCodebook's."""

    bits: int
    block: int = 32
    compensate: bool = False


Choice = Keep | AsFloat16 | AsCodebook | AsPair | AsBlocks


def describe(choice: Choice) -> str:
    """A choice in a few words: keep, float16, 4 channel, 8 blocks:32, rank 12, rank 12 + 8 tensor."""
    if isinstance(choice, Keep):
        return "keep"
    if isinstance(choice, AsFloat16):
        return "float16"
    if isinstance(choice, AsCodebook):
        return f"{choice.bits} {choice.layout}" + (f" axis {choice.axis}" if choice.axis is not None else "")
    if isinstance(choice, AsBlocks):
        return f"{choice.bits} blocks:{choice.block}"
    factors = f" + {choice.factor_bits} {choice.factor_layout}" if choice.factor_bits is not None else ""
    return f"rank {choice.rank}{factors}"


@dataclass
class Recipe:
    """Each selected weight's choice by name, in the model's order, and for a weight that took
    another encoding than the settings asked for, why."""

    choices: dict[str, Choice] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)

    def encoded(self) -> dict[str, Choice]:
        return {name: c for name, c in self.choices.items() if not isinstance(c, Keep)}

    def kept(self) -> dict[str, str]:
        """The weights left as they are, with the reason."""
        return {name: c.reason for name, c in self.choices.items() if isinstance(c, Keep)}
