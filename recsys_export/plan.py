"""The verification plan: which pairs a parity pass compares, sized to the model.

Torch-free (numpy only), so ``inspect`` can describe a recorded plan without torch.
:func:`plan_parity` compares the whole user x item matrix while ``n_users * n_items``
fits a pair budget; beyond it, every item for a seeded sample of users chosen to cover
the edges (first and last index, most and least active, users with no seen items) plus
random ones, and random (user, item) pairs over the whole matrix through pairwise
``score``. Same seed, budget and sizes give the same plan.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from recsys_export.errors import ConfigError

#: Default verification budget: (user, item) pairs compared per backend through
#: ``score_all`` (and ``recommend``). The whole matrix is compared while it fits; beyond
#: it, every item for a sample of ``budget // n_items`` users.
DEFAULT_BUDGET = 16_000_000
#: Pairwise ``score`` gets at most ``budget // SCORE_PAIRS_DIVISOR`` random pairs (16 per
#: user and per item are plenty; pairwise DenseNet costs ~100x a ``score_all`` pair), every
#: pair when that covers the matrix; ``recommend`` with ``k = n_items`` (a full sort per
#: row) runs on the edge users plus ``budget // SCORE_PAIRS_DIVISOR // n_items`` users.
SCORE_PAIRS_DIVISOR = 16
_PAIR_BLOCK = 1 << 16
#: Edge users taken per role (most / least active, no seen items).
EDGE_USERS = 4
#: Working memory of one block of users (reference, candidate, masks, temporaries).
BLOCK_BYTES = 128 << 20
#: Pairs per pairwise ``score`` call (DenseNet's ``[N, 2 factors + hidden]`` intermediates).
PAIR_CHUNK = 32768
#: Bytes of one exported call's largest intermediate (DenseNet's ``[B, H, n_items]``):
#: cache-sized. Measured on ml-latest-small DenseNet (64 hidden), TorchScript score_all
#: on one thread: 22-25 ns/pair at 2.5-10 MB, 170 ns/pair at 40 MB.
CALL_BYTES = 4 << 20
#: Bytes of the largest random batch's intermediate (one call): the contract's "large"
#: batch is min(1024, what fits), e.g. 1024 users for MF over ml-latest-small's 9,724
#: items, 63 for a 32-hidden DenseNet there, 8 at 20k items x 128 hidden. (With 256 MB
#: and onnxruntime's arena on, the 100k x 20k DenseNet export peaked at 2.15 GiB instead
#: of 1.40: each backend kept a buffer of that size.)
BATCH_BYTES = 80 << 20
#: torch intra-op threads during a parity pass (restored after). Its calls are small
#: and cache-sized; with the cores shared, a second thread made them 10-30x slower
#: (OpenMP barriers waiting on a descheduled thread), and on an idle machine it buys
#: under 2x. onnxruntime keeps its own threads.
PARITY_TORCH_THREADS = 1
#: Backends a parity pass runs at once (Python threads; each call and comparison is
#: torch, onnxruntime or numpy work that releases the GIL): the eager reference of a
#: block is computed once, then the formats split the cores. One thread per call, so
#: the OpenMP barriers above never come into it; onnxruntime sessions then get one
#: intra-op thread each.
PARITY_WORKERS = max(1, min(2, os.cpu_count() or 1))


def check_budget(budget: Any) -> int:
    """A parity budget (pairs) as an int; :class:`ConfigError` unless a positive integer."""
    if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)) or budget < 1:
        raise ConfigError(f"the parity budget must be a positive number of pairs, got {budget!r}")
    return int(budget)


@dataclass
class ParityPlan:
    """What a parity pass compares, sized to the model and a pair budget.

    Attributes
    ----------
    users : np.ndarray
        Sorted user indices whose whole row (every item) goes through ``score_all`` and
        ``recommend`` (k in ``ks``); every user when the plan is ``full``.
    sort_users : np.ndarray
        The users also checked with ``k = n_items`` (a full sort per user).
    roles : dict
        Edge users by role (``first``, ``last``, ``most_active``, ``least_active``,
        ``no_seen``) and the number of ``random`` ones.
    score_pairs : int
        Pairs through pairwise ``score``: every pair when ``score_exhaustive``, else
        random pairs over the whole matrix (the four corners included).
    """

    n_users: int
    n_items: int
    budget: int
    seed: int
    full: bool
    forced: bool
    users: np.ndarray
    sort_users: np.ndarray
    roles: dict[str, Any]
    score_pairs: int
    score_exhaustive: bool
    ks: list[int]
    pair_cost: int = 1

    @property
    def matrix_pairs(self) -> int:
        """Pairs compared through ``score_all``: ``len(users) * n_items``."""
        return len(self.users) * self.n_items

    @property
    def fraction(self) -> float:
        """Fraction of the user x item matrix compared through ``score_all``."""
        return self.matrix_pairs / (self.n_users * self.n_items)

    def score_chunks(self, size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """The ``score`` pairs, ``size`` at a time (generated, never all at once)."""
        total = self.n_users * self.n_items
        if self.score_exhaustive:
            for s in range(0, total, size):
                idx = np.arange(s, min(total, s + size), dtype=np.int64)
                yield idx // self.n_items, idx % self.n_items
            return
        corners = (
            np.array([0, 0, self.n_users - 1, self.n_users - 1], dtype=np.int64),
            np.array([0, self.n_items - 1] * 2, dtype=np.int64),
        )
        # fixed blocks, each with its own stream: the pairs do not depend on ``size``
        for b0 in range(0, self.score_pairs, _PAIR_BLOCK):
            rng = np.random.default_rng([self.seed, 2, b0 // _PAIR_BLOCK])
            n = min(_PAIR_BLOCK, self.score_pairs - b0)
            u = rng.integers(0, self.n_users, size=n, dtype=np.int64)
            i = rng.integers(0, self.n_items, size=n, dtype=np.int64)
            if b0 == 0:
                m = min(4, n)
                u[:m], i[:m] = corners[0][:m], corners[1][:m]
            for s in range(0, n, size):
                yield u[s : s + size], i[s : s + size]

    def describe(self) -> str:
        """One line for the verify table and ``inspect``."""
        return describe_plan(self.to_dict())

    def to_dict(self) -> dict[str, Any]:
        """JSON form recorded in ``parity.json`` and the manifest's parity summary."""
        digest = hashlib.sha256(np.ascontiguousarray(self.users, np.int64).tobytes())
        return {
            "mode": "full" if self.full else "sample",
            "forced_full": self.forced,
            "budget_pairs": self.budget,
            "seed": self.seed,
            "n_users": self.n_users,
            "n_items": self.n_items,
            "users": len(self.users),
            "users_sha256": digest.hexdigest()[:16],
            "matrix_pairs": self.matrix_pairs,
            "fraction": self.fraction,
            "edge_users": self.roles,
            "score_pairs": self.score_pairs,
            "score_exhaustive": self.score_exhaustive,
            "recommend_k": self.ks,
            "sort_users": len(self.sort_users),
            "pair_cost": self.pair_cost,
        }


