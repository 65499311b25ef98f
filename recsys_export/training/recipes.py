"""Training recipes and presets: plain values, no torch.

:func:`recsys_export.training.config.default_config` builds a
:class:`~recsys_export.training.config.TrainConfig` from these; ``recsys-export train
--help`` prints them (:func:`describe_recipes`) without importing torch. Measured in
docs/training.md.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "POST_PRESET",
    "PRESETS",
    "PRESET_NAMES",
    "RECIPES",
    "TINY_DATA_PRESET",
    "describe_recipes",
]

#: The post's recipe: per-rating SGD, lr 1e-3, 500 epochs, 3 factors, torch default init.
POST_PRESET = dict(
    mode="post",
    n_factors=3,
    hidden=16,
    biased=False,
    epochs=500,
    lr=1e-3,
    optimizer="sgd",
    l2=0.0,
    init_std=None,
    patience=0,
)

#: Tiny data (e.g. the toy matrix): the post's model (3 factors, 16 hidden units, no
#: biases, no L2, no early stopping) trained by full-batch Adam with a high learning rate.
TINY_DATA_PRESET = dict(
    POST_PRESET,
    mode="minibatch",
    epochs=300,
    batch_size=0,
    lr=0.05,
    optimizer="adam",
    init_std=0.5,
)


#: Recommended recipes per (model, objective); measured in docs/training.md.
RECIPES: dict[tuple[str, str], dict[str, Any]] = {
    # full softmax over the catalogue, positives weighted by rating; strong weight decay
    # positives: the relevant rows (a tie with popularity on MovieTweetings with every
    # row, a clear win with the relevant ones; -0.01 NDCG on ml-latest-small)
    # of the epochs within 1% of the best validation NDCG, the one whose validation lists
    # cover the most items (0.271 / 355 items -> 0.276 / 384 on ml-latest-small)
    ("mf", "ranking"): dict(
        n_factors=64, biased=True, loss="softmax", batch_size=64, lr=1e-2, l2=1e-2,
        epochs=60, patience=5, positives="relevant", select_tolerance=0.01, min_gain=0.01,
    ),
    ("mf", "rating"): dict(
        n_factors=32, biased=True, batch_size=2048, lr=5e-3, l2=0.15, init_biases=True,
    ),
    # a softmax over the batch's positives + 1,000 sampled items (log-q corrected); the
    # loss sees 5 x the output (folded into linear2 afterwards); every row a positive
    # (the relevant rows only: 0.207 -> 0.164 NDCG@10 on ml-latest-small); the weights
    # validated and kept are their average over ~5 epochs (0.207 -> 0.222, steadier
    # across seeds); batch sized from the users (16 on ml-latest-small; fixed 16 took
    # 419 s on MovieTweetings, the sized 64 126 s and ranked better); 64 hidden units
    # with dropout 0.25 and patience 7 (32 units, no dropout: 0.214 / 365 items, mean of
    # 3 seeds); of the epochs within 5% of the best validation NDCG, the one whose lists
    # cover the most items, and a gain of 1% resets patience; validated every third
    # epoch (scoring the catalogue for validation: 0.29 s, an epoch of steps 0.42 s).
    # Seeds 0-5: NDCG@10 0.224-0.248, 610-913 items (1% band, validated every epoch:
    # 0.228-0.241, 287-706 items); see docs/training.md
    ("densenet", "ranking"): dict(
        n_factors=32, hidden=64, dropout=0.25, biased=True, loss="softmax", batch_size=None,
        lr=1e-2, l2=1e-3, weight_decay=1e-3, score_scale=5.0, full_softmax_items=2000,
        negatives=1000, epochs=50, patience=7, average_epochs=5, select_tolerance=0.05,
        min_gain=0.01, validate_every=3,
    ),
    ("densenet", "rating"): dict(
        n_factors=32, hidden=64, biased=True, batch_size=2048, lr=5e-3, l2=0.05,
        dropout=0.2, weight_decay=1e-4,
    ),
}  # fmt: skip

PRESETS = {"post": POST_PRESET, "tiny": TINY_DATA_PRESET}
#: What ``default_config(preset=...)`` and ``train --preset`` accept.
PRESET_NAMES = ("default", *PRESETS)


#: TrainConfig field -> the ``train`` flag that sets it (fields without a flag are
#: shown as ``name=value``).
_FLAGS = {
    "n_factors": "--factors",
    "hidden": "--hidden",
    "loss": "--loss",
    "batch_size": "--batch-size",
    "lr": "--lr",
    "l2": "--l2",
    "weight_decay": "--weight-decay",
    "dropout": "--dropout",
    "epochs": "--epochs",
    "patience": "--patience",
    "select_tolerance": "--select-tolerance",
    "min_gain": "--min-gain",
    "validate_every": "--validate-every",
}


def describe_recipes() -> str:
    """One block of lines per recipe, as ``train --help`` prints them."""
    lines = []
    for (model, objective), recipe in RECIPES.items():
        parts = []
        for key, value in recipe.items():
            if key == "biased":
                parts.append("--biased" if value else "")
            elif key == "batch_size" and value is None:
                parts.append("batch_size=auto")
            elif key in _FLAGS:
                shown = f"{value:g}" if isinstance(value, float) else str(value)
                parts.append(f"{_FLAGS[key]} {shown}")
            else:
                parts.append(f"{key}={value}")
        head = f"  {model} {objective}:".ljust(20)
        line, out = head, []
        for part in filter(None, parts):
            if len(line) + len(part) + 1 > 88 and line.strip():
                out.append(line.rstrip())
                line = " " * 20
            line += part + " "
        out.append(line.rstrip())
        lines.extend(out)
    return "\n".join(lines)
