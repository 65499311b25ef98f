"""Train and evaluate honestly: the library functions behind ``train`` and ``evaluate``.

:func:`train_checkpoint` splits the rows three ways (train, validation carved from the
training rows, test), trains with early stopping on validation only, then reports the
model and both baselines on the test rows — or on a separate test file mapped onto the
model's id maps. The checkpoint records which part each row was in, so
:func:`evaluate_checkpoint` re-computes the same numbers without re-reading the file.
:func:`checkpoint_path` checks where the checkpoint goes before any training.
"""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from recsys_export import data
from recsys_export.core.atomic import remove_stale
from recsys_export.core.defaults import DEFAULT_K
from recsys_export.data import TEST, TRAIN, VALID, Ratings
from recsys_export.errors import ConfigError, DataError
from recsys_export.models.checkpoint import Checkpoint
from recsys_export.training.config import TrainConfig
from recsys_export.training.evaluate import (
    check_threshold,
    compare_with_baselines,
    default_threshold,
)
from recsys_export.training.fit import fit


def as_implicit(ratings: Ratings, min_rating: float | None) -> Ratings:
    """Interactions from ratings: rows rated ``>= min_rating`` (all when None), value 1.

    Raises
    ------
    DataError
        If no row reaches ``min_rating``.
    """
    out = ratings.subset(data.at_least(ratings, min_rating))
    out.ratings = np.ones(len(out), dtype=np.float32)
    out.implicit = True
    return out


def map_test_file(
    test: Ratings, ckpt_or_ratings: Checkpoint | Ratings
) -> tuple[Ratings, dict[str, int]]:
    """Map a separate test file onto the model's id maps; unknown ids are dropped.

    Returns
    -------
    (Ratings, dict)
        The mapped rows and the counts of :func:`recsys_export.data.align`, plus
        ``training_pairs``: kept rows whose (user, item) pair is a training row of the
        model (ranking leaves those items out, so they can never be hits).

    Raises
    ------
    DataError
        If no row of the test file has a known user and a known item.
    """
    mapped, stats = data.align(test, ckpt_or_ratings.user_map, ckpt_or_ratings.item_map)
    if isinstance(ckpt_or_ratings, Ratings):
        known = (ckpt_or_ratings.users, ckpt_or_ratings.items)
    else:
        known = (ckpt_or_ratings.seen_users, ckpt_or_ratings.seen_items)
    stats["training_pairs"] = data.count_pairs_in(mapped, *known)
    if stats["kept"] == 0:
        raise DataError(
            f"{test.source}: none of its {stats['rows']} rows has a user and an item the model "
            f"knows ({stats['unknown_users']} unknown users, {stats['unknown_items']} unknown "
            "items); is it the test file of the same data set?"
        )
    return mapped, stats


def train_checkpoint(
    ratings: Ratings,
    cfg: TrainConfig,
    *,
    split: str = "random",
    test_fraction: float = 0.2,
    valid_fraction: float = 0.1,
    seed: int = 0,
    test: Ratings | None = None,
    progress: bool = True,
    data_info: dict[str, Any] | None = None,
    item_names: list[str | None] | None = None,
) -> tuple[Checkpoint, dict[str, dict[str, Any]]]:
    """Split, train, evaluate against the baselines, and build the checkpoint.

    Parameters
    ----------
    ratings : Ratings
        The training file's rows.
    cfg : TrainConfig
        Hyperparameters (see :func:`recsys_export.training.config.default_config`).
    split : {"random", "time", "none"}
        How test rows are held out of ``ratings`` (ignored with ``test``).
    test_fraction, valid_fraction : float
        Test share of all rows; validation share of the remaining training rows (no
        validation rows when ``cfg.patience == 0`` or ``cfg.mode == "post"``: nothing
        is selected on them).
    seed : int
        Seed of the split.
    test : Ratings, optional
        A separate test file (any id maps): mapped onto ``ratings``' maps, unknown users
        and items dropped and counted in the results (``test_mapping``).
    progress : bool
        Show the training progress line.
    data_info : dict, optional
        Extra provenance stored in the checkpoint's ``data``.
    item_names : list, optional
        Display names in item-index order (:func:`recsys_export.data.items.read_item_names`).

    Returns
    -------
    (Checkpoint, dict)
        The checkpoint (metrics included) and :func:`compare_with_baselines`' results
        on the test rows (empty without test rows).
    """
    threshold = cfg.threshold if cfg.threshold is not None else default_threshold(ratings)
    cfg.threshold = check_threshold(threshold, ratings)
    mapping = None
    if cfg.patience == 0 or cfg.mode == "post":
        valid_fraction = 0.0
    if test is not None:
        test_rows, mapping = map_test_file(test, ratings)
        parts = data.three_way_split(ratings, "none", valid_fraction=valid_fraction, seed=seed)
    else:
        parts = data.three_way_split(ratings, split, test_fraction, valid_fraction, seed)
        test_rows = ratings.subset(parts == TEST)
    train, valid = ratings.subset(parts == TRAIN), ratings.subset(parts == VALID)
    model, history = fit(train, valid if len(valid) else None, cfg, progress=progress)
    results: dict[str, dict[str, Any]] = {}
    if len(test_rows):
        results = compare_with_baselines(
            model,
            train,
            valid,
            test_rows,
            k=min(cfg.k, ratings.n_items),
            threshold=threshold,
            rating_error=cfg.objective == "rating",
        )
    metrics: dict[str, Any] = {
        "train_seconds": round(history.seconds, 3),
        **results.get("model", {}),
        "baselines": {name: m for name, m in results.items() if name != "model"},
        "parts": {"train": len(train), "valid": len(valid), "test": len(test_rows)},
    }
    if mapping is not None:
        metrics["test_mapping"] = mapping
    info = {
        "source": ratings.source,
        "n_ratings": len(ratings),
        "implicit": ratings.implicit,
        "split": "file" if test is not None else split,
        "test_fraction": test_fraction,
        "valid_fraction": valid_fraction,
        "seed": seed,
        "n_duplicates": ratings.n_duplicates,
        "test_source": test.source if test is not None else None,
        **(data_info or {}),
    }
    ckpt = Checkpoint(
        model=model,
        user_map=ratings.user_map,
        item_map=ratings.item_map,
        seen_users=ratings.users,
        seen_items=ratings.items,
        config={**asdict(cfg), "history": history.to_dict()},
        metrics=metrics,
        data=info,
        seen_ratings=ratings.ratings,
        seen_parts=parts,
        item_names=item_names,
    )
    return ckpt, results


