"""The ``recsys-export`` command line.

Every user error (a :class:`~recsys_export.errors.RecsysExportError`) becomes one line
on stderr and exit status 2; a failed parity check exits 1; Ctrl-C exits 130 without
writing anything partial. Heavy imports (torch) happen inside the commands that need
them, so ``recommend``/``score``/``inspect`` work with the runtime-only install.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from recsys_export import __version__
from recsys_export.errors import ParityError, RecsysExportError

DATA_HELP = (
    "ratings file (CSV, TSV, '::'-separated .dat, MovieLens u.data, Parquet); "
    "'movielens-small' (default) is the bundled MovieLens latest-small sample, "
    "'toy' the post's 5x4 matrix"
)

EPILOG_TRAIN = """\
examples:
  recsys-export train                                  # biased MF on the bundled MovieLens sample
  recsys-export train ratings.csv --model densenet --out runs/dense.pt
  recsys-export train ratings.dat --split time --epochs 20
  recsys-export train toy --preset post --model mf     # the post's exact recipe on its 5x4 matrix

Defaults per model (override any flag):
  mf:       --factors 32 --batch-size 2048 --lr 5e-3 --l2 0.15 --biased
  densenet: --factors 32 --hidden 64 --batch-size 2048 --lr 5e-3 --l2 0.05
            --dropout 0.2 --weight-decay 1e-4 --biased
