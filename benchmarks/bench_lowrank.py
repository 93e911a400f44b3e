"""The SVD behind --method lowrank: LAPACK's full SVD against the randomized one, at equal rank.

    python benchmarks/bench_lowrank.py [--quick] [--cache DIR]

For each matrix and target (a fixed rank, or an energy), both SVDs run in one process on both
cores; the table gives the time of each, the rank each picked and the weight error of the
randomized factors relative to the optimal truncation's (1.000 = as good as LAPACK).
Matrices: synthetic ones with a power-law spectrum like trained layers (s_i ~ i^-0.6) and, when
fetch_models.py's cache is there, MiniLM's 30522 x 384 word embedding and 1536 x 384 FFN weight.
It checks the rule --svd auto follows (randomized only where it is faster at equal accuracy) and
writes benchmarks/results/lowrank.md and lowrank.json.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from onnxcompress.encoding.lowrank import RANDOMIZED_MAX_FRACTION, RANDOMIZED_MIN_SIDE, relative_error, truncated_svd

sys.path.insert(0, str(Path(__file__).parent))
from harness import DEFAULT_CACHE, write_json  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def power_law(rows: int, cols: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    short = min(rows, cols)
    u, _ = np.linalg.qr(rng.normal(size=(rows, short)).astype(np.float32))
    v, _ = np.linalg.qr(rng.normal(size=(cols, short)).astype(np.float32))
    s = (np.arange(1, short + 1) ** -0.6).astype(np.float32)
    return np.ascontiguousarray((u * s) @ v.T)


def real_weights(cache: Path) -> dict[str, np.ndarray]:
    path = cache / "models" / "minilm_l6.onnx"
    if not path.exists():
        return {}
    import onnx
    from onnx import numpy_helper

    inits = {i.name: i for i in onnx.load(str(path)).graph.initializer}
    out = {}
    for name, label in [
        ("bert.embeddings.word_embeddings.weight", "MiniLM word embedding"),
        ("bert.encoder.layer.0.output.dense.weight.T", "MiniLM FFN out (layer 0)"),
    ]:
        if name in inits:
            out[label] = numpy_helper.to_array(inits[name])
    return out


def timed(fn):
    t0 = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - t0


def measure(label: str, w: np.ndarray, target: dict) -> dict:
    rank, energy = target.get("rank"), target.get("energy")
    (u, s, vt, _), full_s = timed(lambda: truncated_svd(w, rank, energy, "full"))
    (ru, rs, rvt, how), rand_s = timed(lambda: truncated_svd(w, rank, energy, "randomized"))
    full_err = relative_error(w, (u * s) @ vt)
    rand_err = relative_error(w, (ru * rs) @ rvt)
    small_rank = rank is not None and rank <= RANDOMIZED_MAX_FRACTION * min(w.shape)
    auto = "randomized" if min(w.shape) >= RANDOMIZED_MIN_SIDE and small_rank else "full"
    return {
        "matrix": label,
        "shape": list(w.shape),
        "target": f"rank {rank}" if rank else f"energy {energy}",
        "full_s": full_s,
        "randomized_s": rand_s,
        "randomized_ran": how,
        "rank_full": int(s.size),
        "rank_randomized": int(rs.size),
        "error_full": full_err,
        "error_ratio": rand_err / full_err if full_err else 1.0,
        "auto_picks": auto,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="the small matrices only (under a minute)")
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)

    sizes = [(512, 512), (1024, 1024), (2048, 2048)] + ([] if args.quick else [(4096, 4096), (4096, 11008)])
    matrices = {f"power law ({r}x{c})": power_law(r, c) for r, c in sizes}
    matrices.update(real_weights(args.cache))
    rows = []
    for label, w in matrices.items():
        short = min(w.shape)
        targets = [{"rank": max(8, short // 16)}, {"rank": max(8, short // 4)}, {"energy": 0.9}]
        for target in targets:
            row = measure(label, w, target)
            rows.append(row)
            print(
                f"{label:28s} {row['target']:12s} full {row['full_s']:7.2f} s  randomized {row['randomized_s']:7.2f} s "
                f"({row['randomized_ran']}, rank {row['rank_randomized']} vs {row['rank_full']}, "
                f"error x{row['error_ratio']:.4f})",
                flush=True,
            )

    # --svd auto: randomized from RANDOMIZED_MIN_SIDE on, for ranks up to RANDOMIZED_MAX_FRACTION
    # of the short side: there it must be faster and within 1% of the optimal error.
    covered = [r for r in rows if r["auto_picks"] == "randomized"]
    rule_ok = all(r["randomized_s"] < r["full_s"] and r["error_ratio"] <= 1.01 for r in covered)
    lines = [
        "# Full vs randomized SVD",
        "",
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, numpy {np.__version__}. "
        "`python benchmarks/bench_lowrank.py`" + (" --quick" if args.quick else ""),
        "",
        "| matrix | target | full SVD | randomized | randomized ran | rank (rand / full) | error vs optimal | --svd auto |",
        "|---|---|---:|---:|---|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['matrix'].split(' (')[0]} {r['shape'][0]}x{r['shape'][1]} | {r['target']} "
            f"| {r['full_s']:.2f} s | {r['randomized_s']:.2f} s "
            f"| {r['randomized_ran']} | {r['rank_randomized']} / {r['rank_full']} | x{r['error_ratio']:.4f} | {r['auto_picks']} |"
        )
    lines += [
        "",
        f"`--svd auto` takes the randomized SVD for a fixed rank of at most {RANDOMIZED_MAX_FRACTION:.0%} of a short "
        f"side of at least {RANDOMIZED_MIN_SIDE}, LAPACK otherwise (an energy target's rank is not known before the "
        "spectrum; `--svd randomized` then widens its sketch until the target is met, falling back to LAPACK past "
        f"{RANDOMIZED_MAX_FRACTION:.0%}). Faster and within 1% of the optimal error on every cell where auto picks it: "
        f"**{'PASS' if rule_ok else 'FAIL'}** ({len(covered)} cells).",
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "lowrank.md").write_text("\n".join(lines) + "\n")
    write_json({"rows": rows, "rule_ok": rule_ok}, args.out / "lowrank.json")
    print("\n".join(lines[-1:]))
    return 0 if rule_ok else 1


if __name__ == "__main__":
    sys.exit(main())
