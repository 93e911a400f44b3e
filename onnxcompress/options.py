"""Option groups. Each dataclass drives both the command-line flags and the Python keyword
arguments of `compress()`, so the two never drift apart (field metadata holds the help)."""

from __future__ import annotations

import argparse
import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args, get_type_hints

from .errors import CompressError


def _opt(default: Any, help: str, **cli: Any) -> Any:
    return field(default=default, metadata={"help": help, **cli})


@dataclass
class SelectOptions:
    """Which weights to compress."""

    # 4096: below that the codebook and decode nodes (about 1.3 KB) eat much of the saving,
    # and what is that small is mostly biases and norm scales, which are sensitive.
    min_elements: int = _opt(4096, "compress float tensors with at least this many values")
    include: str | None = _opt(None, "only tensors whose name matches this regular expression", metavar="REGEX")
    exclude: str | None = _opt(None, "skip tensors whose name matches this regular expression", metavar="REGEX")

    def validate(self) -> None:
        if self.min_elements < 1:
            raise CompressError(f"--min-elements must be at least 1; got {self.min_elements}")
        for flag, pattern in (("--include", self.include), ("--exclude", self.exclude)):
            if pattern is not None and not isinstance(pattern, str):
                raise CompressError(
                    f"{flag} takes one regular expression, not a {type(pattern).__name__}; join names with | (a|b)"
                )
            if pattern is not None:
                try:
                    re.compile(pattern)
                except re.error as e:
                    raise CompressError(f"{flag} {pattern!r} is not a valid regular expression: {e}") from None


def _at_most_one(flags: dict[str, object], clash: str) -> None:
    """A CompressError when more than one of these flags is set; `clash` says why they exclude
    each other ("--rank and --energy both set the rank; pass only one")."""
    given = [flag for flag, value in flags.items() if value is not None]
    if len(given) > 1:
        raise CompressError(f"{' and '.join(given)} {clash}; pass only one")


METHODS = ("codebook", "lowrank", "lowrank+kmeans", "auto")
# what an output can be (runtime/outputs.py), and "ignore" for one nothing reads
OUTPUT_KINDS = ("classes", "probabilities", "embedding", "parts", "state", "dense", "ignore")
METRIC_NAMES = ("task", "rel-l2", "cosine", "max-abs", "top1")


@dataclass
class MethodOptions:
    """What each weight becomes."""

    method: str = _opt(
        "codebook",
        "codebook: k-means codebook + packed indices; lowrank: two factors from a truncated SVD, its consumer "
        "rewritten as a pair (smaller file, RAM and compute); lowrank+kmeans: both, the factors quantized; "
        "auto: per weight the smallest of these at the codebook's weight error",
        choices=list(METHODS),
    )


@dataclass
class LowRankOptions:
    """How weights are factored (--method lowrank, lowrank+kmeans).
    At most one of --rank, --rank-ratio and --energy; none means --energy 0.99."""

    rank: int | None = _opt(None, "the same rank R for every factored weight", metavar="R")
    rank_ratio: float | None = _opt(None, "rank as a fraction of each weight's full rank, in (0, 1]", metavar="F")
    energy: float | None = _opt(
        None, "the smallest rank whose singular values hold F of the squared norm, in (0, 1] (default 0.99)", metavar="F"
    )
    svd: str = _opt(
        "auto",
        "full: LAPACK; randomized: a sketch with power iterations; auto: randomized on large matrices",
        choices=["auto", "full", "randomized"],
    )

    def validate(self) -> None:
        _at_most_one({"--rank": self.rank, "--rank-ratio": self.rank_ratio, "--energy": self.energy}, "both set the rank")
        if self.rank is not None and self.rank < 1:
            raise CompressError(f"--rank must be at least 1; got {self.rank}")
        for flag, value in (("--rank-ratio", self.rank_ratio), ("--energy", self.energy)):
            if value is not None and not 0 < value <= 1:
                raise CompressError(f"{flag} must be in (0, 1]; got {value}")

    def is_set(self) -> bool:
        return self.rank is not None or self.rank_ratio is not None or self.energy is not None

    def fixed_rank(self, full_rank: int) -> int | None:
        """The rank for a weight of this full rank, or None when --energy decides it."""
        if self.rank is not None:
            return min(self.rank, full_rank)
        if self.rank_ratio is not None:
            return max(1, min(full_rank, round(self.rank_ratio * full_rank)))
        return None

    def energy_target(self) -> float | None:
        if self.rank is not None or self.rank_ratio is not None:
            return None
        return 0.99 if self.energy is None else self.energy


