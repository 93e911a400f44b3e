"""Time onnxcompress.kmeans1d against the kmeans1d package and scikit-learn's KMeans.

    python benchmarks/bench_kmeans.py            # the full grid (about 10 minutes)
    python benchmarks/bench_kmeans.py --quick    # n <= 1e5 (under a minute)

Every method runs on the same data in one process, single-threaded. For each cell it reports
time, the extra peak memory of the call (Linux: the kernel's high-water mark, reset before each
call through /proc/self/clear_refs) and the SSE relative to the best SSE any method reached
(onnxcompress is exact, so that is the optimum). It then checks the issue's targets and writes
benchmarks/results/kmeans.md and kmeans.json. Needs the `bench` extra.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # scikit-learn single-threaded, like the others
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

import onnxcompress  # noqa: E402

RESULTS = Path(__file__).parent / "results"


# -- data -------------------------------------------------------------------------------------


def make_data(n: int, dist: str, source: str, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if dist == "normal":
        x = rng.normal(size=n)
    elif dist == "laplace":
        x = rng.laplace(size=n)
    else:  # 99% N(0, 1) with 1% outliers from N(0, 30^2)
        x = rng.normal(size=n)
        out = rng.random(n) < 0.01
        x[out] *= 30.0
    x = x.astype(np.float32)
    return x.astype(np.float16).astype(np.float32) if source == "fp16" else x


# -- measuring ---------------------------------------------------------------------------------


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1])
    return 0


def measure(fn, *args):
    """Run fn(*args); return (result, seconds, extra peak MiB over the RSS before the call)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak RSS to the current RSS
        before = _rss_kib("VmRSS:")
    except OSError:
        before = None
    t0 = time.perf_counter()
    result = fn(*args)
    seconds = time.perf_counter() - t0
    peak = None if before is None else max(0, _rss_kib("VmHWM:") - before) / 1024
    return result, seconds, peak


def sse_of(x: np.ndarray, centroids: np.ndarray) -> tuple[float, bool]:
    """SSE of x at its nearest centroids (exact reassignment), in float64."""
    c = np.sort(np.asarray(centroids, dtype=np.float64))
    xd = x.astype(np.float64)
    idx = np.clip(np.searchsorted((c[1:] + c[:-1]) / 2, xd), 0, len(c) - 1)
    return float(((xd - c[idx]) ** 2).sum()), True


def in_child(n: int) -> tuple[float, float]:
    """fp16-sourced n values at k = 256 in a forked child, so memory freed by earlier cells
    cannot hide the call's own peak. Returns (seconds, extra peak MiB)."""
    import multiprocessing as mp

    def child(conn):
        x = make_data(n, "normal", "fp16")
        _, t, mem = measure(run_onnxcompress, x, 256)
        conn.send((t, mem))

    recv, send = mp.get_context("fork").Pipe(duplex=False)
    p = mp.get_context("fork").Process(target=child, args=(send,))
    p.start()
    result = recv.recv()
    p.join()
    return result


def run_onnxcompress(x, k):
    r = onnxcompress.kmeans1d(x, k)
    return r.sse, r.centroids, r.labels


def nearest_ok(x, centroids, labels) -> bool:
    xd = x.astype(np.float64)
    c = centroids
    own = np.abs(xd - c[labels])
    idx = np.clip(np.searchsorted((c[1:] + c[:-1]) / 2, xd), 0, len(c) - 1)
    best = np.abs(xd - c[idx])
    return bool(np.all(own <= best + 1e-12 * max(1.0, float(np.abs(c).max()))))


def run_kmeans1d(x, k):
    import kmeans1d

    labels, centroids = kmeans1d.cluster(x.astype(np.float64), k)
    c = np.asarray(centroids)
    return float(((x.astype(np.float64) - c[np.asarray(labels)]) ** 2).sum())


def run_sklearn(x, k):
    from sklearn.cluster import KMeans

    km = KMeans(n_clusters=k, n_init=1, random_state=0).fit(x.reshape(-1, 1).astype(np.float64))
    return float(km.inertia_)


# Where the peers run: kmeans1d keeps two k x n float64 tables (16 k n bytes) and takes 82 s at
# n = 1e6, k = 256; scikit-learn's Lloyd iterations cost about n k per pass.
def kmeans1d_runs(n, k, full):
    return 16 * k * n <= (4.2e9 if full else 1.2e9) and n <= 10**6


def sklearn_runs(n, k, full):
    return n * k <= (3e8 if full else 3e7)


