"""Generic-path throughput: a two-tower module's full score matrix, exported vs eager torch.

    python benchmarks/own_model_bench.py                          # 1000 users x 2000 items
    python benchmarks/own_model_bench.py --users 4000 --items 20000 --json .bench/own.json
    python benchmarks/own_model_bench.py --tiny                   # seconds (smoke test)

The model is the two-tower example of ``docs/own-model.md`` (embeddings ``--dim``, towers
``dim -> --hidden -> dim``, dot product), random weights. It is exported with
``recsys_export.byom.export_model`` (generic path, ONNX + TorchScript, no parity run: the
test suite checks parity) and every row computes the same ``[users, items]`` matrix:

``eager pairwise``
    the module itself over every (user, item) pair, in blocks of ``block_pairs`` pairs
    (``ModuleRecommender.score_all`` in eager mode): what the generic path computes.
``eager towers once``
    a hand-written ``score_all`` for this architecture: each tower once, then one matrix
    product. Not available to the generic path (it only knows ``forward``); shown as the
    reference a model-specific export would reach.
``torchscript``
    the bundle's TorchScript ``score_all`` (its own user blocks).
``runtime``
    ``Recommender.iter_score_all`` on the bundle's ONNX graphs (onnxruntime, no torch).

Every row is checked against ``eager pairwise`` (max abs difference printed). Prints a
table (median of ``--repeats`` runs) and writes JSON.

``--export-verify RATINGS`` measures something else: the whole export *with* parity of
this two-tower sized to a ratings file's ids (``export_model(module, out, ratings=df)``,
default flags, progress line on), its seconds and the process's peak RSS (run it in a
process of its own: the peak includes importing torch)::

    python benchmarks/own_model_bench.py --export-verify ml-latest-small/ratings.csv
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from recsys_export.byom import DEFAULT_BLOCK_PAIRS, ModuleRecommender, export_model
from recsys_export.plan import describe_plan
from recsys_export.runtime import Recommender


class TwoTower(nn.Module):
    """User and item MLP towers over embeddings, scored by a dot product."""

    def __init__(self, n_users: int, n_items: int, dim: int = 16, hidden: int = 32) -> None:
        super().__init__()
        self.user_embedding = nn.Embedding(n_users, dim)
        self.item_embedding = nn.Embedding(n_items, dim)
        self.user_tower = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, dim))
        self.item_tower = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, dim))

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        u = self.user_tower(self.user_embedding(users))
        i = self.item_tower(self.item_embedding(items))
        return (u * i).sum(-1)

    def towers_once(self, users: torch.Tensor) -> torch.Tensor:
        """The architecture-specific full matrix: each tower once, one matrix product."""
        u = self.user_tower(self.user_embedding(users))
        i = self.item_tower(self.item_embedding.weight)
        return u @ i.t()


def _time(fn: Callable[[], np.ndarray], repeats: int) -> tuple[list[float], np.ndarray]:
    runs, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        runs.append(time.perf_counter() - t0)
    assert out is not None
    return runs, out


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns 0."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--users", type=int, default=1000)
    p.add_argument("--items", type=int, default=2000)
    p.add_argument("--dim", type=int, default=32)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--block-pairs", type=int, default=DEFAULT_BLOCK_PAIRS)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch and onnxruntime threads")
    p.add_argument(
        "--tiny", action="store_true", help="60 users x 80 items, dim 8, hidden 16, 1 repeat"
    )
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    p.add_argument(
        "--export-verify",
        type=Path,
        default=None,
        metavar="RATINGS",
        help="time export_model with verification on this ratings file's ids, peak RSS",
    )
    args = p.parse_args(argv)
    if args.export_verify is not None:
        return export_verify(args)
    if args.tiny:
        args.users, args.items, args.dim, args.hidden, args.repeats = 60, 80, 8, 16, 1
    threads = args.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    module = TwoTower(args.users, args.items, args.dim, args.hidden).eval()
    users = torch.arange(args.users)
    pairs = args.users * args.items
    rows: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        export_model(
            module,
            Path(tmp) / "bundle",
            formats="onnx,torchscript",
            verify=False,
            block_pairs=args.block_pairs,
        )
        export_s = time.perf_counter() - t0
        wrapper = ModuleRecommender(module, args.users, args.items, block_pairs=args.block_pairs)
        rec = Recommender.load(Path(tmp) / "bundle", intra_op_threads=threads)
        scripted = torch.jit.load(str(Path(tmp) / "bundle" / "torchscript" / "model.pt"))

        def runtime_all() -> np.ndarray:
            out = np.empty((args.users, args.items), dtype=np.float32)
            for chunk, scores in rec.iter_score_all(progress=False):
                out[chunk] = scores
            return out

        with torch.no_grad():
            candidates: dict[str, Callable[[], np.ndarray]] = {
                "eager pairwise": lambda: wrapper.score_all(users).numpy(),
                "eager towers once": lambda: module.towers_once(users).numpy(),
                "torchscript": lambda: scripted.score_all(users).numpy(),
                "runtime": runtime_all,
            }
            reference = None
            for name, fn in candidates.items():
                runs, out = _time(fn, args.repeats)
                if reference is None:
                    reference = out
                median = float(np.median(runs))
                rows[name] = {
                    "runs_s": [round(r, 4) for r in runs],
                    "median_s": round(median, 4),
                    "pairs_per_s": pairs / median,
                    "ns_per_pair": median / pairs * 1e9,
                    "max_abs_diff": float(np.abs(out - reference).max()),
                }
    base = rows["eager pairwise"]["median_s"]
    for row in rows.values():
        row["speedup_vs_eager_pairwise"] = base / row["median_s"]
    print(
        f"two-tower score_all: {args.users} users x {args.items} items, dim {args.dim}, "
        f"hidden {args.hidden}, block_pairs {args.block_pairs}, {threads} threads "
        f"(export {export_s:.1f}s)"
    )
    head = (
        f"{'row':<18} {'median s':>9} {'Mpairs/s':>9} {'ns/pair':>8} {'vs eager':>9} "
        f"{'max diff':>9}"
    )
    print(head)
    print("-" * len(head))
    for name, r in rows.items():
        print(
            f"{name:<18} {r['median_s']:>9.3f} {r['pairs_per_s'] / 1e6:>9.2f} "
            f"{r['ns_per_pair']:>8.1f} {r['speedup_vs_eager_pairwise']:>8.2f}x "
            f"{r['max_abs_diff']:>9.1e}"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        report = {
            "schema_version": 1,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": {
                "nproc": os.cpu_count(),
                "python": platform.python_version(),
                "torch": torch.__version__,
                "loadavg": list(os.getloadavg()),
            },
            "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "export_seconds": round(export_s, 3),
            "rows": rows,
        }
        args.json.write_text(json.dumps(report, indent=2))
    return 0


def export_verify(args: argparse.Namespace) -> int:
    """``--export-verify``: one verified export of the two-tower, seconds and peak RSS."""
    import resource

    import pandas as pd

    df = pd.read_csv(args.export_verify)
    n_users, n_items = int(df.iloc[:, 0].nunique()), int(df.iloc[:, 1].nunique())
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    module = TwoTower(n_users, n_items, args.dim, args.hidden).eval()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        result = export_model(module, Path(tmp) / "bundle", ratings=df, progress=True)
        seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    parity = result.manifest["parity"]
    row = {
        "users": n_users,
        "items": n_items,
        "dim": args.dim,
        "hidden": args.hidden,
        "export_seconds": round(seconds, 2),
        "parity_seconds": parity["seconds"],
        "peak_rss_mib": round(peak / 2**20, 1),
        "passed": parity["passed"],
        "max_ratio": parity["max_ratio"],
        "plan": describe_plan(parity["plan"]),
    }
    print(
        f"two-tower export with verification: {n_users} users x {n_items} items, dim "
        f"{args.dim}, hidden {args.hidden} ({args.export_verify})"
    )
    print(f"{'export s':>9} {'parity s':>9} {'peak RSS MiB':>13} {'err/bound':>10}  result")
    print(
        f"{row['export_seconds']:>9.2f} {row['parity_seconds']:>9.2f} "
        f"{row['peak_rss_mib']:>13.1f} {row['max_ratio']:>10.3g}  "
        f"{'PASS' if row['passed'] else 'FAIL'}"
    )
    print(row["plan"])
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        report = {
            "schema_version": 1,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": {"nproc": os.cpu_count(), "loadavg": list(os.getloadavg())},
            "export_verify": row,
        }
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