@dataclass
class CodebookOptions:
    """How each weight becomes a codebook plus packed indices."""

    bits: int = _opt(8, "index bits per weight, 1..8 (k = 2^bits levels)", choices=range(1, 9), metavar="1..8")
    granularity: str = _opt(
        "tensor",
        "one codebook per tensor, per output channel, per tensor over values scaled per output channel, or per N "
        "consecutive values",
        metavar="tensor|channel|scaled|group:N",
    )
    codebook_dtype: str = _opt(
        "auto", "how codebook values are stored (auto: the weight's own float type)", choices=["auto", "float32", "float16"]
    )
    kmeans: str = _opt(
        "auto",
        "exact: the optimal DP on every tensor; binned: DP over fp16 bins + an exact Lloyd polish "
        "(about 1e-4 above the optimal SSE, much faster on large all-distinct tensors); auto: exact where cheap",
        choices=["auto", "exact", "binned"],
    )

    def validate(self) -> None:
        if not 1 <= self.bits <= 8:
            raise CompressError(f"--bits must be between 1 and 8; got {self.bits}")
        self.group_size()  # raises on a bad granularity

    def group_size(self) -> int | None:
        g = self.granularity
        if g in ("tensor", "channel", "scaled"):
            return None
        m = re.fullmatch(r"group:(\d+)", g)
        if not m or int(m.group(1)) < 2:
            raise CompressError(f"--granularity must be tensor, channel, scaled or group:N with N >= 2; got {g!r}")
        return int(m.group(1))


# The original's load-time peak, from below (benchmarks/bench_ram.py, bench_load.py): Python,
# numpy and onnxruntime before any session hold 47 MiB, and loading takes 1.6x its weights'
# bytes on MiniLM, 2.9x on the OCR model.
LOAD_BASE = 47 * 2**20
LOAD_PER_WEIGHT_BYTE = 1.5
# Plans are held to about 1.2x the original's load-time peak unless told otherwise (issue 20's
# bound): unbounded, the OCR model's 0.01 plan peaked at 1.75x natively and 1.41x in the wasm
# heap; held, at 1.20x and 0.97x, it is 3.5% larger (docs/deployment.md).
LOAD_PEAK = 1.2


@dataclass
class PlanOptions:
    """A target instead of fixed bits: the planner chooses how to store each tensor.
    The error is measured in onnxruntime on --inputs (synthesized inputs if none)."""

    max_error: float | None = _opt(
        None, "the smallest model whose outputs stay within E of the original's (see --metric)", metavar="E"
    )
    metric: str | Callable[..., float] = _opt(
        "task",
        "task: each output measured as its kind reads it (class scores: share of changed argmax; probabilities: share of "
        "decisions flipped at 0.5; embeddings: the largest shift of a cosine similarity to an original row; other "
        "outputs: relative L2 of the worst channel or part); "
        "rel-l2: worst relative L2 error of an output; cosine: 1 - lowest cosine similarity; max-abs: largest absolute "
        "error; top1: share of changed argmax on class-score outputs",
        choices=list(METRIC_NAMES),
    )
    target_size: float | None = _opt(None, "the least error that fits in this many megabytes (1e6 bytes)", metavar="MB")
    ratio: float | None = _opt(None, "the least error at this many times smaller", metavar="R")
    max_ram: str | None = _opt(
        None,
        "the weights onnxruntime holds once it has loaded the model fit in this many megabytes, or this share of the "
        "original's weights (30%%); alone, the least error that fits, or with another target as a second bound",
        metavar="MB|N%",
    )
    load_peak: float = _opt(
        LOAD_PEAK,
        "plans keep onnxruntime's memory peak while it loads the model (when the decoders fold) within about this many "
        "times the original's, by an estimate; 0: no bound",
        metavar="R",
    )
    sensitivity: bool = _opt(True, "weight k-means by how much each value matters on the --inputs (--no-sensitivity: plain)")
    compensate: bool = _opt(
        True,
        "with --inputs, round the values of MatMul, Gemm, Conv and recurrent weights so their errors cancel on the real inputs "
        "(GPTQ-style; --no-compensate: each value to its nearest level)",
    )

    def validate(self) -> None:
        _at_most_one({"--max-error": self.max_error, "--target-size": self.target_size, "--ratio": self.ratio}, "are two targets")
        for flag, value, low in (
            ("--max-error", self.max_error, 0.0),
            ("--target-size", self.target_size, 0.0),
            ("--ratio", self.ratio, 1.0),
        ):
            if value is not None and not (value > low and value == value and value != float("inf")):
                raise CompressError(f"{flag} must be a number above {low:g}; got {value}")
        if not callable(self.metric) and self.metric not in METRIC_NAMES:
            raise CompressError(f"--metric must be one of {', '.join(METRIC_NAMES)}; got {self.metric!r}")
        self.ram_budget(1)  # raises on a bad --max-ram
        if not (self.load_peak == 0 or 1 <= self.load_peak < float("inf")):
            raise CompressError(
                f"--load-peak must be 1 or more (times the original's peak), or 0 for no bound; got {self.load_peak}"
            )

    def active(self) -> bool:
        return any(v is not None for v in (self.max_error, self.target_size, self.ratio, self.max_ram))

    def load_budget(self, original_weights: int) -> int | None:
        """What the decoders may add to the load-time peak under --load-peak, in bytes, or None.
        The original's peak is estimated from below (LOAD_BASE + LOAD_PER_WEIGHT_BYTE x its
        weights), so the budget errs small."""
        if not self.load_peak:
            return None
        return int((self.load_peak - 1) * (LOAD_BASE + LOAD_PER_WEIGHT_BYTE * original_weights))

    def ram_budget(self, original_weights: int) -> int | None:
        """--max-ram in bytes (`original_weights`: what the original's weights take), or None."""
        value = self.max_ram
        if value is None:
            return None
        text = str(value).strip().removesuffix("MB").strip() if not isinstance(value, int | float) else ""
        share = text.endswith("%")
        try:
            number = float(value) if isinstance(value, int | float) else float(text.removesuffix("%"))
        except ValueError:
            number = float("nan")
        if not (number > 0 and number != float("inf")) or (share and number > 100):
            raise CompressError(f"--max-ram wants megabytes (40) or a share of the original's weights (30%); got {value!r}")
        return int(original_weights * number / 100) if share else int(number * 1e6)


