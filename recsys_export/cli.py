"""The ``recsys-export`` command line.

Every user error (a :class:`~recsys_export.errors.RecsysExportError`) becomes one line
on stderr and exit status 2; a failed parity check exits 1; Ctrl-C exits 130 without
writing anything partial. Heavy imports (torch) happen inside the commands that need
them, so ``recommend``/``score``/``inspect`` work with the runtime-only install.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
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
  recsys-export train                                  # MF ranking recipe on the bundled MovieLens
  recsys-export train ratings.csv --model densenet --out runs/dense.pt
  recsys-export train ratings.csv --objective rating   # regression on the ratings (RMSE)
  recsys-export train clicks.csv                       # no rating column: implicit feedback
  recsys-export train ratings.csv --implicit --min-rating 4   # ratings >= 4 as interactions
  recsys-export train u1.base --test u1.test           # a canonical train/test pair
  recsys-export train toy --preset post --model mf     # the post's exact recipe on its 5x4 matrix

How rows are used: test rows (--split, or --test FILE) are held out for the reported
metrics only; a validation slice (--valid-fraction of the remaining rows) drives early
stopping; the model trains on the rest. The model is printed beside a popularity
baseline and a damped user+item bias baseline on the same test rows.

Recipes (--objective; override any flag):
  mf ranking:       --factors 64 --loss softmax --batch-size 64 (users) --lr 1e-2 --l2 1e-2
  mf rating:        --factors 32 --batch-size 2048 --lr 5e-3 --l2 0.15 --biased
  densenet ranking: --factors 32 --hidden 32 --loss softmax --batch-size 32 --lr 2e-2
  densenet rating:  --factors 32 --hidden 64 --batch-size 2048 --lr 5e-3 --l2 0.05
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
    s = p.add_argument_group("held-out rows (test, then validation carved from the rest)")
    s.add_argument(
        "--split",
        choices=["random", "time", "none"],
        default="random",
        help="test rows: random holdout, per-user latest ratings (needs timestamps), or none",
    )
    s.add_argument(
        "--test-fraction", type=float, default=0.2, help="test share of all rows (default 0.2)"
    )
    s.add_argument(
        "--valid-fraction",
        type=float,
        default=0.1,
        help="validation share of the remaining training rows, for early stopping "
        "(default 0.1; 0 = no validation; none is carved when --patience is 0)",
    )
    s.add_argument(
        "--test",
        type=Path,
        help="a separate test file (same columns as the data): mapped onto the training "
        "file's ids, unknown users/items counted and dropped; replaces --split",
    )
    s.add_argument("--seed", type=int, default=0, help="seed of the split, init and shuffling")


def _add_items_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("item names (shown by 'recommend')")
    g.add_argument(
        "--items",
        type=Path,
        metavar="FILE",
        help="file of item ids and names (e.g. MovieLens movies.csv, MovieTweetings "
        "movies.dat): stored in the checkpoint and the bundle; the bundled MovieLens "
        "sample gets its titles without it",
    )
    g.add_argument(
        "--item-id-col", help="id column of --items (name or 0-based position); detected"
    )
    g.add_argument("--item-name-col", help="name column of --items (name or position); detected")


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
        description="Train MF or DenseNet on a ratings file (ranking objective by default); "
        "write a checkpoint with weights, id maps, seen items, the train/validation/test part "
        "of every row, and test metrics beside a popularity and a bias baseline.",
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
    o = p.add_argument_group("objective")
    o.add_argument(
        "--objective",
        choices=["ranking", "rating"],
        help="'ranking' (default): learn top-k lists; 'rating': regression on the ratings",
    )
    o.add_argument(
        "--loss", choices=["softmax", "bpr"], help="ranking loss (default softmax)"
    )
    o.add_argument(
        "--implicit",
        action="store_true",
        help="treat the rows as interactions: ratings >= --min-rating become positives of "
        "weight 1, the rest are dropped (a file without rating column is implicit anyway)",
    )
    o.add_argument(
        "--min-rating",
        type=float,
        help="ranking: rows rated below this are not positives (default: MF learns from "
        "the relevant rows, rating >= --threshold; DenseNet from every row)",
    )
    h = p.add_argument_group("hyperparameters (defaults depend on --model and --objective)")
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
    h.add_argument(
        "--batch-size",
        type=int,
        help="ratings per step (users per step for --loss softmax; 0 = full batch)",
    )
    h.add_argument("--lr", type=float, help="learning rate")
    h.add_argument("--optimizer", choices=["adam", "sparse_adam", "sgd"], help="optimizer")
    h.add_argument(
        "--l2",
        type=float,
        help="L2 on embeddings (rating: on each batch's rows; ranking: weight decay)",
    )
    h.add_argument("--weight-decay", type=float, help="weight decay of dense layers")
    h.add_argument("--init-std", type=float, help="embedding init std")
    h.add_argument("--threads", type=int, help="torch CPU threads while training (default 1)")
    h.add_argument("--patience", type=int, help="early-stopping patience in epochs (0 = off)")
    _add_items_args(p)
    m = p.add_argument_group("metrics")
    m.add_argument(
        "-k", "--k", type=int, default=10, help="cut-off of ranking metrics (default 10)"
    )
    m.add_argument(
        "--threshold",
        type=float,
        help="held-out ratings >= this are relevant (default: 80%% of the highest rating, "
        "e.g. 4 on a 1-5 scale; every row for implicit data)",
    )
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")

    p = sub.add_parser(
        "evaluate",
        help="metrics of a checkpoint beside the baselines",
        formatter_class=fmt,
        description="Report RMSE, MAE, precision@k, recall@k, NDCG@k, MAP@k, coverage and "
        "the median training count of recommended items for the model, a popularity "
        "baseline and a damped bias baseline, on the test rows recorded in the checkpoint "
        "or on a separate --test file.",
        epilog="examples:\n  recsys-export evaluate runs/mf.pt\n"
        "  recsys-export evaluate runs/mf.pt --test u1.test --json",
    )
    p.add_argument("checkpoint", type=Path, help="checkpoint written by 'train'")
    p.add_argument(
        "--test",
        type=Path,
        help="test file in raw ids (mapped onto the checkpoint's ids; unknown ones dropped)",
    )
    g = p.add_argument_group("reading the --test file")
    for flag, what in (("user", "user id"), ("item", "item id"), ("rating", "rating")):
        g.add_argument(f"--{flag}-col", help=f"{what} column (name or 0-based position)")
    g.add_argument("--timestamp-col", help="timestamp column (name or position)")
    g.add_argument("--sep", help="field separator (default: detected)")
    g.add_argument(
        "--duplicates", choices=["last", "first", "mean", "error"], default="last",
        help="policy for duplicate (user, item) rows (default: keep the last)",
    )
    p.add_argument("-k", "--k", type=int, default=10, help="cut-off (default 10)")
    p.add_argument(
        "--threshold", type=float, help="relevance threshold (default: the one of training)"
    )
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
    p.add_argument(
        "checkpoint", type=Path, help="checkpoint written by 'train' (or a state dict: --model)"
    )
    p.add_argument("--out", type=Path, required=True, help="bundle directory to create")
    own = p.add_argument_group(
        "your own model (docs/own-model.md)",
        "export a state dict trained elsewhere, e.g.\n  recsys-export export mf_state.pt "
        "--model mf --ids-from ratings.csv --out artifacts/mine",
    )
    own.add_argument(
        "--model",
        metavar="mf|densenet|MODULE:CLASS",
        help="CHECKPOINT is a torch.save'd state dict (loaded with weights_only=True): of "
        "the post's MatrixFactorization (mf) or DenseNet (densenet), sizes read from the "
        "tensors; or of the nn.Module class MODULE:CLASS (package.module:Class or "
        "file.py:Class, built with --model-args) whose forward(users, items) scores pairs",
    )
    own.add_argument(
        "--model-args", default="{}", metavar="JSON", help="constructor keywords for MODULE:CLASS"
    )
    own.add_argument(
        "--ids-from",
        type=Path,
        metavar="RATINGS",
        help="ratings file giving raw ids (sorted unique values = the model's indices) and "
        "the seen items recommend removes",
    )
    own.add_argument(
        "--keep-partial",
        action="store_true",
        help="when a format cannot be exported, write the others",
    )
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
        "  recsys-export score artifacts/mf --all --top-k 10 --engine ray --out top10/\n"
        "  recsys-export score artifacts/mf --all --top-k 10 --engine torch --device cuda "
        "--out top10.parquet",
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
        choices=("local", "ray", "torch"),
        default="local",
        help="with --all: 'local' is the onnxruntime runtime; 'ray' (with --top-k) scores "
        "user blocks on a Ray cluster and writes a directory of Parquet parts to --out; "
        "'torch' runs the bundle's pt2/TorchScript program on --device (needs torch)",
    )
    p.add_argument(
        "--device",
        default="cpu",
        help="with --engine torch: cpu or cuda[:N] (default cpu); blocks are sized from "
        "free device memory on CUDA, from --memory-mb on CPU",
    )
    p.add_argument("--address", help="Ray cluster address (HEAD:6379); default: a local Ray")
    p.add_argument("--workers", type=int, help="Ray workers (default: one per cluster CPU)")
    p.add_argument(
        "--force",
        action="store_true",
        help="replace an existing --out file (with --engine ray: a previous output dir)",
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
    return _read_ratings(source, args)


def _read_ratings(source: Any, args: argparse.Namespace) -> Any:
    """``read_ratings`` with the column, separator and duplicates flags."""
    from recsys_export import data

    return data.read_ratings(
        source,
        user_col=args.user_col,
        item_col=args.item_col,
        rating_col=args.rating_col,
        timestamp_col=args.timestamp_col,
        sep=args.sep,
        duplicates=args.duplicates,
    )


def train_config(args: argparse.Namespace) -> Any:
    """The TrainConfig of ``train``'s flags: preset or recipe, then the flags."""
    from recsys_export.train import default_config

    objective = args.objective
    if objective is None and getattr(args, "_implicit_data", False):
        objective = "ranking"
    return default_config(
        args.model,
        objective,
        args.preset,
        seed=args.seed,
        n_factors=args.factors,
        hidden=args.hidden,
        biased=args.biased,
        dropout=args.dropout,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        optimizer=args.optimizer,
        l2=args.l2,
        weight_decay=args.weight_decay,
        threads=args.threads,
        init_std=args.init_std,
        patience=args.patience,
        loss=args.loss,
        min_rating=None if args.implicit else args.min_rating,
        weighting="binary" if args.implicit else None,
        threshold=args.threshold,
        k=args.k,
    )


