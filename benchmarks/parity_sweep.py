"""Parity sweep: train default models on every data set and seed, export each, report parity.

    python benchmarks/parity_sweep.py                                   # everything (hours)
    python benchmarks/parity_sweep.py --datasets ml-latest-small --seeds 0,1 --models mf
    python benchmarks/parity_sweep.py --datasets movietweetings-100k --objectives rating
    python benchmarks/parity_sweep.py --tiny                            # seconds (smoke test)

For every (data set, model, objective, seed): ``recsys-export train DATA --model M
--objective O --seed S`` with default flags (in-process), then ``export`` with default
flags (ONNX + TorchScript, parity verified on the staged bundle, the runtime's fast
paths included). One row per model: passed or failed, the worst error / bound ratio per
backend (``eager`` is the model's own float32 arithmetic), whether every top-k list
agreed, a kernel fallback if the export made one, and seconds.

Data sets (``--datasets``, comma list; default all):

``ml-latest-small``, ``movietweetings-100k``
    the shared files under ``/work/shared/datasets`` (skipped with a message if absent);
``synthetic-ratings``
    ratings from a planted low-rank model (``recsys_export.data.synthetic_ratings``,
    1,500 users x 1,000 items, 3% density), both objectives;
``synthetic-groups``
    implicit interactions with planted taste groups (``synthetic_interactions``, 1,500
    users x 1,000 items, 20 per user): the ranking objective only (no ratings to fit);
``toy-post``
    the post's 5 x 4 matrix with the post's preset (``train toy --preset post``): its
    rating objective only.

Rows are appended to ``--json`` as they finish (a run can be split into parts and
resumed: rows already in the file are skipped unless ``--redo``); the table printed at
the end covers every row of the file.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

#: the shared data sets: beside the checkout (``/work/main`` -> ``/work/shared``), above
#: a worktree of it (``/work/wt/NAME``), or ``RECSYS_EXPORT_SHARED``
_HERE = Path(__file__).resolve()
SHARED = next(
    (
        p
        for p in (
            Path(os.environ.get("RECSYS_EXPORT_SHARED", "/nonexistent")),
            _HERE.parents[2] / "shared" / "datasets",
            _HERE.parents[3] / "shared" / "datasets",
        )
        if p.is_dir()
    ),
    _HERE.parents[2] / "shared" / "datasets",
)
FILES = {
    "ml-latest-small": SHARED / "ml-latest-small" / "ratings.csv",
    "movietweetings-100k": SHARED / "movietweetings-100k" / "ratings.dat",
}
SYNTHETIC = ("synthetic-ratings", "synthetic-groups")
DATASETS = (*FILES, *SYNTHETIC, "toy-post")
#: objectives each data set is trained with (a data set without ratings has no rating
#: objective; the post's preset is a rating recipe)
OBJECTIVES = {"synthetic-groups": ("ranking",), "toy-post": ("rating",)}
BACKENDS = ("eager", "torchscript", "onnx", "runtime")


def _synthetic_file(name: str, work: Path, tiny: bool) -> Path:
    """Write a planted data set as CSV (user, item, rating, timestamp) once."""
    from recsys_export.data import synthetic_interactions, synthetic_ratings

    path = work / f"{name}{'-tiny' if tiny else ''}.csv"
    if path.exists():
        return path
    n_users, n_items = (120, 80) if tiny else (1500, 1000)
    if name == "synthetic-ratings":
        r = synthetic_ratings(n_users, n_items, density=0.03 if not tiny else 0.1, seed=7)
    else:
        r = synthetic_interactions(n_users, n_items, per_user=20 if not tiny else 8, seed=7)
    users, items = r.user_map.to_raw(r.users), r.item_map.to_raw(r.items)
    if name == "synthetic-ratings":
        lines = ["user,item,rating,timestamp"] + [
            f"{u},{i},{x:g},{t}" for u, i, x, t in zip(users, items, r.ratings, r.timestamps)
        ]
    else:  # no rating column: implicit feedback, as a click log
        lines = ["user,item,timestamp"] + [
            f"{u},{i},{t}" for u, i, t in zip(users, items, r.timestamps)
        ]
    path.write_text("\n".join(lines) + "\n")
    return path


def _train_argv(
    dataset: str, model: str, objective: str, seed: int, data: str, ckpt: Path, tiny: bool
) -> list[str]:
    argv = ["train", data, "--model", model, "--seed", str(seed), "--out", str(ckpt), "-q"]
    if dataset == "toy-post":
        argv += ["--preset", "post"]
    else:
        argv += ["--objective", objective]
    if tiny:
        argv += ["--epochs", "2"]
    return argv


def run_one(
    dataset: str, model: str, objective: str, seed: int, work: Path, tiny: bool
) -> dict[str, Any]:
    """Train and export one model; the row of the table."""
    from contextlib import redirect_stdout

    from recsys_export.checkpoint import load_checkpoint
    from recsys_export.cli import main as cli
    from recsys_export.errors import ParityError
    from recsys_export.export import export_bundle

    row: dict[str, Any] = {"dataset": dataset, "model": model, "objective": objective, "seed": seed}
    data = (
        str(FILES[dataset])
        if dataset in FILES
        else "toy"
        if dataset == "toy-post"
        else str(_synthetic_file(dataset, work, tiny))
    )
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        ckpt = Path(tmp) / "model.pt"
        t0 = time.perf_counter()
        with redirect_stdout(sys.stderr):
            code = cli(_train_argv(dataset, model, objective, seed, data, ckpt, tiny))
        row["train_s"] = round(time.perf_counter() - t0, 2)
        if code != 0 or not ckpt.exists():
            row.update(passed=None, error=f"train exited {code}")
            return row
        t0 = time.perf_counter()
        try:
            manifest = export_bundle(load_checkpoint(ckpt), Path(tmp) / "bundle")
            report = json.loads((Path(tmp) / "bundle" / "parity.json").read_text())
            row["passed"] = bool(manifest["parity"]["passed"])
        except ParityError as exc:
            report = exc.report.to_dict()  # type: ignore[attr-defined]
            row["passed"] = False
        row["export_s"] = round(time.perf_counter() - t0, 2)
    rows = report["rows"]
    row["ratio"] = {
        b: max((r["max_ratio"] for r in rows if r["format"] == b), default=None) for b in BACKENDS
    }
    row["max_abs_diff"] = max((r["max_abs_diff"] or 0.0) for r in rows)
    row["topk_agree"] = all(r["topk_agree"] == r["topk_users"] for r in rows)
    row["topk_users"] = sum(r["topk_users"] for r in rows)
    row["notes"] = report.get("notes", [])
    row["failed"] = [f"{r['format']}:{r['entry_point']}" for r in rows if not r["passed"]]
    return row


def _key(row: dict[str, Any]) -> tuple[str, str, str, int]:
    return row["dataset"], row["model"], row["objective"], row["seed"]


def _fmt_ratio(x: Any) -> str:
    return "-" if x is None else f"{x:.3g}"


def table(rows: list[dict[str, Any]]) -> str:
    """One line per model, then the totals."""
    head = (
        f"{'data set':<20} {'model':<8} {'objective':<9} {'seed':>4}  {'result':<6} "
        + " ".join(f"{b:>11}" for b in BACKENDS)
        + f" {'top-k':>5} {'train s':>8} "
        f"{'export s':>8}  notes"
    )
    lines = [head, "-" * len(head)]
    for r in sorted(rows, key=_key):
        result = {True: "PASS", False: "FAIL", None: "ERROR"}[r.get("passed")]
        ratios = " ".join(f"{_fmt_ratio((r.get('ratio') or {}).get(b)):>11}" for b in BACKENDS)
        note = "; ".join(r.get("notes") or []) or r.get("error", "")
        if r.get("failed"):
            note = "failed: " + ", ".join(r["failed"]) + ("; " + note if note else "")
        agree = "yes" if r.get("topk_agree") else "-" if r.get("passed") is None else "NO"
        lines.append(
            f"{r['dataset']:<20} {r['model']:<8} {r['objective']:<9} {r['seed']:>4}  "
            f"{result:<6} {ratios} {agree:>5} {r.get('train_s', 0):>8.1f} "
            f"{r.get('export_s', 0):>8.1f}  {note[:120]}"
        )
    done = [r for r in rows if r.get("passed") is not None]
    worst = {
        b: max(((r.get("ratio") or {}).get(b) or 0.0 for r in done), default=0.0) for b in BACKENDS
    }
    lines.append(
        f"{len(rows)} models: {sum(r.get('passed') is True for r in rows)} passed, "
        f"{sum(r.get('passed') is False for r in rows)} failed, "
        f"{sum(r.get('passed') is None for r in rows)} errors; top-k lists agreed on "
        f"{sum(bool(r.get('topk_agree')) for r in done)} of {len(done)}; worst err/bound: "
        + ", ".join(f"{b} {v:.3g}" for b, v in worst.items())
        + f"; kernel fallbacks: {sum(bool(r.get('notes')) for r in done)}"
    )
    return "\n".join(lines)


def _list(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def main(argv: list[str] | None = None) -> int:
    """Run the sweep (or its selected part); returns 1 if a model failed parity."""
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--datasets", default=",".join(DATASETS), help="comma list")
    p.add_argument("--models", default="mf,densenet", help="comma list")
    p.add_argument("--objectives", default="ranking,rating", help="comma list")
    p.add_argument("--seeds", default="0,1,2,3,4", help="comma list of seeds")
    p.add_argument("--json", type=Path, default=Path(".bench") / "parity_sweep.json")
    p.add_argument("--work", type=Path, default=None, help="scratch directory (default: temp)")
    p.add_argument("--redo", action="store_true", help="rerun rows already in --json")
    p.add_argument(
        "--tiny",
        action="store_true",
        help="synthetic and toy data only, small, 2 epochs (seconds; a smoke test)",
    )
    args = p.parse_args(argv)
    datasets = _list(args.datasets)
    unknown = [d for d in datasets if d not in DATASETS]
    if unknown:
        p.error(f"unknown data set(s) {unknown}; choose from {', '.join(DATASETS)}")
    if args.tiny:
        datasets = [d for d in datasets if d not in FILES]
    seeds = [int(s) for s in _list(args.seeds)]
    rows: list[dict[str, Any]] = []
    if args.json.exists():
        rows = json.loads(args.json.read_text()).get("rows", [])
    done = {_key(r) for r in rows}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        for dataset in datasets:
            if dataset in FILES and not FILES[dataset].exists():
                print(f"skipping {dataset}: {FILES[dataset]} not found", file=sys.stderr)
                continue
            objectives = [
                o
                for o in _list(args.objectives)
                if o in OBJECTIVES.get(dataset, ("ranking", "rating"))
            ]
            for model in _list(args.models):
                for objective in objectives:
                    for seed in seeds:
                        key = (dataset, model, objective, seed)
                        if key in done and not args.redo:
                            continue
                        row = run_one(dataset, model, objective, seed, work, args.tiny)
                        rows = [r for r in rows if _key(r) != key] + [row]
                        _write(args.json, rows)
                        print(table([row]).splitlines()[2], flush=True)
    print(table(rows))
    return 1 if any(r.get("passed") is False for r in rows) else 0


def _write(path: Path, rows: list[dict[str, Any]]) -> None:
    report = {
        "schema_version": 1,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {
            "nproc": os.cpu_count(),
            "python": platform.python_version(),
            "processor": platform.processor() or platform.machine(),
        },
        "rows": rows,
    }
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=2))
    os.replace(tmp, path)


if __name__ == "__main__":
    sys.exit(main())
