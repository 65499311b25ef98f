"""The rows of ``recsys-export bench`` for one model: score_all, recommend-all, single user.

:func:`bench_model` measures one synthetic model's bundle (built by
:mod:`recsys_export.bench`) section by section, timed by :mod:`recsys_export.bench_timing`;
ratios are to the section's ceiling, a bare onnxruntime graph
(:mod:`recsys_export.bench_graphs`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from recsys_export.bench_graphs import dn_bare, mf_bare, mf_one_topk, parallel, session
from recsys_export.bench_timing import Rounds, latency, timed

__all__ = ["bench_model"]


@dataclass
class _Ctx:
    """What every section of one model needs."""

    kind: str
    cfg: dict[str, Any]
    model: Any
    module: Any
    bundle: Path
    rec: Any
    fallback: Any
    variants: dict[str, Any]
    notes: list[str]
    slow_users: int

    @property
    def skip(self) -> set[str]:
        return set(self.cfg["skip"])


# --------------------------------------------------------------------------- score_all
def _mf_ceiling(ctx: _Ctx, rounds: Rounds, score: dict) -> None:
    """Bare MatMul: the best of intra-op threads (blocks of 16..1024 users) and one
    single-threaded session per Python thread (blocks of 64, 256)."""
    n_users, n_items, threads = ctx.cfg["users"], ctx.cfg["items"], ctx.cfg["threads"]
    p = ctx.model.user_factors.weight.detach().numpy().copy()
    q = ctx.model.item_factors.weight.detach().numpy()
    model = mf_bare(np.ascontiguousarray(q.T))
    sessions = {1: session(model, 1), threads: session(model, threads)}

    def run(block: int, py: int) -> None:
        sess = sessions[1 if py > 1 else threads]

        def work(starts: list[int]) -> None:
            buf = np.empty((block, n_items), dtype=np.float32)
            for s in starts:
                x = p[s : s + block]
                b = sess.io_binding()
                b.bind_cpu_input("x", x)
                b.bind_output("y", "cpu", 0, np.float32, [x.shape[0], n_items], buf.ctypes.data)
                sess.run_with_iobinding(b)

        parallel(list(range(0, n_users, block)), py, work)

    modes = [(b, 1) for b in (16, 64, 256, 1024)]
    if threads > 1:
        modes += [(b, threads) for b in (64, 256)]
    tries = {m: timed(lambda m=m: run(*m), 1)[0] for m in modes}
    best = min(tries, key=lambda m: tries[m])
    shown = ", ".join(f"{b}{'p' if py > 1 else ''} {t:.2f}s" for (b, py), t in tries.items())
    ctx.notes.append(
        f"ceiling: blocks of {best[0]} users, "
        + ("one single-threaded session per Python thread" if best[1] > 1 else "intra-op threads")
        + f" (first runs: {shown}; p = Python threads)"
    )
    rounds.add(score, "ceiling", lambda: run(*best), n_users)


def _dn_ceiling(ctx: _Ctx, rounds: Rounds, score: dict) -> dict[str, Any]:
    from recsys_export.export import DN_BLOCK_USERS, dn_tile_width

    n_users, n_items, threads = ctx.cfg["users"], ctx.cfg["items"], ctx.cfg["threads"]
    hidden, m = ctx.cfg["hidden"], ctx.module
    a_all = m.user_factors.numpy() @ m.w1_user_t.numpy()  # precomputed user half
    neg, off, w2_row = m.neg_c_t.numpy(), m.item_offset.numpy(), m.w2_row.numpy()
    width = dn_tile_width(hidden, n_items, DN_BLOCK_USERS)
    graph = dn_bare(w2_row, neg, off)
    bare = {True: session(graph, 1), False: session(graph, threads)}
    starts = list(range(0, n_users, DN_BLOCK_USERS))

    def run(py_threads: bool) -> None:
        sess = bare[py_threads]

        def work(my_starts: list[int]) -> None:
            out = np.empty((DN_BLOCK_USERS, n_items), dtype=np.float32)  # reused
            for s in my_starts:
                a = a_all[s : s + DN_BLOCK_USERS]
                b = sess.io_binding()
                b.bind_cpu_input("a", a)
                dst = out[: a.shape[0]]
                b.bind_output("out", "cpu", 0, np.float32, list(dst.shape), dst.ctypes.data)
                sess.run_with_iobinding(b)

        parallel(starts, threads if py_threads else 1, work)

    tries = {mode: timed(lambda mode=mode: run(mode), 1)[0] for mode in (True, False)}
    best = min(tries, key=lambda mode: tries[mode])
    ctx.notes.append(
        "ceiling: "
        + ("Python threads" if best else "onnxruntime intra-op threads")
        + f" (first run {tries[True]:.2f} s with Python threads, {tries[False]:.2f} s with"
        " intra-op threads)"
    )
    rounds.add(score, "ceiling", lambda: run(best), n_users)
    tiles = [
        (np.ascontiguousarray(neg[:, t : t + width]), off[t : t + width].copy(), t)
        for t in range(0, n_items, width)
    ]
    return {"a_all": a_all, "tiles": tiles, "w2_row": w2_row, "width": width}


def _numpy_row(ctx: _Ctx, rounds: Rounds, score: dict, dn: dict[str, Any] | None) -> None:
    n_users, n_items = ctx.cfg["users"], ctx.cfg["items"]
    if "numpy" in ctx.skip:
        score["numpy"] = {"skipped": "--skip numpy"}
        return
    if dn is None:
        m = ctx.model
        p = m.user_factors.weight.detach().numpy()
        bu = m.user_bias.weight.detach().numpy().reshape(-1)
        bi = (m.item_bias.weight.detach().reshape(-1) + m.global_mean).numpy()
        qt = np.ascontiguousarray(m.item_factors.weight.detach().numpy().T)
        nbuf = np.empty((1024, n_items), dtype=np.float32)

        def numpy_mf() -> None:
            for s in range(0, n_users, 1024):
                x = p[s : s + 1024]
                o = nbuf[: x.shape[0]]
                np.matmul(x, qt, out=o)
                o += bu[s : s + 1024, None]
                o += bi

        rounds.add(score, "numpy", numpy_mf, n_users)
        return
    from recsys_export.export import DN_BLOCK_USERS

    slow, hidden = ctx.slow_users, ctx.cfg["hidden"]
    mbuf = np.empty((DN_BLOCK_USERS, hidden, dn["width"]), dtype=np.float32)
    nbuf = np.empty((DN_BLOCK_USERS, n_items), dtype=np.float32)

    def numpy_dn() -> None:
        for s in range(0, slow, DN_BLOCK_USERS):
            a = dn["a_all"][s : min(s + DN_BLOCK_USERS, slow)]
            b = a.shape[0]
            for nc, dd, t0 in dn["tiles"]:
                mm = mbuf[:b, :, : dd.size]
                np.maximum(a[:, :, None], nc[None], out=mm)
                y = np.matmul(dn["w2_row"], mm)[:, 0, :]
                np.add(y, dd, out=nbuf[:b, t0 : t0 + dd.size])

    rounds.add(score, "numpy", numpy_dn, slow)


def _torch_rows(ctx: _Ctx, rounds: Rounds, score: dict) -> None:
    import torch

    n_items, hidden = ctx.cfg["items"], ctx.cfg["hidden"]
    t_block = 1024 if ctx.kind == "mf" else max(1, (32 << 20) // (n_items * hidden * 4))
    t_users = ctx.cfg["users"] if ctx.kind == "mf" else ctx.slow_users

    def rows_of(fn: Callable[[Any], Any]) -> Callable[[], None]:
        def run_() -> None:
            with torch.no_grad():
                for s in range(0, t_users, t_block):
                    fn(torch.arange(s, min(s + t_block, t_users), dtype=torch.int64))

        return run_

    if "torch" in ctx.skip:
        score["torch_eager"] = {"skipped": "--skip torch"}
    else:
        rounds.add(score, "torch_eager", rows_of(ctx.model.score_all), t_users)
    if "torchscript" in ctx.skip:
        score["torchscript"] = {"skipped": "--skip torchscript"}
    else:
        import warnings

        warnings.filterwarnings("ignore", category=DeprecationWarning)
        scripted = torch.jit.load(str(ctx.bundle / "torchscript" / "model.pt"))
        rounds.add(score, "torchscript", rows_of(scripted.score_all), t_users)
    if "pt2" in ctx.skip:
        score["pt2"] = {"skipped": "--skip pt2"}
    else:
        prog = torch.export.load(str(ctx.bundle / "pt2" / "score_all.pt2")).module()
        rounds.add(score, "pt2", rows_of(lambda u: prog(u)), t_users)


def _runtime_all(r: Any, users: int) -> Callable[[], None]:
    idx = np.arange(users, dtype=np.int64)

    def run_() -> None:
        for _ in r.iter_score_all(idx, progress=False):  # default chunks, as users get
            pass

    return run_


def _score_section(ctx: _Ctx, rounds: Rounds) -> tuple[dict, float]:
    from recsys_export.runtime import Recommender

    score: dict[str, Any] = {}
    n_users = ctx.cfg["users"]
    dn = None
    if ctx.kind == "mf":
        _mf_ceiling(ctx, rounds, score)
    else:
        dn = _dn_ceiling(ctx, rounds, score)
    _numpy_row(ctx, rounds, score, dn)
    _torch_rows(ctx, rounds, score)
    rounds.add(score, "runtime", _runtime_all(ctx.rec, n_users), n_users)
    if ctx.kind == "densenet":
        # the other way to use the cores: one caller, onnxruntime's intra-op threads
        threads = ctx.cfg["threads"]
        intra = Recommender.load(ctx.bundle, intra_op_threads=threads, python_threads=False)
        rounds.add(score, "runtime_intra_op", _runtime_all(intra, n_users), n_users)
    for precision, r in ctx.variants.items():
        rounds.add(score, f"runtime_{precision}", _runtime_all(r, n_users), n_users)
    if "fallback" in ctx.skip:
        score["runtime_fallback"] = {"skipped": "--skip fallback"}
    else:
        slow = ctx.slow_users
        rounds.add(score, "runtime_fallback", _runtime_all(ctx.fallback, slow), slow)
    return score, rounds.flush()


# --------------------------------------------------------------------------- recommend
def _today(rec: Any) -> Any:
    """The same bundle on today's top-k path (scores masked in numpy, the TopK kernel)."""
    from recsys_export.runtime import Recommender

    r = Recommender.load(rec.bundle.root, intra_op_threads=rec._engine.threads, verify=False)
    r._engine._groups = None  # the threshold path off: what the bundles before it ran
    return r