Presets: 'post' = the post's loop (per-rating SGD, lr 1e-3, 500 epochs, 3 factors,
no biases); 'tiny' = full-batch Adam for tiny data such as the toy matrix.
Duplicate (user, item) rows keep the last occurrence (--duplicates to change).
"""


def _add_data_args(p: argparse.ArgumentParser, *, optional: bool = True) -> None:
    p.add_argument("data", nargs="?" if optional else None, default=None, help=DATA_HELP)
    g = p.add_argument_group("reading the ratings file")
    g.add_argument(
        "--user-col", help="user id column (name or 0-based position); detected by default"
    )
    g.add_argument("--item-col", help="item id column (name or position)")
    g.add_argument("--rating-col", help="rating column (name or position)")
    g.add_argument("--timestamp-col", help="timestamp column (name or position)")
    g.add_argument("--sep", help="field separator (default: detected; e.g. ',', 'tab', '::')")
    g.add_argument(
        "--duplicates",
        choices=["last", "first", "mean", "error"],
        default="last",
        help="policy for duplicate (user, item) rows (default: keep the last)",
    )
    s = p.add_argument_group("validation split")
    s.add_argument(
        "--split",
        choices=["random", "time", "none"],
        default="random",
        help="random holdout, per-user latest ratings (needs timestamps), or none",
    )
    s.add_argument("--test-fraction", type=float, default=0.2, help="held-out share (default 0.2)")
    s.add_argument("--seed", type=int, default=0, help="seed of the split, init and shuffling")


def _budget(text: str) -> int:
    """``--budget PAIRS``: a positive integer (``16000000``, ``16_000_000`` or ``1.6e7``)."""
    try:
        value = float(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of pairs: {text!r}") from None
    if not value >= 1 or value != int(value):
        raise argparse.ArgumentTypeError(f"must be a positive whole number of pairs: {text!r}")
    return int(value)


def _add_plan_args(p: argparse.ArgumentParser) -> None:
    """``--full`` / ``--budget`` of export and verify (the parity plan)."""
    from recsys_export.plan import DEFAULT_BUDGET

    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "--full",
        action="store_true",
        help="compare every user's whole row, whatever the budget",
    )
    g.add_argument(
        "--budget",
        type=_budget,
        metavar="PAIRS",
        help=f"(user, item) pairs compared per format: the whole matrix while it fits, "
        f"else every item for a seeded, edge-covering sample of users (default {DEFAULT_BUDGET:,})",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every sub-command."""
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="recsys-export",
        formatter_class=fmt,
        description=(
            "Train PyTorch recommenders (matrix factorization, DenseNet), export them to "
            "TorchScript / ONNX / torch.export bundles proven to match the eager model, and "
            "serve them with onnxruntime."
        ),
        epilog=(
            "typical flow:\n"
            "  recsys-export train ratings.csv --out runs/mf.pt\n"
            "  recsys-export export runs/mf.pt --out artifacts/mf\n"
            "  recsys-export verify artifacts/mf\n"
            "  recsys-export recommend artifacts/mf --user 42 -k 10\n"
            "  recsys-export score artifacts/mf --all --top-k 10 --out top10.parquet\n\n"
            "Run 'recsys-export COMMAND --help' for the options of each command."
        ),
    )
    parser.add_argument("--version", action="version", version=f"recsys-export {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser(
        "train",
        help="train a model and write a checkpoint",
        formatter_class=fmt,
        description="Train MF or DenseNet on a ratings file; write a checkpoint "
        "with weights, id maps, seen items and validation metrics.",
        epilog=EPILOG_TRAIN,
    )
    _add_data_args(p)
    p.add_argument(
        "--model", choices=["mf", "densenet"], default="mf", help="model kind (default mf)"
    )
    p.add_argument("--out", type=Path, help="checkpoint path (default runs/MODEL.pt)")
    p.add_argument("--force", action="store_true", help="overwrite an existing checkpoint")
    p.add_argument(
        "--preset",
        choices=["default", "post", "tiny"],
        default="default",
        help="hyperparameter preset (see below)",
    )
    h = p.add_argument_group("hyperparameters (defaults depend on --model and --preset)")
    h.add_argument("--factors", type=int, help="embedding size")
    h.add_argument("--hidden", type=int, help="DenseNet hidden width")
    h.add_argument(
        "--biased",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="global mean (+ user/item biases for MF)",
    )
    h.add_argument("--dropout", type=float, help="DenseNet hidden-layer dropout")
    h.add_argument("--epochs", type=int, help="maximum epochs")
    h.add_argument("--batch-size", type=int, help="ratings per step (0 = full batch)")
    h.add_argument("--lr", type=float, help="learning rate")
    h.add_argument("--optimizer", choices=["adam", "sparse_adam", "sgd"], help="optimizer")
    h.add_argument("--l2", type=float, help="L2 on each batch's embeddings")
    h.add_argument("--weight-decay", type=float, help="weight decay of dense layers")
    h.add_argument("--init-std", type=float, help="embedding init std")
    h.add_argument("--threads", type=int, help="torch CPU threads while training (default 1)")
    h.add_argument("--patience", type=int, help="early-stopping patience in epochs (0 = off)")
    m = p.add_argument_group("metrics")
    m.add_argument(
        "-k", "--k", type=int, default=10, help="cut-off of ranking metrics (default 10)"
    )
    m.add_argument(
        "--threshold",
        type=float,
        default=4.0,
        help="held-out ratings >= this are relevant (default 4.0)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")

    p = sub.add_parser(
        "evaluate",
        help="RMSE, MAE and ranking metrics of a checkpoint",
        formatter_class=fmt,
        description="Re-split the checkpoint's data (same seed and split unless "
        "given) and report RMSE, MAE, precision@k, recall@k and NDCG@k.",
    )
    p.add_argument("checkpoint", type=Path, help="checkpoint written by 'train'")
    _add_data_args(p)
    p.add_argument("-k", "--k", type=int, default=10, help="cut-off (default 10)")
    p.add_argument("--threshold", type=float, default=4.0, help="relevance threshold (default 4.0)")
    p.add_argument("--json", action="store_true", help="print JSON")

    p = sub.add_parser(
        "export",
        help="export a checkpoint to a verified bundle",
        formatter_class=fmt,
        description="Write TorchScript, ONNX and torch.export (.pt2) files for "
        "score, score_all and recommend into a bundle directory (atomically), "
        "then verify parity with the eager model (on by default).",
        epilog="example:\n  recsys-export export runs/mf.pt --out artifacts/mf "
        "--formats onnx,torchscript,pt2",
    )
    p.add_argument("checkpoint", type=Path, help="checkpoint written by 'train'")
    p.add_argument("--out", type=Path, required=True, help="bundle directory to create")
    p.add_argument(
        "--formats",
        default="onnx,torchscript,pt2",
        help="comma-separated subset of onnx,torchscript,pt2 (default: all)",
    )
    p.add_argument("--force", action="store_true", help="replace an existing bundle")
    p.add_argument(
        "--no-verify",
        dest="verify",
        action="store_false",
        help="skip the parity check (not recommended)",
    )
    p.add_argument(
        "--external-data",
        action="store_true",
        help="keep ONNX weights in a side file (automatic above 2 GB)",
    )
    p.add_argument("--atol", type=float, default=1e-5, help="parity abs tolerance (default 1e-5)")
    p.add_argument("--rtol", type=float, default=1e-5, help="parity rel tolerance (default 1e-5)")
    _add_plan_args(p)
    p.add_argument("-q", "--quiet", action="store_true", help="print only the bundle path")

    p = sub.add_parser(
        "verify",
        help="check a bundle against the eager model",
        formatter_class=fmt,
        description="Compare eager PyTorch with TorchScript, torch.export and "
        "onnxruntime on every entry point (random batches of 1, 2, 7, 1024; then the "
        "verification plan: the whole user x item matrix while it fits the budget, "
        "else every item for a seeded sample of users covering the edges, random "
        "pairs over the whole matrix, recommend with k in {1, 10, n_items}). Prints a "
        "table and the plan, writes parity.json into the bundle. Exit 0 on pass, 1 on "
        "failure.",
    )
    p.add_argument("bundle", type=Path)
    p.add_argument(
        "--checkpoint",
        type=Path,
        help="compare with this checkpoint instead of the bundle's reference weights",
    )
    p.add_argument(
        "--formats",
        help="subset of onnx,torchscript,pt2,runtime to check (default: all; 'runtime' is "
        "the Python onnxruntime runtime with its fast-path graphs)",
    )
    p.add_argument("--atol", type=float, default=1e-5, help="abs tolerance (default 1e-5)")
    p.add_argument("--rtol", type=float, default=1e-5, help="rel tolerance (default 1e-5)")
    p.add_argument("--quick", action="store_true", help="random batches only, no plan")
    _add_plan_args(p)
    p.add_argument(
        "--no-record",
        dest="record",
        action="store_false",
        help="do not write parity.json / update the manifest",
    )
    p.add_argument("--json", action="store_true", help="print the full report as JSON")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")

    p = sub.add_parser(
        "inspect",
        help="describe a bundle",
        formatter_class=fmt,
        description="Print a bundle's model, sizes, files, entry points "
        "(inputs/outputs), metrics and parity summary. Verifies checksums.",
    )
    p.add_argument("bundle", type=Path)
    p.add_argument("--json", action="store_true", help="print the manifest as JSON")

    p = sub.add_parser(
        "recommend",
        help="top-k items for users (onnxruntime)",
        formatter_class=fmt,
        description="Recommend with the bundle's ONNX graphs; items the user "
        "already rated are left out unless --include-seen.",
        epilog="example:\n  recsys-export recommend artifacts/mf --user 42 --user 7 -k 5 --json",
    )
    p.add_argument("bundle", type=Path)
    p.add_argument("--user", action="append", required=True, help="raw user id (repeatable)")
    p.add_argument(
        "-k",
        "--k",
        type=int,
        default=None,
        help="number of items (default 10, or every item if the model knows fewer)",
    )
    p.add_argument("--include-seen", action="store_true", help="do not remove already-rated items")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--threads", type=int, help="onnxruntime intra-op threads (default: cores)")

    p = sub.add_parser(
        "score",
        help="score pairs or the full matrix (onnxruntime)",
        formatter_class=fmt,
        description="Score (user, item) pairs, or every user x item with --all: "
        "the full matrix to a .npy file, or top-k per user to .parquet/.csv with "
        "--top-k. Works in bounded memory (users in chunks).",
        epilog="examples:\n  recsys-export score artifacts/mf --user 42 --item 318\n"
        "  recsys-export score artifacts/mf --all --out scores.npy\n"
        "  recsys-export score artifacts/mf --all --top-k 10 --out top10.parquet\n"
        "  recsys-export score artifacts/mf --all --top-k 10 --engine ray --out top10/",
    )
    p.add_argument("bundle", type=Path)
    p.add_argument("--user", action="append", help="raw user id (repeatable, with --item)")
    p.add_argument("--item", action="append", help="raw item id (repeatable, pairs with --user)")
    p.add_argument("--all", action="store_true", help="score every user x item")
    p.add_argument("--top-k", type=int, help="with --all: write top-k per user instead of scores")
    p.add_argument("--include-seen", action="store_true", help="with --top-k: keep rated items")
    p.add_argument("--out", type=Path, help="output file (.npy, or .parquet/.csv with --top-k)")
    p.add_argument(
        "--engine",
        choices=("local", "ray"),
        default="local",
        help="with --all --top-k: 'ray' scores user blocks on a Ray cluster and writes a "
        "directory of Parquet parts to --out",
    )
    p.add_argument("--address", help="Ray cluster address (HEAD:6379); default: a local Ray")
    p.add_argument("--workers", type=int, help="Ray workers (default: one per cluster CPU)")
    p.add_argument(
        "--force", action="store_true", help="with --engine ray: replace a previous output dir"
    )
    p.add_argument(
        "--memory-mb", type=int, default=256, help="memory budget per chunk (default 256)"
    )
    p.add_argument("--threads", type=int, help="onnxruntime intra-op threads (default: cores)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p = sub.add_parser(
        "bench",
        help="benchmark every format and the runtime side by side",
        formatter_class=fmt,
        description="Score-all, recommend-all and single-user latency for MF and DenseNet: a "
        "bare onnxruntime graph of the same math (the ceiling), numpy, eager torch, "
        "TorchScript, torch.export and our runtime, in one process. Prints a table, writes "
        "JSON (schema in the README) and, with matplotlib installed, a PNG chart.",
        epilog="examples:\n  recsys-export bench                 # tiny size, seconds\n"
        "  recsys-export bench --preset full   # 100k users x 20k items x 64 factors, 128 hidden",
    )
    from recsys_export.bench import add_arguments as add_bench_arguments

    add_bench_arguments(p)
    return parser


