"""What a training run is asked to do, torch-free: :class:`TrainConfig` and its vocabularies.

:func:`default_config` builds the recommended configuration from a recipe or preset
(:mod:`recsys_export.training.recipes`) plus overrides; :func:`batch_size_for` sizes a
step from the data. ``recsys-export train --help`` and the CLI's choices read the
vocabularies below without importing torch; the training loops are in
:mod:`recsys_export.training.fit` and :mod:`recsys_export.training.ranking`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

from recsys_export.core.defaults import MODEL_KINDS
from recsys_export.core.validation import (
    check_choice,
    check_finite,
    check_fraction,
    check_int,
    check_nonnegative,
    check_positive,
)
from recsys_export.errors import ConfigError
from recsys_export.training.recipes import PRESET_NAMES, PRESETS, RECIPES

__all__ = [
    "LOSSES",
    "MODES",
    "OBJECTIVES",
    "OPTIMIZERS",
    "POSITIVES",
    "WEIGHTINGS",
    "TrainConfig",
    "batch_size_for",
    "default_config",
]

#: What is learned: top-k lists (``"ranking"``) or the ratings themselves (``"rating"``).
OBJECTIVES = ("ranking", "rating")
#: Ranking losses (:mod:`recsys_export.training.objectives`).
LOSSES = ("softmax", "bpr")
#: Ranking: which rows are positives when ``min_rating`` is None.
POSITIVES = ("relevant", "all")
#: Ranking: the weight of a positive (``rating / max rating``, or 1).
WEIGHTINGS = ("rating", "binary")
#: Training loops: shuffled minibatches, or the post's per-rating loop.
MODES = ("minibatch", "post")
OPTIMIZERS = ("adam", "sparse_adam", "sgd")


#: What :meth:`TrainConfig.validate` checks, field by field (then three cross-field rules).
_CHOICES = {
    "model": MODEL_KINDS,
    "objective": OBJECTIVES,
    "loss": LOSSES,
    "positives": POSITIVES,
    "weighting": WEIGHTINGS,
    "mode": MODES,
    "optimizer": OPTIMIZERS,
}
#: Integer fields and their least value.
_INTS_MIN = {
    "negatives": 1,
    "full_softmax_items": 1,
    "k": 1,
    "valid_users": 1,
    "validate_every": 1,
    "n_factors": 1,
    "hidden": 1,
    "epochs": 1,
    "threads": 1,
    "patience": 0,
}
_FRACTIONS = ("dropout", "select_tolerance", "min_gain")  # in [0, 1)
_NONNEGATIVE = ("l2", "weight_decay", "average_epochs")  # finite, >= 0
_POSITIVE = ("lr", "score_scale")  # finite, > 0
_FINITE_OR_NONE = ("min_rating", "threshold")


@dataclass
class TrainConfig:
    """Hyperparameters of a training run (all JSON-serialisable).

    Attributes
    ----------
    model : {"mf", "densenet"}
    objective : {"rating", "ranking"}
        ``"rating"``: MSE on the ratings; ``"ranking"``: learn top-k lists (see
        :mod:`recsys_export.training.objectives`). The dataclass default is ``"rating"`` (the
        plain regression); :func:`default_config` gives the recommended recipes, ranking
        first.
    loss : {"softmax", "bpr"}
        Ranking loss.
    negatives : int
        Sampled-softmax candidates per step when the catalogue has more than
        ``full_softmax_items`` items.
    full_softmax_items : int
        Up to this many items, the softmax runs over the whole catalogue.
    positives : {"relevant", "all"}
        Ranking, when ``min_rating`` is None: ``"relevant"`` learns from the rows rated
        >= the relevance threshold (what the metrics call relevant), ``"all"`` from
        every row (a rating is itself a signal of interest). Implicit data: every row.
    min_rating : float or None
        Ranking: rows rated below this are not positives (overrides ``positives``).
    weighting : {"rating", "binary"}
        Ranking: weight of a positive (``rating / max rating``, or 1).
    threshold : float or None
        Relevance threshold of the ranking metrics (validation and reports); None: 80%
        of the highest rating (see :func:`recsys_export.training.evaluate.default_threshold`).
    k : int
        Cut-off of the validation metric (NDCG@k) of the ranking objective.
    valid_users : int
        Ranking: validation NDCG is computed on at most this many users per epoch.
    validate_every : int
        Ranking: validate (and so possibly keep or stop) after every this many epochs
        and after the last one. Scoring the whole catalogue for the validation users can
        cost most of an epoch of steps (DenseNet on ml-latest-small: 0.29 s against
        0.42 s); patience still counts epochs.
    init_biases : bool
        Rating objective, biased MF: start the global mean and the user/item biases from
        the damped bias baseline (:class:`recsys_export.training.baselines.BiasBaseline`, damping
        chosen on the validation rows), so the factors learn what the baseline misses.
    score_scale : float
        Ranking: the loss sees ``score_scale * score``; folded into the weights after
        training (:func:`recsys_export.training.objectives.fold_scale`), so exports compute it.
    n_factors : int
        Embedding size.
    hidden : int
        DenseNet hidden width.
    biased : bool
        MF: global mean plus user/item biases. DenseNet: add the global mean to the output.
    dropout : float
        DenseNet dropout on the hidden layer.
    mode : {"minibatch", "post"}
    epochs : int
        Maximum number of passes over the training ratings.
    batch_size : int or None
        Ratings per step (users per step for the softmax loss); 0 means everything in
        one step (full batch); None sizes it from the data (:func:`batch_size_for`).
    lr : float
    optimizer : {"adam", "sparse_adam", "sgd"}
    l2 : float
        Rating objective: weight of ``mean over the batch of (|p_u|^2 + |q_i|^2 + b_u^2 +
        b_i^2)``. Ranking objective: the optimizer's weight decay on the embeddings.
    weight_decay : float
        Adam/SGD weight decay on the dense layers (DenseNet's linear layers).
    init_std : float or None
        Embedding init std; None keeps torch's N(0, 1) as in the post.
    select_tolerance : float
        Ranking: epochs whose validation NDCG@k is within this fraction of the best
        epoch's tie with it, and the tied epoch whose validation top-k lists cover the
        most distinct items is kept (0: the best epoch). Coverage needs no labels, so
        this selects on the validation rows only.
    patience : int
        Early stopping: epochs without improvement of the validation metric (RMSE, or
        NDCG@k for ranking) before stopping; 0 disables early stopping.
    min_gain : float
        Ranking: only a new best validation NDCG@k more than this fraction above the
        last improvement counts as one (resets ``patience``), so a plateau of tiny gains
        does not keep training alive; 0: every new best.
    average_epochs : float
        Ranking: validate, keep and export an exponential moving average of the weights
        spanning about this many epochs of steps (0: the live weights). See
        :class:`recsys_export.training.history.WeightAverage`.
    seed : int
        Seeds initialisation and shuffling: same seed, same data -> identical weights.
    threads : int
        Torch CPU threads while training. One is the default: these models' steps are
        small, and with two OpenMP threads a busy machine slowed training ~15x here
        (ml-latest-small MF: 9.4 s on one thread, 146 s on two under load).
    """

    model: str = "mf"
    objective: str = "rating"
    loss: str = "softmax"
    negatives: int = 2048
    full_softmax_items: int = 50_000
    positives: str = "all"
    min_rating: float | None = None
    weighting: str = "rating"
    threshold: float | None = None
    k: int = 10
    valid_users: int = 2000
    validate_every: int = 1
    score_scale: float = 1.0
    init_biases: bool = False
    n_factors: int = 32
    hidden: int = 64
    biased: bool = True
    dropout: float = 0.0
    mode: str = "minibatch"
    epochs: int = 40
    batch_size: int | None = 1024
    lr: float = 3e-3
    optimizer: str = "adam"
    l2: float = 0.1
    weight_decay: float = 0.0
    init_std: float | None = 0.1
    patience: int = 3
    select_tolerance: float = 0.0
    min_gain: float = 0.0
    average_epochs: float = 0.0
    seed: int = 0
    threads: int = 1

    def validate(self) -> None:
        """Raise :class:`ConfigError` for any invalid setting."""
        for name, choices in _CHOICES.items():
            check_choice(name, getattr(self, name), choices)
        for name, low in _INTS_MIN.items():
            check_int(name, getattr(self, name), low=low)
        check_int("batch_size", self.batch_size, low=0, none_ok=True, hint=" (0: full batch)")
        for name in _FRACTIONS:
            check_fraction(name, getattr(self, name))
        for name in _NONNEGATIVE:
            check_nonnegative(name, getattr(self, name))
        for name in _POSITIVE:
            check_positive(name, getattr(self, name))
        for name in _FINITE_OR_NONE:
            check_finite(name, getattr(self, name), none_ok=True)
        check_positive("init_std", self.init_std, none_ok=True)
        if self.objective == "ranking" and self.mode == "post":
            raise ConfigError("the post's loop trains the rating objective; use --objective rating")
        if self.optimizer == "sparse_adam" and self.objective == "ranking":
            raise ConfigError("optimizer 'sparse_adam' is for --objective rating; use adam or sgd")
        if self.optimizer == "sparse_adam" and self.model != "mf":
            raise ConfigError("optimizer 'sparse_adam' is for --model mf; use adam or sgd")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Build from a dict, ignoring unknown keys."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def default_config(
    model: str = "mf", objective: str | None = None, preset: str = "default", **overrides: Any
) -> TrainConfig:
    """The recommended :class:`TrainConfig` (what ``recsys-export train`` uses).

    Parameters
    ----------
    model : {"mf", "densenet"}
    objective : {"ranking", "rating"}, optional
        Default ``"ranking"``; the ``post`` and ``tiny`` presets are rating recipes.
    preset : {"default", "post", "tiny"}
        ``"post"``: the post's per-rating SGD loop exactly; ``"tiny"``: full-batch Adam
        for tiny data such as the toy matrix; ``"default"``: :data:`RECIPES`.
    **overrides
        Any :class:`TrainConfig` field; ``None`` values are ignored.

    Raises
    ------
    ConfigError
        Unknown model, objective or preset, or invalid settings.
    """
    check_choice("model", model, MODEL_KINDS)
    check_choice("preset", preset, PRESET_NAMES)
    if objective is None:
        objective = "ranking" if preset == "default" else "rating"
    check_choice("objective", objective, OBJECTIVES)
    base: dict[str, Any] = {"model": model, "objective": objective}
    if preset == "default":
        base.update(RECIPES[(model, objective)])
    else:
        base.update(PRESETS[preset])
    base.update({k: v for k, v in overrides.items() if v is not None})
    cfg = TrainConfig.from_dict(base)
    cfg.validate()
    return cfg


def batch_size_for(cfg: TrainConfig, n: int) -> int:
    """Rows (or, for the softmax loss, users) per step for ``n`` of them.

    ``cfg.batch_size`` when set (0: all ``n``). None: for the softmax loss, about
    ``sqrt(n) / 2`` users rounded to a power of two, within [16, 512], so an epoch takes
    about ``2 sqrt(n)`` steps (ml-latest-small, 610 users: 16; MovieTweetings, 16,554
    users: 64); otherwise 1024 rows.
    """
    if cfg.batch_size is not None:
        return n if cfg.batch_size == 0 else max(1, min(cfg.batch_size, n))
    if cfg.objective == "ranking" and cfg.loss == "softmax":
        size = 2 ** round(math.log2(max(1.0, math.sqrt(n) / 2)))
        return max(1, min(n, max(16, min(512, size))))
    return max(1, min(1024, n))
