"""Rating data: reading rating files, the seed's toy matrix, synthetic data and splits.

This package's public face: ``from recsys_export import data; data.read_ratings(...)``.
Modules of the project import the public names below from ``recsys_export.data``; the
reading internals shared with :mod:`recsys_export.data.items` and :mod:`recsys_export.byom`
(column names, text decoding, ...) come from their submodule.

Submodules
----------
ratings
    :class:`Ratings`, :func:`from_matrix`, the toy matrix and the bundled data set.
readers
    :func:`read_ratings`: CSV/TSV/'::'/u.data/gzip/Parquet files into :class:`Ratings`;
    :func:`load_dataset`: a bundled data set by name, or a file.
text, columns
    Decoding and splitting text files; detecting and parsing the columns.
synthetic
    :func:`synthetic_ratings` and :func:`synthetic_interactions`.
splits
    :func:`split`, :func:`three_way_split`, :func:`align`, :func:`count_pairs_in`,
    :func:`at_least`, ...
"""

from __future__ import annotations

from recsys_export.data.ratings import (
    MAX_DENSE_CELLS,
    TOY_MATRIX,
    Ratings,
    default_dataset_path,
    from_matrix,
    toy_ratings,
)
from recsys_export.data.readers import DATASET_NAMES, DUPLICATE_POLICIES, load_dataset, read_ratings
from recsys_export.data.splits import (
    TEST,
    TRAIN,
    VALID,
    align,
    at_least,
    count_pairs_in,
    random_split,
    split,
    three_way_split,
    time_split,
)
from recsys_export.data.synthetic import synthetic_interactions, synthetic_ratings

__all__ = [
    "DATASET_NAMES",
    "DUPLICATE_POLICIES",
    "MAX_DENSE_CELLS",
    "TEST",
    "TOY_MATRIX",
    "TRAIN",
    "VALID",
    "Ratings",
    "align",
    "at_least",
    "count_pairs_in",
    "default_dataset_path",
    "from_matrix",
    "load_dataset",
    "random_split",
    "read_ratings",
    "split",
    "synthetic_interactions",
    "synthetic_ratings",
    "three_way_split",
    "time_split",
    "toy_ratings",
]