def _recommend_section(ctx: _Ctx, rounds: Rounds, ceiling: float) -> dict:
    from recsys_export.topk import mask_pairs, topk

    recs: dict[str, Any] = {}
    n_users, k = ctx.cfg["users"], ctx.cfg["k"]
    all_users = np.arange(n_users, dtype=np.int64)
    ctx.rec.seen_csr()
    rounds.add(recs, "runtime", lambda: ctx.rec.recommend(all_users, k, by_index=True), n_users)
    if getattr(ctx.rec._engine, "_groups", None) is not None:
        today = _today(ctx.rec)
        today.seen_csr()
        rounds.add(
            recs,
            "runtime_topk_kernel",
            lambda: today.recommend(all_users, k, by_index=True),
            n_users,
        )
        ctx.notes.append(
            "recommend_all runtime = the threshold top-k over the score_groups kernel; "
            "runtime_topk_kernel = scores masked in numpy + the TopK kernel (the same lists)"
        )
    for precision, r in ctx.variants.items():
        r.seen_csr()
        rounds.add(
            recs,
            f"runtime_{precision}",
            lambda r=r: r.recommend(all_users, k, by_index=True),
            n_users,
        )
    if "fallback" in ctx.skip:
        recs["runtime_fallback"] = {"skipped": "--skip fallback"}
    else:
        fu = all_users[: ctx.slow_users]
        ctx.fallback.seen_csr()
        rounds.add(
            recs, "runtime_fallback", lambda: ctx.fallback.recommend(fu, k, by_index=True), fu.size
        )
    if "numpy" in ctx.skip:
        recs["numpy"] = {"skipped": "--skip numpy"}
    else:
        indptr, seen = ctx.rec.seen_csr()
        slow = ctx.cfg["slow_users"]
        nu = min(n_users, slow) if slow else n_users

        def numpy_topk() -> None:
            for idx, sc in ctx.rec.iter_score_all(all_users[:nu], chunk_size=256, progress=False):
                lo, hi = indptr[idx[0]], indptr[idx[-1] + 1]
                rows = np.repeat(np.arange(idx.size), np.diff(indptr[idx[0] : idx[-1] + 2]))
                mask_pairs(sc, rows, seen[lo:hi])
                topk(sc, k)

        rounds.add(recs, "numpy", numpy_topk, nu)
        ctx.notes.append("recommend_all numpy = runtime score_all + numpy mask + argpartition")
    rounds.flush(ceiling)
    return recs


