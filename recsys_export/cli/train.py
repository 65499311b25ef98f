"""``train`` and ``evaluate``: their options, flags to library calls
(:mod:`recsys_export.training.experiment`), results to text or JSON."""

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
    from_args,
    opt,
)
from recsys_export.core.defaults import DEFAULT_K, MODEL_KINDS
from recsys_export.training.recipes import PRESETS

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
    opt("--model", choices=MODEL_KINDS, help=f"model kind (default {MODEL_KINDS[0]})"),
    opt("--out", type=Path, help="checkpoint path (default runs/MODEL.pt)"),
    opt("--force", action="store_true", help="overwrite an existing checkpoint"),
    opt(
        "--preset",
        choices=("default", *PRESETS),
        help="hyperparameter preset (see below; default: default)",
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
    opt("-k", "--k", type=int, help=f"cut-off of ranking metrics (default {DEFAULT_K})"),
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
    p.add_argument("-k", "--k", type=int, help=f"cut-off (default {DEFAULT_K})")
    p.add_argument(
        "--threshold", type=float, help="relevance threshold (default: the one of training)"
    )
    p.add_argument("--json", action="store_true", help="print JSON")


def _train_epilog() -> str:
    from recsys_export.training.recipes import describe_recipes

    return EPILOG_TRAIN.replace("{recipes}", describe_recipes())


#: ``train`` options that are :func:`~recsys_export.training.config.default_config` keywords
#: (option attribute -> keyword).
_CONFIG_OVERRIDES = {
    "factors": "n_factors",
    "hidden": "hidden",
    "biased": "biased",
    "dropout": "dropout",
    "epochs": "epochs",
    "batch_size": "batch_size",
    "lr": "lr",
    "optimizer": "optimizer",
    "l2": "l2",
    "weight_decay": "weight_decay",
    "threads": "threads",
    "init_std": "init_std",
    "patience": "patience",
    "select_tolerance": "select_tolerance",
    "min_gain": "min_gain",
    "validate_every": "validate_every",
    "loss": "loss",
}


def read_options(args: argparse.Namespace) -> Any:
    """The :class:`~recsys_export.training.run.ReadOptions` of the column flags."""
    from recsys_export.training.run import ReadOptions

    return from_args(ReadOptions, args)


def train_request(args: argparse.Namespace) -> Any:
    """The :class:`~recsys_export.training.run.TrainRequest` of ``train``'s flags."""
    from recsys_export.training.run import TrainRequest

    return from_args(
        TrainRequest,
        args,
        read=read_options(args),
        overrides={key: getattr(args, attr) for attr, key in _CONFIG_OVERRIDES.items()},
        progress=not args.quiet,
    )


def _note(line: str) -> None:
    print(line, file=sys.stderr)


def cmd_train(args: argparse.Namespace) -> int:
    """``recsys-export train``: :func:`~recsys_export.training.run.run_training`, then
    the metrics."""
    from recsys_export.training.run import run_training

    outcome = run_training(train_request(args), note=_note)
    ckpt = outcome.checkpoint
    if args.json:
        print(json.dumps({"checkpoint": str(outcome.path), "metrics": ckpt.metrics}, indent=2))
        return 0
    _print_results(outcome.results, ckpt.metrics, outcome.config.k, ckpt.config.get("history"))
    print(f"checkpoint: {outcome.path}")
    return 0


def _print_results(
    results: dict[str, Any], metrics: dict[str, Any], k: int | None, history: dict | None = None
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


def cmd_evaluate(args: argparse.Namespace) -> int:
    """``recsys-export evaluate``: a checkpoint's metrics beside the baselines."""
    from recsys_export.models.checkpoint import load_checkpoint
    from recsys_export.training.experiment import evaluate_checkpoint

    ckpt = load_checkpoint(args.checkpoint)
    test = read_options(args).read(args.test) if args.test is not None else None
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