def _load_item_names(args: argparse.Namespace, ratings: Any) -> list[str | None] | None:
    """Names from ``--items``, or the bundled titles for the bundled ratings; else None."""
    from recsys_export.items import default_item_names_path, read_item_names

    path = args.items
    if path is None and args.data in (None, "movielens-small"):
        path = default_item_names_path()
    if path is None:
        return None
    names = read_item_names(
        path, item_map=ratings.item_map, id_col=args.item_id_col, name_col=args.item_name_col
    )
    if not args.quiet:
        print(f"items: {names.summary()}", file=sys.stderr)
    return names.names


def _read_test_file(args: argparse.Namespace) -> Any:
    return _read_ratings(args.test, args)


def cmd_train(args: argparse.Namespace) -> int:
    from recsys_export.errors import ConfigError
    from recsys_export.experiment import as_implicit, train_checkpoint

    out = args.out or Path("runs") / f"{args.model}.pt"
    if out.exists() and not args.force:
        raise ConfigError(f"{out} exists; pass --force to overwrite it or choose another --out")
    if not out.parent.exists():
        if args.out is not None:
            raise ConfigError(f"cannot write {out}: directory {out.parent} does not exist")
        out.parent.mkdir(parents=True)
    _check_checkpoint_out(out)
    ratings = _load_data(args)
    args._implicit_data = ratings.implicit
    cfg = train_config(args)
    item_names = _load_item_names(args, ratings)
    if ratings.n_duplicates:
        print(
            f"note: {ratings.n_duplicates} duplicate (user, item) rows in {ratings.source}; "
            f"kept the {args.duplicates} occurrence",
            file=sys.stderr,
        )
    if args.implicit:
        ratings = as_implicit(ratings, args.min_rating)
    elif not ratings.implicit:
        _warn_rating_scale(ratings, args.threshold)
    test = _read_test_file(args) if args.test is not None else None
    if test is not None and args.implicit:
        test = as_implicit(test, args.min_rating)
    if not args.quiet:
        kind = "interactions" if ratings.implicit else "ratings"
        print(
            f"data: {len(ratings):,} {kind}, {ratings.n_users:,} users, {ratings.n_items:,} "
            f"items from {ratings.source}; objective {cfg.objective} ({cfg.model})",
            file=sys.stderr,
        )
    ckpt, results = train_checkpoint(
        ratings,
        cfg,
        split=args.split,
        test_fraction=args.test_fraction,
        valid_fraction=args.valid_fraction,
        seed=args.seed,
        test=test,
        progress=not args.quiet,
        data_info={
            "duplicates": args.duplicates,
            "columns": {
                "user": args.user_col,
                "item": args.item_col,
                "rating": args.rating_col,
                "timestamp": args.timestamp_col,
            },
            "sep": args.sep,
        },
        item_names=item_names,
    )
    ckpt.save(out)
    if args.json:
        print(json.dumps({"checkpoint": str(out), "metrics": ckpt.metrics}, indent=2))
        return 0
    _print_results(results, ckpt.metrics, cfg.k, ckpt.config.get("history"))
    print(f"checkpoint: {out}")
    return 0