# --------------------------------------------------------------------------- commands


def _load_data(args: argparse.Namespace, default: str | None = None) -> Any:
    from recsys_export import data

    source = args.data or default or "movielens-small"
    if source == "toy":
        return data.toy_ratings()
    if source == "movielens-small":
        source = str(data.default_dataset_path())
    return data.read_ratings(
        source,
        user_col=args.user_col,
        item_col=args.item_col,
        rating_col=args.rating_col,
        timestamp_col=args.timestamp_col,
        sep=args.sep,
        duplicates=args.duplicates,
    )


def _split(ratings: Any, args: argparse.Namespace) -> tuple[Any, Any]:
    from recsys_export import data

    if args.split == "none":
        return ratings, None
    return data.split(ratings, args.split, args.test_fraction, args.seed)


MODEL_DEFAULTS: dict[str, dict[str, Any]] = {
    "mf": dict(n_factors=32, batch_size=2048, lr=5e-3, l2=0.15, biased=True),
    "densenet": dict(
        n_factors=32,
        hidden=64,
        batch_size=2048,
        lr=5e-3,
        l2=0.05,
        dropout=0.2,
        weight_decay=1e-4,
        biased=True,
    ),
}


def train_config(args: argparse.Namespace) -> Any:
    """The TrainConfig of ``train``'s flags: preset, then model defaults, then flags."""
    from recsys_export.train import POST_PRESET, TINY_DATA_PRESET, TrainConfig

    base: dict[str, Any] = {"model": args.model, "seed": args.seed}
    if args.preset == "post":
        base.update(POST_PRESET)
    elif args.preset == "tiny":
        base.update(TINY_DATA_PRESET)
    else:
        base.update(MODEL_DEFAULTS[args.model])
    flags = {
        "n_factors": args.factors,
        "hidden": args.hidden,
        "biased": args.biased,
        "dropout": args.dropout,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "optimizer": args.optimizer,
        "l2": args.l2,
        "weight_decay": args.weight_decay,
        "threads": args.threads,
        "init_std": args.init_std,
        "patience": args.patience,
    }
    base.update({k: v for k, v in flags.items() if v is not None})
    cfg = TrainConfig.from_dict(base)
    cfg.validate()
    return cfg