# -- the grid ----------------------------------------------------------------------------------


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="n <= 1e5 only")
    ap.add_argument("--full-peers", action="store_true", help="also kmeans1d at n=1e6, k=256 (82 s, 4 GB)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)

    try:  # import scikit-learn before timing, so its first cell does not pay for the import
        from sklearn.cluster import KMeans  # noqa: F401
    except ImportError:
        pass
    sizes = [10**4, 10**5] if args.quick else [10**4, 10**5, 10**6, 10**7]
    ks = [4, 16, 256]
    dists = ["normal", "laplace", "outliers"]
    sources = ["distinct", "fp16"]
    rows = []
    for n in sizes:
        for source in sources:
            for dist in dists:
                x = make_data(n, dist, source)
                for k in ks:
                    row = {"n": n, "k": k, "dist": dist, "source": source}
                    (sse, cents, labels), t, mem = measure(run_onnxcompress, x, k)
                    row.update(oc_s=t, oc_mb=mem, oc_sse=sse, oc_nearest=nearest_ok(x, cents, labels))
                    del labels
                    if kmeans1d_runs(n, k, args.full_peers):
                        s, t, mem = measure(run_kmeans1d, x, k)
                        row.update(km_s=t, km_mb=mem, km_sse=s)
                    if sklearn_runs(n, k, args.full_peers):
                        s, t, mem = measure(run_sklearn, x, k)
                        row.update(sk_s=t, sk_mb=mem, sk_sse=s)
                    best = min(v for key, v in row.items() if key.endswith("_sse"))
                    row["opt"] = best
                    rows.append(row)
                    print(_line(row), flush=True)

    extra = []
    if not args.quick:
        n, label = 10**8, "fp16 n=1e8"
        t, mem = in_child(n)
        extra.append({"case": label, "k": 256, "s": t, "extra_mb": mem, "bytes_per_value": mem * 2**20 / n})
        print(f"{label} k=256: {t:.2f} s, extra peak {mem:.0f} MiB", flush=True)

    report = _report(rows, extra, args)
    args.out.mkdir(parents=True, exist_ok=True)
    name = "kmeans_quick" if args.quick else "kmeans"
    (args.out / f"{name}.md").write_text(report)
    (args.out / f"{name}.json").write_text(json.dumps({"rows": rows, "extra": extra}, indent=1))
    print(report)
    return 0


def _fmt_rel(sse, opt):
    if sse is None:
        return "-"
    rel = sse / opt - 1 if opt > 0 else 0.0
    return "0" if rel <= 1e-12 else f"+{rel:.1e}"


def _line(r):
    parts = [
        f"n={r['n']:.0e} k={r['k']:3d} {r['dist']:8s} {r['source']:8s}",
        f"onnxcompress {r['oc_s']:7.3f}s {r['oc_mb'] or 0:6.0f}MiB",
    ]
    if "km_s" in r:
        parts.append(f"kmeans1d {r['km_s']:7.2f}s {r['km_mb'] or 0:6.0f}MiB")
    if "sk_s" in r:
        parts.append(f"sklearn {r['sk_s']:6.2f}s {_fmt_rel(r['sk_sse'], r['opt'])}")
    return " | ".join(parts)


def _report(rows, extra, args) -> str:
    out = [
        "# k-means benchmark",
        "",
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"numpy {np.__version__}, onnxcompress {onnxcompress.__version__}; single thread. "
        "Time in seconds, extra peak memory of the call in MiB, SSE relative to the optimum.",
        "",
        "| n | k | data | values | onnxcompress s | MiB | kmeans1d s | MiB | SSE | speed-up | sklearn s | SSE |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        km = r.get("km_s")
        out.append(
            f"| {r['n']:.0e} | {r['k']} | {r['dist']} | {r['source']} | {r['oc_s']:.3f} | {r['oc_mb'] or 0:.0f} | "
            + (
                f"{km:.2f} | {r['km_mb'] or 0:.0f} | {_fmt_rel(r['km_sse'], r['opt'])} | {km / r['oc_s']:.0f}x | "
                if km
                else "- | - | - | - | "
            )
            + (f"{r['sk_s']:.2f} | {_fmt_rel(r['sk_sse'], r['opt'])} |" if "sk_s" in r else "- | - |")
        )
    for e in extra:
        out.append(
            f"\n{e['case']}, k={e['k']}: {e['s']:.2f} s, extra peak {e['extra_mb']:.0f} MiB "
            f"({e['bytes_per_value']:.2f} bytes a value)"
        )
    out += ["", "## Targets", ""] + [f"- {'PASS' if ok else 'MISS'}: {text}" for ok, text in _targets(rows, extra)]
    return "\n".join(out) + "\n"


def _targets(rows, extra):
    res = []
    exact = all(r["oc_sse"] <= r["opt"] * (1 + 1e-9) + 1e-300 and r["oc_nearest"] for r in rows)
    res.append((exact, "exact everywhere: SSE <= optimum x (1 + 1e-9), every point at its nearest centroid"))
    peer = [r for r in rows if "km_s" in r]
    if peer:
        speedups = [r["km_s"] / r["oc_s"] for r in peer]
        geo = math.exp(sum(math.log(s) for s in speedups) / len(speedups))
        res.append((geo >= 10, f"geometric-mean speed-up over kmeans1d >= 10x: {geo:.0f}x over {len(peer)} cells"))
        res.append((min(speedups) >= 1, f"never slower than kmeans1d: slowest cell {min(speedups):.1f}x"))

    def cell(n, k, source):
        return [r for r in rows if r["n"] == n and r["k"] == k and r["source"] == source]

    for n, k, source, limit, text in [
        (10**6, 256, "distinct", 5.0, "n=1e6, k=256, all-distinct float32 <= 5 s"),
        (10**7, 256, "fp16", 0.5, "fp16-sourced n=1e7, k=256 <= 0.5 s"),
    ]:
        c = cell(n, k, source)
        if c:
            worst = max(r["oc_s"] for r in c)
            res.append((worst <= limit, f"{text}: worst {worst:.2f} s over {len(c)} distributions"))
    c = cell(10**7, 256, "distinct")
    if c:
        worst, mem = max(r["oc_s"] for r in c), max(r["oc_mb"] or 0 for r in c)
        res.append(
            (worst <= 60 and mem <= 2048, f"all-distinct n=1e7, k=256 <= 60 s and <= 2 GB: worst {worst:.1f} s, {mem:.0f} MiB")
        )
    for e in extra:
        ok = e["s"] <= 3 and e["bytes_per_value"] <= 1 + 64 * 2**20 / 1e8
        res.append(
            (ok, f"fp16-sourced n=1e8, k=256 <= 3 s with <= 1 byte a value + 64 MB: {e['s']:.2f} s, {e['extra_mb']:.0f} MiB")
        )
    return res


if __name__ == "__main__":
    sys.exit(main())
