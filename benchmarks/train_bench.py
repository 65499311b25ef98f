"""Training benchmark: RMSE, MAE, NDCG@10 and wall time of both models.

    python benchmarks/train_bench.py [--data ratings.csv] [--json .bench/train.json]

Uses a seeded random 80/20 split and the CLI's default hyperparameters for each model,
plus the toy-matrix recipes (the post's loop and the tiny-data preset). Prints a table and
writes JSON. Timings depend on the machine and its load: the table prints the core count
and the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from recsys_export import data
from recsys_export.cli import MODEL_DEFAULTS
from recsys_export.evaluate import evaluate
from recsys_export.train import POST_PRESET, TINY_DATA_PRESET, TrainConfig, fit, predict

SHARED = (
    Path(__file__).resolve().parents[2] / "shared" / "datasets" / "ml-latest-small" / "ratings.csv"
)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data", type=Path, default=SHARED if SHARED.exists() else data.default_dataset_path()
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=Path(".bench") / "train.json")
    args = parser.parse_args()

    rows = []
    ratings = data.read_ratings(args.data)
    train, valid = data.random_split(ratings, 0.2, seed=args.seed)
    for kind in ("mf", "densenet"):
        cfg = TrainConfig.from_dict({"model": kind, "seed": args.seed, **MODEL_DEFAULTS[kind]})
        t0 = time.perf_counter()
        model, history = fit(train, valid, cfg, progress=False)
        seconds = time.perf_counter() - t0
        m = evaluate(model, train, valid, k=10)
        rows.append(
            {
                "data": args.data.name,
                "model": kind,
                "rmse": m["rmse"],
                "mae": m["mae"],
                "ndcg@10": m["ndcg@10"],
                "epochs": len(history.train_loss),
                "best_epoch": history.best_epoch,
                "seconds": seconds,
            }
        )
    toy = data.toy_ratings()
    for name, preset in (("post", POST_PRESET), ("tiny", TINY_DATA_PRESET)):
        for kind in ("mf", "densenet"):
            cfg = TrainConfig(**{**preset, "model": kind, "seed": args.seed})
            t0 = time.perf_counter()
            model, history = fit(toy, None, cfg, progress=False)
            seconds = time.perf_counter() - t0
            mse = float(np.mean((predict(model, toy) - toy.ratings) ** 2))
            rows.append(
                {
                    "data": f"toy ({name} preset)",
                    "model": kind,
                    "rmse": mse**0.5,
                    "mae": None,
                    "ndcg@10": None,
                    "epochs": len(history.train_loss),
                    "best_epoch": history.best_epoch,
                    "seconds": seconds,
                }
            )

    load = os.getloadavg()[0]
    print(f"cores: {os.cpu_count()}, torch threads: {torch.get_num_threads()}, load avg {load:.2f}")
    print(
        f"{'data':<22} {'model':<9} {'RMSE':>7} {'MAE':>7} {'NDCG@10':>8} "
        f"{'epochs':>7} {'seconds':>8}"
    )
    for r in rows:
        mae = f"{r['mae']:.4f}" if r["mae"] is not None else "-"
        ndcg = f"{r['ndcg@10']:.4f}" if r["ndcg@10"] is not None else "-"
        print(
            f"{r['data']:<22} {r['model']:<9} {r['rmse']:>7.4f} {mae:>7} {ndcg:>8} "
            f"{r['epochs']:>7} {r['seconds']:>8.2f}"
        )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps({"cores": os.cpu_count(), "load_avg": load, "rows": rows}, indent=2)
    )
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