def cmd_train(args: argparse.Namespace) -> int:
    from recsys_export.checkpoint import Checkpoint
    from recsys_export.errors import ConfigError
    from recsys_export.evaluate import evaluate
    from recsys_export.train import fit

    out = args.out or Path("runs") / f"{args.model}.pt"
    if out.exists() and not args.force:
        raise ConfigError(f"{out} exists; pass --force to overwrite it or choose another --out")
    if not out.parent.exists():
        if args.out is not None:
            raise ConfigError(f"cannot write {out}: directory {out.parent} does not exist")
        out.parent.mkdir(parents=True)
    cfg = train_config(args)
    ratings = _load_data(args)
    if ratings.n_duplicates:
        print(
            f"note: {ratings.n_duplicates} duplicate (user, item) rows in {ratings.source}; "
            f"kept the {args.duplicates} occurrence",
            file=sys.stderr,
        )
    _warn_rating_scale(ratings, args.threshold)
    train, valid = _split(ratings, args)
    if not args.quiet:
        print(
            f"data: {len(ratings):,} ratings, {ratings.n_users:,} users, {ratings.n_items:,} "
            f"items from {ratings.source}; train {len(train):,} / valid "
            f"{len(valid) if valid is not None else 0:,}",
            file=sys.stderr,
        )
    model, history = fit(train, valid, cfg, progress=not args.quiet)
    metrics: dict[str, Any] = {"train_seconds": round(history.seconds, 3)}
    if valid is not None and len(valid):
        k = min(args.k, ratings.n_items)
        metrics.update(evaluate(model, train, valid, k=k, threshold=args.threshold))
    ckpt = Checkpoint(
        model=model,
        user_map=ratings.user_map,
        item_map=ratings.item_map,
        seen_users=ratings.users,
        seen_items=ratings.items,
        config={**cfg.__dict__, "history": history.to_dict()},
        metrics=metrics,
        data={
            "source": ratings.source,
            "n_ratings": len(ratings),
            "split": args.split,
            "test_fraction": args.test_fraction,
            "seed": args.seed,
            "n_duplicates": ratings.n_duplicates,
            "duplicates": args.duplicates,
            "columns": {
                "user": args.user_col,
                "item": args.item_col,
                "rating": args.rating_col,
                "timestamp": args.timestamp_col,
            },
            "sep": args.sep,
        },
    )
    ckpt.save(out)
    print(_format_metrics(metrics, history))
    print(f"checkpoint: {out}")
    return 0


