"""``train`` and ``evaluate``: their options, flags to library calls
(:mod:`recsys_export.experiment`), results to text or JSON."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from recsys_export.cli.options import (
    TEST_FILE_COLUMNS,
    Command,
    add_data_options,
    add_group,
    add_items_options,
    add_options,
    opt,
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

Recipes (--objective; override any flag; batch_size=auto: sized from the number of users,
see docs/training.md):
{recipes}
Presets: 'post' = the post's loop (per-rating SGD, lr 1e-3, 500 epochs, 3 factors,
no biases); 'tiny' = full-batch Adam for tiny data such as the toy matrix.
Duplicate (user, item) rows keep the last occurrence (--duplicates to change).
"""

TRAIN_OPTIONS = (
    opt("--model", choices=["mf", "densenet"], default="mf", help="model kind (default mf)"),
    opt("--out", type=Path, help="checkpoint path (default runs/MODEL.pt)"),
    opt("--force", action="store_true", help="overwrite an existing checkpoint"),
    opt(
        "--preset",
        choices=["default", "post", "tiny"],
        default="default",
        help="hyperparameter preset (see below)",
    ),
)
OBJECTIVE_OPTIONS = (
    opt(
        "--objective",
        choices=["ranking", "rating"],
        help="'ranking' (default): learn top-k lists; 'rating': regression on the ratings",
    ),
    opt("--loss", choices=["softmax", "bpr"], help="ranking loss (default softmax)"),
    opt(
        "--implicit",
        action="store_true",
        help="treat the rows as interactions: ratings >= --min-rating become positives of "
        "weight 1, the rest are dropped (a file without rating column is implicit anyway)",
    ),
    opt(
        "--min-rating",
        type=float,
        help="ranking: rows rated below this are not positives (default: MF learns from "
        "the relevant rows, rating >= --threshold; DenseNet from every row)",
    ),
)
HYPERPARAMETER_OPTIONS = (
    opt("--factors", type=int, help="embedding size"),
    opt("--hidden", type=int, help="DenseNet hidden width"),
    opt(
        "--biased",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="global mean (+ user/item biases for MF)",
    ),
    opt("--dropout", type=float, help="DenseNet hidden-layer dropout"),
    opt("--epochs", type=int, help="maximum epochs"),
    opt(
        "--batch-size",
        type=int,
        help="ratings per step (users per step for --loss softmax; 0 = full batch)",
    ),
    opt("--lr", type=float, help="learning rate"),
    opt("--optimizer", choices=["adam", "sparse_adam", "sgd"], help="optimizer"),
    opt(
        "--l2",
        type=float,
        help="L2 on embeddings (rating: on each batch's rows; ranking: weight decay)",
    ),
    opt("--weight-decay", type=float, help="weight decay of dense layers"),
    opt("--init-std", type=float, help="embedding init std"),
    opt("--threads", type=int, help="torch CPU threads while training (default 1)"),
    opt("--patience", type=int, help="early-stopping patience in epochs (0 = off)"),
    opt(
        "--select-tolerance",
        type=float,
        help="ranking: of the epochs within this fraction of the best validation NDCG, "
        "keep the one whose validation top-k lists cover the most items (0 = the best)",
    ),
    opt(
        "--min-gain",
        type=float,
        help="ranking: a new best validation NDCG resets --patience only when it beats the "
        "last reset by more than this fraction (0 = any new best)",
    ),
    opt(
        "--validate-every",
        type=int,
        help="ranking: validate every N epochs and after the last (patience still counts epochs)",
    ),
)
METRIC_OPTIONS = (
    opt("-k", "--k", type=int, help="cut-off of ranking metrics (default 10)"),
    opt(
        "--threshold",
        type=float,
        help="held-out ratings >= this are relevant (default: 80%% of the highest rating, "
        "e.g. 4 on a 1-5 scale; every row for implicit data)",
    ),
)
ITEMS_WHERE = (
    "stored in the checkpoint and the bundle; the bundled MovieLens sample gets its "
    "titles without it"
)


def add_train_options(p: argparse.ArgumentParser) -> None:
    """The options of ``train``."""
    add_data_options(p)
    add_options(p, TRAIN_OPTIONS)
    add_group(p, "objective", OBJECTIVE_OPTIONS)
    add_group(
        p, "hyperparameters (defaults depend on --model and --objective)", HYPERPARAMETER_OPTIONS
    )
    add_items_options(p, ITEMS_WHERE)
    add_group(p, "metrics", METRIC_OPTIONS)
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def add_evaluate_options(p: argparse.ArgumentParser) -> None:
    """The options of ``evaluate``."""
    p.add_argument("checkpoint", type=Path, help="checkpoint written by 'train'")
    p.add_argument(
        "--test",
        type=Path,
        help="test file in raw ids (mapped onto the checkpoint's ids; unknown ones dropped)",
    )
    add_group(p, "reading the --test file", TEST_FILE_COLUMNS)
    p.add_argument("-k", "--k", type=int, default=10, help="cut-off (default 10)")
    p.add_argument(
        "--threshold", type=float, help="relevance threshold (default: the one of training)"
    )
    p.add_argument("--json", action="store_true", help="print JSON")


def _train_epilog() -> str:
    from recsys_export.recipes import describe_recipes

    return EPILOG_TRAIN.replace("{recipes}", describe_recipes())


