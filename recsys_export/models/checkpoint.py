"""Checkpoints: weights, hyperparameters, id maps, seen items and metrics in one file.

A checkpoint is a ``torch.save`` of plain containers and tensors only, so it loads with
``torch.load(..., weights_only=True)``: no pickle of arbitrary objects is ever
executed. It is written to a temporary sibling and renamed into place.
"""

from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from recsys_export.bundle.files import check_item_names
from recsys_export.core.atomic import writing
from recsys_export.core.ids import IdMap
from recsys_export.errors import CheckpointError
from recsys_export.models import BaseModel, build_model
from recsys_export.torch_runtime.io import check_finite_weights, load_weights_only

CHECKPOINT_FORMAT = "recsys-export-checkpoint"
CHECKPOINT_VERSION = 1


@dataclass
class Checkpoint:
    """A trained model with everything needed to export and serve it.

    Attributes
    ----------
    model : BaseModel
        The trained model, in eval mode.
    user_map, item_map : IdMap
        Raw ids in index order.
    seen_users, seen_items : np.ndarray
        int64 COO pairs of every row of the training file (train, validation and test
        parts), so ``recommend`` can leave out what a user already rated.
    config : dict
        The training configuration.
    metrics : dict
        Validation metrics (RMSE, MAE, ranking metrics) and timings.
    data : dict
        Where the ratings came from (source, counts, split).
    seen_ratings : np.ndarray, optional
        float32 rating of each seen pair (1.0 for implicit data).
    seen_parts : np.ndarray, optional
        int8 part of each seen pair: 0 train, 1 validation (model selection), 2 test
        (reported metrics only); see :func:`recsys_export.data.three_way_split`.
    item_names : list of str or None, optional
        Display names (titles) in item-index order, None for unnamed items
        (:func:`recsys_export.data.items.read_item_names`); exported to the bundle.
    """

    model: BaseModel
    user_map: IdMap
    item_map: IdMap
    seen_users: np.ndarray
    seen_items: np.ndarray
    config: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    seen_ratings: np.ndarray | None = None
    seen_parts: np.ndarray | None = None
    item_names: list[str | None] | None = None

    @property
    def kind(self) -> str:
        return self.model.kind

    def save(self, path: str | Path, *, overwrite: bool = True) -> Path:
        """Write the checkpoint atomically (temporary file, then rename).

        Parameters
        ----------
        path : str or Path
            The checkpoint file.
        overwrite : bool, default True
            Replace a file at ``path``. False never replaces one, also one that appeared
            while the checkpoint was being written (``train --out`` without ``--force``).

        Raises
        ------
        CheckpointError
            The directory is missing, the write fails (full disk, file-size limit,
            permissions; nothing is left behind), or ``path`` exists without
            ``overwrite``.
        """
        path = Path(path)
        if not path.parent.is_dir():
            raise CheckpointError(
                f"cannot write checkpoint {path}: directory {path.parent} does not exist"
            )
        names = self.item_names
        if names is not None:  # plain str: weights_only loading refuses numpy strings
            try:
                names = check_item_names(names, self.model.n_items)
            except ValueError as exc:
                raise CheckpointError(f"cannot write checkpoint {path}: {exc}") from None
        payload = {
            "format": CHECKPOINT_FORMAT,
            "format_version": CHECKPOINT_VERSION,
            "model_kind": self.model.kind,
            "hyperparameters": self.model.hyperparameters(),
            "state_dict": {k: v.detach().clone() for k, v in self.model.state_dict().items()},
            "user_ids": self.user_map.to_json(),
            "item_ids": self.item_map.to_json(),
            "seen_users": torch.from_numpy(np.ascontiguousarray(self.seen_users, np.int64)),
            "seen_items": torch.from_numpy(np.ascontiguousarray(self.seen_items, np.int64)),
            "config": self.config,
            "metrics": self.metrics,
            "data": self.data,
            "item_names": names,
        }
        for key, arr, dtype in (
            ("seen_ratings", self.seen_ratings, np.float32),
            ("seen_parts", self.seen_parts, np.int8),
        ):
            if arr is not None:
                payload[key] = torch.from_numpy(np.ascontiguousarray(arr, dtype))
        # into memory first: torch's archive writer raises RuntimeError ("unexpected
        # pos"), not OSError, when the disk fills up under it
        buf = io.BytesIO()
        torch.save(payload, buf)
        _write_file(path, buf.getbuffer(), overwrite)
        return path