def _warn_rating_scale(ratings: Any, threshold: float) -> None:
    """Warn (stderr) about ratings that train fine but make the metrics misleading.

    Negative or unusually scaled ratings are accepted: the model is a regression on
    whatever scale the file uses. But the ranking metrics count held-out ratings >=
    ``--threshold`` (default 4.0) as relevant, so a file on another scale (all ratings
    below the threshold, or e.g. -1/+1 votes) gets undefined or meaningless ones.
    """
    if not len(ratings):
        return
    lo, hi = float(ratings.ratings.min()), float(ratings.ratings.max())
    notes = []
    if lo < 0:
        notes.append(f"ratings range from {lo:g} to {hi:g} (some are negative)")
    if hi < threshold:
        notes.append(
            f"no rating reaches --threshold {threshold:g} (max {hi:g}), so precision/recall/"
            "NDCG will be undefined; pass --threshold on your scale"
        )
    if notes:
        print(
            "warning: " + "; ".join(notes) + "; training continues on the ratings as given",
            file=sys.stderr,
        )


def _format_metrics(metrics: dict[str, Any], history: Any = None) -> str:
    parts = []
    for key in ("rmse", "mae", "precision@10", "recall@10", "ndcg@10"):
        if metrics.get(key) is not None:
            parts.append(f"{key} {metrics[key]:.4f}")
    for key, value in metrics.items():
        if key.startswith(("precision@", "recall@", "ndcg@")) and not key.endswith("@10"):
            parts.append(f"{key} {value:.4f}")
    if history is not None:
        parts.append(f"epochs {len(history.train_loss)} (best {history.best_epoch})")
    if "train_seconds" in metrics:
        parts.append(f"train {metrics['train_seconds']:.1f}s")
    return "metrics: " + ", ".join(parts) if parts else "metrics: (no validation data)"


