"""The two networks: entry points agree with each other and recommend's contract."""

from __future__ import annotations

import pytest
import torch

from recsys_export.errors import ConfigError
from recsys_export.models import DenseNet, MatrixFactorization, build_model
from recsys_export.torch_runtime.ops import topk_excluding


def _models():
    torch.manual_seed(0)
    return [
        MatrixFactorization(13, 17, 5),
        MatrixFactorization(13, 17, 5, biased=True, global_mean=3.5, init_std=0.3),
        DenseNet(13, 17, 5, 7),
        DenseNet(13, 17, 5, 7, global_mean=3.0, dropout=0.1),
    ]


@pytest.mark.parametrize("model", _models(), ids=["mf", "mf-biased", "densenet", "densenet-mean"])
def test_score_all_equals_pairwise(model):
    model.eval()
    if isinstance(model, MatrixFactorization) and model.biased:
        with torch.no_grad():
            model.user_bias.weight.normal_()
            model.item_bias.weight.normal_()
    users = torch.arange(model.n_users)
    with torch.no_grad():
        full = model.score_all(users)
        pu = users.repeat_interleave(model.n_items)
        pi = torch.arange(model.n_items).repeat(model.n_users)
        pairs = model(pu, pi).reshape(model.n_users, model.n_items)
    assert full.shape == (model.n_users, model.n_items)
    torch.testing.assert_close(full, pairs, atol=1e-5, rtol=1e-5)


def test_recommend_excludes_sorts_and_fills():
    torch.manual_seed(0)
    model = MatrixFactorization(4, 6, 3).eval()
    users = torch.tensor([0, 1, 3])
    rows = torch.tensor([0, 0, 0, 0, 0, 2])
    items = torch.tensor([0, 1, 2, 3, 3, 5])  # user 0 keeps only items 4 and 5
    with torch.no_grad():
        scores, top = model.recommend(users, 4, rows, items)
        full = model.score_all(users)
    assert top.dtype == torch.int64 and scores.shape == (3, 4)
    assert set(top[0, :2].tolist()) == {4, 5}
    assert top[0, 2:].tolist() == [-1, -1]
    assert torch.isneginf(scores[0, 2:]).all()
    assert 5 not in top[2].tolist()
    for r in range(3):
        valid = scores[r][top[r] >= 0]
        assert torch.all(valid[:-1] >= valid[1:])
        for s, i in zip(scores[r], top[r]):
            if i >= 0:
                assert s == full[r, i]


def test_topk_excluding_empty_exclusion():
    scores = torch.tensor([[1.0, 3.0, 2.0]])
    empty = torch.zeros(0, dtype=torch.int64)
    values, items = topk_excluding(scores, 3, empty, empty)
    assert items.tolist() == [[1, 2, 0]]
    assert values.tolist() == [[3.0, 2.0, 1.0]]


@pytest.mark.parametrize("k", [0, 7])
def test_recommend_rejects_bad_k(k):
    model = MatrixFactorization(2, 6, 2).eval()
    empty = torch.zeros(0, dtype=torch.int64)
    with pytest.raises(ConfigError, match=r"k=\d+ is out of range: .* number of items \(6\)"):
        model.recommend(torch.tensor([0]), k, empty, empty)


def test_build_model_errors():
    with pytest.raises(ConfigError, match="unknown model kind"):
        build_model("svd", n_users=2, n_items=2)
    with pytest.raises(ConfigError, match="n_users must be a positive integer"):
        build_model("mf", n_users=0, n_items=2)
    with pytest.raises(ConfigError, match="invalid hyperparameters"):
        build_model("mf", n_users=2, n_items=2, colour="red")
    with pytest.raises(ConfigError, match="dropout"):
        DenseNet(2, 2, 2, 2, dropout=1.5)


def test_densenet_split_first_layer_matches_linear():
    torch.manual_seed(1)
    model = DenseNet(5, 4, 3, 6).eval()
    a, c = model.split_first_layer()
    x = torch.cat([model.user_factors.weight[2], model.item_factors.weight[3]])
    torch.testing.assert_close(a[2] + c[3], model.linear1(x))


