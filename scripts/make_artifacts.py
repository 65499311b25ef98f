"""Regenerate the committed reference bundles in ``artifacts/`` from the post's toy matrix.

    python scripts/make_artifacts.py

Writes ``artifacts/toy-mf/`` and ``artifacts/toy-densenet/`` (every format: ``.pt2`` is
opt-in, so ``formats="all"``; verified) and ``artifacts/expected/<name>.json``: fixed
inputs and the eager model's outputs for every entry point. ``tests/test_golden.py``
loads the committed bundles and checks they still reproduce those outputs, so a change
that breaks old bundles fails the suite. Only regenerate on purpose (a new bundle format
version), never to make that test pass.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch

from recsys_export import data
from recsys_export.export import export_bundle
from recsys_export.models.checkpoint import Checkpoint
from recsys_export.training.config import TrainConfig
from recsys_export.training.fit import fit
from recsys_export.training.recipes import TINY_DATA_PRESET

ROOT = Path(__file__).resolve().parents[1] / "artifacts"

INPUTS = {
    "score": {"users": [0, 1, 2, 3, 4, 4, 0], "items": [0, 1, 2, 3, 0, 2, 3]},
    "score_all": {"users": [4, 0, 2]},
    "recommend": {
        "users": [0, 1, 4],
        "k": 3,
        "exclude_rows": [0, 0, 0, 1, 2, 2],
        "exclude_items": [0, 1, 3, 0, 2, 3],
    },
}


def main() -> None:
    toy = data.toy_ratings()
    (ROOT / "expected").mkdir(parents=True, exist_ok=True)
    for kind in ("mf", "densenet"):
        cfg = TrainConfig(**{**TINY_DATA_PRESET, "model": kind, "seed": 0})
        model, _ = fit(toy, None, cfg, progress=False)
        ckpt = Checkpoint(
            model, toy.user_map, toy.item_map, toy.users, toy.items, config=cfg.__dict__
        )
        name = f"toy-{kind}"
        if (ROOT / name).exists():
            shutil.rmtree(ROOT / name)
        export_bundle(ckpt, ROOT / name, formats="all")  # pt2 is opt-in: ask for it
        t = {k: {n: torch.tensor(v) for n, v in d.items()} for k, d in INPUTS.items()}
        with torch.no_grad():
            score = model(t["score"]["users"], t["score"]["items"])
            score_all = model.score_all(t["score_all"]["users"])
            r = t["recommend"]
            rec_s, rec_i = model.recommend(
                r["users"], INPUTS["recommend"]["k"], r["exclude_rows"], r["exclude_items"]
            )
        expected = {
            "bundle": name,
            "inputs": INPUTS,
            "outputs": {
                "score": {"scores": score.tolist()},
                "score_all": {"scores": score_all.tolist()},
                "recommend": {"scores": rec_s.tolist(), "items": rec_i.tolist()},
            },
        }
        (ROOT / "expected" / f"{name}.json").write_text(json.dumps(expected, indent=2) + "\n")
        print(
            f"wrote {ROOT / name}; score_all of users {INPUTS['score_all']['users']}: "
            f"{np.round(score_all.numpy(), 2).tolist()}"
        )


if __name__ == "__main__":
    main()
