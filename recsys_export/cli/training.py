"""``train`` and ``evaluate``: flags to library calls (:mod:`recsys_export.training.experiment`),
results to text or JSON."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


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
    from recsys_export.training.config import default_config

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
    from recsys_export.training.experiment import as_implicit, checkpoint_path, train_checkpoint

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
    from recsys_export.training.evaluate import format_comparison

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
    from recsys_export.training.evaluate import default_threshold

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
    from recsys_export.models.checkpoint import load_checkpoint
    from recsys_export.training.experiment import evaluate_checkpoint

    ckpt = load_checkpoint(args.checkpoint)
    test = _read_test_file(args) if args.test is not None else None
    results = evaluate_checkpoint(ckpt, test=test, k=args.k, threshold=args.threshold)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        _print_results(results, {}, args.k)
    return 0