def cmd_evaluate(args: argparse.Namespace) -> int:
    from recsys_export.checkpoint import load_checkpoint
    from recsys_export.errors import DataError
    from recsys_export.evaluate import evaluate

    ckpt = load_checkpoint(args.checkpoint)
    info = ckpt.data
    if args.data is None:
        args.data = info.get("source")
        cols = info.get("columns", {})
        for flag in ("user", "item", "rating", "timestamp"):
            if getattr(args, f"{flag}_col") is None:
                setattr(args, f"{flag}_col", cols.get(flag))
        args.sep = args.sep or info.get("sep")
        if info.get("split") and args.split == "random":
            args.split = info["split"]
        args.seed = info.get("seed", args.seed)
        args.test_fraction = info.get("test_fraction", args.test_fraction)
    if args.data and args.data.startswith("<"):
        args.data = "toy"
    ratings = _load_data(args)
    if ratings.user_map != ckpt.user_map or ratings.item_map != ckpt.item_map:
        raise DataError(
            f"{ratings.source} has other users/items than the checkpoint was trained on; "
            "evaluate on the training file"
        )
    if args.split == "none":
        raise DataError("evaluate needs held-out ratings: use --split random or time")
    train, valid = _split(ratings, args)
    metrics = evaluate(
        ckpt.model, train, valid, k=min(args.k, ratings.n_items), threshold=args.threshold
    )
    if args.json:
        print(json.dumps(metrics, indent=2))
    else:
        print(_format_metrics(metrics))
        print(f"({metrics.get('ranked_users', 0)} users ranked, {len(valid)} held-out ratings)")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    import time

    from recsys_export.checkpoint import load_checkpoint
    from recsys_export.export import export_bundle
    from recsys_export.plan import describe_plan

    t0 = time.perf_counter()
    ckpt = load_checkpoint(args.checkpoint)
    manifest = export_bundle(
        ckpt,
        args.out,
        formats=args.formats,
        overwrite=args.force,
        external_data=True if args.external_data else None,
        verify=args.verify,
        atol=args.atol,
        rtol=args.rtol,
        budget=args.budget,
        full=args.full,
        progress=not args.quiet,
    )
    if args.quiet:
        print(args.out)
        return 0
    times = manifest["timings"]["export_seconds"]
    print(
        f"bundle: {args.out} ({ckpt.kind}, {ckpt.model.n_users} users x {ckpt.model.n_items} items)"
    )
    print("export seconds: " + ", ".join(f"{k} {v:.2f}" for k, v in times.items()))
    parity = manifest.get("parity")
    if parity:
        print(f"parity vs eager (atol {parity['atol']:g}, rtol {parity['rtol']:g}):")
        for row in parity["rows"]:
            print(
                f"  {row['format']:<12} {row['entry_point']:<10} max abs {row['max_abs_diff']:.2e}"
                f"  max rel {row['max_rel_diff']:.2e}  {'PASS' if row['passed'] else 'FAIL'}"
            )
        if parity.get("plan"):
            print(describe_plan(parity["plan"]))
        print(f"parity: {'PASS' if parity['passed'] else 'FAIL'} (details: {args.out}/parity.json)")
    else:
        print("parity: not verified (--no-verify); run 'recsys-export verify' before serving")
    print(f"total {time.perf_counter() - t0:.1f}s")
    return 0


def _verify_formats(text: str | None) -> list[str] | None:
    """--formats of verify: export formats plus ``runtime`` (the Python runtime)."""
    if not text:
        return None
    from recsys_export.export import parse_formats

    names = [f.strip() for f in text.split(",") if f.strip()]
    rest = [f for f in names if f != "runtime"]
    return (parse_formats(rest) if rest else []) + (["runtime"] if "runtime" in names else [])


def cmd_verify(args: argparse.Namespace) -> int:
    from recsys_export.parity import verify_bundle

    report = verify_bundle(
        args.bundle,
        checkpoint=args.checkpoint,
        formats=_verify_formats(args.formats),
        atol=args.atol,
        rtol=args.rtol,
        full_matrix=not args.quick,
        budget=args.budget,
        full=args.full,
        record=args.record,
        progress=not args.quiet,
    )
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.table())
    return 0 if report.passed else 1


def cmd_inspect(args: argparse.Namespace) -> int:
    from recsys_export.bundle import Bundle
    from recsys_export.plan import describe_plan

    bundle = Bundle.load(args.bundle)
    man = bundle.manifest
    if args.json:
        print(json.dumps(man, indent=2))
        return 0
    model = man.get("model", {})
    print(f"bundle {bundle.root}  (format {man['format_version']}, created {man.get('created')})")
    print(
        f"model: {model.get('kind')}  {model.get('n_users')} users x {model.get('n_items')} items"
    )
    hp = model.get("hyperparameters", {})
    print("hyperparameters: " + ", ".join(f"{k}={v}" for k, v in hp.items()))
    total = sum(f["bytes"] for f in man["files"].values())
    print(f"files ({total / 1e6:.2f} MB, checksums verified):")
    for rel, f in sorted(man["files"].items()):
        print(f"  {rel:<32} {f['bytes'] / 1e6:9.3f} MB  {f['role']}")
    print("formats: " + ", ".join(man.get("formats", {})))
    for name, ep in man.get("entry_points", {}).items():
        ins = ", ".join(f"{i['name']}:{i['dtype']}{i['shape']}" for i in ep["inputs"])
        outs = ", ".join(f"{o['name']}:{o['dtype']}{o['shape']}" for o in ep["outputs"])
        print(f"  {name}({ins}) -> {outs}")
    metrics = man.get("training", {}).get("metrics", {})
    if metrics:
        print(_format_metrics(metrics))
    parity = man.get("parity")
    if parity:
        print(
            f"parity: {'PASS' if parity['passed'] else 'FAIL'} (atol {parity['atol']:g}, rtol "
            f"{parity['rtol']:g}), max abs diff {parity['max_abs_diff']:.2e}"
        )
        if parity.get("plan"):
            print(describe_plan(parity["plan"]))
    else:
        print("parity: not recorded; run 'recsys-export verify'")
    return 0


