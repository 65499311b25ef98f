"""The networks (BaseModel, MatrixFactorization, DenseNet) and :func:`build_model`.

Submodules: :mod:`~recsys_export.models.base` (the entry points every network shares),
:mod:`~recsys_export.models.mf`, :mod:`~recsys_export.models.densenet`,
:mod:`~recsys_export.models.checkpoint` (saving and loading trained models) and
:mod:`~recsys_export.models.synthetic` (seeded models of any size for tests and
benchmarks). Imports torch.
"""

from __future__ import annotations

from typing import Any

from recsys_export.core.defaults import MODEL_KINDS
from recsys_export.errors import ConfigError
from recsys_export.models.base import BaseModel
from recsys_export.models.densenet import DenseNet
from recsys_export.models.mf import MatrixFactorization

__all__ = ["MODEL_KINDS", "BaseModel", "DenseNet", "MatrixFactorization", "build_model"]

_CLASSES: dict[str, type[BaseModel]] = {"mf": MatrixFactorization, "densenet": DenseNet}


def build_model(kind: str, **hyperparameters: Any) -> BaseModel:
    """Build a model by kind (``"mf"`` or ``"densenet"``) from its hyperparameters.

    Raises
    ------
    ConfigError
        Unknown kind or invalid hyperparameters.
    """
    if kind not in _CLASSES:
        raise ConfigError(f"unknown model kind {kind!r}; choose one of {', '.join(MODEL_KINDS)}")
    try:
        return _CLASSES[kind](**hyperparameters)
    except TypeError as exc:
        raise ConfigError(f"invalid hyperparameters for {kind}: {exc}") from None
