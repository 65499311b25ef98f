"""Recommend-all at the speed of the scores: the MF ``score_groups`` kernel and a
threshold top-k (:func:`recsys_export.topk.group_topk`).

One session call per block of users writes the block's scores (items padded to ``G``
groups) into a reused buffer; numpy masks the exclusions there; a second call (the
``group_max`` graph, reading the buffer in place) gives the ``G`` group maxima; numpy
then takes the ``k``-th best group maximum as each user's threshold and reads again
only the few groups that reach it. Blocks alternate between Python threads, each
driving a single-threaded session on its own buffers (the product and the selection of
one block stay on one core). The lists are exactly those of the TopK kernel path.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import onnxruntime as ort

from recsys_export.topk import fill_empty, group_topk, mask_pairs

__all__ = ["GROUP_K_SHARE", "GroupTopK"]

#: The threshold path serves ``k <= groups // GROUP_K_SHARE`` (the k best groups are at
#: most a quarter of the row); larger ``k`` runs the full TopK kernel.
GROUP_K_SHARE = 4


class GroupTopK:
    """Top-k of many users through a ``score_groups`` session.

    Parameters
    ----------
    session : Callable
        ``session(name, threads)`` -> the session of the ``score_groups`` or
        ``group_max`` graph with that many intra-op threads (1 when Python threads drive
        it).
    n_items, groups, width : int
        Catalogue size, the kernel's item groups and their width.
    fallback : Callable
        ``fallback(masked_scores [b, n_items], k) -> (scores, items)``: the full TopK of
        a block whose thresholds let too many scores through (rows of ties).
    """

    def __init__(
        self,
        session: Callable[[str, int | None], ort.InferenceSession],
        n_items: int,
        groups: int,
        width: int,
        fallback: Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]],
    ) -> None:
        self._session = session
        self.n_items = n_items
        self.groups = groups
        self.width = width
        self._fallback = fallback

    def serves(self, k: int) -> bool:
        """Whether ``k`` takes the threshold path."""
        return 1 <= k <= self.groups // GROUP_K_SHARE

    def run(
        self,
        users: np.ndarray,
        k: int,
        blocks: list[tuple[int, int, np.ndarray, np.ndarray]],
        threads: int,
        spread: Callable[[list[Any], Callable[[list[Any]], None], int], None],
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` of ``users`` in ``blocks`` (``(start, stop, rows, items)``, see
        :func:`~recsys_export.runtime.engines.iter_blocks`) on ``threads`` Python threads
        (``spread(chunks, work, threads)``)."""
        b = users.size
        scores = np.empty((b, k), dtype=np.float32)
        items = np.empty((b, k), dtype=np.int64)
        threads = max(1, min(threads, len(blocks)))
        per_call = 1 if threads > 1 else None
        sess, reduce = self._session("score_groups", per_call), self._session("group_max", per_call)
        padded, n_groups = self.groups * self.width, self.groups
        size = max((stop - start for start, stop, _, _ in blocks), default=0)

        def work(mine: list[tuple[int, int, np.ndarray, np.ndarray]]) -> None:
            buf = np.empty((size, padded), dtype=np.float32)  # one per thread, reused
            gmax = np.empty((size, n_groups), dtype=np.float32)
            for start, stop, r, e in mine:
                n = stop - start
                dst, gm = buf[:n], gmax[:n]
                binding = sess.io_binding()
                binding.bind_cpu_input("users", np.ascontiguousarray(users[start:stop]))
                binding.bind_output("scores", "cpu", 0, np.float32, [n, padded], dst.ctypes.data)
                sess.run_with_iobinding(binding)
                mask_pairs(dst, r, e)
                binding = reduce.io_binding()
                binding.bind_cpu_input("scores", dst)
                binding.bind_output(
                    "group_max", "cpu", 0, np.float32, [n, n_groups], gm.ctypes.data
                )
                reduce.run_with_iobinding(binding)
                out_s, out_i = scores[start:stop], items[start:stop]
                if not group_topk(dst, gm, k, out_s, out_i):
                    s, it = self._fallback(np.ascontiguousarray(dst[:, : self.n_items]), k)
                    out_s[:], out_i[:] = s, fill_empty(it, s)

        spread(blocks, work, threads)
        return scores, items
