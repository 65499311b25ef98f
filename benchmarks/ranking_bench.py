"""Ranking benchmark: our models beside popularity, a bias baseline and implicit's ALS/BPR.

    python benchmarks/ranking_bench.py                       # the shared data sets
    python benchmarks/ranking_bench.py --data ratings.csv --json .bench/ranking.json
    python benchmarks/ranking_bench.py --tiny                # synthetic, seconds (smoke test)

One process, one seeded three-way split per file (the same as ``recsys-export train``:
test 20% of the rows, validation 10% of the rest), the project's own metric code for
every row. Our models train on the training rows and select their epoch on the
validation rows; the baselines and the peers, which select nothing, fit on training +
validation rows (the peers get more data than ours, never less). Every metric is on the
test rows, which nothing is selected on. ``fit s`` is the training loop alone.

Peers: ``implicit`` (``pip install implicit``; rows are skipped with a message when it is
absent): ALS with 64 factors, regularization 0.05, 15 iterations, ratings as confidence;
BPR with 64 factors, 100 iterations. Prints one table per file and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from recsys_export import data
from recsys_export.training.baselines import BiasBaseline, PopularityBaseline
from recsys_export.training.config import default_config
from recsys_export.training.evaluate import concat, default_threshold, evaluate
from recsys_export.training.fit import fit

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"
SHARED_FILES = (
    SHARED / "ml-latest-small" / "ratings.csv",
    SHARED / "movietweetings-100k" / "ratings.dat",
)
COLUMNS = ("rmse", "precision@10", "recall@10", "ndcg@10", "map@10", "coverage@10")


class FactorScorer:
    """A peer's user and item factors behind the ``score_all`` protocol."""

    def __init__(self, user_factors: np.ndarray, item_factors: np.ndarray) -> None:
        self.user_factors = np.asarray(user_factors, dtype=np.float32)
        self.item_factors = np.asarray(item_factors, dtype=np.float32)

    def score_all(self, users: np.ndarray) -> np.ndarray:
        return self.user_factors[users] @ self.item_factors.T

    def predict(self, users: np.ndarray, items: np.ndarray) -> None:
        return None


def _peers(known: data.Ratings, tiny: bool) -> list[tuple[str, str, Any, float]]:
    try:
        import implicit  # noqa: F401
        import scipy.sparse as sp
        from implicit.als import AlternatingLeastSquares
        from implicit.bpr import BayesianPersonalizedRanking
    except ImportError:
        print("note: implicit is not installed: ALS and BPR rows skipped", file=sys.stderr)
        return []
    matrix = sp.csr_matrix(
        (known.ratings.astype(np.float32), (known.users, known.items)),
        shape=(known.n_users, known.n_items),
    )
    out = []
    peers = (
        ("implicit ALS", AlternatingLeastSquares, dict(factors=64, regularization=0.05,
                                                      iterations=3 if tiny else 15)),
        ("implicit BPR", BayesianPersonalizedRanking, dict(factors=64,
                                                           iterations=5 if tiny else 100)),
    )  # fmt: skip
    for name, cls, kwargs in peers:
        model = cls(random_state=0, **kwargs)
        t0 = time.perf_counter()
        model.fit(matrix, show_progress=False)
        seconds = time.perf_counter() - t0
        scorer = FactorScorer(model.user_factors, model.item_factors)
        out.append((name, "implicit", scorer, seconds))
    return out


def bench_file(ratings: data.Ratings, *, seed: int, tiny: bool, models: list[str]) -> list[dict]:
    """Every row of the table for one ratings file."""
    parts = data.three_way_split(ratings, "random", 0.2, 0.1, seed)
    train, valid, test = (ratings.subset(parts == p) for p in (data.TRAIN, data.VALID, data.TEST))
    known = concat(train, valid)
    threshold = default_threshold(ratings)
    rows: list[dict] = []

    def add(name: str, objective: str, scorer: Any, seconds: float, **extra: Any) -> None:
        m = evaluate(scorer, known, test, k=10, threshold=threshold,
                     rating_error=objective in ("rating", "baseline"))  # fmt: skip
        rows.append({"method": name, "objective": objective, "fit_seconds": seconds, **m, **extra})
        print(f"  {name:<18} {objective:<9} ndcg@10 {m['ndcg@10']:.4f}  fit {seconds:.1f}s",
              file=sys.stderr, flush=True)  # fmt: skip

    overrides = dict(epochs=3, patience=0) if tiny else {}
    for kind in models:
        for objective in ("ranking", "rating"):
            cfg = default_config(kind, objective, seed=seed, threshold=threshold, **overrides)
            model, history = fit(train, valid, cfg, progress=False)
            add(f"{kind}", objective, model, history.seconds,
                epochs=len(history.train_loss), best_epoch=history.best_epoch)  # fmt: skip
    t0 = time.perf_counter()
    pop = PopularityBaseline().fit(known)
    add("popularity", "baseline", pop, time.perf_counter() - t0)
    t0 = time.perf_counter()
    bias = BiasBaseline().fit(train, valid)
    add("bias", "baseline", bias, time.perf_counter() - t0, damping=bias.damping)
    for name, objective, scorer, seconds in _peers(known, tiny):
        add(name, objective, scorer, seconds)
    return rows


def format_table(source: str, rows: list[dict], info: str) -> str:
    """The printed table of one file."""
    head = f"{'method':<14}{'objective':<10}" + "".join(f"{c:>13}" for c in COLUMNS)
    head += f"{'med.pop@10':>11}{'fit s':>8}"
    lines = [f"== {source}: {info}", head, "-" * len(head)]
    for r in rows:
        cells = "".join(f"{'-':>13}" if r.get(c) is None else f"{r[c]:>13.4f}" for c in COLUMNS)
        pop = r.get("median_train_count@10")
        lines.append(
            f"{r['method']:<14}{r['objective']:<10}{cells}"
            f"{'-' if pop is None else f'{pop:.0f}':>11}{r['fit_seconds']:>8.1f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, action="append", help="ratings file (repeatable)")
    parser.add_argument("--tiny", action="store_true", help="synthetic data, 3 epochs: seconds")
    parser.add_argument("--models", default="mf,densenet", help="comma-separated (default both)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=Path(".bench") / "ranking.json")
    args = parser.parse_args(argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()]

    if args.tiny:
        sources: list[Any] = [data.synthetic_ratings(300, 200, density=0.08, seed=args.seed)]
    elif args.data:
        sources = list(args.data)
    else:
        sources = [p for p in SHARED_FILES if p.exists()] or [data.default_dataset_path()]
    load = os.getloadavg()
    report: dict[str, Any] = {"nproc": os.cpu_count(), "load_start": load, "files": []}
    tables = []
    for src in sources:
        ratings = src if isinstance(src, data.Ratings) else data.read_ratings(src)
        info = (f"{len(ratings):,} rows, {ratings.n_users:,} users x {ratings.n_items:,} items, "
                f"relevant: rating >= {default_threshold(ratings):g}")  # fmt: skip
        print(f"{ratings.source}: {info}", file=sys.stderr)
        rows = bench_file(ratings, seed=args.seed, tiny=args.tiny, models=models)
        report["files"].append({"source": ratings.source, "info": info, "rows": rows})
        tables.append(format_table(Path(ratings.source).name, rows, info))
    report["load_end"] = os.getloadavg()
    print(f"nproc {os.cpu_count()}, load average start {load[0]:.2f} end "
          f"{report['load_end'][0]:.2f}")  # fmt: skip
    print("\n\n".join(tables))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2, default=float))
    print(f"\nJSON written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