def _check_checkpoint_out(out: Path) -> None:
    """Fail before training when the checkpoint cannot be written at ``out``.

    Raises
    ------
    ConfigError
        ``out`` is a directory, or its directory does not let us create files (checked
        by creating and removing a hidden probe file, which also catches read-only
        filesystems and root on immutable directories).
    """
    import os

    from recsys_export.errors import ConfigError

    if out.is_dir():
        raise ConfigError(
            f"cannot write checkpoint {out}: it is a directory; give a file path such as "
            f"{out / 'model.pt'}"
        )
    probe = out.parent / f".{out.name}.probe-{os.getpid()}"
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except OSError as exc:
        raise ConfigError(
            f"cannot write checkpoint {out}: directory {out.parent} is not writable "
            f"({exc.strerror}); choose another --out"
        ) from None
    os.unlink(probe)


def _print_results(
    results: dict[str, Any], metrics: dict[str, Any], k: int, history: dict | None = None
) -> None:
    from recsys_export.evaluate import format_comparison
    parts = metrics.get("parts")
    if parts:
        print(
            f"rows: train {parts['train']:,}, validation {parts['valid']:,} (early stopping), "
            f"test {parts['test']:,} (reported below)"
        )
    mapping = metrics.get("test_mapping") or results.get("test_mapping")
    if mapping:
        print(
            f"test file: {mapping['kept']:,} of {mapping['rows']:,} rows kept; dropped "
            f"{mapping['dropped']:,} ({mapping['unknown_users']} unknown users, "
            f"{mapping['unknown_items']} unknown items)"
        )
    if history:
        print(
            f"training: {len(history['train_loss'])} epochs, best {history['best_epoch']} by "
            f"validation {history.get('valid_metric') or 'loss'}, "
            f"{metrics.get('train_seconds', 0):.1f} s"
        )
    table = {name: m for name, m in results.items() if name != "test_mapping"}
    if not table:
        print("metrics: no test rows (--split none); pass --test FILE to measure")
        return
    first = table["model"]
    k = first.get("k", k)
    print(
        f"test metrics (k={k}, relevant: rating >= {first.get('threshold', 0):g}, "
        f"{first.get('ranked_users', 0)} users ranked):"
    )
    print(format_comparison(table, k))