def describe_plan(plan: dict[str, Any]) -> str:
    """A one-line description of a recorded plan (:meth:`ParityPlan.to_dict`)."""
    n_u, n_i = plan["n_users"], plan["n_items"]
    if plan["mode"] == "full":
        head = f"full matrix: {n_u:,} users x {n_i:,} items = {plan['matrix_pairs']:,} pairs"
        head += (
            " (--full)" if plan.get("forced_full") else f" (within budget {plan['budget_pairs']:,})"
        )
    else:
        r = plan["edge_users"]
        cost = plan.get("pair_cost", 1)
        per = f" / pair cost {cost}" if cost > 1 else ""
        head = (
            f"sample: {plan['users']:,} of {n_u:,} users x {n_i:,} items = "
            f"{plan['matrix_pairs']:,} pairs ({plan['fraction']:.2%} of the matrix; budget "
            f"{plan['budget_pairs']:,}{per}, seed {plan['seed']}; edges: first, last, "
            f"{len(r['most_active'])} most / {len(r['least_active'])} least active, "
            f"{len(r['no_seen'])} with no seen items; {r['random']:,} random)"
        )
    pairs = "every pair" if plan["score_exhaustive"] else f"{plan['score_pairs']:,} random pairs"
    ks = ", ".join(str(k) for k in plan["recommend_k"])
    return (
        f"plan: {head}; score: {pairs}; recommend k in {{{ks}}} "
        f"(k={plan['recommend_k'][-1]} on {plan['sort_users']:,} users)"
    )


def describe_parity(parity: dict[str, Any], details: bool = True) -> list[str]:
    """Lines describing a manifest's recorded parity summary (``export``, ``inspect``).

    ``details`` adds one line per format x entry point. Under the float32 error model a
    row shows its worst ``error / bound`` ratio (<= 1 passes); summaries recorded by
    older versions (fixed ``atol``/``rtol``) show their max rel diff.
    """
    rule = parity.get("tolerance")
    if rule is None:  # written before the error model (format of recsys-export <= 0.x)
        rule = f"atol {parity.get('atol', 0):g}, rtol {parity.get('rtol', 0):g}"
    verdict = "PASS" if parity.get("passed") else "FAIL"
    worst = parity.get("max_ratio")
    head = f"parity: {verdict} ({rule})"
    if worst is not None:
        head += f", worst err/bound {worst:.3g}"
    elif parity.get("max_abs_diff") is not None:
        head += f", max abs diff {parity['max_abs_diff']:.2e}"
    lines = [head]
    if details:
        for row in parity.get("rows", []):
            if "max_ratio" in row:
                ratio = row["max_ratio"]
                shown = f"err/bound {ratio:.3g}" if ratio is not None else "err/bound inf"
            else:
                shown = f"max rel {row.get('max_rel_diff', 0.0):.2e}"
            diff = row.get("max_abs_diff")
            diff_s = f"{diff:.2e}" if diff is not None else "inf"
            lines.append(
                f"  {row['format']:<12} {row['entry_point']:<10} max abs {diff_s}  {shown}  "
                f"{'PASS' if row.get('passed') else 'FAIL'}"
            )
    lines.extend(parity.get("notes") or [])
    if parity.get("plan"):
        lines.append(describe_plan(parity["plan"]))
    return lines


