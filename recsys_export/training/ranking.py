"""The ranking objective's training loop: learn each user's top-k lists.

A batch is users (the softmax loss over the catalogue or a sampled part of it) or
(user, positive) pairs (BPR), from :mod:`recsys_export.training.objectives`; early
stopping is on validation NDCG@k (:class:`~recsys_export.training.history.EarlyStopping`),
optionally on an exponential moving average of the weights, and the loss's
``score_scale`` is folded into the weights at the end.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch

from recsys_export.core.progress import Progress
from recsys_export.models import BaseModel
from recsys_export.training.config import TrainConfig, batch_size_for
from recsys_export.training.evaluate import default_threshold, evaluate
from recsys_export.training.history import EarlyStopping, History, WeightAverage
from recsys_export.training.objectives import Positives, bpr_loss, fold_scale, softmax_loss
from recsys_export.training.steps import adam, check_finite_loss, split_parameters

if TYPE_CHECKING:
    from recsys_export.data import Ratings


def _ranking_optimizer(model: BaseModel, cfg: TrainConfig) -> torch.optim.Optimizer:
    emb, dense = split_parameters(model)
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
    return adam(groups, cfg.lr)


def fit_ranking(
    model: BaseModel, train: Ratings, valid: Ratings | None, cfg: TrainConfig, bar: Progress
) -> History:
    """Train ``model`` on ``train`` with a ranking loss (``cfg.loss``), in place.

    Returns the :class:`History` (validation NDCG@k per validated epoch); the kept
    epoch's weights (or their average) are restored, with ``score_scale`` folded in.
    """
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
    stopping = EarlyStopping(history, cfg.patience, True, cfg.select_tolerance, cfg.min_gain)
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
        check_finite_loss(history.train_loss[-1], epoch, cfg)
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
