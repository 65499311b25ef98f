"""Training: ranking and rating objectives, the post's per-rating loop, early stopping.

Two objectives train the same architectures (so the same bundles):

``objective="ranking"`` (the default recipe, :func:`default_config`)
    Learns to rank each user's items above the rest of the catalogue (a sampled or full
    softmax, or BPR: :mod:`recsys_export.objectives`); early stopping on validation
    NDCG@k. What the runtime serves is a top-k list, so this is what serves well.
``objective="rating"``
    Regression on the ratings (MSE), early stopping on validation RMSE.

Two modes share one entry point, :func:`fit`:

``mode="minibatch"`` (default)
    Shuffled minibatches, Adam / SparseAdam / SGD, L2 on the embeddings of each batch
    (``l2``), weight decay on dense layers, early stopping on validation RMSE with the
    best epoch's weights restored.
``mode="post"``
    The post's loop exactly: one rating at a time in ``zip(*matrix.nonzero())`` order,
    plain SGD, MSE loss. It reproduces the post's weights given the same initial
    weights (see ``tests/test_train.py``).

For tiny data such as the post's 5x4 matrix, the ``tiny`` preset
(:data:`recsys_export.recipes.TINY_DATA_PRESET`: full-batch Adam with a high learning
rate) fits the observed entries in well under a second.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from recsys_export.core.progress import Progress
from recsys_export.errors import ConfigError, TrainingDiverged
from recsys_export.evaluate import predict as predict  # recsys_export.train.predict stays
from recsys_export.evaluate import rmse
from recsys_export.history import EarlyStopping as _EarlyStopping
from recsys_export.history import History, WeightAverage
from recsys_export.models import MODEL_KINDS, BaseModel, DenseNet, MatrixFactorization
from recsys_export.objectives import (
    LOSSES,
    WEIGHTINGS,
    Positives,
    bpr_loss,
    fold_scale,
    softmax_loss,
)
from recsys_export.recipes import PRESETS, RECIPES

if TYPE_CHECKING:
    from recsys_export.data import Ratings

OPTIMIZERS = ("adam", "sparse_adam", "sgd")
OBJECTIVES = ("ranking", "rating")


@dataclass
class TrainConfig:
    """Hyperparameters of a training run (all JSON-serialisable).

    Attributes
    ----------
    model : {"mf", "densenet"}
    objective : {"rating", "ranking"}
        ``"rating"``: MSE on the ratings; ``"ranking"``: learn top-k lists (see
        :mod:`recsys_export.objectives`). The dataclass default is ``"rating"`` (the
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
        of the highest rating (see :func:`recsys_export.evaluate.default_threshold`).
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
        the damped bias baseline (:class:`recsys_export.baselines.BiasBaseline`, damping
        chosen on the validation rows), so the factors learn what the baseline misses.
    score_scale : float
        Ranking: the loss sees ``score_scale * score``; folded into the weights after
        training (:func:`recsys_export.objectives.fold_scale`), so exports compute it.
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
        :class:`recsys_export.history.WeightAverage`.
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
        if self.model not in MODEL_KINDS:
            raise ConfigError(f"unknown model {self.model!r}; choose one of {MODEL_KINDS}")
        if self.objective not in OBJECTIVES:
            raise ConfigError(
                f"unknown objective {self.objective!r}; choose one of {', '.join(OBJECTIVES)}"
            )
        if self.loss not in LOSSES:
            raise ConfigError(f"unknown loss {self.loss!r}; choose one of {', '.join(LOSSES)}")
        if self.positives not in ("relevant", "all"):
            raise ConfigError(f"unknown positives {self.positives!r}; choose relevant or all")
        if self.weighting not in WEIGHTINGS:
            raise ConfigError(
                f"unknown weighting {self.weighting!r}; choose one of {', '.join(WEIGHTINGS)}"
            )
        if self.objective == "ranking" and self.mode == "post":
            raise ConfigError("the post's loop trains the rating objective; use --objective rating")
        for name in ("negatives", "full_softmax_items", "k", "valid_users", "validate_every"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.min_rating is not None and not math.isfinite(self.min_rating):
            raise ConfigError(f"min_rating must be a finite number, got {self.min_rating}")
        if not (self.score_scale > 0 and math.isfinite(self.score_scale)):
            raise ConfigError(f"score_scale must be a positive number, got {self.score_scale}")
        if self.threshold is not None and not math.isfinite(self.threshold):
            raise ConfigError(f"threshold must be a finite number, got {self.threshold}")
        if self.mode not in ("minibatch", "post"):
            raise ConfigError(f"unknown mode {self.mode!r}; choose 'minibatch' or 'post'")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"unknown optimizer {self.optimizer!r}; choose one of {OPTIMIZERS}")
        if self.optimizer == "sparse_adam" and self.objective == "ranking":
            raise ConfigError("optimizer 'sparse_adam' is for --objective rating; use adam or sgd")
        if self.optimizer == "sparse_adam" and self.model != "mf":
            raise ConfigError("optimizer 'sparse_adam' is for --model mf; use adam or sgd")
        positive = {"n_factors": self.n_factors, "hidden": self.hidden, "epochs": self.epochs}
        for name, value in positive.items():
            if int(value) < 1:
                raise ConfigError(f"{name} must be >= 1, got {value}")
        if self.threads < 1:
            raise ConfigError(f"threads must be >= 1, got {self.threads}")
        if self.batch_size is not None and self.batch_size < 0:
            raise ConfigError(f"batch_size must be >= 0 (0 = full batch), got {self.batch_size}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"lr must be a positive number, got {self.lr}")
        if self.l2 < 0 or self.weight_decay < 0:
            raise ConfigError("l2 and weight_decay must be >= 0")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.init_std is not None and not self.init_std > 0:
            raise ConfigError(f"init_std must be > 0, got {self.init_std}")
        if self.patience < 0:
            raise ConfigError(f"patience must be >= 0, got {self.patience}")
        for name in ("select_tolerance", "min_gain"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if not (self.average_epochs >= 0 and math.isfinite(self.average_epochs)):
            raise ConfigError(f"average_epochs must be >= 0, got {self.average_epochs}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Build from a dict, ignoring unknown keys."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


# The recipes and presets are plain values in a torch-free module, so `train --help` can
# print them without importing torch.


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
    if model not in MODEL_KINDS:
        raise ConfigError(f"unknown model {model!r}; choose one of {MODEL_KINDS}")
    if preset not in ("default", *PRESETS):
        raise ConfigError(f"unknown preset {preset!r}; choose default, post or tiny")
    if objective is None:
        objective = "ranking" if preset == "default" else "rating"
    if objective not in OBJECTIVES:
        raise ConfigError(f"unknown objective {objective!r}; choose one of {OBJECTIVES}")
    base: dict[str, Any] = {"model": model, "objective": objective}
    if preset == "default":
        base.update(RECIPES[(model, objective)])
    else:
        base.update(PRESETS[preset])
    base.update({k: v for k, v in overrides.items() if v is not None})
    cfg = TrainConfig.from_dict(base)
    cfg.validate()
    return cfg


def build_from_config(cfg: TrainConfig, train: Ratings) -> BaseModel:
    """Create the (untrained) model described by ``cfg`` for ``train``'s id maps."""
    cfg.validate()
    mean = float(np.mean(train.ratings)) if cfg.biased and len(train) else 0.0
    if cfg.model == "mf":
        return MatrixFactorization(
            train.n_users,
            train.n_items,
            cfg.n_factors,
            biased=cfg.biased,
            global_mean=mean,
            sparse=cfg.mode == "post"
            or (cfg.objective == "rating" and cfg.optimizer in ("sgd", "sparse_adam")),
            init_std=cfg.init_std,
        )
    return DenseNet(
        train.n_users,
        train.n_items,
        cfg.n_factors,
        cfg.hidden,
        dropout=cfg.dropout,
        global_mean=mean,
        init_std=cfg.init_std,
    )


def _adam(groups: list[dict[str, Any]], lr: float) -> torch.optim.Optimizer:
    """Adam with the fused CPU kernel (one pass over each parameter; several times faster
    here than the per-op implementation), or the plain one where unsupported."""
    try:
        return torch.optim.Adam(groups, lr=lr, fused=True)
    except (RuntimeError, TypeError):  # pragma: no cover - older torch
        return torch.optim.Adam(groups, lr=lr)


def _split_parameters(model: BaseModel) -> tuple[list[Any], list[Any]]:
    """(embedding tables and biases, dense layers) of a model."""
    emb, dense = [], []
    for name, p in model.named_parameters():
        (emb if name.split(".")[0].endswith(("factors", "bias")) else dense).append(p)
    return emb, dense


def _optimizers(model: BaseModel, cfg: TrainConfig) -> list[torch.optim.Optimizer]:
    emb, dense = _split_parameters(model)
    if cfg.mode == "post" or cfg.optimizer == "sgd":
        groups: list[dict[str, Any]] = [{"params": emb}]
        if dense:
            groups.append({"params": dense, "weight_decay": cfg.weight_decay})
        return [torch.optim.SGD(groups, lr=cfg.lr)]
    if cfg.optimizer == "sparse_adam":
        opts: list[torch.optim.Optimizer] = [torch.optim.SparseAdam(emb, lr=cfg.lr)]
        if dense:
            opts.append(_adam([{"params": dense, "weight_decay": cfg.weight_decay}], cfg.lr))
        return opts
    groups = [{"params": emb}]
    if dense:
        groups.append({"params": dense, "weight_decay": cfg.weight_decay})
    return [_adam(groups, cfg.lr)]


def _embedding_l2(model: BaseModel, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    reg = model.user_factors(users).pow(2).sum(1) + model.item_factors(items).pow(2).sum(1)
    if isinstance(model, MatrixFactorization) and model.biased:
        reg = reg + model.user_bias(users).squeeze(1) ** 2 + model.item_bias(items).squeeze(1) ** 2
    return reg.mean()


def _check_finite(loss: float, epoch: int, cfg: TrainConfig) -> None:
    if not math.isfinite(loss):
        raise TrainingDiverged(
            f"training diverged at epoch {epoch + 1}: the loss is {loss}; "
            f"lower the learning rate (now {cfg.lr:g}, try {cfg.lr / 10:g})"
        )


def _fit_post(model: BaseModel, train: Ratings, cfg: TrainConfig, bar: Progress) -> History:
    """The post's per-rating loop: same order, same optimizer, same loss."""
    history = History()
    (opt,) = _optimizers(model, cfg)
    users = torch.from_numpy(train.users).view(-1, 1)
    items = torch.from_numpy(train.items).view(-1, 1)
    targets = torch.from_numpy(train.ratings.astype(np.float32)).view(-1, 1)
    for epoch in range(cfg.epochs):
        total = 0.0
        for j in range(len(train)):
            prediction = model(users[j], items[j])
            loss = F.mse_loss(prediction, targets[j])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach())
        history.train_loss.append(total / max(len(train), 1))
        _check_finite(history.train_loss[-1], epoch, cfg)
        bar.update(1, f"loss {history.train_loss[-1]:.4f}")
    history.best_epoch = cfg.epochs
    return history


def _fit_minibatch(
    model: BaseModel, train: Ratings, valid: Ratings | None, cfg: TrainConfig, bar: Progress
) -> History:
    history = History()
    opts = _optimizers(model, cfg)
    users = torch.from_numpy(train.users)
    items = torch.from_numpy(train.items)
    targets = torch.from_numpy(train.ratings.astype(np.float32))
    n = len(train)
    bs = batch_size_for(cfg, n)
    gen = torch.Generator().manual_seed(cfg.seed)
    stopping = _EarlyStopping(history, cfg.patience, higher_is_better=False)
    history.valid_metric = "rmse"
    for epoch in range(cfg.epochs):
        model.train()
        order = torch.randperm(n, generator=gen) if bs < n else torch.arange(n)
        total = 0.0
        for start in range(0, n, bs):
            idx = order[start : start + bs]
            u, i, r = users[idx], items[idx], targets[idx]
            loss = F.mse_loss(model(u, i), r)
            if cfg.l2 > 0:
                loss = loss + cfg.l2 * _embedding_l2(model, u, i)
            for opt in opts:
                opt.zero_grad()
            loss.backward()
            for opt in opts:
                opt.step()
            total += float(loss.detach()) * len(idx)
        history.train_loss.append(total / n)
        _check_finite(history.train_loss[-1], epoch, cfg)
        postfix = f"loss {history.train_loss[-1]:.4f}"
        if valid is not None and len(valid):
            score = rmse(model, valid)
            history.valid_rmse.append(score)
            postfix += f" val_rmse {score:.4f}"
            stop = stopping.update(model, epoch, score)
        else:
            stop = False
        bar.update(1, postfix)
        if stop:
            break
    stopping.restore(model)
    return history


@torch.no_grad()
def _init_biases_from_baseline(model: BaseModel, train: Ratings, valid: Ratings | None) -> None:
    """Global mean and biases of a biased MF from the damped bias baseline."""
    from recsys_export.baselines import BiasBaseline

    if not (isinstance(model, MatrixFactorization) and model.biased):
        return
    base = BiasBaseline().fit(train, valid if valid is not None and len(valid) else None)
    model.global_mean.fill_(base.mean)
    model.user_bias.weight.copy_(torch.from_numpy(base.user_bias).float().view(-1, 1))
    model.item_bias.weight.copy_(torch.from_numpy(base.item_bias).float().view(-1, 1))


def _ranking_optimizer(model: BaseModel, cfg: TrainConfig) -> torch.optim.Optimizer:
    emb, dense = _split_parameters(model)
    # no decay on the bias terms: an item's bias carries its popularity, which a
    # ranking loss needs whole (decaying it lost to the popularity baseline on sparse
    # data such as MovieTweetings)
    biases = [p for n, p in model.named_parameters() if n.split(".")[0].endswith("bias")]
    factors = [p for p in emb if all(p is not b for b in biases)]
    groups: list[dict[str, Any]] = [
        {"params": factors, "weight_decay": cfg.l2},
        {"params": biases, "weight_decay": 0.0},
    ]
    if dense:
        groups.append({"params": dense, "weight_decay": cfg.weight_decay})
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr)
    return _adam(groups, cfg.lr)


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


def _fit_ranking(
    model: BaseModel, train: Ratings, valid: Ratings | None, cfg: TrainConfig, bar: Progress
) -> History:
    from recsys_export.evaluate import default_threshold, evaluate

    history = History()
    opt = _ranking_optimizer(model, cfg)
    gen = torch.Generator().manual_seed(cfg.seed)
    sampled = cfg.negatives if train.n_items > cfg.full_softmax_items else None
    threshold = default_threshold(train) if cfg.threshold is None else cfg.threshold
    min_rating = cfg.min_rating
    if min_rating is None and cfg.positives == "relevant" and not train.implicit:
        min_rating = threshold
    pos = Positives(train, min_rating, cfg.weighting)
    k = min(cfg.k, train.n_items)
    history.valid_metric = f"ndcg@{k}"
    watch = valid is not None and bool((valid.ratings >= threshold).any())
    stopping = _EarlyStopping(history, cfg.patience, True, cfg.select_tolerance, cfg.min_gain)
    pair_users = torch.from_numpy(pos.users)
    pair_items = torch.from_numpy(pos.items)
    # softmax: a batch is users; bpr: a batch is (user, positive) pairs
    n = len(pos.user_ids) if cfg.loss == "softmax" else len(pos)
    bs = batch_size_for(cfg, n)
    average = (
        WeightAverage(model, cfg.average_epochs * math.ceil(n / bs)) if cfg.average_epochs else None
    )
    total, steps = 0.0, 0

    def step(loss: torch.Tensor) -> None:
        nonlocal total, steps
        opt.zero_grad()
        loss.backward()
        opt.step()
        if average is not None:
            average.update()
        total += float(loss.detach())
        steps += 1

    for epoch in range(cfg.epochs):
        model.train()
        total, steps = 0.0, 0
        if cfg.loss == "softmax":
            order = torch.randperm(n, generator=gen).numpy()
            for start in range(0, n, bs):
                at = order[start : start + bs]
                rows, items, weights = pos.rows(at)
                loss = softmax_loss(
                    model,
                    torch.from_numpy(pos.user_ids[at]),
                    torch.from_numpy(rows),
                    torch.from_numpy(items),
                    torch.from_numpy(weights),
                    negatives=sampled,
                    generator=gen,
                    scale=cfg.score_scale,
                )
                step(loss)
        else:
            order = torch.randperm(n, generator=gen)
            for start in range(0, n, bs):
                idx = order[start : start + bs]
                step(bpr_loss(model, pair_users[idx], pair_items[idx], gen, cfg.score_scale))
        history.train_loss.append(total / max(steps, 1))
        _check_finite(history.train_loss[-1], epoch, cfg)
        postfix = f"loss {history.train_loss[-1]:.4f}"
        stop = False
        if watch and ((epoch + 1) % cfg.validate_every == 0 or epoch + 1 == cfg.epochs):
            assert valid is not None
            if average is not None:
                average.swap()  # validate (and keep) the averaged weights
            m = evaluate(
                model,
                train,
                valid,
                k=k,
                threshold=threshold,
                max_users=cfg.valid_users,
                seed=cfg.seed,
                rating_error=False,
            )
            score = float(m[f"ndcg@{k}"])
            postfix += f" val_ndcg@{k} {score:.4f}"
            stop = stopping.update(model, epoch, score, float(m[f"coverage@{k}"]))
            if average is not None:
                average.swap()
        bar.update(1, postfix)
        if stop:
            break
    if average is not None and stopping.state is None:
        average.swap()  # nothing validated: the final average is the model
    stopping.restore(model)
    fold_scale(model, cfg.score_scale)
    return history


def fit(
    train: Ratings,
    valid: Ratings | None = None,
    cfg: TrainConfig | None = None,
    *,
    model: BaseModel | None = None,
    progress: bool = True,
) -> tuple[BaseModel, History]:
    """Train a model on ``train``, monitoring RMSE on ``valid``.

    Parameters
    ----------
    train : Ratings
        Training ratings; its id maps define the model's sizes.
    valid : Ratings, optional
        Validation rows (same id maps, carved from the training rows: never the rows you
        report) for early stopping.
    cfg : TrainConfig, optional
        Hyperparameters; default ``default_config("mf")`` (MF, ranking objective).
    model : BaseModel, optional
        Start from this model instead of a fresh one (e.g. to reproduce given weights).
    progress : bool
        Show a progress line (epoch, loss, validation RMSE) on stderr.

    Returns
    -------
    (BaseModel, History)
        The trained model in eval mode (best validation epoch restored) and its history.

    Raises
    ------
    ConfigError
        Invalid settings.
    TrainingDiverged
        The loss became NaN or infinite (lower the learning rate).
    """
    cfg = cfg or default_config("mf")
    cfg.validate()
    if len(train) == 0:
        raise ConfigError("no training ratings")
    if cfg.objective == "rating" and train.implicit:
        raise ConfigError(
            f"{train.source} has no rating column (implicit feedback), so there is nothing "
            "to regress on; use --objective ranking"
        )
    torch.manual_seed(cfg.seed)
    if model is None:
        model = build_from_config(cfg, train)
        if cfg.init_biases and cfg.objective == "rating":
            _init_biases_from_baseline(model, train, valid)
    # the first optimizer of a process imports torch._dynamo (~2 s here): a one-off
    # library import, done before the clock starts so the fit time is the training's
    torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    start = time.perf_counter()
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        with Progress(
            cfg.epochs, unit="epochs", desc=f"train {cfg.model} ", enabled=progress
        ) as bar:
            if cfg.mode == "post":
                history = _fit_post(model, train, cfg, bar)
            elif cfg.objective == "ranking":
                history = _fit_ranking(model, train, valid, cfg, bar)
            else:
                history = _fit_minibatch(model, train, valid, cfg, bar)
    finally:
        torch.set_num_threads(previous_threads)
    history.seconds = time.perf_counter() - start
    model.eval()
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise TrainingDiverged(
                f"training produced non-finite weights in {name}; lower the learning rate"
            )
    return model, history
