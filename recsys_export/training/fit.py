"""Training: ranking and rating objectives, the post's per-rating loop, early stopping.

Two objectives train the same architectures (so the same bundles):

``objective="ranking"`` (the default recipe, :func:`default_config`)
    Learns to rank each user's items above the rest of the catalogue (a sampled or full
    softmax, or BPR: :mod:`recsys_export.training.objectives`); early stopping on
    validation NDCG@k. What the runtime serves is a top-k list, so this is what serves
    well. Its loop is :func:`recsys_export.training.ranking.fit_ranking`.
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
(:data:`recsys_export.training.recipes.TINY_DATA_PRESET`: full-batch Adam with a high
learning rate) fits the observed entries in well under a second. What a run is asked to
do (:class:`~recsys_export.training.config.TrainConfig`) is in
:mod:`recsys_export.training.config`.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from recsys_export.core.progress import Progress
from recsys_export.errors import ConfigError, TrainingDiverged
from recsys_export.models import BaseModel, DenseNet, MatrixFactorization
from recsys_export.training.config import TrainConfig, batch_size_for, default_config
from recsys_export.training.evaluate import rmse
from recsys_export.training.history import EarlyStopping, History
from recsys_export.training.ranking import fit_ranking
from recsys_export.training.steps import adam, check_finite_loss, split_parameters

if TYPE_CHECKING:
    from recsys_export.data import Ratings


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


def _optimizers(model: BaseModel, cfg: TrainConfig) -> list[torch.optim.Optimizer]:
    emb, dense = split_parameters(model)
    if cfg.mode == "post" or cfg.optimizer == "sgd":
        groups: list[dict[str, Any]] = [{"params": emb}]
        if dense:
            groups.append({"params": dense, "weight_decay": cfg.weight_decay})
        return [torch.optim.SGD(groups, lr=cfg.lr)]
    if cfg.optimizer == "sparse_adam":
        opts: list[torch.optim.Optimizer] = [torch.optim.SparseAdam(emb, lr=cfg.lr)]
        if dense:
            opts.append(adam([{"params": dense, "weight_decay": cfg.weight_decay}], cfg.lr))
        return opts
    groups = [{"params": emb}]
    if dense:
        groups.append({"params": dense, "weight_decay": cfg.weight_decay})
    return [adam(groups, cfg.lr)]


def _embedding_l2(model: BaseModel, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    reg = model.user_factors(users).pow(2).sum(1) + model.item_factors(items).pow(2).sum(1)
    if isinstance(model, MatrixFactorization) and model.biased:
        reg = reg + model.user_bias(users).squeeze(1) ** 2 + model.item_bias(items).squeeze(1) ** 2
    return reg.mean()


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
        check_finite_loss(history.train_loss[-1], epoch, cfg)
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
    stopping = EarlyStopping(history, cfg.patience, higher_is_better=False)
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
        check_finite_loss(history.train_loss[-1], epoch, cfg)
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
    from recsys_export.training.baselines import BiasBaseline

    if not (isinstance(model, MatrixFactorization) and model.biased):
        return
    base = BiasBaseline().fit(train, valid if valid is not None and len(valid) else None)
    model.global_mean.fill_(base.mean)
    model.user_bias.weight.copy_(torch.from_numpy(base.user_bias).float().view(-1, 1))
    model.item_bias.weight.copy_(torch.from_numpy(base.item_bias).float().view(-1, 1))


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
                history = fit_ranking(model, train, valid, cfg, bar)
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
