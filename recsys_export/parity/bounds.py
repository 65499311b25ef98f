"""The parity reference: float64 scores and, per score, what float32 rounding allows.

A format is judged by ``|actual - ref64| <= bound`` value by value, where ``ref64`` is
the eager model computed in float64 (from its float32 weights, so it is the exact
result up to ~1e-16) and ``bound`` is the worst-case error of *a* float32 evaluation
of the same arithmetic, in any summation order (docs/parity.md derives it):

* **MF**: ``score = sum_f p_f q_f + b_u + b_i + mu``; with ``T = sum_f |p_f q_f| + |b_u|
  + |b_i| + |mu|`` (the same model with every weight replaced by its absolute value)
  and ``N = n_factors + 4`` roundings a term can see, ``bound = c * N * u * T``.
* **DenseNet**: ``z_h = a_h + c_h`` (first layer, ``N1 = 2 n_factors + 2`` roundings,
  term sum ``Z_h``), ``score = sum_h w2_h relu(z_h) + b2 + mu`` (``N2 = hidden + 3``).
  ``bound = c * u * (N1 * sum_{h on} |w2_h| Z_h + N2 * (sum_h |w2_h| relu(z_h) + |b2|
  + |mu|))``, "on" being the units whose rounded ``z_h`` can be positive
  (``z_h > -c N1 u Z_h``): a unit held far below zero adds no error, however large its
  terms, which is why cancelling rewrites of the model fail this bound.
* **generic** (a module of your own): the terms are unknown, so eager float32's own
  measured error against float64 is the yardstick: ``bound = c_g * max(E, u * S)``
  with ``E`` the largest ``|eager32 - ref64|`` and ``S`` the largest ``|ref64|`` on a
  seeded calibration sample of pairs.

``u = 2**-24`` is float32's unit roundoff, ``c = 2`` a safety factor for second-order
terms, plus a floor of ``N * 2**-126`` (flushed denormals). Explicit ``atol``/``rtol``
replace the bound with ``atol + rtol * |ref64|`` (:class:`FixedTolerance`).
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch

from recsys_export.models import BaseModel, DenseNet, MatrixFactorization, add_relu_into

#: float32's unit roundoff (half the machine epsilon ``np.finfo(np.float32).eps``).
U32 = 2.0**-24
#: Safety factor on the worst-case bound (second-order terms, ``N u`` for ``gamma_N``).
SAFETY = 2.0
#: Per rounding, the absolute floor of a bound: float32's smallest normal number, for
#: backends that flush denormals to zero.
TINY32 = float(np.finfo(np.float32).tiny)
#: Generic modules: the bound is this multiple of eager float32's measured error.
GENERIC_FACTOR = 8.0
#: Generic modules: calibration pairs (seeded) that measure eager float32's error.
CALIBRATION_PAIRS = 1 << 14
#: Bytes of one float64 tile of the DenseNet reference (several temporaries of it).
REF_TILE_BYTES = 2 << 20
#: Pairs per call of a generic module in float64 (the module's own memory is the
#: caller's: see ``recsys_export.byom.generic.pair_bytes``).
GENERIC_PAIRS_PER_CALL = 1 << 14

Scored = tuple[np.ndarray, np.ndarray]  # (float64 values, float32 bounds)


def _i64(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.int64))


def _w64(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to("cpu", torch.float64)


def _w32(t: torch.Tensor) -> torch.Tensor:
    """The float32 weights on the CPU, not copied when they are there already."""
    return t.detach().to("cpu", torch.float32)


class Reference:
    """float64 scores with a per-value bound, for ``score`` and ``score_all``."""

    #: a JSON description of the rule (``parity.json``'s ``bound``)
    rule: dict[str, Any]

    def score(self, users: np.ndarray, items: np.ndarray) -> Scored:
        raise NotImplementedError

    def score_all(self, users: np.ndarray) -> Scored:
        raise NotImplementedError


class MFReference(Reference):
    """Matrix factorization in float64; ``bound = c N u T + floor`` (module docstring).

    The user side stays the model's float32 weights, cast per call (a float64 copy of
    every user would cost more memory than the rest of the pass); bounds are float32.
    """

    def __init__(self, model: MatrixFactorization) -> None:
        k = model.n_factors
        self.p = _w32(model.user_factors.weight)
        self.q = _w64(model.item_factors.weight)
        self.q_abs32 = self.q.abs().float()
        mu = float(model.global_mean)
        if model.biased:
            self.bu = _w32(model.user_bias.weight).reshape(-1)
            self.bi = _w64(model.item_bias.weight).reshape(-1) + mu
            self.bi_abs = _w64(model.item_bias.weight).reshape(-1).abs() + abs(mu)
        else:
            self.bu = torch.zeros(model.n_users)
            self.bi = self.bi_abs = torch.zeros(model.n_items, dtype=torch.float64)
        self.n = k + 4
        self.scale = SAFETY * self.n * U32
        self.floor = self.n * TINY32
        self.rule = {
            "model": "mf",
            "formula": "c * N * u * (sum_f |p_f q_f| + |b_u| + |b_i| + |mu|) + N * tiny32",
            "c": SAFETY,
            "N": self.n,
            "u": U32,
            "tiny32": TINY32,
        }

    @torch.no_grad()
    def score(self, users: np.ndarray, items: np.ndarray) -> Scored:
        u, i = _i64(users), _i64(items)
        p, q, bu = self.p[u].double(), self.q[i], self.bu[u].double()
        val = (p * q).sum(1) + bu + self.bi[i]
        terms = (p * q).abs_().sum(1) + bu.abs() + self.bi_abs[i]
        return val.numpy(), (terms * self.scale + self.floor).float().numpy()

    @torch.no_grad()
    def score_all(self, users: np.ndarray) -> Scored:
        u = _i64(users)
        p, bu = self.p[u], self.bu[u]
        val = p.double() @ self.q.t()
        val += bu.double().unsqueeze(1)
        val += self.bi
        terms = p.abs() @ self.q_abs32.t()
        terms += bu.abs().unsqueeze(1)
        terms += self.bi_abs.float()
        return val.numpy(), terms.mul_(self.scale).add_(self.floor).numpy()


class DenseNetReference(Reference):
    """The DenseNet in float64 with the two-layer bound of the module docstring.

    Per hidden unit, float32 rounding moves ``z_h`` by at most ``g Z_h`` (``g = c N1
    u``), so ``relu(z_h)`` by at most ``e_h = min(g Z_h, relu(z_h + g Z_h))``: zero for
    a unit held below ``-g Z_h``. ``bound = sum_h |w2_h| e_h + c N2 u (sum_h |w2_h|
    relu(z_h) + |b2| + |mu|) + floor``. Values are float64; bounds are float32, and
    those of a ``score_all`` tile are computed in float32 (there ``z_h`` is within ``3 u
    Z_h`` of the exact value, far inside the margin ``c = 2`` leaves over the worst case
    ``N1 u Z_h``). The user half is computed per call from the model's float32 weights.
    """

    def __init__(self, model: DenseNet) -> None:
        k, hidden = model.n_factors, model.hidden
        w1 = _w64(model.linear1.weight)
        b1 = _w64(model.linear1.bias)
        q = _w64(model.item_factors.weight)
        self.n1, self.n2 = 2 * k + 2, hidden + 3
        self.gate = SAFETY * self.n1 * U32
        # the first layer split into the user half a = P Wu^T (per call) and the item
        # half c = Q Wi^T + b1 (once, hidden units first: [H, n_items]), g * term sums
        self.p = _w32(model.user_factors.weight)
        self.wu_t = w1[:, :k].t().contiguous()
        self.wu_abs_t = self.wu_t.abs()
        self.c_t = (q @ w1[:, k:].t() + b1).t().contiguous()
        self.c_t32 = self.c_t.float()
        cg = self.gate * (q.abs() @ w1[:, k:].abs().t() + b1.abs())
        self.cg_t32 = cg.t().contiguous().float()
        self.w2 = _w64(model.linear2.weight).reshape(-1)
        b2, mu = float(model.linear2.bias.detach()), float(model.global_mean)
        self.tail, self.tail_abs = b2 + mu, abs(b2) + abs(mu)
        self.second = SAFETY * self.n2 * U32
        self.floor = (self.n1 + self.n2) * TINY32
        self.hidden = hidden
        self.rule = {
            "model": "densenet",
            "formula": (
                "sum_h |w2_h| min(g Z_h, relu(z_h + g Z_h)) + c N2 u (sum_h |w2_h| relu(z_h) "
                "+ |b2| + |mu|) + (N1 + N2) tiny32, g = c N1 u"
            ),
            "c": SAFETY,
            "N1": self.n1,
            "N2": self.n2,
            "u": U32,
            "tiny32": TINY32,
        }

    def _user_half(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``a = P[u] Wu^T`` (float64) and ``g`` times its term sums (float64)."""
        p = self.p[u].double()
        return p @ self.wu_t, (p.abs() @ self.wu_abs_t).mul_(self.gate)

    @torch.no_grad()
    def score(self, users: np.ndarray, items: np.ndarray) -> Scored:
        u, i = _i64(users), _i64(items)
        a, ag = self._user_half(u)
        z = a + self.c_t[:, i].t()  # [N, H]
        gz = ag + self.cg_t32[:, i].t().double()
        err = torch.minimum((z + gz).relu_(), gz)
        z.relu_()
        val = z @ self.w2 + self.tail
        w2_abs = self.w2.abs()
        bound = err @ w2_abs + self.second * (z @ w2_abs + self.tail_abs) + self.floor
        return val.numpy(), bound.float().numpy()

    @torch.no_grad()
    def score_all(self, users: np.ndarray) -> Scored:
        b, n, h = len(users), self.c_t.shape[1], self.hidden
        a64, ag = self._user_half(_i64(users))
        a32, ag32 = a64.float(), ag.float()
        val = torch.empty((b, 1, n), dtype=torch.float64)
        err = torch.empty((b, 1, n), dtype=torch.float32)
        act = torch.empty((b, 1, n), dtype=torch.float32)
        rows = max(1, min(b, REF_TILE_BYTES // (8 * h * n)))
        width = max(1, min(n, REF_TILE_BYTES // (8 * h * rows)))
        x64 = torch.empty(rows * h * width, dtype=torch.float64)
        z, gz, e = (torch.empty(rows * h * width) for _ in range(3))
        w2_rows = self.w2.view(1, 1, h).expand(rows, 1, h)
        w2a_rows = self.w2.abs().float().view(1, 1, h).expand(rows, 1, h)
        for r0 in range(0, b, rows):
            r = min(rows, b - r0)
            for t0 in range(0, n, width):
                t1 = min(n, t0 + width)
                shape, size = (r, h, t1 - t0), r * h * (t1 - t0)
                x = x64[:size].view(shape)
                add_relu_into(x, a64[r0 : r0 + r, :, None], self.c_t[None, :, t0:t1])
                torch.bmm(w2_rows[:r], x, out=val[r0 : r0 + r, :, t0:t1])
                zt, gt, et = z[:size].view(shape), gz[:size].view(shape), e[:size].view(shape)
                torch.add(a32[r0 : r0 + r, :, None], self.c_t32[None, :, t0:t1], out=zt)
                torch.add(ag32[r0 : r0 + r, :, None], self.cg_t32[None, :, t0:t1], out=gt)
                torch.minimum(torch.add(zt, gt, out=et).relu_(), gt, out=et)  # e_h
                torch.bmm(w2a_rows[:r], et, out=err[r0 : r0 + r, :, t0:t1])
                torch.bmm(w2a_rows[:r], zt.relu_(), out=act[r0 : r0 + r, :, t0:t1])
        bound = err.view(b, n)
        bound.add_(act.view(b, n).add_(self.tail_abs), alpha=self.second)
        return (val.view(b, n) + self.tail).numpy(), bound.add_(self.floor).numpy()


class GenericReference(Reference):
    """Any pairwise module (``forward(users, items)``) in float64; the bound is eager
    float32's measured error, times :data:`GENERIC_FACTOR`: the larger of its largest
    error on a calibration sample and its own error on that very value (so a pair whose
    arithmetic is badly conditioned gets the bound its conditioning calls for).

    Parameters
    ----------
    module : torch.nn.Module
        The user's module in float32 (a float64 deep copy is made; the original is
        left as it is).
    n_users, n_items : int
        Id ranges.
    pairs_per_call : int
        Pairs handed to the module per call (bounds its memory).
    seed : int
        Seeds the calibration sample.

    Raises
    ------
    Exception
        Whatever the module raises when copied or run in float64 (:func:`reference_for`
        then falls back to the float32 module with a fixed tolerance).
    """

    def __init__(
        self,
        module: torch.nn.Module,
        n_users: int,
        n_items: int,
        *,
        pairs_per_call: int = GENERIC_PAIRS_PER_CALL,
        seed: int = 0,
    ) -> None:
        self.n_items = n_items
        self.pairs_per_call = max(1, int(pairs_per_call))
        self.module32 = module
        self.module = copy.deepcopy(module).to(torch.float64).eval()
        rng = np.random.default_rng([seed, 3])
        n = CALIBRATION_PAIRS
        users = rng.integers(0, n_users, size=n, dtype=np.int64)
        items = rng.integers(0, n_items, size=n, dtype=np.int64)
        users[:4], items[:4] = [0, 0, n_users - 1, n_users - 1], [0, n_items - 1] * 2
        ref = _module_pairs(self.module, users, items, self.pairs_per_call)
        got = _module_pairs(module, users, items, self.pairs_per_call)
        finite = np.isfinite(ref) & np.isfinite(got)
        err = float(np.abs(got - ref)[finite].max(initial=0.0))
        size = float(np.abs(ref[finite]).max(initial=0.0))
        self.floor = max(err, U32 * size, TINY32)
        self.rule = {
            "model": "generic",
            "formula": "c_g * max(E, u * S, |eager32 - ref64| of the value): E = max "
            "|eager32 - ref64| and S = max |ref64| on the calibration pairs",
            "c_g": GENERIC_FACTOR,
            "u": U32,
            "calibration_pairs": n,
            "E": err,
            "S": size,
            "bound": GENERIC_FACTOR * self.floor,
        }

    def _bound(self, val: np.ndarray, own: np.ndarray) -> Scored:
        """``c_g * max(floor, |own - val|)`` (NaN errors: the floor)."""
        with np.errstate(invalid="ignore"):
            err = np.abs(own - val, out=own)
            np.fmax(err, self.floor, out=err)
        return val, np.multiply(err, GENERIC_FACTOR, out=err).astype(np.float32)

    def score(self, users: np.ndarray, items: np.ndarray) -> Scored:
        val = _module_pairs(self.module, users, items, self.pairs_per_call)
        return self._bound(val, _module_pairs(self.module32, users, items, self.pairs_per_call))

    def score_all(self, users: np.ndarray) -> Scored:
        val = _module_rows(self.module, users, self.n_items, self.pairs_per_call)
        own = _module_rows(self.module32, users, self.n_items, self.pairs_per_call)
        return self._bound(val, own)


class Float32Reference(Reference):
    """A module that cannot run in float64: its float32 scores (a fixed tolerance is
    then applied by :class:`FixedTolerance`)."""

    def __init__(self, module: torch.nn.Module, n_items: int, pairs_per_call: int, why: str):
        self.module, self.n_items, self.pairs_per_call = module, n_items, pairs_per_call
        self.rule = {"model": "generic", "reference": f"float32 eager ({why})"}

    def score(self, users: np.ndarray, items: np.ndarray) -> Scored:
        val = _module_pairs(self.module, users, items, self.pairs_per_call)
        return val, np.zeros(val.shape, dtype=np.float32)

    def score_all(self, users: np.ndarray) -> Scored:
        val = _module_rows(self.module, users, self.n_items, self.pairs_per_call)
        return val, np.zeros(val.shape, dtype=np.float32)


@torch.no_grad()
def _module_pairs(
    module: torch.nn.Module, users: np.ndarray, items: np.ndarray, step: int
) -> np.ndarray:
    """``module(users, items)`` as float64, ``step`` pairs per call."""
    out = np.empty(len(users), dtype=np.float64)
    for s in range(0, len(users), step):
        got = module(_i64(users[s : s + step]), _i64(items[s : s + step]))
        out[s : s + step] = got.reshape(-1).to(torch.float64).numpy()
    return out


def _module_rows(module: torch.nn.Module, users: np.ndarray, n_items: int, step: int) -> np.ndarray:
    """Every item for each of ``users`` through ``module``: ``float64[B, n_items]``."""
    out = np.empty((len(users), n_items), dtype=np.float64)
    per = max(1, step // n_items)  # whole rows per call when they fit, else item slices
    width = min(n_items, step)
    for r0 in range(0, len(users), per):
        u = np.asarray(users[r0 : r0 + per], dtype=np.int64)
        for t0 in range(0, n_items, width):
            t1 = min(n_items, t0 + width)
            uu = np.repeat(u, t1 - t0)
            ii = np.tile(np.arange(t0, t1, dtype=np.int64), len(u))
            vals = _module_pairs(module, uu, ii, step).reshape(len(u), t1 - t0)
            out[r0 : r0 + len(u), t0:t1] = vals
    return out


class FixedTolerance(Reference):
    """``atol + rtol * |ref|`` around another reference's values (explicit tolerances)."""

    def __init__(self, inner: Reference, atol: float, rtol: float) -> None:
        self.inner, self.atol, self.rtol = inner, float(atol), float(rtol)
        self.rule = {
            "model": inner.rule.get("model"),
            "formula": "atol + rtol * |ref|",
            "atol": self.atol,
            "rtol": self.rtol,
        }
        if "reference" in inner.rule:
            self.rule["reference"] = inner.rule["reference"]

    def _bound(self, scored: Scored) -> Scored:
        val = scored[0]
        with np.errstate(invalid="ignore", over="ignore"):
            bound = (np.abs(val) * self.rtol + self.atol).astype(np.float32)
        bound[~np.isfinite(bound)] = self.atol
        return val, bound

    def score(self, users: np.ndarray, items: np.ndarray) -> Scored:
        return self._bound(self.inner.score(users, items))

    def score_all(self, users: np.ndarray) -> Scored:
        return self._bound(self.inner.score_all(users))


def reference_for(
    model: BaseModel, atol: float | None = None, rtol: float | None = None
) -> Reference:
    """The float64 reference of ``model`` with its error-model bound (or, when ``atol``
    or ``rtol`` is given, the fixed rule ``atol + rtol * |ref|``, the other one 1e-5)."""
    ref: Reference
    if isinstance(model, MatrixFactorization):
        ref = MFReference(model)
    elif isinstance(model, DenseNet):
        ref = DenseNetReference(model)
    else:
        pairs = getattr(model, "call_pairs", lambda: GENERIC_PAIRS_PER_CALL)()
        ref = generic_reference(model, pairs)
    if atol is None and rtol is None:
        return ref
    return FixedTolerance(ref, 1e-5 if atol is None else atol, 1e-5 if rtol is None else rtol)


def generic_reference(model: Any, pairs_per_call: int = GENERIC_PAIRS_PER_CALL) -> Reference:
    """:class:`GenericReference` of a ``ModuleRecommender`` (its ``module``), or the
    module in float32 under the fixed 1e-5 rule when it cannot run in float64."""
    try:
        return GenericReference(
            model.module, model.n_users, model.n_items, pairs_per_call=pairs_per_call
        )
    except Exception as exc:  # e.g. float32 tensors built inside forward
        why = f"the module cannot run in float64: {type(exc).__name__}: {exc}"[:300]
        ref = Float32Reference(model.module, model.n_items, pairs_per_call, why)
        return FixedTolerance(ref, 1e-5, 1e-5)
