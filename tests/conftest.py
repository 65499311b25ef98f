"""Shared fixtures: the bundled MovieLens sample, trained models and exported bundles.

Expensive objects (trained checkpoints, exported bundles) are session-scoped and built
on the MovieLens latest-small copy that ships inside the package, so the suite needs no
external data. Tests that read ``../shared/datasets`` skip with a reason when it is
absent (a user's fresh clone).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from recsys_export import data
from recsys_export.models.checkpoint import Checkpoint
from recsys_export.training.config import TrainConfig
from recsys_export.training.fit import fit

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"


@pytest.fixture(scope="session")
def shared_datasets() -> Path:
    if not (SHARED / "ml-latest-small" / "ratings.csv").exists():
        pytest.skip(f"shared datasets not found at {SHARED} (only in the project's CI)")
    return SHARED


@pytest.fixture(scope="session")
def movielens() -> data.Ratings:
    return data.read_ratings(data.default_dataset_path())


def _train_ml(ratings: data.Ratings, kind: str) -> Checkpoint:
    train, valid = data.random_split(ratings, 0.2, seed=0)
    cfg = TrainConfig(model=kind, n_factors=16, hidden=32, epochs=2, batch_size=4096, lr=1e-2)
    model, history = fit(train, valid, cfg, progress=False)
    return Checkpoint(
        model=model,
        user_map=ratings.user_map,
        item_map=ratings.item_map,
        seen_users=ratings.users,
        seen_items=ratings.items,
        config=cfg.__dict__,
        metrics={"rmse": history.valid_rmse[-1]},
        data={"source": ratings.source},
    )


@pytest.fixture(scope="session")
def ml_checkpoints(movielens: data.Ratings, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """MF and DenseNet briefly trained on MovieLens latest-small, saved to disk."""
    out = {}
    root = tmp_path_factory.mktemp("ckpt")
    for kind in ("mf", "densenet"):
        ckpt = _train_ml(movielens, kind)
        path = root / f"{kind}.pt"
        ckpt.save(path)
        out[kind] = path
    return out


@pytest.fixture(scope="session")
def ml_bundles(ml_checkpoints: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Verified bundles (every format, ``.pt2`` included) of both MovieLens models."""
    from recsys_export.export import export_bundle
    from recsys_export.models.checkpoint import load_checkpoint

    root = tmp_path_factory.mktemp("bundles")
    out = {}
    for kind, path in ml_checkpoints.items():
        export_bundle(load_checkpoint(path), root / kind, formats="all", verify=True)
        out[kind] = root / kind
    return out


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)