def cmd_recommend(args: argparse.Namespace) -> int:
    import numpy as np

    from recsys_export.runtime import Recommender

    rec = Recommender.load(args.bundle, intra_op_threads=args.threads)
    k = args.k if args.k is not None else min(10, rec.n_items)
    result = rec.recommend(args.user, k=k, exclude_seen=not args.include_seen)
    rows = []
    for user, items, scores in zip(args.user, result.items, result.scores):
        # slots no admissible item can fill (the user rated nearly everything) hold
        # item None and score -inf: leave them out rather than print "None -inf"
        filled = [(i, s) for i, s in zip(items, scores) if i is not None and s != -np.inf]
        rows.append(
            {
                "user": user,
                "items": [_jsonable(i) for i, _ in filled],
                "scores": [float(s) for _, s in filled],
            }
        )
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for row in rows:
            print(f"user {row['user']}:")
            for rank, (item, score) in enumerate(zip(row["items"], row["scores"]), 1):
                print(f"  {rank:>3}. {item}  {score:.4f}")
    return 0


def _jsonable(value: Any) -> Any:
    if value is None:
        return None
    if hasattr(value, "item"):
        return value.item()
    return value


def cmd_score(args: argparse.Namespace) -> int:
    from recsys_export.errors import ConfigError
    from recsys_export.runtime import Recommender

    if args.all:
        if args.out is None:
            raise ConfigError("--all needs --out FILE (.npy, or .parquet/.csv with --top-k)")
        if args.engine == "ray":
            if args.top_k is None:
                raise ConfigError("--engine ray needs --top-k K (it writes top-k Parquet parts)")
            from recsys_export.scale import score_topk_ray

            score_topk_ray(
                args.bundle,
                args.out,
                k=args.top_k,
                exclude_seen=not args.include_seen,
                address=args.address,
                workers=args.workers,
                progress=not args.quiet,
                overwrite=args.force,
            )
            print(args.out)
            return 0
        rec = Recommender.load(args.bundle, intra_op_threads=args.threads)
        if args.top_k is not None:
            path = rec.write_topk(
                args.out,
                k=args.top_k,
                exclude_seen=not args.include_seen,
                memory_budget_mb=args.memory_mb,
                progress=not args.quiet,
            )
        else:
            if args.out.suffix != ".npy":
                raise ConfigError(
                    f"--all writes a .npy matrix; got {args.out} (use --top-k for tables)"
                )
            path = rec.write_score_matrix(
                args.out, memory_budget_mb=args.memory_mb, progress=not args.quiet
            )
        print(path)
        return 0
    if not args.user or not args.item or len(args.user) != len(args.item):
        raise ConfigError("give --user and --item the same number of times, or use --all")
    rec = Recommender.load(args.bundle, intra_op_threads=args.threads)
    scores = rec.score(args.user, args.item)
    for user, item, score in zip(args.user, args.item, scores):
        print(f"{user}\t{item}\t{float(score):.6f}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from recsys_export.bench import run

    return run(args)


COMMANDS = {
    "train": cmd_train,
    "evaluate": cmd_evaluate,
    "export": cmd_export,
    "verify": cmd_verify,
    "inspect": cmd_inspect,
    "recommend": cmd_recommend,
    "score": cmd_score,
    "bench": cmd_bench,
}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``recsys-export`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return COMMANDS[args.command](args)
    except ParityError as exc:  # the export is wrong, not the user's input: exit 1
        print(f"recsys-export {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except RecsysExportError as exc:
        message = " ".join(str(exc).split())
        print(f"recsys-export {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"recsys-export {args.command}: interrupted; nothing was written", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