def _load_data(args: argparse.Namespace) -> Any:
    """The ratings of ``DATA`` (a file, ``toy`` or ``movielens-small``) with the flags."""
    from recsys_export.data import load_dataset

    return load_dataset(args.data, **_read_options(args))


def _read_options(args: argparse.Namespace) -> dict[str, Any]:
    """``read_ratings`` keywords of the column, separator and duplicates flags."""
    return {
        "user_col": args.user_col,
        "item_col": args.item_col,
        "rating_col": args.rating_col,
        "timestamp_col": args.timestamp_col,
        "sep": args.sep,
        "duplicates": args.duplicates or "last",
    }


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
        select_tolerance=args.select_tolerance,
        min_gain=args.min_gain,
        validate_every=args.validate_every,
        loss=args.loss,
        min_rating=None if args.implicit else args.min_rating,
        weighting="binary" if args.implicit else None,
        threshold=args.threshold,
        k=args.k,
    )


def load_item_names(args: argparse.Namespace, ratings: Any) -> list[str | None] | None:
    """Names from ``--items``, or the bundled titles for the bundled ratings; else None.

    Parameters
    ----------
    args : argparse.Namespace
        ``train``'s flags (``--items``, ``--item-id-col``, ``--item-name-col``, ``DATA``).
    ratings : Ratings
        The training ratings, whose item map orders the names.

    Returns
    -------
    list or None
        One name (or None) per item index; a summary goes to stderr unless ``-q``.
    """
    from recsys_export.data.items import default_item_names_path, read_item_names

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
    from recsys_export.data import read_ratings

    return read_ratings(args.test, **_read_options(args))


def cmd_train(args: argparse.Namespace) -> int:
    """``recsys-export train``: read, split, train, write the checkpoint, print metrics."""
    from recsys_export.experiment import as_implicit, checkpoint_path, train_checkpoint

    out = checkpoint_path(args.out, args.model, force=args.force)
    ratings = _load_data(args)
    args._implicit_data = ratings.implicit
    cfg = train_config(args)
    item_names = load_item_names(args, ratings)
    if ratings.n_duplicates:
        print(
            f"note: {ratings.n_duplicates} duplicate (user, item) rows in {ratings.source}; "
            f"kept the {args.duplicates or 'last'} occurrence",
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
        split=args.split or "random",
        test_fraction=0.2 if args.test_fraction is None else args.test_fraction,
        valid_fraction=args.valid_fraction,
        seed=args.seed,
        test=test,
        progress=not args.quiet,
        data_info={
            "duplicates": args.duplicates or "last",
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
    ckpt.save(out, overwrite=args.force)
    if args.json:
        print(json.dumps({"checkpoint": str(out), "metrics": ckpt.metrics}, indent=2))
        return 0
    _print_results(results, ckpt.metrics, cfg.k, ckpt.config.get("history"))
    print(f"checkpoint: {out}")
    return 0


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
        _print_test_mapping(mapping)
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


def _print_test_mapping(mapping: dict[str, int]) -> None:
    """The ``test file:`` line (rows kept and dropped, and why, in rows and distinct ids)
    and a warning when kept rows are training pairs (they can never be hits)."""
    line = f"test file: {mapping['kept']:,} of {mapping['rows']:,} rows kept"
    if mapping["dropped"]:
        line += (
            f"; dropped {mapping['dropped']:,} rows: {mapping['rows_unknown_user']:,} with an "
            f"unknown user ({mapping['unknown_users']:,} distinct), "
            f"{mapping['rows_unknown_item']:,} with a known user but an unknown item "
            f"({mapping['unknown_items']:,} distinct)"
        )
    print(line)
    overlap = mapping.get("training_pairs", 0)
    if overlap:
        print(
            f"warning: {overlap:,} of the {mapping['kept']:,} kept test rows "
            f"({overlap / mapping['kept']:.0%}) are (user, item) pairs of the training data; "
            "ranking leaves a user's training items out of the top-k lists, so these rows "
            "can never be hits (every row such: all-zero ranking metrics). Is --test the "
            "training file? Give held-out rows",
            file=sys.stderr,
        )


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


def cmd_evaluate(args: argparse.Namespace) -> int:
    """``recsys-export evaluate``: a checkpoint's metrics beside the baselines."""
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


TRAIN = Command(
    name="train",
    help="train a model and write a checkpoint",
    description="Train MF or DenseNet on a ratings file (ranking objective by default); "
    "write a checkpoint with weights, id maps, seen items, the train/validation/test part "
    "of every row, and test metrics beside a popularity and a bias baseline.",
    epilog=_train_epilog,
    add_options=add_train_options,
    run=cmd_train,
)
EVALUATE = Command(
    name="evaluate",
    help="metrics of a checkpoint beside the baselines",
    description="Report RMSE, MAE, precision@k, recall@k, NDCG@k, MAP@k, coverage and "
    "the median training count of recommended items for the model, a popularity "
    "baseline and a damped bias baseline, on the test rows recorded in the checkpoint "
    "or on a separate --test file.",
    epilog="examples:\n  recsys-export evaluate runs/mf.pt\n"
    "  recsys-export evaluate runs/mf.pt --test u1.test --json",
    add_options=add_evaluate_options,
    run=cmd_evaluate,
)