def _edge_users(counts: np.ndarray) -> dict[str, list[int]]:
    n = len(counts)
    order = np.lexsort((np.arange(n), -counts))  # most active first, ties by index
    active = np.flatnonzero(counts > 0)
    least = active[np.lexsort((active, counts[active]))][:EDGE_USERS]
    return {
        "first": [0],
        "last": [n - 1],
        "most_active": [int(u) for u in order[:EDGE_USERS] if counts[u] > 0],
        "least_active": [int(u) for u in least],
        "no_seen": [int(u) for u in np.flatnonzero(counts == 0)[:EDGE_USERS]],
    }


def plan_parity(
    n_users: int,
    n_items: int,
    *,
    seen: tuple[np.ndarray, np.ndarray] | None = None,
    budget: int | None = None,
    full: bool = False,
    seed: int = 0,
    pair_cost: int = 1,
) -> ParityPlan:
    """The verification plan of a model: the whole matrix or a recorded, seeded sample.

    Parameters
    ----------
    n_users, n_items : int
        Model sizes.
    seen : (indptr, items), optional
        Seen-items CSR; picks the most / least active users and those with none.
    budget : int, optional
        Pairs per backend through ``score_all`` (default :data:`DEFAULT_BUDGET`).
    full : bool
        Every user's row whatever the budget (``k = n_items`` stays on its sample: a full
        sort per user adds no pair coverage).
    seed : int
        Same seed, same budget, same sizes -> the same plan.
    pair_cost : int
        What one pair of this model costs in pairs of the budget: the matrix (rows
        through ``score_all`` and ``recommend``) gets ``budget // pair_cost`` pairs; the
        pairwise ``score`` sample keeps its size. A generic module (``byom``) runs all
        its dense layers for every pair (``ModuleRecommender.pair_cost``).

    Returns
    -------
    ParityPlan

    Raises
    ------
    ConfigError
        ``budget`` is not a positive integer.
    """
    budget = DEFAULT_BUDGET if budget is None else check_budget(budget)
    matrix_budget = max(1, budget // max(1, int(pair_cost)))
    total = n_users * n_items
    counts = np.diff(seen[0]) if seen is not None else np.zeros(n_users, dtype=np.int64)
    ks = sorted({1, min(10, n_items), n_items})
    # pairwise score: every user and item ~16 times, at most budget / 16 pairs
    n_score = min(budget // SCORE_PAIRS_DIVISOR, 16 * max(n_users, n_items))
    score: dict[str, Any] = {
        "score_pairs": min(total, max(1, n_score)),
        "score_exhaustive": total <= n_score,
    }
    all_users = np.arange(n_users, dtype=np.int64)
    roles: dict[str, Any] = _edge_users(counts)
    edges = np.unique(np.concatenate([np.asarray(v, dtype=np.int64) for v in roles.values()]))
    rng = np.random.default_rng([seed, 1])
    within = total <= matrix_budget
    if within:
        users = all_users
        roles["random"] = 0
    else:
        users = _with_edges(edges, all_users, matrix_budget // n_items, rng)
        roles["random"] = len(users) - len(edges)
    # k = n_items sorts every row: on the edges and (budget / 16) / n_items users
    sort_users = _with_edges(edges, users, matrix_budget // SCORE_PAIRS_DIVISOR // n_items, rng)
    mode_full = within or full
    return ParityPlan(
        n_users,
        n_items,
        budget,
        seed,
        mode_full,
        full and not within,
        all_users if mode_full else users,
        sort_users,
        roles,
        **score,
        ks=ks,
        pair_cost=max(1, int(pair_cost)),
    )


def _with_edges(
    edges: np.ndarray, pool: np.ndarray, want: int, rng: np.random.Generator
) -> np.ndarray:
    """``edges`` plus random users of ``pool`` up to ``want`` in all (sorted)."""
    rest = np.setdiff1d(pool, edges, assume_unique=True)
    n = min(len(rest), max(0, want - len(edges)))
    picked = rng.choice(rest, size=n, replace=False) if n else rest[:0]
    return np.union1d(edges, picked).astype(np.int64)