# --------------------------------------------------------------------------- single user
def _implicit_row(ctx: _Ctx, k: int) -> Callable[[int], Any] | str:
    """implicit's ``recommend`` on the same (augmented) MF factors, or why not."""
    try:
        import scipy.sparse as sp
        from implicit.cpu.als import AlternatingLeastSquares
    except ImportError as exc:
        return f"implicit is not installed ({exc.name}); pip install implicit"
    from recsys_export.export.kernels import mf_augmented

    pa, qa = mf_augmented(ctx.module)
    als = AlternatingLeastSquares(factors=pa.shape[1], random_state=0)
    als.user_factors, als.item_factors = np.ascontiguousarray(pa), np.ascontiguousarray(qa)
    indptr, seen = ctx.rec.seen_csr()
    ones = np.ones(seen.size, dtype=np.float32)
    user_items = sp.csr_matrix((ones, seen, indptr), shape=(pa.shape[0], qa.shape[0]))
    return lambda u: als.recommend(u, user_items[u], N=k, filter_already_liked_items=True)


def _single_section(ctx: _Ctx) -> dict:
    import torch

    single: dict[str, Any] = {}
    k, n_users = ctx.cfg["k"], ctx.cfg["users"]
    rng = np.random.default_rng(1)
    picks = rng.integers(0, n_users, max(2000, ctx.cfg["calls"])).tolist()
    rec = ctx.rec
    if ctx.kind == "mf":
        from recsys_export.export.kernels import mf_augmented

        pa, qa = mf_augmented(ctx.module)
        bare = session(mf_one_topk(np.ascontiguousarray(qa.T)), ctx.cfg["threads"])
        k1 = np.array([k], dtype=np.int64)
        single["ceiling"] = latency(lambda u: bare.run(None, {"x": pa[u : u + 1], "k": k1}), picks)
    single["runtime"] = latency(lambda u: rec.recommend(u, k, by_index=True), picks)
    raw = rec.user_map.raw_ids
    single["runtime_raw_ids"] = latency(lambda u: rec.recommend(raw[u], k), picks)
    for precision, r in ctx.variants.items():
        single[f"runtime_{precision}"] = latency(
            lambda u, r=r: r.recommend(u, k, by_index=True), picks
        )
    if "fallback" in ctx.skip:
        single["runtime_fallback"] = {"skipped": "--skip fallback"}
    else:
        fb = ctx.fallback
        single["runtime_fallback"] = latency(lambda u: fb.recommend(u, k, by_index=True), picks)
    if "torch" in ctx.skip:
        single["torch_eager"] = {"skipped": "--skip torch"}
    else:
        indptr, seen = rec.seen_csr()

        def eager_one(u: int) -> None:
            ex = torch.from_numpy(seen[indptr[u] : indptr[u + 1]])
            with torch.no_grad():
                ctx.model.recommend(
                    torch.tensor([u]), k, torch.zeros(ex.numel(), dtype=torch.int64), ex
                )

        single["torch_eager"] = latency(eager_one, picks)
    if ctx.kind == "mf":
        fn = _implicit_row(ctx, k) if "implicit" not in ctx.skip else "--skip implicit"
        if callable(fn):
            from threadpoolctl import threadpool_limits  # implicit's dependency

            with threadpool_limits(1, "blas"):  # as implicit asks (its pool stalls otherwise)
                single["implicit"] = latency(fn, picks)
        else:
            single["implicit"] = {"skipped": fn}
    ceiling = single.get("ceiling", {}).get("p50_us")
    for values in single.values():
        if ceiling and "p50_us" in values:
            values["ratio_to_ceiling"] = values["p50_us"] / ceiling
    return single


