"""One training run as ``recsys-export train`` does it: :func:`run_training`.

A :class:`TrainRequest` says what to read, how to split, which recipe and overrides,
where to write; :func:`run_training` reads the data (implicit conversion, a separate
test file, item names), builds the :class:`~recsys_export.training.config.TrainConfig`, trains
(:func:`~recsys_export.training.experiment.train_checkpoint`), saves the checkpoint and returns a
:class:`TrainOutcome`. Options left None take the library's defaults. What a user should
know along the way (duplicates kept, negative ratings, the data read) goes to ``note``
as it happens, one line each, and into ``outcome.notes``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from recsys_export.core.defaults import DEFAULT_DUPLICATES, MODEL_KINDS

__all__ = ["ReadOptions", "TrainOutcome", "TrainRequest", "run_training", "training_config"]


@dataclass(frozen=True)
class ReadOptions:
    """How a ratings file is read (``read_ratings`` keywords; None: detected/default)."""

    user_col: str | None = None
    item_col: str | None = None
    rating_col: str | None = None
    timestamp_col: str | None = None
    sep: str | None = None
    duplicates: str | None = None

    def keywords(self) -> dict[str, Any]:
        """The keywords of :func:`recsys_export.data.read_ratings`."""
        return {**asdict(self), "duplicates": self.duplicates or DEFAULT_DUPLICATES}

    def read(self, path: str | Path) -> Any:
        """The ratings of a file (:func:`recsys_export.data.read_ratings`)."""
        from recsys_export.data import read_ratings

        return read_ratings(path, **self.keywords())


@dataclass(frozen=True)
class TrainRequest:
    """What ``recsys-export train`` was asked (None everywhere: the library's default).

    ``overrides`` are :func:`~recsys_export.training.config.default_config` keywords
    (``n_factors``, ``epochs``, ...; None values are left out).
    """

    data: str | None = None
    read: ReadOptions = ReadOptions()
    model: str | None = None
    preset: str | None = None
    objective: str | None = None
    implicit: bool = False
    min_rating: float | None = None
    threshold: float | None = None
    k: int | None = None
    overrides: Mapping[str, Any] = field(default_factory=dict)
    split: str | None = None
    test_fraction: float | None = None
    valid_fraction: float | None = None
    seed: int | None = None
    test: Path | None = None
    items: Path | None = None
    item_id_col: str | None = None
    item_name_col: str | None = None
    out: Path | None = None
    force: bool = False
    progress: bool = True

    @property
    def kind(self) -> str:
        """The model kind (default: the first of :data:`MODEL_KINDS`)."""
        return self.model or MODEL_KINDS[0]


@dataclass
class TrainOutcome:
    """What :func:`run_training` wrote and measured."""

    checkpoint: Any
    path: Path
    results: dict[str, dict[str, Any]]
    config: Any
    notes: list[str] = field(default_factory=list)


def training_config(request: TrainRequest, *, implicit_data: bool = False) -> Any:
    """The TrainConfig of a request: preset or recipe, then the overrides.

    ``implicit_data``: the file has no rating column, so the objective defaults to
    ranking.
    """
    from recsys_export.training.config import default_config

    objective = request.objective
    if objective is None and implicit_data:
        objective = "ranking"
    given = {
        "seed": request.seed,
        "min_rating": None if request.implicit else request.min_rating,
        "weighting": "binary" if request.implicit else None,
        "threshold": request.threshold,
        "k": request.k,
        **request.overrides,
    }
    extra = {} if request.preset is None else {"preset": request.preset}
    if given["seed"] is None:
        del given["seed"]  # the config's own default
    return default_config(request.kind, objective, **extra, **given)


def load_item_names(
    request: TrainRequest, ratings: Any, note: Callable[[str], None] | None = None
) -> list[str | None] | None:
    """Names from ``request.items``, or the bundled titles for the bundled ratings.

    Returns
    -------
    list or None
        One name (or None) per item index; its summary goes to ``note``.
    """
    from recsys_export.data.items import default_item_names_path, read_item_names

    path = request.items
    if path is None and request.data in (None, "movielens-small"):
        path = default_item_names_path()
    if path is None:
        return None
    names = read_item_names(
        path, item_map=ratings.item_map, id_col=request.item_id_col, name_col=request.item_name_col
    )
    if note is not None:
        note(f"items: {names.summary()}")
    return names.names


def run_training(request: TrainRequest, note: Callable[[str], None] | None = None) -> TrainOutcome:
    """Read, split, train, evaluate, save: ``recsys-export train``'s whole run.

    Parameters
    ----------
    request : TrainRequest
        The data, recipe and output.
    note : callable, optional
        Called with each line a user should see while it runs (also in
        ``outcome.notes``); the ``items:`` and ``data:`` lines only with ``progress``.

    Raises
    ------
    RecsysExportError
        A bad ``out`` (checked before any reading or training), data or option.
    """
    from recsys_export.data import load_dataset
    from recsys_export.training.experiment import as_implicit, checkpoint_path, train_checkpoint

    notes: list[str] = []

    def tell(line: str) -> None:
        notes.append(line)
        if note is not None:
            note(line)

    out = checkpoint_path(request.out, request.kind, force=request.force)
    ratings = load_dataset(request.data, **request.read.keywords())
    cfg = training_config(request, implicit_data=ratings.implicit)
    item_names = load_item_names(request, ratings, tell if request.progress else None)
    if ratings.n_duplicates:
        tell(
            f"note: {ratings.n_duplicates} duplicate (user, item) rows in {ratings.source}; "
            f"kept the {request.read.keywords()['duplicates']} occurrence"
        )
    if request.implicit:
        ratings = as_implicit(ratings, request.min_rating)
    elif not ratings.implicit:
        _warn_rating_scale(ratings, request.threshold, tell)
    test = request.read.read(request.test) if request.test is not None else None
    if test is not None and request.implicit:
        test = as_implicit(test, request.min_rating)
    if request.progress:
        kind = "interactions" if ratings.implicit else "ratings"
        tell(
            f"data: {len(ratings):,} {kind}, {ratings.n_users:,} users, {ratings.n_items:,} "
            f"items from {ratings.source}; objective {cfg.objective} ({cfg.model})"
        )
    split = {
        "split": request.split,
        "test_fraction": request.test_fraction,
        "valid_fraction": request.valid_fraction,
        "seed": request.seed,
    }
    r = request.read
    ckpt, results = train_checkpoint(
        ratings,
        cfg,
        **{key: value for key, value in split.items() if value is not None},
        test=test,
        progress=request.progress,
        data_info={
            "duplicates": r.keywords()["duplicates"],
            "columns": {
                "user": r.user_col,
                "item": r.item_col,
                "rating": r.rating_col,
                "timestamp": r.timestamp_col,
            },
            "sep": r.sep,
        },
        item_names=item_names,
    )
    ckpt.save(out, overwrite=request.force)
    return TrainOutcome(ckpt, out, results, cfg, notes)


def _warn_rating_scale(ratings: Any, threshold: float | None, tell: Callable[[str], None]) -> None:
    """Warn about negative ratings: accepted, but rarely what a user meant.

    The rating objective regresses on whatever scale the file uses; the ranking
    objective weighs every row alike (binary weights) unless --min-rating leaves the
    negative ones out; the metrics count held-out ratings >= the threshold as relevant.
    """
    from recsys_export.training.evaluate import default_threshold

    if len(ratings) and float(ratings.ratings.min()) < 0:
        lo, hi = float(ratings.ratings.min()), float(ratings.ratings.max())
        t = default_threshold(ratings) if threshold is None else threshold
        tell(
            f"warning: ratings range from {lo:g} to {hi:g} (some are negative); ranking "
            f"metrics count held-out ratings >= --threshold {t:g} as relevant, and the "
            "ranking objective learns from every row unless --min-rating drops some; "
            "training continues on the ratings as given"
        )