def _warn_rating_scale(ratings: Any, threshold: float | None) -> None:
    """Warn (stderr) about negative ratings: accepted, but rarely what a user meant.

    The rating objective regresses on whatever scale the file uses; the ranking
    objective weighs every row alike (binary weights) unless --min-rating leaves the
    negative ones out; the metrics count held-out ratings >= the threshold as relevant.
    """
    from recsys_export.evaluate import default_threshold

    if len(ratings) and float(ratings.ratings.min()) < 0:
        lo, hi = float(ratings.ratings.min()), float(ratings.ratings.max())
        t = default_threshold(ratings) if threshold is None else threshold
        print(
            f"warning: ratings range from {lo:g} to {hi:g} (some are negative); ranking "
            f"metrics count held-out ratings >= --threshold {t:g} as relevant, and the "
            "ranking objective learns from every row unless --min-rating drops some; "
            "training continues on the ratings as given",
            file=sys.stderr,
        )


def _format_metrics(metrics: dict[str, Any]) -> str:
    """One line of the main metrics (``inspect``)."""
    parts = []
    for key in ("rmse", "mae", "precision@10", "recall@10", "ndcg@10", "map@10", "coverage@10"):
        if metrics.get(key) is not None:
            parts.append(f"{key} {metrics[key]:.4f}")
    if "train_seconds" in metrics:
        parts.append(f"train {metrics['train_seconds']:.1f}s")
    return "metrics: " + ", ".join(parts) if parts else "metrics: (no test data)"


