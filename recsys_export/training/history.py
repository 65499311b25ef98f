"""The training record (:class:`History`), early stopping and weight averaging.

:mod:`recsys_export.training.fit` fills a :class:`History` per epoch; :class:`EarlyStopping`
keeps the best epoch's weights and says when patience has run out;
:class:`WeightAverage` keeps an exponential moving average of the weights, which is what
gets validated (and kept) when a recipe asks for it.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from recsys_export.models import BaseModel

__all__ = ["EarlyStopping", "History", "WeightAverage"]


@dataclass
class History:
    """Per-epoch training record and final metrics.

    ``valid_metric`` names what early stopping watched (``rmse`` or ``ndcg@k``),
    ``valid_scores`` holds it per validated epoch and ``valid_epochs`` those epochs
    (1-based; every epoch unless ``validate_every`` says otherwise); ``valid_rmse`` keeps
    the RMSE series of the rating objective.
    """

    train_loss: list[float] = field(default_factory=list)
    valid_rmse: list[float] = field(default_factory=list)
    valid_metric: str = ""
    valid_scores: list[float] = field(default_factory=list)
    valid_epochs: list[int] = field(default_factory=list)
    best_epoch: int = 0
    stopped_early: bool = False
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """The record as a JSON-ready dict (what checkpoints store)."""
        return asdict(self)


class EarlyStopping:
    """Keeps the best epoch's weights by a validation score; says when to stop.

    Parameters
    ----------
    history : History
        Receives the scores, the kept epoch and whether training stopped early.
    patience : int
        Epochs without progress before stopping (0: never stop early). Progress is a
        new best score that beats the score of the last progress by more than
        ``min_gain``, so a plateau of tiny gains does not keep training alive.
    higher_is_better : bool
        True for scores such as NDCG, False for errors such as RMSE.
    tolerance : float
        Relative tie band: an epoch since the best one whose score is within
        ``tolerance x |best|`` of it ties with it, and of tied epochs the one with the
        highest ``tiebreak`` (see :meth:`update`) is kept. 0 keeps the best epoch.
    min_gain : float
        Relative gain over the score of the last progress that a new best needs to be
        progress; 0 counts every new best.
    """

    def __init__(
        self,
        history: History,
        patience: int,
        higher_is_better: bool,
        tolerance: float = 0.0,
        min_gain: float = 0.0,
    ) -> None:
        self.history = history
        self.patience = patience
        self.sign = 1.0 if higher_is_better else -1.0
        self.tolerance = tolerance
        self.min_gain = min_gain
        self.best, self.state = -math.inf, None
        self.progress = -math.inf  # the score of the last epoch that made progress
        self.progress_epoch = 0  # and its epoch (patience counts epochs, validated or not)
        self.kept_tiebreak = -math.inf

    def update(
        self, model: BaseModel, epoch: int, score: float, tiebreak: float | None = None
    ) -> bool:
        """Record ``score`` of ``epoch`` (0-based); True when patience has run out.

        Patience counts epochs since the last progress, so it means the same whether
        every epoch is validated or only some.

        ``tiebreak`` ranks epochs that tie with the best (higher wins), for instance the
        catalogue coverage of the validation lists; None never displaces the kept epoch.
        """
        self.history.valid_scores.append(score)
        self.history.valid_epochs.append(epoch + 1)
        value = self.sign * score
        if value > self.best + 1e-6:
            self.best = value
            self._keep(model, epoch, tiebreak)
            if self.progress == -math.inf or value > self.progress + self.min_gain * abs(
                self.progress
            ):
                self.progress, self.progress_epoch = value, epoch
        else:
            tied = value >= self.best - self.tolerance * abs(self.best)
            if tied and tiebreak is not None and tiebreak > self.kept_tiebreak:
                self._keep(model, epoch, tiebreak)
        stop = bool(self.patience) and epoch - self.progress_epoch >= self.patience
        self.history.stopped_early = stop
        return stop

    def _keep(self, model: BaseModel, epoch: int, tiebreak: float | None) -> None:
        self.state = copy.deepcopy(model.state_dict())
        self.history.best_epoch = epoch + 1
        self.kept_tiebreak = -math.inf if tiebreak is None else tiebreak

    def restore(self, model: BaseModel) -> None:
        """Load the kept epoch's weights (the last epoch when nothing was watched)."""
        if self.state is not None:
            model.load_state_dict(self.state)
        else:
            self.history.best_epoch = len(self.history.train_loss)


class WeightAverage:
    """Exponential moving average of a model's floating-point parameters.

    A ranking step with a small batch and a high learning rate moves the weights a lot;
    their average over the last few epochs ranks better than any single step's weights
    (DenseNet on ml-latest-small: NDCG@10 0.207 -> 0.223, and steadier across seeds).

    Parameters
    ----------
    model : BaseModel
        The model being trained; the average starts at its current weights.
    horizon_steps : float
        Steps the average spans: each step moves it ``1 / horizon_steps`` of the way to
        the live weights.
    """

    def __init__(self, model: BaseModel, horizon_steps: float) -> None:
        self.weight = 1.0 / max(1.0, float(horizon_steps))
        self.params = [p for p in model.parameters() if p.is_floating_point()]
        self.average = [p.detach().clone() for p in self.params]

    @torch.no_grad()
    def update(self) -> None:
        """Move the average towards the live weights (call after each optimizer step)."""
        for avg, p in zip(self.average, self.params, strict=True):
            avg.lerp_(p, self.weight)

    @torch.no_grad()
    def swap(self) -> None:
        """Exchange the live weights and the average in place (a second call undoes it)."""
        for avg, p in zip(self.average, self.params, strict=True):
            live = p.detach().clone()
            p.copy_(avg)
            avg.copy_(live)