# --------------------------------------------------------------------------- one model
def bench_model(kind: str, cfg: dict[str, Any], built: dict[str, Any]) -> dict[str, Any]:
    """Every row of one model (``built``: the synthetic model and its exported bundle)."""
    import torch

    from recsys_export.export.frozen import inference_module
    from recsys_export.runtime import Recommender

    threads = cfg["threads"]
    torch.set_num_threads(threads)
    bundle = built["bundle"]
    slow_users = cfg["users"]
    if kind == "densenet" and cfg["slow_users"]:
        slow_users = min(cfg["users"], cfg["slow_users"])
    rec = Recommender.load(bundle, intra_op_threads=threads)
    variants = {
        p: Recommender.load(bundle, intra_op_threads=threads, precision=p)
        for p in sorted(rec.bundle.spec.variants)
    }
    ctx = _Ctx(
        kind=kind,
        cfg=cfg,
        model=built["model"],
        module=inference_module(built["model"]),
        bundle=bundle,
        rec=rec,
        fallback=Recommender.load(bundle, intra_op_threads=threads, fast_paths=False),
        variants=variants,
        notes=[],
        slow_users=slow_users,
    )
    flops = 2 * (cfg["factors"] + 2) if kind == "mf" else 3 * cfg["hidden"]
    rounds = Rounds(cfg["items"], flops, cfg["repeat"])
    score, ceiling = _score_section(ctx, rounds)
    recs = _recommend_section(ctx, rounds, ceiling)
    if variants:
        ctx.notes.append(
            "runtime_<precision>: the bundle's approximate variants (export --precision; "
            "int8 recommend re-ranks its candidates exactly); their ranking cost is "
            "benchmarks/precision_bench.py's"
        )
    return {
        "flops_per_pair": flops,
        "score_all": score,
        "recommend_all": recs,
        "single_user": _single_section(ctx),
        "notes": ctx.notes,
    }
