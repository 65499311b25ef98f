"""Benchmark the torch-free runtime against a bare onnxruntime MatMul (the ceiling).

Usage::

    python benchmarks/runtime_bench.py [--users 100000] [--items 20000] [--factors 64]
        [--seen 50] [--k 10] [--repeat 3] [--json OUT]
    python benchmarks/runtime_bench.py --rss --users 20000    # peak RSS of write_score_matrix

A synthetic biased MF model (init_std 0.1, ``--seen`` random items per user) is exported
with ``formats="onnx", verify=False`` into a temporary directory. Then, in one process:
the bare onnxruntime MatMul of the same shapes built with ``onnx.helper`` (best of a few
block sizes, preallocated output), numpy matmul into a preallocated output, eager torch,
the runtime's ``score_all`` of every user (chunked, no file), recommend-all top-k with
the seen items excluded (the recommend graph per block, as the runtime does, and the
score_all + numpy argpartition alternative), and single-user top-k latency.
Times are the best of ``--repeat`` runs. The machine may be shared: numbers are noisy.
``benchmarks/bench.py`` (``recsys-export bench``) is the side-by-side benchmark of every
format for both models; this script stays as the MF runtime deep-dive (block sizes, RSS).

``--rss`` exports in a child process (so torch's memory is not counted), then runs
``write_score_matrix`` to a temporary ``.npy`` in this torch-free process and prints the
peak RSS (``ru_maxrss``); compare e.g. ``--users 20000`` with ``--users 200000``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def build_bundle(args: argparse.Namespace, dest: Path) -> None:
    """Export a synthetic biased MF model (imports torch)."""
    from recsys_export.export import export_bundle
    from recsys_export.synthetic_models import synthetic_checkpoint

    ck = synthetic_checkpoint(
        "mf", args.users, args.items, factors=args.factors, seen_per_user=args.seen
    )
    export_bundle(ck, dest, formats="onnx", verify=False)
    return ck.model


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def bare_matmul_session(q: np.ndarray, threads: int):
    from recsys_export.bench_graphs import mf_bare, session

    return session(mf_bare(np.ascontiguousarray(q.T)), threads)


def run_bare(sess, p: np.ndarray, n_items: int, block: int) -> None:
    out = np.empty((block, n_items), dtype=np.float32)
    for s in range(0, p.shape[0], block):
        x = p[s : s + block]
        b = sess.io_binding()
        b.bind_cpu_input("x", x)
        b.bind_output("y", "cpu", 0, np.float32, [x.shape[0], n_items], out.ctypes.data)
        sess.run_with_iobinding(b)


def main_bench(args: argparse.Namespace) -> dict:
    import torch

    from recsys_export.runtime import Recommender

    tmp = tempfile.TemporaryDirectory(prefix="runtime_bench_")
    bundle = Path(tmp.name) / "bundle"
    t0 = time.perf_counter()
    model = build_bundle(args, bundle)
    export_s = time.perf_counter() - t0
    rec = Recommender.load(bundle)
    threads = os.cpu_count() or 1
    p = model.user_factors.weight.detach().numpy().copy()
    q = model.item_factors.weight.detach().numpy().copy()
    n_users, n_items, k = args.users, args.items, args.k
    results: dict[str, float] = {}

    bare = bare_matmul_session(q, threads)
    block_times = {}
    for block in sorted({rec.block_users, 64, 256, 1024}):
        block_times[block] = best(lambda b=block: run_bare(bare, p, n_items, b), args.repeat)
    ceiling_block = min(block_times, key=block_times.get)
    results["ort_bare_matmul"] = block_times[ceiling_block]

    qt = np.ascontiguousarray(q.T)
    nbuf = np.empty((1024, n_items), dtype=np.float32)

    def numpy_mm() -> None:
        for s in range(0, n_users, 1024):
            x = p[s : s + 1024]
            np.matmul(x, qt, out=nbuf[: x.shape[0]])

    results["numpy_matmul"] = best(numpy_mm, args.repeat)

    def torch_eager() -> None:
        with torch.no_grad():
            for s in range(0, n_users, 1024):
                model.score_all(torch.arange(s, min(s + 1024, n_users)))

    results["torch_eager_score_all"] = best(torch_eager, args.repeat)

    def runtime_score_all() -> None:
        for _ in rec.iter_score_all(progress=False):
            pass

    results["runtime_score_all"] = best(runtime_score_all, args.repeat)
    all_users = np.arange(n_users, dtype=np.int64)
    rec.seen_csr()  # load once, outside the timings
    results["runtime_recommend_all"] = best(
        lambda: rec.recommend(all_users, k, by_index=True), args.repeat
    )

    indptr, seen = rec.seen_csr()

    def numpy_topk_all() -> None:
        for idx, scores in rec.iter_score_all(progress=False):
            lo, hi = indptr[idx[0]], indptr[idx[-1] + 1]
            rows = np.repeat(np.arange(idx.size), np.diff(indptr[idx[0] : idx[-1] + 2]))
            scores[rows, seen[lo:hi]] = -np.inf
            part = np.argpartition(scores, n_items - k, axis=1)[:, n_items - k :]
            vals = np.take_along_axis(scores, part, axis=1)
            np.take_along_axis(part, np.argsort(-vals, axis=1), axis=1)

    results["alt_score_all_plus_argpartition"] = best(numpy_topk_all, 1)

    rng = np.random.default_rng(0)
    users = rng.integers(0, n_users, 2000)
    for u in users[:50]:
        rec.recommend(int(u), k, by_index=True)
    lat = np.empty(users.size)
    for j, u in enumerate(users.tolist()):
        t = time.perf_counter()
        rec.recommend(u, k, by_index=True)
        lat[j] = time.perf_counter() - t
    results["single_user_p50"] = float(np.percentile(lat, 50))
    results["single_user_p99"] = float(np.percentile(lat, 99))
    lat_raw = np.empty(users.size)
    for j, u in enumerate(users.tolist()):
        t = time.perf_counter()
        rec.recommend(u, k)
        lat_raw[j] = time.perf_counter() - t
    results["single_user_raw_id_p50"] = float(np.percentile(lat_raw, 50))

    ceiling = results["ort_bare_matmul"]
    print(
        f"MF {n_users} users x {n_items} items x {args.factors} factors, seen {args.seen}/user,"
        f" k={k}, {threads} threads; export {export_s:.1f} s; ceiling block {ceiling_block}"
        f" (bare blocks: {', '.join(f'{b}: {t:.3f}s' for b, t in block_times.items())})"
    )
    print(f"{'measurement':36s} {'seconds':>12s} {'x ceiling':>10s}")
    for name, value in results.items():
        ratio = f"{value / ceiling:10.2f}" if not name.startswith("single") else " " * 10
        unit = f"{value * 1e6:9.1f} us" if name.startswith("single") else f"{value:12.3f}"
        print(f"{name:36s} {unit:>12s} {ratio}")
    report = {
        "config": vars(args) | {"threads": threads, "ceiling_block": int(ceiling_block)},
        "seconds": results,
        "ratio_to_ceiling": {
            n: v / ceiling for n, v in results.items() if not n.startswith("single")
        },
        "bare_block_seconds": {str(b): t for b, t in block_times.items()},
        "runtime_block": rec.block_users,
    }
    tmp.cleanup()
    return report


def main_rss(args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory(prefix="runtime_rss_") as tmp:
        bundle = Path(tmp) / "bundle"
        cmd = [sys.executable, __file__, "--export-only", str(bundle)]
        cmd += ["--users", str(args.users), "--items", str(args.items)]
        cmd += ["--factors", str(args.factors), "--seen", str(args.seen)]
        subprocess.run(cmd, check=True)
        from recsys_export.runtime import Recommender

        assert "torch" not in sys.modules
        rec = Recommender.load(bundle)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        out = Path(tmp) / "scores.npy"
        t0 = time.perf_counter()
        rec.write_score_matrix(out, memory_budget_mb=args.memory_budget_mb, progress=True)
        seconds = time.perf_counter() - t0
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        size_gb = out.stat().st_size / 1e9
    print(
        f"write_score_matrix {args.users} x {args.items}: {size_gb:.2f} GB in {seconds:.1f} s;"
        f" peak RSS before writing {before:.0f} MiB, after {peak:.0f} MiB"
    )
    return {
        "users": args.users,
        "items": args.items,
        "file_gb": size_gb,
        "seconds": seconds,
        "rss_before_mib": before,
        "peak_rss_mib": peak,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--users", type=int, default=100000)
    ap.add_argument("--items", type=int, default=20000)
    ap.add_argument("--factors", type=int, default=64)
    ap.add_argument("--seen", type=int, default=50)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--rss", action="store_true", help="measure write_score_matrix peak RSS")
    ap.add_argument("--memory-budget-mb", type=float, default=256)
    ap.add_argument("--export-only", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.export_only is not None:
        build_bundle(args, args.export_only)
        return 0
    report = main_rss(args) if args.rss else main_bench(args)
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