def test_dropout_masks_keep_rate_scale_and_fresh_windows():
    """Pooled dropout: each element kept with probability 1 - p and scaled by 1/(1 - p);
    successive calls draw different masks; p = 0 returns the input itself."""
    from recsys_export.models.densenet import DropoutMasks

    torch.manual_seed(0)
    masks = DropoutMasks()
    h = torch.ones(16, 500, 64)
    first = masks.apply(h, 0.25)
    second = masks.apply(h, 0.25)
    values = torch.unique(first).tolist()
    assert len(values) == 2 and values[0] == 0.0 and values[1] == pytest.approx(1 / 0.75)
    keep = float((first > 0).float().mean())
    assert abs(keep - 0.75) < 0.01  # 512k elements: sd of the rate ~6e-4
    assert not torch.equal(first, second)
    # rows of one mask are not copies of each other (independent elements)
    assert not torch.equal(first[0], first[1])
    assert masks.apply(h, 0.0) is h
    # another rate redraws the pool
    assert abs(float((masks.apply(h, 0.5) > 0).float().mean()) - 0.5) < 0.01


def test_densenet_dropout_train_only_reproducible_and_masked_gradient():
    """DenseNet's dropout acts in training only (eval scores are deterministic and equal
    the undropped computation), is reproducible under a seed, and passes gradient only
    through the kept hidden units."""
    model = DenseNet(20, 30, 4, 8, dropout=0.5, init_std=0.1)
    users, items = torch.arange(20), torch.arange(20)
    model.eval()
    assert torch.equal(model(users, items), model(users, items))
    assert torch.allclose(model.score_items(users[:3], items), model.score_all(users[:3])[:, :20])
    model.train()

    def two_steps(seed):  # a fresh model per run, as in seeded training
        torch.manual_seed(seed)
        m = DenseNet(20, 30, 4, 8, dropout=0.5, init_std=0.1).train()
        return m.score_items(users[:3], items), m(users, items)

    first, again = two_steps(1), two_steps(1)
    assert all(torch.equal(x, y) for x, y in zip(first, again))
    assert not torch.equal(first[0], two_steps(2)[0])
    # with every unit dropped (p -> 1) nothing reaches the first layer
    model.dropout = 0.999999
    model.zero_grad()
    torch.manual_seed(2)
    model(users, items).sum().backward()
    assert float(model.linear1.weight.grad.abs().sum()) == 0.0
    assert float(model.linear2.bias.grad.abs().sum()) > 0.0


def test_densenet_scores_in_item_tiles_match_one_block(monkeypatch):
    """score_all / score_items form the hidden activations a few items at a time: with
    tiles of a handful of items the scores and every gradient equal the one-block
    computation, and in training mode score_all drops units as score_items does."""
    import recsys_export.models.densenet as densenet

    torch.manual_seed(3)
    model = DenseNet(6, 50, 4, 8, global_mean=1.5, init_std=0.3)
    users, items = torch.arange(6), torch.tensor([7, 3, 41, 3, 0])

    def one_block(m, its):
        w, k = m.linear1.weight, m.n_factors
        a = m.user_factors(users) @ w[:, :k].t()
        c = m.item_factors(its) @ w[:, k:].t() + m.linear1.bias
        h = (a.unsqueeze(1) + c.unsqueeze(0)).relu()
        return h @ m.linear2.weight[0] + m.linear2.bias + m.global_mean

    monkeypatch.setattr(densenet, "SCORE_TILE", 6 * 8 * 3)  # 3 items per tile
    model.eval()
    for tiled, block in (
        (model.score_all(users), one_block(model, torch.arange(50))),
        (model.score_items(users, items), one_block(model, items)),
    ):
        torch.testing.assert_close(tiled, block, atol=1e-6, rtol=1e-6)
        grads = torch.autograd.grad(tiled.square().sum(), list(model.parameters()))
        expected = torch.autograd.grad(block.square().sum(), list(model.parameters()))
        for g, e in zip(grads, expected):
            torch.testing.assert_close(g, e, atol=1e-5, rtol=1e-5)
    model.dropout = 0.5
    model.train()
    torch.manual_seed(0)
    dropped = model.score_all(users)
    assert not torch.allclose(dropped, one_block(model, torch.arange(50)))


