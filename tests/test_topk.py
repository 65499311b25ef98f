"""recsys_export.core.topk (numpy) agrees with the exported graphs' top-k, and checks k once."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from recsys_export.core import topk
from recsys_export.errors import ConfigError

N_USERS, N_ITEMS = 6, 9


@pytest.mark.runtime_only
@pytest.mark.parametrize("bad", [0, N_ITEMS + 1, -1, 2.5, "3", True, None])
def test_check_k_one_wording(bad):
    words = r"k=.* is out of range: k must be an integer between 1 and the number of items \(9\)"
    with pytest.raises(ConfigError, match=words):
        topk.check_k(bad, N_ITEMS)
    assert topk.check_k(np.int64(N_ITEMS), N_ITEMS) == N_ITEMS


@pytest.mark.runtime_only
def test_numpy_topk_empty_slots_and_columns():
    scores = np.array([[1.0, 3.0, 2.0], [-np.inf, 5.0, -np.inf]], dtype=np.float32)
    v, c = topk.topk(scores, 4)
    np.testing.assert_array_equal(c, [[1, 2, 0, -1], [1, -1, -1, -1]])
    assert np.isneginf(v[:, 3]).all() and np.isneginf(v[1, 1:]).all()
    cols = np.array([2, 5, 7])
    np.testing.assert_array_equal(topk.take_columns(cols, c), [[5, 7, 2, -1], [5, -1, -1, -1]])
    sub = np.zeros((2, 3), dtype=np.float32)
    topk.mask_pairs(sub, np.array([0, 1]), np.array([5, 4]), cols, 8)  # item 4 not a column
    assert np.isneginf(sub[0, 1]) and np.isfinite(sub[1]).all()


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    from recsys_export.export import export_bundle
    from recsys_export.models.synthetic import synthetic_checkpoint

    none = np.zeros(0, dtype=np.int64)
    ck = synthetic_checkpoint("mf", N_USERS, N_ITEMS, factors=4, init_std=0.5, seen=(none, none))
    model = ck.model
    path = tmp_path_factory.mktemp("topk") / "bundle"
    export_bundle(ck, path, formats="onnx", verify=False)
    return model, path


# user 0: nothing excluded; 1: two items; 2: all but one; 3: every item
_ROWS = np.array([1, 1] + [2] * (N_ITEMS - 1) + [3] * N_ITEMS, dtype=np.int64)
_ITEMS = np.array([0, 4, *range(1, N_ITEMS), *range(N_ITEMS)], dtype=np.int64)


@pytest.mark.parametrize("k", [1, 3, N_ITEMS])
def test_numpy_topk_agrees_with_exported_graphs(bundle, k):
    import torch

    from recsys_export.torch_runtime.ops import topk_excluding

    model, path = bundle
    users = np.arange(4, dtype=np.int64)
    with torch.no_grad():
        scores = model.score_all(torch.from_numpy(users)).numpy()
    masked = scores.copy()
    topk.mask_pairs(masked, _ROWS, _ITEMS)
    exp_v, exp_i = topk.topk(masked, k)
    assert (exp_i[3] == topk.EMPTY_ITEM).all() and (exp_i[2, 1:] == topk.EMPTY_ITEM).all()

    # the fast-path TopK kernel, fed masked scores, then the empty-slot rule
    kernel = ort.InferenceSession(str(path / "onnx/kernels/topk.onnx"))
    v, i = kernel.run(None, {"scores": masked, "k": np.array([k], dtype=np.int64)})
    topk.fill_empty(i, v)
    np.testing.assert_array_equal(i, exp_i)
    np.testing.assert_allclose(v, exp_v, rtol=1e-6)

    # the recommend entry-point graph does the masking and the rule itself
    rec = ort.InferenceSession(str(path / "onnx/recommend.onnx"))
    v, i = rec.run(
        None,
        {
            "users": users,
            "k": np.array(k, dtype=np.int64),
            "exclude_rows": _ROWS,
            "exclude_items": _ITEMS,
        },
    )
    np.testing.assert_array_equal(i, exp_i)
    np.testing.assert_allclose(v, exp_v, rtol=1e-5, atol=1e-6)

    # and torch's topk_excluding (the models' recommend)
    tv, ti = topk_excluding(
        torch.from_numpy(scores), k, torch.from_numpy(_ROWS), torch.from_numpy(_ITEMS)
    )
    np.testing.assert_array_equal(ti.numpy(), exp_i)
    np.testing.assert_allclose(tv.numpy(), exp_v, rtol=1e-6)
