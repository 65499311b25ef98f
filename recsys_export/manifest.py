"""The entry-point contract shared by the exporter, the runtime and the docs (no torch).

Every format exposes the same three entry points with the same input and output names,
dtypes and shapes. ``batch``, ``n`` and ``n_excluded`` are dynamic; ``k`` is the run-time
value of the ``k`` input.
"""

from __future__ import annotations

import copy
from typing import Any

FORMATS = ("onnx", "torchscript", "pt2")

ENTRY_POINTS: dict[str, dict[str, Any]] = {
    "score": {
        "doc": "Pairwise scores: the post's forward(users, items).",
        "inputs": [
            {"name": "users", "dtype": "int64", "shape": ["n"]},
            {"name": "items", "dtype": "int64", "shape": ["n"]},
        ],
        "outputs": [{"name": "scores", "dtype": "float32", "shape": ["n"]}],
    },
    "score_all": {
        "doc": "One row of the full user x item score matrix per user.",
        "inputs": [{"name": "users", "dtype": "int64", "shape": ["batch"]}],
        "outputs": [{"name": "scores", "dtype": "float32", "shape": ["batch", "n_items"]}],
    },
    "recommend": {
        "doc": (
            "Best k items per user, sorted by descending score, excluded items removed. "
            "Excluded items are COO pairs: exclude_rows[j] is a position in users "
            "(0..batch-1), exclude_items[j] an item index to drop for that user. Slots "
            "no admissible item can fill hold item -1 and score -inf."
        ),
        "inputs": [
            {"name": "users", "dtype": "int64", "shape": ["batch"]},
            {"name": "k", "dtype": "int64", "shape": []},
            {"name": "exclude_rows", "dtype": "int64", "shape": ["n_excluded"]},
            {"name": "exclude_items", "dtype": "int64", "shape": ["n_excluded"]},
        ],
        "outputs": [
            {"name": "scores", "dtype": "float32", "shape": ["batch", "k"]},
            {"name": "items", "dtype": "int64", "shape": ["batch", "k"]},
        ],
    },
}


def entry_point_spec(n_items: int) -> dict[str, Any]:
    """The entry-point table of a manifest, with ``n_items`` filled in."""
    spec = copy.deepcopy(ENTRY_POINTS)
    for entry in spec.values():
        for port in entry["inputs"] + entry["outputs"]:
            port["shape"] = [n_items if d == "n_items" else d for d in port["shape"]]
    return spec
