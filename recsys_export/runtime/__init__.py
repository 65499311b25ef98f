"""Torch-free runtime: serve an exported bundle with onnxruntime and numpy only.

:class:`Recommender` loads a bundle (checksums verified), opens one onnxruntime session
per ONNX graph and answers the three entry points with raw ids or dense indices::

    rec = Recommender.load("bundle")
    rec.score([1, 2], ["item a", "item b"])        # float32[2]
    rec.score_all([1, 2])                            # float32[2, n_items]
    res = rec.recommend([1, 2], k=10)                # res.items, res.scores: [2, 10]
    rec.write_score_matrix("scores.npy")             # chunked, constant memory
    rec.write_topk("topk.parquet", k=10)             # or .csv
    res.names                                        # item names (titles), if exported

The package has three parts:

* :mod:`~recsys_export.runtime.engines`: the onnxruntime sessions and the engine chosen
  once at load: the bundle's fast-path kernels (``formats.onnx.kernels``) or, for older
  bundles and ``fast_paths=False``, the entry-point graphs;
* :mod:`~recsys_export.runtime.recommender`: :class:`Recommender` (ids, exclusions, the
  unknown-user policy, top-k with ``include``);
* :mod:`~recsys_export.runtime.writers`: the ``.npy``, Parquet and CSV writers, shared
  with the torch engine and the Ray workers.

Sessions are created once (lazily, under a lock) and shared: one ``Recommender`` may be
used from many threads at once. This package imports only the standard library, numpy,
onnxruntime and the torch-free parts of ``recsys_export``; pyarrow is imported lazily,
only to write Parquet.
"""

from __future__ import annotations

from recsys_export.runtime.recommender import Recommender, RecommendResult
from recsys_export.runtime.writers import (
    TopkRows,
    check_out_path,
    flat_topk_rows,
    rows_table,
    topk_schema,
    write_npy_chunks,
    write_topk_chunks,
)

__all__ = [
    "RecommendResult",
    "Recommender",
    "TopkRows",
    "check_out_path",
    "flat_topk_rows",
    "rows_table",
    "topk_schema",
    "write_npy_chunks",
    "write_topk_chunks",
]