def checkpoint_ratings(ckpt: Checkpoint) -> Ratings:
    """The training file's rows as recorded in a checkpoint.

    Checkpoints of older versions record no ratings: their rows come back as
    interactions (rating 1.0, ``implicit=True``), which is all ranking metrics need.
    """
    recorded = ckpt.seen_ratings is not None
    return Ratings(
        users=ckpt.seen_users,
        items=ckpt.seen_items,
        ratings=ckpt.seen_ratings if recorded else np.ones(len(ckpt.seen_users), np.float32),
        timestamps=None,
        user_map=ckpt.user_map,
        item_map=ckpt.item_map,
        source=str(ckpt.data.get("source", "<checkpoint>")),
        implicit=bool(ckpt.data.get("implicit", False)) or not recorded,
    )


def evaluate_checkpoint(
    ckpt: Checkpoint,
    *,
    test: Ratings | None = None,
    k: int | None = None,
    threshold: float | None = None,
) -> dict[str, dict[str, Any]]:
    """Model and baselines on the checkpoint's test rows, or on a separate test file.

    Parameters
    ----------
    ckpt : Checkpoint
        Written by :func:`train_checkpoint` (it records the parts of every row).
    test : Ratings, optional
        A test file in raw ids, mapped onto the checkpoint's maps (unknown ids dropped
        and counted under ``"test_mapping"``); every recorded row is then "known".
    k : int, optional
        Cut-off (default :data:`~recsys_export.core.defaults.DEFAULT_K`; at most the
        number of items).
    threshold : float, optional
        Relevance threshold; default: the one the model was trained with.

    Returns
    -------
    dict
        :func:`compare_with_baselines`' results, plus ``"test_mapping"`` with ``test``.

    Raises
    ------
    DataError
        A checkpoint without recorded parts (train it again), or no test rows.
    """
    if ckpt.seen_parts is None and test is None:
        raise DataError(
            "the checkpoint does not record its train/validation/test parts (it was written "
            "by an older recsys-export); train it again, or pass --test FILE"
        )
    rows = checkpoint_ratings(ckpt)
    parts = ckpt.seen_parts if ckpt.seen_parts is not None else np.zeros(len(rows), np.int8)
    if threshold is None:
        threshold = ckpt.config.get("threshold")
    train, valid = rows.subset(parts == TRAIN), rows.subset(parts == VALID)
    mapping = None
    if test is not None:
        test_rows, mapping = map_test_file(test, ckpt)
        train = rows.subset(parts != VALID)  # every recorded row is known
    else:
        test_rows = rows.subset(parts == TEST)
    if len(test_rows) == 0:
        raise DataError(
            "the checkpoint has no test rows (trained with --split none or --test FILE); "
            "pass --test FILE"
        )
    results = compare_with_baselines(
        ckpt.model,
        train,
        valid,
        test_rows,
        k=min(DEFAULT_K if k is None else k, ckpt.model.n_items),
        threshold=threshold,
        rating_error=ckpt.config.get("objective", "rating") == "rating",
    )
    if mapping is not None:
        results["test_mapping"] = mapping
    return results


def checkpoint_path(out: Path | None, model: str, *, force: bool = False) -> Path:
    """Where ``train`` writes its checkpoint, checked before any training.

    Parameters
    ----------
    out : Path, optional
        The checkpoint path; default ``runs/MODEL.pt`` (its directory is created).
    model : str
        Model kind, naming the default path.
    force : bool
        Allow replacing an existing checkpoint.

    Returns
    -------
    Path

    Raises
    ------
    ConfigError
        The file exists (without ``force``), a given path's directory does not exist,
        the path is a directory, or its directory does not let us create files (checked
        by creating and removing a hidden probe file, which also catches read-only
        filesystems and root on immutable directories).
    """
    path = out or Path("runs") / f"{model}.pt"
    remove_stale(path)  # what a killed run left, also when the path is refused below
    if path.exists() and not force:
        raise ConfigError(f"{path} exists; pass --force to overwrite it or choose another --out")
    if not path.parent.exists():
        if out is not None:
            raise ConfigError(f"cannot write {path}: directory {path.parent} does not exist")
        path.parent.mkdir(parents=True)
    if path.is_dir():
        raise ConfigError(
            f"cannot write checkpoint {path}: it is a directory; give a file path such as "
            f"{path / 'model.pt'}"
        )
    probe = path.parent / f".{path.name}.probe-{os.getpid()}"
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except OSError as exc:
        raise ConfigError(
            f"cannot write checkpoint {path}: directory {path.parent} is not writable "
            f"({exc.strerror}); choose another --out"
        ) from None
    os.unlink(probe)
    return path
