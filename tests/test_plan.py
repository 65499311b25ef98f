"""The verification plan: whole matrix within the budget, a seeded edge-covering sample
beyond it (unit tests; no export)."""

from __future__ import annotations

import numpy as np
import pytest

from recsys_export.bundle.schema import describe_plan
from recsys_export.errors import ConfigError
from recsys_export.plan import (
    DEFAULT_BUDGET,
    SCORE_PAIRS_DIVISOR,
    check_budget,
    plan_parity,
)


def _csr(counts: list[int], n_items: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return indptr, rng.integers(0, n_items, size=int(indptr[-1]), dtype=np.int64)


def test_whole_matrix_within_budget():
    plan = plan_parity(30, 40, budget=1200)
    assert plan.full and not plan.forced
    assert np.array_equal(plan.users, np.arange(30))
    assert plan.matrix_pairs == 1200 and plan.fraction == 1.0
    assert plan.ks == [1, 10, 40]
    d = plan.to_dict()
    assert d["mode"] == "full" and d["users"] == 30 and d["budget_pairs"] == 1200
    assert "full matrix" in describe_plan(d)


def test_sample_covers_the_edge_users():
    n_users, n_items = 500, 100
    counts = [3] * n_users
    counts[17], counts[250] = 90, 80  # most active
    counts[40], counts[41], counts[333] = 0, 0, 0  # no seen items
    counts[77] = 1  # least active (among users with any)
    seen = _csr(counts, n_items)
    budget = 5_000  # 50 users of 500
    plan = plan_parity(n_users, n_items, seen=seen, budget=budget)
    assert not plan.full
    users = set(plan.users.tolist())
    assert len(users) == len(plan.users) == budget // n_items
    assert np.all(np.diff(plan.users) > 0)
    roles = plan.roles
    assert roles["first"] == [0] and roles["last"] == [n_users - 1]
    assert roles["most_active"][:2] == [17, 250]
    assert roles["least_active"][0] == 77
    assert roles["no_seen"] == [40, 41, 333]
    for role in ("first", "last", "most_active", "least_active", "no_seen"):
        assert set(roles[role]) <= users, role
    assert roles["random"] == len(users) - len(
        {u for r in ("first", "last", "most_active", "least_active", "no_seen") for u in roles[r]}
    )
    # k = n_items on the edges plus budget / 16 / n_items users, all of them sampled users
    assert set(plan.sort_users.tolist()) <= users
    assert {0, n_users - 1, 17, 77, 40} <= set(plan.sort_users.tolist())
    d = plan.to_dict()
    assert d["fraction"] == pytest.approx(50 / 500)
    text = describe_plan(d)
    assert "sample: 50 of 500 users" in text and "10.00%" in text and "3 with no seen" in text


def test_sample_is_deterministic_and_seeded():
    seen = _csr([i % 7 for i in range(1000)], 300)
    a = plan_parity(1000, 300, seen=seen, budget=30_000, seed=3)
    b = plan_parity(1000, 300, seen=seen, budget=30_000, seed=3)
    c = plan_parity(1000, 300, seen=seen, budget=30_000, seed=4)
    assert np.array_equal(a.users, b.users) and np.array_equal(a.sort_users, b.sort_users)
    assert a.to_dict() == b.to_dict()
    pa = [np.concatenate(x) for x in zip(*a.score_chunks(1000))]
    pb = [np.concatenate(x) for x in zip(*b.score_chunks(1000))]
    assert all(np.array_equal(x, y) for x, y in zip(pa, pb))
    assert not np.array_equal(a.users, c.users)
    assert a.to_dict()["users_sha256"] != c.to_dict()["users_sha256"]
    # chunking does not change the pairs
    pc = [np.concatenate(x) for x in zip(*a.score_chunks(333))]
    assert all(np.array_equal(x, y) for x, y in zip(pa, pc))


def test_random_pairs_span_the_whole_matrix():
    plan = plan_parity(2000, 500, budget=400_000)
    assert not plan.score_exhaustive
    assert plan.score_pairs == min(400_000 // SCORE_PAIRS_DIVISOR, 16 * 2000)
    u, i = (np.concatenate(x) for x in zip(*plan.score_chunks(4096)))
    assert len(u) == plan.score_pairs
    assert {(0, 0), (0, 499), (1999, 0), (1999, 499)} <= set(zip(u[:4].tolist(), i[:4].tolist()))
    # 12.5 pairs per user on average: (almost) every user outside the sample is hit
    outside = np.setdiff1d(np.arange(2000), plan.users)
    assert np.isin(outside, u).mean() > 0.99
    assert len(np.unique(i)) == 500


def test_score_pairs_exhaustive_on_small_models():
    plan = plan_parity(13, 7, budget=DEFAULT_BUDGET)
    assert plan.score_exhaustive and plan.score_pairs == 91
    u, i = (np.concatenate(x) for x in zip(*plan.score_chunks(10)))
    assert sorted(zip(u.tolist(), i.tolist())) == [(a, b) for a in range(13) for b in range(7)]


def test_full_forces_every_user_whatever_the_budget():
    plan = plan_parity(400, 100, budget=2_000, full=True)
    assert plan.full and plan.forced
    assert np.array_equal(plan.users, np.arange(400))
    assert plan.matrix_pairs == 40_000
    assert len(plan.sort_users) < 400  # full sorts stay on the sample
    assert "(--full)" in plan.describe()


@pytest.mark.parametrize("bad", [0, -5, True, 1.5, "10"])
def test_budget_must_be_a_positive_integer(bad):
    with pytest.raises(ConfigError, match="budget"):
        check_budget(bad)
    with pytest.raises(ConfigError):
        plan_parity(10, 10, budget=bad)
