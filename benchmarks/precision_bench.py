"""What reduced precision costs in ranking, and what it buys in speed, on trained models.

Usage::

    python benchmarks/precision_bench.py --json .bench/precision.json
    python benchmarks/precision_bench.py --checkpoint ml-mf=runs/mf.pt --precision int8

For each checkpoint (default: the models below, trained into ``--models-dir`` with the
``train`` defaults when they are missing) the script exports a bundle with its variant
(MF: ``int8``; DenseNet: ``fp16``; ``--precision`` overrides), takes the judgement
``export`` recorded (:mod:`recsys_export.parity.approx`: recall of the exact top-k lists
over up to 2000 users, the score error) and times, in one process and interleaved
rounds, the exact runtime and the variant: ``score_all`` of every user, recommend-all
top-10 with the seen items excluded, single-user top-10 p50. It prints a table and writes
JSON (``{"machine", "rows": [...]}``).

Default models (``--models-dir``, trained when missing):

* ``ml-mf`` / ``ml-dn``: ``recsys-export train`` on ml-latest-small (MF, DenseNet);
* ``mt-mf`` / ``mt-dn``: the same on MovieTweetings (``ratings.dat``);
* ``syn-mf``: MF trained with the rating objective on 2M ratings of
  :func:`recsys_export.data.synthetic_ratings` (100k users x 20k items, rank-4 taste,
  popularity skew 0.5): a model whose top-k lists are personal, at the bench's size.

The real files are read from ``--datasets`` (default ``../shared/datasets`` beside the
repository); a model whose file is absent is skipped with the reason.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DATASETS = ROOT.parent.parent / "shared" / "datasets"
REAL = {
    "ml-mf": ("mf", "ml-latest-small/ratings.csv"),
    "ml-dn": ("densenet", "ml-latest-small/ratings.csv"),
    "mt-mf": ("mf", "movietweetings-100k/ratings.dat"),
    "mt-dn": ("densenet", "movietweetings-100k/ratings.dat"),
}
SYNTHETIC = {"users": 100_000, "items": 20_000, "ratings": 2_000_000, "rank": 4, "skew": 0.5}


def _train_real(name: str, datasets: Path, out: Path) -> str | None:
    kind, rel = REAL[name]
    data = datasets / rel
    if not data.exists():
        return f"{data} not found"
    cmd = [sys.executable, "-m", "recsys_export.cli", "train", str(data), "--model", kind]
    subprocess.run([*cmd, "--out", str(out), "--force", "-q"], check=True, cwd=ROOT)
    return None


def _train_synthetic(out: Path) -> None:
    from recsys_export.data import synthetic_ratings
    from recsys_export.experiment import train_checkpoint
    from recsys_export.train import default_config

    s = SYNTHETIC
    ratings = synthetic_ratings(
        s["users"],
        s["items"],
        n_ratings=s["ratings"],
        n_factors=s["rank"],
        popularity_skew=s["skew"],
        seed=0,
    )
    ckpt, _ = train_checkpoint(ratings, default_config("mf", objective="rating"), progress=False)
    ckpt.save(out)


def _checkpoints(args: argparse.Namespace) -> dict[str, Path | str]:
    """name -> checkpoint path, or the reason it is skipped."""
    if args.checkpoint:
        return {n: Path(p) for n, p in (c.split("=", 1) for c in args.checkpoint)}
    args.models_dir.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path | str] = {}
    for name in [*REAL, "syn-mf"]:
        path = args.models_dir / f"{name}.pt"
        if not path.exists():
            print(f"training {name} into {path} ...", flush=True)
            if name == "syn-mf":
                _train_synthetic(path)
            else:
                why = _train_real(name, args.datasets, path)
                if why:
                    out[name] = why
                    continue
        out[name] = path
    return out


def _time_rows(exact: Any, approx: Any, repeat: int, calls: int) -> dict[str, Any]:
    """Median seconds of score_all and recommend-all, p50 single-user, exact vs variant."""
    users = np.arange(exact.n_users, dtype=np.int64)
    k = min(10, exact.n_items)

    def score_all(r: Any) -> None:
        for _ in r.iter_score_all(users, progress=False):
            pass

    jobs = {
        ("score_all", "exact"): lambda: score_all(exact),
        ("score_all", "variant"): lambda: score_all(approx),
        ("recommend_all", "exact"): lambda: exact.recommend(users, k, by_index=True),
        ("recommend_all", "variant"): lambda: approx.recommend(users, k, by_index=True),
    }
    runs: dict[tuple[str, str], list[float]] = {key: [] for key in jobs}
    for fn in jobs.values():
        fn()  # warm-up
    for _ in range(repeat):
        for key, fn in jobs.items():
            t0 = time.perf_counter()
            fn()
            runs[key].append(time.perf_counter() - t0)
    out: dict[str, Any] = {f"{a}_{b}_s": float(np.median(v)) for (a, b), v in runs.items()}
    picks = np.random.default_rng(1).integers(0, exact.n_users, calls).tolist()
    for label, r in (("exact", exact), ("variant", approx)):
        for u in picks[:50]:
            r.recommend(u, k, by_index=True)
        lat = []
        for u in picks:
            t0 = time.perf_counter()
            r.recommend(u, k, by_index=True)
            lat.append(time.perf_counter() - t0)
        out[f"single_{label}_p50_us"] = float(np.percentile(lat, 50) * 1e6)
    return out


def measure(name: str, ckpt_path: Path, precision: str | None, args: argparse.Namespace) -> dict:
    """Export one checkpoint with its variant, read the judgement, time both."""
    from recsys_export.checkpoint import load_checkpoint
    from recsys_export.export import export_bundle
    from recsys_export.runtime import Recommender

    ckpt = load_checkpoint(ckpt_path)
    precision = precision or ("int8" if ckpt.kind == "mf" else "fp16")
    with tempfile.TemporaryDirectory(prefix="precision-") as tmp:
        t0 = time.perf_counter()
        manifest = export_bundle(ckpt, Path(tmp) / name, precision=precision)
        export_s = time.perf_counter() - t0
        variant = manifest["formats"]["onnx"]["variants"][precision]
        files = manifest["files"]
        variant_bytes = sum(
            f["bytes"] for rel, f in files.items() if rel.startswith(f"onnx/variants/{precision}/")
        )
        exact = Recommender.load(Path(tmp) / name, intra_op_threads=args.threads)
        approx = Recommender.load(
            Path(tmp) / name, intra_op_threads=args.threads, precision=precision
        )
        times = _time_rows(exact, approx, args.repeat, args.calls)
    q = variant["quality"]
    return {
        "model": name,
        "kind": ckpt.kind,
        "precision": precision,
        "users": manifest["model"]["n_users"],
        "items": manifest["model"]["n_items"],
        "export_s": round(export_s, 2),
        "quality": q,
        "factor_bytes": variant.get("factor_bytes"),
        "variant_file_bytes": variant_bytes,
        **times,
    }


def format_rows(rows: list[dict[str, Any]]) -> str:
    """The table: ranking cost and speed of each variant against its exact model."""
    head = (
        f"{'model':8s} {'prec':5s} {'users x items':>15s} {'r@10':>7s} {'r@100':>7s} "
        f"{'sr@10':>7s} {'max err':>8s} {'factors':>8s} {'score_all':>10s} {'rec-all':>8s} "
        f"{'single':>7s}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        if "skipped" in r:
            lines.append(f"{r['model']:8s} skipped: {r['skipped']}")
            continue
        q, fb = r["quality"], r.get("factor_bytes") or {}
        smaller = f"{fb['fp32'] / fb['int8']:.2f}x" if fb else "-"
        lines.append(
            f"{r['model']:8s} {r['precision']:5s} {r['users']:>7,d}x{r['items']:<7,d} "
            f"{q['recall@10']:7.4f} {q['recall@100']:7.4f} {q['score_recall@10']:7.4f} "
            f"{q['score_abs_max']:8.1e} {smaller:>8s} "
            f"{r['score_all_exact_s'] / r['score_all_variant_s']:9.2f}x "
            f"{r['recommend_all_exact_s'] / r['recommend_all_variant_s']:7.2f}x "
            f"{r['single_exact_p50_us'] / r['single_variant_p50_us']:6.2f}x"
        )
    lines.append(
        "r@k: recall of the exact top-k lists by the variant's lists (int8: candidates "
        "re-ranked exactly); sr@10: ranked on the variant's scores alone; factors: fp32 / "
        "int8 bytes of the factor matrices; the last three: exact time / variant time "
        "(> 1: the variant is faster)"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import onnxruntime

    from recsys_export.bench import _cpu_name

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", action="append", metavar="NAME=CKPT", help="a model")
    parser.add_argument("--precision", default=None, help="fp16 or int8 (default by kind)")
    parser.add_argument("--models-dir", type=Path, default=ROOT / "runs" / "precision")
    parser.add_argument("--datasets", type=Path, default=DATASETS)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", type=Path, default=Path(".bench/precision.json"))
    args = parser.parse_args(argv)
    rows = []
    for name, path in _checkpoints(args).items():
        if isinstance(path, str):
            rows.append({"model": name, "skipped": path})
            continue
        print(f"measuring {name} ...", flush=True)
        rows.append(measure(name, path, args.precision, args))
    report = {
        "machine": {
            "cpu": _cpu_name(),
            "nproc": os.cpu_count(),
            "loadavg_end": list(os.getloadavg()),
            "onnxruntime": onnxruntime.__version__,
        },
        "rows": rows,
    }
    print(format_rows(rows))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2))
    print(f"JSON written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
