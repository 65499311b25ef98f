"""Benchmark top-k of every user: local ``write_topk`` vs the Ray engine, and a sizing table.

Usage::

    python benchmarks/ray_bench.py [--users 50000] [--items 10000] [--factors 64] [--k 10]
        [--seen 20] [--workers 1,2] [--wide-items 200000] [--wide-users 2000]
        [--json OUT]

A synthetic biased MF model (init_std 0.1, ``--seen`` random rated items per user, raw
ids different from indices) is exported with ``formats="onnx", verify=False`` into a
temporary directory. Then:

* local: ``Recommender.load(bundle).write_topk(out.parquet, k)`` (one process,
  onnxruntime threads = cores);
* ray: one local Ray instance with every core (its start-up is timed separately), then
  ``score_topk_ray(bundle, dir, k, workers=W)`` for each ``W`` in ``--workers``; each
  output is compared with the local one (items per user and rank, max score diff);
* sizing: users/s per core measured from the Ray blocks (sum of the blocks' own
  seconds, i.e. without actor start-up) and the projected time for 10M users x 1M items
  x 64 factors on N cores, scaling the per-user cost linearly with the number of items;
  ``--wide-items`` (0 to skip) also measures the runtime's ``recommend`` on a model with
  that many items, one thread, to see how far linear scaling in items holds.

The machine may be shared with other work: numbers are noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

TARGET_USERS = 10_000_000
TARGET_ITEMS = 1_000_000
CORES = (1, 16, 64, 256, 1024)


def build_bundle(users: int, items: int, factors: int, seen: int, dest: Path) -> None:
    """Export a synthetic biased MF model (imports torch)."""
    from recsys_export.export import export_bundle
    from recsys_export.models.synthetic import synthetic_checkpoint

    ck = synthetic_checkpoint(
        "mf",
        users,
        items,
        factors=factors,
        seen_per_user=seen,
        user_ids=np.arange(users) * 7 + 100_000,
        item_ids=np.arange(items) * 3 + 5,
    )
    export_bundle(ck, dest, formats="onnx", verify=False)


def compare(local_path: Path, ray_dir: Path) -> dict:
    import pyarrow.parquet as pq

    order = [("user", "ascending"), ("rank", "ascending")]
    a = pq.read_table(local_path).sort_by(order)
    b = pq.read_table(ray_dir).sort_by(order)
    same = a.num_rows == b.num_rows and all(
        np.array_equal(a[c].to_numpy(), b[c].to_numpy()) for c in ("user", "rank", "item")
    )
    diff = (
        float(np.abs(a["score"].to_numpy() - b["score"].to_numpy()).max())
        if a.num_rows == b.num_rows and a.num_rows
        else None
    )
    return {"identical_items": bool(same), "max_score_diff": diff, "rows": b.num_rows}


def wide_rate(items: int, users: int, factors: int, seen: int, k: int, tmp: Path) -> dict:
    """Single-thread recommend throughput on a model with many items."""
    from recsys_export.runtime import Recommender

    dest = tmp / "wide"
    t0 = time.perf_counter()
    build_bundle(users, items, factors, seen, dest)
    export_s = time.perf_counter() - t0
    rec = Recommender.load(dest, intra_op_threads=1)
    idx = np.arange(users, dtype=np.int64)
    rec.recommend(idx[:8], k, by_index=True)  # warm up
    t0 = time.perf_counter()
    for s in range(0, users, 512):
        rec.recommend(idx[s : s + 512], k, by_index=True)
    sec = time.perf_counter() - t0
    return {
        "items": items,
        "users": users,
        "export_seconds": round(export_s, 2),
        "seconds": round(sec, 3),
        "users_per_s_per_core": users / sec,
        "ns_per_pair": sec / (users * items) * 1e9,
    }


def project(ns_per_pair: float) -> list[dict]:
    per_user_s = ns_per_pair * 1e-9 * TARGET_ITEMS
    rows = []
    for n in CORES:
        sec = TARGET_USERS * per_user_s / n
        rows.append({"cores": n, "seconds": sec, "hours": sec / 3600})
    return rows


def fmt_time(sec: float) -> str:
    if sec >= 3600:
        return f"{sec / 3600:8.2f} h"
    if sec >= 60:
        return f"{sec / 60:8.1f} min"
    return f"{sec:8.1f} s"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--users", type=int, default=50_000)
    ap.add_argument("--items", type=int, default=10_000)
    ap.add_argument("--factors", type=int, default=64)
    ap.add_argument("--seen", type=int, default=20)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    ap.add_argument("--wide-items", type=int, default=200_000, help="0: skip")
    ap.add_argument("--wide-users", type=int, default=2_000)
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args()
    workers = [int(w) for w in args.workers.split(",") if w.strip()]

    import onnxruntime
    import ray

    from recsys_export.runtime import Recommender
    from recsys_export.scale import score_topk_ray

    cores = os.cpu_count() or 1
    result: dict = {
        "config": vars(args) | {"json": str(args.json) if args.json else None},
        "machine": {"cpus": cores, "load_avg_start": os.getloadavg()},
        "versions": {"ray": ray.__version__, "onnxruntime": onnxruntime.__version__},
    }
    with tempfile.TemporaryDirectory(prefix="ray-bench-") as tmpdir:
        tmp = Path(tmpdir)
        bundle = tmp / "bundle"
        t0 = time.perf_counter()
        build_bundle(args.users, args.items, args.factors, args.seen, bundle)
        result["export_seconds"] = round(time.perf_counter() - t0, 2)
        print(
            f"exported {args.users} x {args.items} x {args.factors} in "
            f"{result['export_seconds']} s",
            file=sys.stderr,
        )

        runs = []
        local = tmp / "local.parquet"
        for threads in (cores, 1):  # the runtime's default (all cores), then one thread
            t0 = time.perf_counter()
            rec = Recommender.load(bundle, intra_op_threads=threads)
            path = local if threads == cores else tmp / "local-1.parquet"
            rec.write_topk(path, k=args.k, progress=False)
            sec = time.perf_counter() - t0
            runs.append(
                {
                    "engine": "local write_topk",
                    "workers": 1,
                    "threads": threads,
                    "seconds": sec,
                    "users_per_s": args.users / sec,
                }
            )
            del rec
            if threads == 1:
                break

        t0 = time.perf_counter()
        ray.init(address="local", num_cpus=cores, include_dashboard=False, log_to_driver=False)
        result["ray_start_seconds"] = round(time.perf_counter() - t0, 2)
        try:
            block_rates = []
            for w in workers:
                out = tmp / f"ray-{w}"
                blocks: list[dict] = []
                t0 = time.perf_counter()
                summary = score_topk_ray(
                    bundle, out, k=args.k, workers=w, progress=False, on_block_done=blocks.append
                )
                sec = time.perf_counter() - t0
                busy = sum(b["seconds"] for b in blocks)
                check = compare(local, out)
                runs.append(
                    {
                        "engine": "ray",
                        "workers": w,
                        "threads": 1,
                        "seconds": sec,
                        "users_per_s": args.users / sec,
                        "blocks": summary["blocks"],
                        "block_users": summary["block_users"],
                        "block_seconds_sum": busy,
                        **check,
                    }
                )
                block_rates.append(args.users / busy)
        finally:
            ray.shutdown()
        result["runs"] = runs

        per_core = max(block_rates)  # users/s of one worker on one core, block time only
        ns_pair = 1e9 / (per_core * args.items)
        sizing: dict = {
            "users_per_s_per_core": per_core,
            "ns_per_pair": ns_pair,
            "target": {"users": TARGET_USERS, "items": TARGET_ITEMS, "factors": args.factors},
            "linear": project(ns_pair),
        }
        if args.wide_items:
            wide = wide_rate(args.wide_items, args.wide_users, args.factors, args.seen, args.k, tmp)
            sizing["wide"] = wide
            sizing["linear_from_wide"] = project(wide["ns_per_pair"])
        result["sizing"] = sizing
    result["machine"]["load_avg_end"] = os.getloadavg()

    print(
        f"\n{args.users} users x {args.items} items x {args.factors} factors, top-{args.k}, "
        f"{cores} cores (Ray start-up {result['ray_start_seconds']} s, not included)"
    )
    print(f"{'engine':<18}{'workers':>8}{'threads':>8}{'seconds':>10}{'users/s':>12}  vs local")
    for r in runs:
        chk = (
            ""
            if r["engine"] != "ray"
            else (
                f"{'identical' if r['identical_items'] else 'DIFFERENT'} items, "
                f"max |score diff| {r['max_score_diff']:.1e}"
            )
        )
        print(
            f"{r['engine']:<18}{r['workers']:>8}{r['threads']:>8}{r['seconds']:>10.2f}"
            f"{r['users_per_s']:>12,.0f}  {chk}"
        )
    print(
        f"\nper core: {per_core:,.0f} users/s at {args.items} items = {ns_pair:.2f} ns per "
        "(user, item) pair"
    )
    head = f"{'cores':>6}  {'10M x 1M, linear':>18}"
    if "wide" in sizing:
        w = sizing["wide"]
        print(
            f"wide model: {w['items']} items, 1 thread: {w['users_per_s_per_core']:,.0f} "
            f"users/s = {w['ns_per_pair']:.2f} ns per pair"
        )
        head += f"  {'from wide model':>18}"
    print(
        f"\nprojected time, {TARGET_USERS:,} users x {TARGET_ITEMS:,} items x "
        f"{args.factors} factors (ideal scaling, no start-up):"
    )
    print(head)
    for j, row in enumerate(sizing["linear"]):
        line = f"{row['cores']:>6}  {fmt_time(row['seconds']):>18}"
        if "wide" in sizing:
            line += f"  {fmt_time(sizing['linear_from_wide'][j]['seconds']):>18}"
        print(line)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