@dataclass
class TargetOptions:
    """What the compressed model must run on."""

    target_ort: str = _opt("1.16", "oldest onnxruntime the result must run on", metavar="VERSION")
    opset: int | None = _opt(None, "convert the model to this default-domain opset first (never done silently)", metavar="N")

    def validate(self) -> None:
        if not re.fullmatch(r"\d+\.\d+(\.\d+)?", self.target_ort):
            raise CompressError(f"--target-ort must look like 1.16 or 1.24.4; got {self.target_ort!r}")
        if self.ort_version() < (1, 16):
            raise CompressError(
                f"--target-ort {self.target_ort}: the decoders are verified on onnxruntime 1.16 and later; use 1.16 or newer"
            )

    def ort_version(self) -> tuple[int, ...]:
        return tuple(int(p) for p in self.target_ort.split("."))


@dataclass
class VerifyOptions:
    """How the result is checked in onnxruntime."""

    verify: bool = _opt(True, "run both models and compare outputs (--no-verify skips it)")
    inputs: Path | None = _opt(None, "inputs as .npz (input name -> array) instead of synthesized ones", metavar="FILE.npz")
    seed: int = _opt(0, "seed for synthesized inputs")
    output_kind: str | None = _opt(
        None,
        "what an output is, where the graph does not say it (classes, probabilities, embedding, parts, state, dense), or "
        "ignore to leave an output nothing reads out of the measure; e.g. last_hidden_state=ignore",
        metavar="NAME=KIND[,...]",
    )

    def validate(self) -> None:
        self.output_kinds()

    def output_kinds(self) -> dict[str, str]:
        """--output-kind as output name -> kind, or a one-line error."""
        chosen: dict[str, str] = {}
        for item in (self.output_kind or "").split(","):
            name, sep, kind = item.strip().rpartition("=")
            if not item.strip():
                continue
            if not sep or not name or kind not in OUTPUT_KINDS:
                kinds = ", ".join(OUTPUT_KINDS)
                raise CompressError(f"--output-kind wants NAME=KIND with KIND one of {kinds}; got {item.strip()!r}")
            chosen[name] = kind
        return chosen


OPTION_GROUPS = (SelectOptions, MethodOptions, CodebookOptions, LowRankOptions, PlanOptions, TargetOptions, VerifyOptions)


def add_arguments(parser: argparse.ArgumentParser, groups: tuple[type, ...] = OPTION_GROUPS) -> None:
    """One flag per dataclass field: --min-elements, --bits, ..., --verify/--no-verify."""
    for group_cls in groups:
        title, _, more = (group_cls.__doc__ or group_cls.__name__).strip().partition("\n")
        group = parser.add_argument_group(title.rstrip("."), " ".join(more.split()) or None)
        hints = get_type_hints(group_cls)
        for f in dataclasses.fields(group_cls):
            flag = "--" + f.name.replace("_", "-")
            meta = dict(f.metadata)
            help_text = meta.pop("help")
            ftype = hints[f.name]
            if ftype is bool:
                group.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default, help=help_text)
                continue
            kinds = (ftype, *get_args(ftype))
            conv = int if int in kinds else float if float in kinds else Path if Path in kinds else str
            shown = "" if f.default is None else f" (default: {f.default})"
            group.add_argument(flag, type=conv, default=f.default, help=help_text + shown, **meta)


def groups_from_args(args: argparse.Namespace) -> dict[type, Any]:
    return {cls: cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)}) for cls in OPTION_GROUPS}


def groups_from_kwargs(kwargs: dict[str, Any]) -> dict[type, Any]:
    """Split compress(**kwargs) into the option groups; unknown names are an error."""
    out: dict[type, Any] = {}
    remaining = dict(kwargs)
    for cls in OPTION_GROUPS:
        names = {f.name for f in dataclasses.fields(cls)}
        out[cls] = cls(**{k: remaining.pop(k) for k in list(remaining) if k in names})
    if remaining:
        known = sorted(f.name for cls in OPTION_GROUPS for f in dataclasses.fields(cls))
        raise TypeError(f"unknown option(s) {sorted(remaining)}; known: {', '.join(known)}")
    for opts in out.values():
        if hasattr(opts, "validate"):
            opts.validate()
    return out
