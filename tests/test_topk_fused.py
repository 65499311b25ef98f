"""The threshold top-k (topk.group_topk, the MF score_groups kernel, the runtime's
GroupTopK) gives exactly today's lists: descending score, ties by item index, excluded
items removed, empty slots -1 / -inf."""

from __future__ import annotations

import numpy as np
import pytest

from recsys_export import topk
from recsys_export.manifest import BundleSpec


def exact_lists(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Reference: a full lexsort per row (score descending, then item index)."""
    b, n = scores.shape
    order = np.lexsort((np.broadcast_to(np.arange(n), (b, n)), -scores), axis=1)[:, :k]
    vals = np.take_along_axis(scores, order, axis=1)
    items = np.where(np.isneginf(vals), topk.EMPTY_ITEM, order)
    out_v = np.full((b, k), topk.EMPTY_SCORE, dtype=scores.dtype)
    out_i = np.full((b, k), topk.EMPTY_ITEM, dtype=np.int64)
    out_v[:, : vals.shape[1]], out_i[:, : vals.shape[1]] = vals, items
    return out_v, out_i


def _grouped(scores: np.ndarray, groups: int) -> tuple[np.ndarray, np.ndarray]:
    """Scores padded to ``groups`` groups with -inf, and their group maxima."""
    b, n = scores.shape
    width = -(-n // groups)
    padded = np.full((b, groups * width), topk.EMPTY_SCORE, dtype=np.float32)
    padded[:, :n] = scores
    return padded, padded.reshape(b, groups, width).max(axis=2)


def _run(scores, groups, k, rows, items, **kw):
    masked = scores.copy()
    topk.mask_pairs(masked, rows, items)
    padded, gmax = _grouped(masked, groups)
    out_v = np.empty((scores.shape[0], k), dtype=np.float32)
    out_i = np.empty((scores.shape[0], k), dtype=np.int64)
    done = topk.group_topk(padded, gmax, k, out_v, out_i, **kw)
    return done, out_v, out_i


def _case(seed: int, n_items: int = 203, b: int = 40, levels: int = 7):
    """Scores with many exact ties (few distinct values), exclusions that hit the top."""
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, levels, (b, n_items)).astype(np.float32)
    scores[:, 5] = 0.0
    scores[3, :] = -0.0  # ties between -0.0 and 0.0 too
    scores[3, ::2] = 0.0
    rows, items = [], []
    for r in range(b):
        top = np.flatnonzero(scores[r] == scores[r].max())[:6]  # the best items excluded
        rows += [r] * top.size
        items += top.tolist()
    rows += [7] * (n_items - 3)  # row 7: 3 candidates left (fewer than k)
    items += list(range(3, n_items))
    rows += [8] * n_items  # row 8: nothing left
    items += list(range(n_items))
    rows += [9, 9]  # duplicate exclusions
    items += [11, 11]
    return scores, np.array(rows, dtype=np.int64), np.array(items, dtype=np.int64)


@pytest.mark.runtime_only
@pytest.mark.parametrize("k", [1, 2, 5, 10, 16])
@pytest.mark.parametrize("seed", [0, 1])
def test_group_topk_equals_a_full_sort_with_ties_and_exclusions(k, seed):
    scores, rows, items = _case(seed)
    masked = scores.copy()
    topk.mask_pairs(masked, rows, items)
    exp_v, exp_i = exact_lists(masked, k)
    done, v, i = _run(scores, 16, k, rows, items)
    assert done
    np.testing.assert_array_equal(i, exp_i)
    np.testing.assert_array_equal(v, exp_v)
    left = int(np.isfinite(masked[7]).sum())  # at most 3 admissible items
    assert 1 <= left <= 3 and (i[7] >= 0).sum() == min(k, left)
    assert (i[8] == -1).all() and np.isneginf(v[8]).all()
    # and the numpy top-k and the exported TopK rule agree on the same rows
    np.testing.assert_array_equal(topk.topk(masked, k)[1][[7, 8]], exp_i[[7, 8]])


@pytest.mark.runtime_only
def test_group_topk_k_equal_to_groups_and_one_group():
    scores, rows, items = _case(2, n_items=64, b=12, levels=3)
    masked = scores.copy()
    topk.mask_pairs(masked, rows, items)
    for groups, k in ((8, 8), (1, 1), (64, 64)):
        done, v, i = _run(scores, groups, k, rows, items, max_survivors=10**9)
        assert done
        np.testing.assert_array_equal(i, exact_lists(masked, k)[1])


@pytest.mark.runtime_only
def test_group_topk_gives_up_on_rows_of_ties():
    scores = np.zeros((4, 100), dtype=np.float32)  # every score tied
    empty = np.zeros(0, dtype=np.int64)
    done, _, _ = _run(scores, 10, 2, empty, empty, max_survivors=50)
    assert not done
    assert not _run(scores, 10, 2, empty, empty)[0]  # default: 4 rows x 64 < 400 ties
    done, _, i = _run(scores, 10, 2, empty, empty, max_survivors=400)
    assert done and (i == [0, 1]).all()


# ------------------------------------------------------------------ the runtime


@pytest.fixture(scope="module")
def tied_bundle(tmp_path_factory):
    """MF over 640 items (20 groups of 32) where items i and i + 37 are identical."""
    import torch

    from recsys_export.export import export_bundle
    from recsys_export.synthetic_models import synthetic_checkpoint

    ck = synthetic_checkpoint("mf", 60, 640, factors=4, init_std=1.0, seen_per_user=30, seed=3)
    with torch.no_grad():
        w, b = ck.model.item_factors.weight, ck.model.item_bias.weight
        w[:] = torch.round(w * 4) / 4  # few distinct scores: ties within and across groups
        w[37:] = w[:-37].clone()
        b[:] = 0.0
    path = tmp_path_factory.mktemp("tied") / "mf"
    export_bundle(ck, path, formats="onnx", verify=False)
    return path


def _today(rec, users, k, **kw):
    """Today's path: scores masked in numpy, then the TopK kernel."""
    groups, rec._engine._groups = rec._engine._groups, None
    try:
        return rec.recommend(users, k, by_index=True, **kw)
    finally:
        rec._engine._groups = groups


@pytest.mark.parametrize("k", [1, 3, 5, 6, 640])
def test_runtime_lists_equal_todays(tied_bundle, k):
    from recsys_export.runtime import Recommender

    rec = Recommender.load(tied_bundle, block_users=16)  # several blocks, both threads
    assert rec._engine._groups is not None and rec._engine._groups.groups == 20
    assert rec._engine._groups.serves(k) == (k <= 5)
    users = np.arange(rec.n_users)
    new = rec.recommend(users, k, by_index=True)
    old = _today(rec, users, k)
    np.testing.assert_array_equal(new.items, old.items)
    np.testing.assert_array_equal(new.scores, old.scores)
    # against a full sort of the score_all kernel's scores
    scores = rec.score_all(users, by_index=True)
    indptr, seen = rec.seen_csr()
    rows = np.repeat(users, np.diff(indptr))
    topk.mask_pairs(scores, rows, seen)
    np.testing.assert_array_equal(new.items, exact_lists(scores, k)[1])
    # one user at a time (the recommend_one kernel)
    for u in (0, 17, 59):
        one = rec.recommend(int(u), k, by_index=True)
        np.testing.assert_array_equal(one.items[0], new.items[u])


def test_runtime_exclusions_leave_fewer_than_k(tied_bundle):
    from recsys_export.runtime import Recommender

    rec = Recommender.load(tied_bundle)
    users = np.arange(10)
    keep = [3, 500, 639]
    exclude = {int(u): [i for i in range(640) if i not in keep] for u in (2, 5)}
    for k in (1, 4, 5):
        new = rec.recommend(users, k, by_index=True, exclude=exclude)
        old = _today(rec, users, k, exclude=exclude)
        np.testing.assert_array_equal(new.items, old.items)
        assert set(new.items[2][new.items[2] >= 0]) <= set(keep)
        assert (new.items[2][3:] == -1).all() and np.isneginf(new.scores[5][3:]).all()
    # include= (a candidate subset) keeps its numpy path, unchanged
    inc = rec.recommend(users, 2, by_index=True, include=list(range(0, 640, 3)))
    assert (inc.items % 3 == 0).all()


def test_kernel_spec_reads_score_groups_only_when_complete():
    names = ("score_all", "topk", "recommend_one")
    files = {f"onnx/kernels/{n}.onnx" for n in names}
    entry = {"version": 2, **{n: f"onnx/kernels/{n}.onnx" for n in names}}
    manifest = {
        "model": {"kind": "mf", "n_users": 2, "n_items": 3},
        "formats": {"onnx": {"kernels": entry}},
    }
    assert BundleSpec.parse(manifest, "b", files).kernels.groups == 0  # an older bundle
    entry.update(
        score_groups="onnx/kernels/score_groups.onnx",
        group_max="onnx/kernels/group_max.onnx",
        groups=4,
        group_width=8,
    )
    assert BundleSpec.parse(manifest, "b", files).kernels.groups == 0  # files not listed
    partial = files | {"onnx/kernels/score_groups.onnx"}
    assert BundleSpec.parse(manifest, "b", partial).kernels.groups == 0  # group_max missing
    listed = partial | {"onnx/kernels/group_max.onnx"}
    spec = BundleSpec.parse(manifest, "b", listed).kernels
    assert spec.groups == 4 and {"score_groups", "group_max"} <= set(spec.files)
    entry["groups"] = True
    assert BundleSpec.parse(manifest, "b", listed).kernels.groups == 0


def test_runtime_falls_back_on_rows_of_ties(tmp_path):
    """Every score equal (zero factors): the thresholds let everything through, the block
    goes to the full TopK, and the lists are the first admissible items."""
    import torch

    from recsys_export.export import export_bundle
    from recsys_export.runtime import Recommender
    from recsys_export.synthetic_models import synthetic_checkpoint

    ck = synthetic_checkpoint("mf", 30, 640, factors=4, seen_per_user=3, seed=1)
    with torch.no_grad():
        for p in ck.model.parameters():
            p.zero_()
    export_bundle(ck, tmp_path / "flat", formats="onnx", verify=False)
    rec = Recommender.load(tmp_path / "flat")
    users = np.arange(30)
    new = rec.recommend(users, 5, by_index=True)
    np.testing.assert_array_equal(new.items, _today(rec, users, 5).items)
    indptr, seen = rec.seen_csr()
    first = [
        [i for i in range(640) if i not in set(seen[indptr[u] : indptr[u + 1]])][:5] for u in users
    ]
    np.testing.assert_array_equal(new.items, first)