def test_densenet_inference_scores_in_user_and_item_tiles_match_one_block(monkeypatch):
    """Without gradients DenseNet scores in [users, hidden, items] tiles: with tiles of
    2 users' whole rows, of 1 user x 6 items (a short last tile), of 1 x 1 and of every
    user at once, the scores equal the one-block computation."""
    import recsys_export.models.densenet as densenet

    torch.manual_seed(5)
    model = DenseNet(7, 20, 4, 8, global_mean=-0.5, init_std=0.3).eval()
    users = torch.tensor([6, 0, 3, 3, 1])
    w, k = model.linear1.weight, model.n_factors
    with torch.no_grad():
        a = model.user_factors(users) @ w[:, :k].t()
        c = model.item_factors.weight @ w[:, k:].t() + model.linear1.bias
        block = (a.unsqueeze(1) + c.unsqueeze(0)).relu() @ model.linear2.weight[0]
        block = block + model.linear2.bias + model.global_mean
        for tile in (8 * 20 * 2, 8 * 2 * 3, 1, 8 * 20 * 5):
            monkeypatch.setattr(densenet, "INFERENCE_TILE", tile)
            scores = model.score_all(users)
            torch.testing.assert_close(scores, block, atol=1e-6, rtol=1e-6)
            torch.testing.assert_close(model.score_items(users, torch.arange(20)), block)


def test_densenet_training_scores_and_gradients_equal_plain_autograd_with_masks(monkeypatch):
    """In training mode the tiled hidden layer (one reused buffer, recomputed in the
    backward pass) gives the scores and gradients of autograd on the plain expression
    relu(a + c) * mask . w2 with the very masks it drew."""
    import recsys_export.models.densenet as densenet

    torch.manual_seed(4)
    model = DenseNet(5, 40, 4, 8, dropout=0.3, global_mean=0.5, init_std=0.3).train()
    drawn = []
    real = model._masks.mask

    def recording(shape, p, like):
        m = real(shape, p, like)
        drawn.append(m.clone())
        return m

    monkeypatch.setattr(model._masks, "mask", recording)
    monkeypatch.setattr(densenet, "SCORE_TILE", 5 * 8 * 7)  # 7 items per tile: 6 tiles
    users, items = torch.tensor([0, 2, 4, 1, 3]), torch.arange(40).flip(0)
    tiled = model.score_items(users, items)
    assert len(drawn) == 6
    mask = torch.cat(drawn, 1)
    values = torch.unique(mask).tolist()
    assert len(values) == 2 and values[0] == 0.0 and values[1] == pytest.approx(1 / 0.7)

    w, k = model.linear1.weight, model.n_factors
    a = model.user_factors(users) @ w[:, :k].t()
    c = model.item_factors(items) @ w[:, k:].t() + model.linear1.bias
    h = (a.unsqueeze(1) + c.unsqueeze(0)).relu() * mask
    plain = h @ model.linear2.weight[0] + model.linear2.bias + model.global_mean
    torch.testing.assert_close(tiled, plain, atol=1e-6, rtol=1e-6)
    weights = torch.randn(tiled.shape)
    params = list(model.parameters())
    grads = torch.autograd.grad((tiled * weights).sum(), params)
    expected = torch.autograd.grad((plain * weights).sum(), params)
    for g, e in zip(grads, expected):
        torch.testing.assert_close(g, e, atol=1e-5, rtol=1e-5)
    assert float(grads[2].abs().sum()) > 0  # linear1's weight got a gradient


def test_frozen_densenet_score_all_keeps_parity_when_its_terms_cancel():
    """Items whose hidden terms are large but whose scores are near 0: the frozen
    module's score_all stays within the parity tolerance of the eager model (the max
    rewrite, max(a, -c) . w2 + c . w2, summed two large terms that cancel, and failed)."""
    from recsys_export.export.frozen import inference_module

    torch.manual_seed(0)
    model = DenseNet(64, 400, 16, 64, init_std=0.1).eval()
    with torch.no_grad():
        # items 0, 7, 14, ...: every hidden unit off by a wide margin (c ~ -1000), so the
        # score is the output bias exactly, while max(a, -c) . w2 ~ 1e4
        model.linear1.weight[:, 16] = 1.0  # item factor 0 feeds every unit
        model.item_factors.weight[::7, 0] = -1000.0
        users = torch.arange(64)
        eager = model.score_all(users)
        frozen = inference_module(model).score_all(users)
    torch.testing.assert_close(frozen, eager, atol=1e-5, rtol=1e-5)