def cmd_evaluate(args: argparse.Namespace) -> int:
    from recsys_export.checkpoint import load_checkpoint
    from recsys_export.experiment import evaluate_checkpoint

    ckpt = load_checkpoint(args.checkpoint)
    test = _read_test_file(args) if args.test is not None else None
    results = evaluate_checkpoint(ckpt, test=test, k=args.k, threshold=args.threshold)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        _print_results(results, {}, args.k)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    import time

    from recsys_export.checkpoint import load_checkpoint
    from recsys_export.export import export_bundle

    t0 = time.perf_counter()
    if getattr(args, "model", None):
        return _export_own_model(args, t0)
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
    m = manifest["model"]
    print(f"bundle: {args.out} ({ckpt.kind}, {m['n_users']} users x {m['n_items']} items)")
    _print_export_summary(args, manifest, t0)
    return 0


def _print_export_summary(args: argparse.Namespace, manifest: dict[str, Any], t0: float) -> None:
    import time

    from recsys_export.plan import describe_plan

    times = manifest["timings"]["export_seconds"]
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


def _export_own_model(args: argparse.Namespace, t0: float) -> int:
    """``export STATE_DICT --model ...``: a model trained elsewhere (:mod:`recsys_export.byom`)."""
    from recsys_export.byom import export_model, ids_from_file, module_from_files
    from recsys_export.errors import ConfigError

    try:
        model_args = json.loads(args.model_args)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--model-args is not JSON: {exc}") from None
    if not isinstance(model_args, dict):
        raise ConfigError("--model-args must be a JSON object of constructor keywords")
    module = module_from_files(args.checkpoint, args.model, model_args)
    ratings = ids_from_file(args.ids_from) if args.ids_from else None
    result = export_model(
        module,
        args.out,
        kind=args.model if args.model in ("mf", "densenet") else None,
        ratings=ratings,
        formats=args.formats,
        verify=args.verify,
        keep_partial=args.keep_partial,
        overwrite=args.force,
        external_data=True if args.external_data else None,
        atol=args.atol,
        rtol=args.rtol,
        progress=not args.quiet,
    )
    for fmt, why in result.failed.items():
        print(f"recsys-export export: warning: {fmt} not exported: {why}", file=sys.stderr)
    if args.quiet:
        print(args.out)
        return 0
    m = result.manifest["model"]
    print(
        f"bundle: {args.out} ({result.kind} via the {result.path} path: {result.reason}; "
        f"{m['n_users']} users x {m['n_items']} items)"
    )
    _print_export_summary(args, result.manifest, t0)
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
    from recsys_export.errors import BundleError
    from recsys_export.parity import verify_bundle

    try:
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
    except BundleError as exc:  # checked, but not recorded (a read-only bundle): show it
        partial = getattr(exc, "report", None)
        if partial is not None:
            print(json.dumps(partial.to_dict(), indent=2) if args.json else partial.table())
        raise
    for reason in report.skipped.values():
        print(f"recsys-export verify: warning: {reason}", file=sys.stderr)
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
        print("test " + _format_metrics(metrics))
        for name, base in (metrics.get("baselines") or {}).items():
            print(f"  baseline {name}: " + _format_metrics(base).removeprefix("metrics: "))
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
    names = result.names if result.names is not None else np.full(result.items.shape, None)
    rows = []
    for user, items, scores, titles in zip(args.user, result.items, result.scores, names):
        # slots no admissible item can fill (the user rated nearly everything) hold
        # item None and score -inf: leave them out rather than print "None -inf"
        filled = [
            (i, s, t) for i, s, t in zip(items, scores, titles) if i is not None and s != -np.inf
        ]
        row = {
            "user": user,
            "items": [_jsonable(i) for i, _, _ in filled],
            "scores": [float(s) for _, s, _ in filled],
        }
        if result.names is not None:
            row["names"] = [t for _, _, t in filled]
        rows.append(row)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for row in rows:
            print(f"user {row['user']}:")
            # rank. item  title  score, in columns (titles where the bundle has them)
            ids = [str(i) for i in row["items"]]
            titles = [t or "" for t in row.get("names", [])] or [""] * len(ids)
            wid, wt = max(map(len, ids), default=0), max(map(len, titles), default=0)
            for rank, (item, title, score) in enumerate(zip(ids, titles, row["scores"]), 1):
                named = f"{title:<{wt}}  " if wt else ""
                print(f"  {rank:>3}. {item:<{wid}}  {named}{score:.4f}")
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
        if args.engine == "torch":
            return _score_all_torch(args)
        if args.device != "cpu":
            raise ConfigError("--device needs --engine torch (the local runtime runs on CPU)")
        rec = Recommender.load(args.bundle, intra_op_threads=args.threads)
        if args.top_k is not None:
            path = rec.write_topk(
                args.out,
                k=args.top_k,
                exclude_seen=not args.include_seen,
                memory_budget_mb=args.memory_mb,
                progress=not args.quiet,
                overwrite=args.force,
            )
        else:
            if args.out.suffix != ".npy":
                raise ConfigError(
                    f"--all writes a .npy matrix; got {args.out} (use --top-k for tables)"
                )
            path = rec.write_score_matrix(
                args.out,
                memory_budget_mb=args.memory_mb,
                progress=not args.quiet,
                overwrite=args.force,
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


def _score_all_torch(args: argparse.Namespace) -> int:
    """``score --all --engine torch``: the bundle's torch program on ``--device``."""
    from recsys_export.errors import ConfigError
    from recsys_export.torch_engine import TorchEngine  # ConfigError without torch

    if args.top_k is None and args.out.suffix != ".npy":
        raise ConfigError(f"--all writes a .npy matrix; got {args.out} (use --top-k for tables)")
    engine = TorchEngine.load(args.bundle, device=args.device)
    # --memory-mb sizes CPU blocks; on CUDA the free device memory does
    budget = None if engine.device.type == "cuda" else args.memory_mb
    if args.top_k is not None:
        path = engine.write_topk(
            args.out,
            k=args.top_k,
            exclude_seen=not args.include_seen,
            memory_budget_mb=budget,
            progress=not args.quiet,
            overwrite=args.force,
        )
    else:
        path = engine.write_score_matrix(
            args.out, memory_budget_mb=budget, progress=not args.quiet, overwrite=args.force
        )
    print(path)
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


#: Modules only the ``train`` extra installs: a runtime-only install lacks them.
TRAIN_EXTRA_MODULES = frozenset({"torch", "onnx", "onnxscript", "pandas"})


class _Terminated(BaseException):
    """Raised in the main thread by SIGTERM, so that partial outputs are removed."""


def _on_sigterm(signum: int, frame: Any) -> None:
    """SIGTERM handler: unwind like Ctrl-C, so that ``finally`` blocks remove temporaries."""
    raise _Terminated()


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``recsys-export`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return COMMANDS[args.command](args)
    except ParityError as exc:  # the export is wrong, not the user's input: exit 1
        print(f"recsys-export {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except RecsysExportError as exc:
        message = " ".join(str(exc).split())
        print(f"recsys-export {args.command}: error: {message}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in TRAIN_EXTRA_MODULES:
            raise
        print(
            f"recsys-export {args.command}: error: {args.command} needs the 'train' extra "
            f"({exc.name} is not installed): pip install 'recsys-export[train]'; this "
            "runtime-only install can run recommend, score and inspect",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        print(f"recsys-export {args.command}: interrupted; nothing was written", file=sys.stderr)
        return 130
    except _Terminated:
        print(f"recsys-export {args.command}: terminated; nothing was written", file=sys.stderr)
        return 128 + signal.SIGTERM
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