def _write_file(path: Path, data: memoryview, overwrite: bool) -> None:
    """``data`` to ``path`` through :func:`writing` (a temporary, then a rename), fsynced."""
    with writing(path, overwrite=overwrite, error=CheckpointError) as tmp:
        # 0o666 less the umask, like any new file (mkstemp's 0600 would hide it from
        # other users), without reading the process-wide umask
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())


def _require(payload: dict[str, Any], key: str, kind: type, path: Path) -> Any:
    if key not in payload or not isinstance(payload[key], kind):
        raise CheckpointError(f"{path} is not a recsys-export checkpoint: '{key}' is missing")
    return payload[key]


def checkpoint_kind(path: str | Path) -> str | None:
    """The model kind of the recsys-export checkpoint at ``path``; None when the file is
    something else (a state dict trained elsewhere, or not readable as weights)."""
    try:
        payload = load_weights_only(Path(path), refusal="", unreadable="")
    except CheckpointError:
        return None
    if isinstance(payload, dict) and payload.get("format") == CHECKPOINT_FORMAT:
        kind = payload.get("model_kind")
        return kind if isinstance(kind, str) else "unknown"
    return None


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Load and validate a checkpoint written by :meth:`Checkpoint.save`.

    Only tensors and plain containers are unpickled (``weights_only=True``).

    Raises
    ------
    CheckpointError
        Missing file, not a checkpoint of ours, a newer format, a corrupted file, a
        pickle that tries to run code, or non-finite weights.
    """
    path = Path(path)
    payload = load_weights_only(
        path,
        refusal="only load checkpoints written by recsys-export",
        unreadable="checkpoint: the file is corrupted, truncated or not a checkpoint written "
        "by `recsys-export train`",
        missing=f"no checkpoint at {path}: train one with `recsys-export train`",
    )
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path} is not a recsys-export checkpoint (no '{CHECKPOINT_FORMAT}' header); "
            "a state dict of a model trained elsewhere is exported with `recsys-export export "
            "STATE_DICT --model mf|densenet|MODULE:CLASS` (docs/own-model.md)"
        )
    version = payload.get("format_version")
    if not isinstance(version, int) or version > CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{path} was written by a newer recsys-export (checkpoint format {version}); "
            "upgrade recsys-export to load it"
        )
    kind = _require(payload, "model_kind", str, path)
    hp = _require(payload, "hyperparameters", dict, path)
    state = _require(payload, "state_dict", dict, path)
    model = build_model(kind, **hp)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not match the model: {exc}") from None
    model.eval()
    check_finite_weights(
        state, str(path), " (training diverged); retrain with a lower learning rate"
    )
    user_map = IdMap.from_json(_require(payload, "user_ids", dict, path), "user")
    item_map = IdMap.from_json(_require(payload, "item_ids", dict, path), "item")
    if len(user_map) != model.n_users or len(item_map) != model.n_items:
        raise CheckpointError(f"{path}: id maps do not match the model's sizes")
    seen_u = _require(payload, "seen_users", torch.Tensor, path).numpy().astype(np.int64)
    seen_i = _require(payload, "seen_items", torch.Tensor, path).numpy().astype(np.int64)
    optional = {}
    for key, dtype in (("seen_ratings", np.float32), ("seen_parts", np.int8)):
        value = payload.get(key)
        if value is None:
            optional[key] = None
            continue
        if not isinstance(value, torch.Tensor) or value.numel() != len(seen_u):
            raise CheckpointError(f"{path}: '{key}' does not match the seen pairs")
        optional[key] = value.numpy().astype(dtype)
    metrics = payload.get("metrics", {}) or {}
    for key, value in list(metrics.items()):
        if isinstance(value, float) and not math.isfinite(value):
            metrics[key] = None
    item_names = payload.get("item_names")
    if item_names is not None:
        try:
            item_names = check_item_names(item_names, model.n_items)
        except ValueError as exc:
            raise CheckpointError(f"{path}: {exc}; the checkpoint is corrupted") from None
    return Checkpoint(
        model=model,
        user_map=user_map,
        item_map=item_map,
        seen_users=seen_u,
        seen_items=seen_i,
        config=payload.get("config", {}) or {},
        metrics=metrics,
        data=payload.get("data", {}) or {},
        seen_ratings=optional["seen_ratings"],
        seen_parts=optional["seen_parts"],
        item_names=item_names,
    )
