"""The training record (:class:`History`) and early stopping on a validation score.

:mod:`recsys_export.train` fills a :class:`History` per epoch; :class:`EarlyStopping`
keeps the best epoch's weights and says when patience has run out.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field
from typing import Any

from recsys_export.models import BaseModel

__all__ = ["EarlyStopping", "History"]


@dataclass
class History:
    """Per-epoch training record and final metrics.

    ``valid_metric`` names what early stopping watched (``rmse`` or ``ndcg@k``) and
    ``valid_scores`` holds it per epoch; ``valid_rmse`` keeps the RMSE series of the
    rating objective.
    """

    train_loss: list[float] = field(default_factory=list)
    valid_rmse: list[float] = field(default_factory=list)
    valid_metric: str = ""
    valid_scores: list[float] = field(default_factory=list)
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
        Receives the scores, the best epoch and whether training stopped early.
    patience : int
        Epochs without improvement before stopping (0: never stop early).
    higher_is_better : bool
        True for scores such as NDCG, False for errors such as RMSE.
    """

    def __init__(self, history: History, patience: int, higher_is_better: bool) -> None:
        self.history = history
        self.patience = patience
        self.sign = 1.0 if higher_is_better else -1.0
        self.best, self.state, self.since_best = -math.inf, None, 0

    def update(self, model: BaseModel, epoch: int, score: float) -> bool:
        """Record ``score`` of ``epoch`` (0-based); True when patience has run out."""
        self.history.valid_scores.append(score)
        if self.sign * score > self.best + 1e-6:
            self.best, self.since_best = self.sign * score, 0
            self.state = copy.deepcopy(model.state_dict())
            self.history.best_epoch = epoch + 1
        else:
            self.since_best += 1
        stop = bool(self.patience) and self.since_best >= self.patience
        self.history.stopped_early = stop
        return stop

    def restore(self, model: BaseModel) -> None:
        """Load the best epoch's weights (the last epoch when nothing was watched)."""
        if self.state is not None:
            model.load_state_dict(self.state)
        else:
            self.history.best_epoch = len(self.history.train_loss)
