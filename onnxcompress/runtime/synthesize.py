"""Inputs made up from the graph, for a model given without --inputs.

The first feed follows the declared types and shapes. When the original will not run on it,
the sizes the graph implies come next: every unknown size at each of a few common ones, and each
integer scalar input at the integer constants the graph compares it with (a voice detector that
branches on `sr == 16000` and wants 512 samples at that rate). When none runs, the error names
the inputs and what to pass."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator

import numpy as np
import onnx

from ..errors import CompressError, VerificationError, first_line

# Unknown sizes tried after the first feed's (16, and 64 for image sides), in order.
COMMON_SIZES = (32, 64, 128, 256, 512, 1024, 8, 1)
# At most this many feeds are tried: each is a run of the original, and a model that fails for
# another reason would otherwise run 9 sizes x 2 ways x every scalar setting.
MAX_TRIES = 40
COMPARISONS = {"Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual"}
PASS_THROUGH = {"Cast", "Identity", "Squeeze", "Unsqueeze", "Reshape"}


def synthesize_feed(
    model: onnx.ModelProto,
    seed: int = 0,
    size: int | None = None,
    scalars: dict[str, int] | None = None,
    last_only: bool = False,
) -> dict[str, np.ndarray]:
    """Inputs from the graph's declared types and shapes. Unknown dims: 1 for the first
    (batch), and `size` for the others (with `last_only`, for the last axis only, the others
    1: a recurrent state [2, batch, 128] beside samples [batch, N]), or by default 64 for
    spatial dims of 4-D float inputs and 16 else. Integer inputs that index an embedding table stay below
    its row count; masks are ones; integer scalars take `scalars`' value where given; other
    integers are 0 or 1."""
    rng = np.random.default_rng(seed)
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    table_rows = {}
    for node in graph.node:
        if node.op_type == "Gather" and len(node.input) > 1 and node.input[0] in inits:
            dims = inits[node.input[0]].dims
            if dims:
                table_rows[node.input[1]] = int(dims[0])
    feed = {}
    for inp in graph.input:
        if inp.name in inits:
            continue
        tt = inp.type.tensor_type
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)
        rank = len(tt.shape.dim)
        shape = []
        for axis, d in enumerate(tt.shape.dim):
            if d.HasField("dim_value") and d.dim_value > 0:
                shape.append(int(d.dim_value))
            elif axis == 0 or (last_only and axis != rank - 1):
                shape.append(1)
            else:
                shape.append(size or (64 if rank == 4 and dtype.kind == "f" and axis >= 2 else 16))
        # np.asarray: a scalar input (shape []) must still be an array, which onnxruntime takes
        if dtype.kind == "f":
            feed[inp.name] = np.asarray(rng.normal(size=shape), dtype=dtype)
        elif dtype.kind in "iu":
            if scalars and inp.name in scalars and int(np.prod(shape)) == 1:
                feed[inp.name] = np.full(shape, scalars[inp.name], dtype=dtype)
            elif "mask" in inp.name.lower():
                feed[inp.name] = np.ones(shape, dtype=dtype)
            else:
                feed[inp.name] = np.asarray(rng.integers(0, table_rows.get(inp.name, 2), size=shape), dtype=dtype)
        elif dtype.kind == "b":
            feed[inp.name] = np.asarray(rng.random(shape) < 0.5)
        else:
            raise CompressError(f"cannot synthesize input {inp.name!r} of type {dtype}; pass --inputs FILE.npz")
    return feed


def compared_constants(model: onnx.ModelProto) -> dict[str, list[int]]:
    """Per integer graph input, the integer constants a comparison node holds it against
    (through Cast, Identity, Squeeze, Unsqueeze or Reshape)."""
    graph = model.graph
    consts = {t.name: onnx.numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.output:
            value = next((a for a in node.attribute if a.name == "value"), None)
            if value is not None:
                consts[node.output[0]] = onnx.numpy_helper.to_array(value.t)
    origin = {i.name: i.name for i in graph.input if i.name not in consts}
    found: dict[str, list[int]] = {}
    for node in graph.node:  # topological order: a pass-through's input is traced before it
        if node.op_type in PASS_THROUGH and node.input and node.input[0] in origin:
            origin[node.output[0]] = origin[node.input[0]]
        if node.op_type in COMPARISONS and len(node.input) == 2:
            for mine, other in (node.input, node.input[::-1]):
                value = consts.get(other)
                if mine in origin and value is not None and value.size == 1 and value.dtype.kind in "iuf":
                    number = value.reshape(-1)[0]
                    if float(number).is_integer():
                        found.setdefault(origin[mine], []).append(int(number))
    return {name: sorted(set(values)) for name, values in found.items()}


def candidate_feeds(model: onnx.ModelProto, seed: int = 0) -> Iterator[dict[str, np.ndarray]]:
    """The first synthesized feed, then the variants the graph implies (module docstring): each
    shape and scalar setting once, at most MAX_TRIES in all."""
    seen = set()
    for feed in _variants(model, seed):
        key = tuple((name, v.shape, v.tobytes() if v.size == 1 else b"") for name, v in feed.items())
        if key not in seen:
            seen.add(key)
            yield feed
            if len(seen) == MAX_TRIES:
                return


def _variants(model: onnx.ModelProto, seed: int) -> Iterator[dict[str, np.ndarray]]:
    yield synthesize_feed(model, seed)
    scalars = compared_constants(model)
    choices = [[(name, v) for v in values] for name, values in scalars.items()]
    settings = [dict(combo) for combo in itertools.islice(itertools.product(*choices), 4)] if choices else [{}]
    for size in (None, *COMMON_SIZES):
        for setting in settings:
            for last_only in (False, True):
                if size is None and not setting and not last_only:
                    continue  # the first feed again
                yield synthesize_feed(model, seed, (size or 16) if last_only else size, setting, last_only)


def first_running_feed(
    model: onnx.ModelProto, seed: int, run: Callable[[dict[str, np.ndarray]], list]
) -> tuple[dict[str, np.ndarray], list]:
    """The first candidate feed the original runs on, with its outputs; a CompressError that
    names the inputs when none does."""
    first_error: VerificationError | None = None
    tries = 0
    for feed in candidate_feeds(model, seed):
        tries += 1
        try:
            return feed, run(feed)
        except VerificationError as e:
            first_error = first_error or e
    assert first_error is not None  # candidate_feeds yields at least the first feed
    graph = model.graph
    inits = {t.name for t in graph.initializer}
    described = ", ".join(
        f"{i.name}: {onnx.helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type)} "
        f"[{', '.join(d.dim_param or (str(d.dim_value) if d.dim_value > 0 else '?') for d in i.type.tensor_type.shape.dim)}]"
        for i in graph.input
        if i.name not in inits
    )
    tried = (
        f"none of {tries} made-up inputs ran (unknown sizes 16, {', '.join(map(str, COMMON_SIZES))})"
        if tries > 1
        else "the made-up inputs did not run (its declared shapes leave nothing to vary)"
    )
    raise CompressError(
        f"{first_line(first_error, 160)}; {tried}; pass --inputs FILE.npz with real inputs ({described}), or --no-verify"
    )
