"""The bundle contract's constants: formats, entry points, kernels, precisions.

Every format exposes the same three entry points with the same input and output names,
dtypes and shapes (:data:`ENTRY_POINTS`). ``batch``, ``n`` and ``n_excluded`` are
dynamic; ``k`` is the run-time value of the ``k`` input. The format's name and version
and the fast-path kernel constants the exporter writes and the runtime reads live here
too. Torch-free, like the whole :mod:`recsys_export.bundle` package.
"""

from __future__ import annotations

import copy
from typing import Any

from recsys_export.core.defaults import DEFAULT_FORMATS as DEFAULT_FORMATS
from recsys_export.core.defaults import DEFAULT_PRECISION
from recsys_export.core.defaults import FORMATS as FORMATS
from recsys_export.core.defaults import PRECISIONS as PRECISIONS
from recsys_export.core.validation import check_choice

#: The ``format`` of every manifest.
FORMAT_NAME = "recsys-export-bundle"
#: The newest ``format_version`` this version writes and reads. Readers accept
#: ``1 <= format_version <= FORMAT_VERSION`` (docs/bundle-format.md, *Versions*).
FORMAT_VERSION = 1
#: The manifest's file name, at the bundle's root.
MANIFEST_NAME = "manifest.json"
#: Manifest keys filled by :meth:`BundleWriter.commit`; callers cannot set them.
RESERVED_KEYS = frozenset({"format", "format_version", "created", "id_maps", "files"})
#: Id map name -> the file the writer gives it, and the noun of its error messages.
ID_MAP_FILES = {"users": "ids/users.json", "items": "ids/items.json"}
ID_MAP_NAMES = {"users": "user", "items": "item"}

#: Every export format (``FORMATS``), those written when none are named
#: (``DEFAULT_FORMATS``) and the precisions (``PRECISIONS``): owned by
#: :mod:`recsys_export.core.defaults`, named here for the schema's readers.

#: Bundle-relative file of the item names (a JSON list in item-index order).
ITEM_NAMES_FILE = "ids/item_names.json"

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


# ---------------------------------------------------------------------- fast-path kernels
#: Version of the optional fast-path graphs under ``formats.onnx.kernels`` that the
#: exporter writes.
KERNELS_VERSION = 2
#: Where the exporter writes them, inside the bundle.
KERNELS_DIR = "onnx/kernels"
#: The kernel graphs, by manifest key.
KERNEL_NAMES = ("score_all", "topk", "recommend_one")
#: Optional kernel graphs (MF): ``score_groups`` and ``group_max``, the scores over items
#: padded to groups and their group maxima, for the runtime's threshold top-k (with the
#: manifest's ``groups``, their count), and
#: ``recommend_user``, one user's top-k with the exclusions' -inf given by the caller.
OPTIONAL_KERNELS = ("score_groups", "group_max", "recommend_user")
#: Where an export that verified the kernels and found them failing records them (under
#: ``formats.onnx``, instead of ``kernels``: the runtime then runs the entry-point
#: graphs), with the one-line ``reason``.
KERNELS_FALLBACK = "kernels_fallback"
#: Kernel versions the runtime reads, per model kind (MF's graphs did not change in 2;
#: DenseNet's version-1 tiles were driven one session call per tile and are not read).
KERNELS_READ = {"mf": (1, 2), "densenet": (2,)}
#: DenseNet ``score_all`` kernel: users per call the runtime sends (the manifest's
#: ``block_users``, this when it does not say), and what the exporter sizes tiles for.
DN_BLOCK_USERS = 8


# ---------------------------------------------------------------------- precision variants
#: The approximate variants (``PRECISIONS[1:]``) live under ``VARIANTS_DIR/<precision>/``,
#: listed under ``formats.onnx.variants`` and loaded only when asked for.
VARIANTS_DIR = "onnx/variants"


def at_least(value: Any, low: int) -> int | None:
    """``value`` when it is an integer (not a bool) of at least ``low``, else None: the
    reading of every count a manifest records."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= low:
        return value
    return None


def check_precision(precision: Any) -> str:
    """Validate a precision name (one of :data:`PRECISIONS`; None: ``fp32``).

    Raises
    ------
    ConfigError
        Any other value.
    """
    if precision is None:
        return DEFAULT_PRECISION
    return str(check_choice("precision", precision, PRECISIONS))


def parse_precisions(precision: Any) -> list[str]:
    """The approximate variants an export writes: ``"fp16,int8"``, a sequence, or one
    name (``fp32`` alone: none).

    Raises
    ------
    ConfigError
        An unknown name.
    """
    if precision is None:
        return []
    names = precision.split(",") if isinstance(precision, str) else list(precision)
    checked = [check_precision(str(p).strip()) for p in names if str(p).strip()]
    return [p for p in PRECISIONS[1:] if p in checked]
