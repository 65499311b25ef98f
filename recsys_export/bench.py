"""Side-by-side benchmark of every way to serve the models, in one process.

``recsys-export bench`` (or ``python benchmarks/bench.py``) builds a synthetic MF and a
synthetic DenseNet of the chosen size (``--users --items --factors --hidden``, or
``--preset full`` = 100k users x 20k items, 64 factors, 128 hidden), exports each to a
temporary bundle (every format, ``.pt2`` included; parity check off) and times, for each
model:

* ``score_all`` of every user (rows below), in blocks, outputs preallocated where the
  API allows:

  - ``ceiling``: a bare onnxruntime graph of the same math built with ``onnx.helper``
    (MF: ``MatMul`` of ``[B, f] x [f, N]``, best of a few block sizes; DenseNet: the
    ``Max`` + ``MatMul`` item tiles of the runtime's kernel in one graph on precomputed
    user halves, 8 users per call, the faster of Python threads and intra-op threads).
    Ratios are to this row.
  - ``numpy``: MF ``P @ Q^T + bu + bi`` into a preallocated block; DenseNet the same
    max-rewrite tiles in numpy.
  - ``torch_eager``: the trained model's ``score_all``; ``torchscript`` and ``pt2``:
    the bundle's TorchScript module and ``torch.export`` program.
  - ``runtime``: :class:`recsys_export.runtime.Recommender` (fast-path kernels; for
    DenseNet one Python thread per core, and ``runtime_intra_op``: one caller thread
    with onnxruntime's intra-op threads instead), and ``runtime_fallback``: the same
    bundle on its entry-point graphs only (what older bundles get).

* ``recommend_all``: top-``k`` (default 10) of every user with ``--seen`` (default 50)
  random seen items excluded: ``runtime``, ``runtime_fallback`` and ``numpy`` (score,
  mask, ``argpartition``). Ratios are to the score_all ceiling.
* ``single_user``: ``recommend(user, k)`` latency, p50/p99 over ``--calls`` (>= 2000)
  random users: ``runtime`` by index and by raw id, ``runtime_fallback``, ``torch_eager``.
* GPU rows, when torch sees a CUDA device: ``gpu_torch_engine`` (the torch engine,
  :class:`~recsys_export.torch_engine.TorchEngine`, on ``cuda``: score_all of every
  user; in ``recommend_all`` top-k with exclusions) next to ``gpu_ceiling`` (a bare
  ``torch.matmul``, + ``torch.topk``, of the same shape in the same blocks), timed in
  the same run (:mod:`recsys_export.torch_bench`); their ratios are to ``gpu_ceiling``.
  Without CUDA they are left out with a one-line message, and the JSON's ``gpu`` says
  why.
* export time per format, process peak RSS (``ru_maxrss``, torch included), and with
  ``--train DATA`` the training time and validation RMSE of both models (80/20 split).

Slow rows can be measured on the first ``--slow-users`` users only (the row records how
many users it covered; per-pair numbers stay comparable): DenseNet's numpy, torch and
fallback rows (the eager model builds a ``[B, N, H]`` intermediate) and the numpy
recommend-all row of both models. ``--skip torch,torchscript,pt2,numpy,fallback,gpu`` drops rows.
Every row is run ``--repeat`` times (median reported, min/max kept), in rounds: after a
warm-up, each round runs every row of a section once, so a slow drift of the machine's
speed affects the rows and the ceiling alike. The machine may be
shared: the JSON records the load average before and after.

FLOPs per (user, item) pair: MF ``2 * (factors + 2)`` (the augmented dot product);
DenseNet ``3 * hidden`` (max, multiply, add of the rewritten second layer).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from recsys_export.bench_report import SCHEMA, format_table, plot

__all__ = ["SCHEMA", "add_arguments", "format_table", "main", "plot", "run"]

PRESETS = {
    "tiny": {"users": 300, "items": 400, "factors": 16, "hidden": 32},
    "full": {"users": 100_000, "items": 20_000, "factors": 64, "hidden": 128},
}
ROW_GROUPS = ("torch", "torchscript", "pt2", "numpy", "fallback", "gpu")
#: Device of the GPU rows (tests point it at the CPU to run that code path).
_GPU_DEVICE = "cuda"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``recsys-export bench``."""
    parser.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default="tiny",
        help="sizes: tiny (seconds) or full (100k x 20k, 64 factors, 128 hidden)",
    )
    parser.add_argument("--users", type=int, default=None, help="override the preset")
    parser.add_argument("--items", type=int, default=None, help="override the preset")
    parser.add_argument("--factors", type=int, default=None, help="override the preset")
    parser.add_argument("--hidden", type=int, default=None, help="DenseNet hidden units")
    parser.add_argument("--models", default="mf,densenet", help="comma list: mf,densenet")
    parser.add_argument("--seen", type=int, default=50, help="excluded items per user")
    parser.add_argument("--k", type=int, default=10, help="top-k size")
    parser.add_argument("--repeat", type=int, default=3, help="runs per row (median)")
    parser.add_argument("--calls", type=int, default=2000, help="single-user calls")
    parser.add_argument(
        "--slow-users",
        type=int,
        default=None,
        help="measure torch/numpy/fallback DenseNet rows on this many users (default: "
        "all for tiny, 2000 for full)",
    )
    parser.add_argument(
        "--skip", default="", help=f"comma list of row groups to skip: {','.join(ROW_GROUPS)}"
    )
    parser.add_argument("--threads", type=int, default=None, help="threads (default: nproc)")
    parser.add_argument("--train", default=None, metavar="DATA", help="also train on DATA")
    parser.add_argument("--epochs", type=int, default=5, help="epochs with --train")
    parser.add_argument(
        "--json", type=Path, default=None, help="JSON report (default .bench/bench-<preset>.json)"
    )
    parser.add_argument("--plot", type=Path, default=None, help="PNG chart (needs matplotlib)")


def _loadavg() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:  # pragma: no cover - not on Linux
        return []


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _timed(fn: Callable[[], Any], repeat: int) -> list[float]:
    fn_runs = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        fn_runs.append(time.perf_counter() - t0)
    return fn_runs


def _row(runs: list[float], users: int, n_items: int, flops: int) -> dict[str, Any]:
    med = float(np.median(runs))
    pairs = users * n_items
    return {
        "users": users,
        "runs_s": [round(r, 6) for r in runs],
        "median_s": med,
        "min_s": float(min(runs)),
        "max_s": float(max(runs)),
        "pairs_per_s": pairs / med,
        "ns_per_pair": med / pairs * 1e9,
        "gflops": flops * pairs / med / 1e9,
    }


# --------------------------------------------------------------------------- models
def _synthetic(kind: str, cfg: dict[str, Any], seen: int, work: Path) -> dict[str, Any]:
    """Build a synthetic model and export it (every format, no parity pass)."""
    from recsys_export.export import export_bundle
    from recsys_export.synthetic_models import synthetic_checkpoint

    n_items = cfg["items"]
    per_user = min(seen, max(0, n_items - cfg["k"]))
    ck = synthetic_checkpoint(
        kind,
        cfg["users"],
        n_items,
        factors=cfg["factors"],
        hidden=cfg.get("hidden", 16),
        seen_per_user=per_user,
    )
    model = ck.model
    dest = work / kind
    t0 = time.perf_counter()
    # pt2 is opt-in: asked for, as the pt2 rows and gpu_check.py's torch engine use it
    manifest = export_bundle(ck, dest, formats="all", verify=False)
    total = time.perf_counter() - t0
    return {
        "model": model,
        "bundle": dest,
        "export_seconds": manifest["timings"]["export_seconds"],
        "export_total_seconds": total,
    }


def _train(path: str, epochs: int, factors: int, hidden: int) -> dict[str, Any]:
    from recsys_export import data
    from recsys_export.train import TrainConfig, fit

    ratings = data.read_ratings(path)
    train, valid = data.random_split(ratings, 0.2, seed=0)
    out = {}
    for kind in ("mf", "densenet"):
        cfg = TrainConfig(model=kind, n_factors=factors, hidden=hidden, epochs=epochs)
        t0 = time.perf_counter()
        _, history = fit(train, valid, cfg, progress=False)
        out[kind] = {
            "seconds": time.perf_counter() - t0,
            "rmse": float(min(history.valid_rmse)) if history.valid_rmse else None,
            "epochs": len(history.valid_rmse),
            "data": str(path),
        }
    return out


# --------------------------------------------------------------------------- ceilings
def _session(model: Any, threads: int) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def _mf_bare(q: np.ndarray, threads: int) -> Any:
    from onnx import TensorProto, helper, numpy_helper

    f, n = q.shape[1], q.shape[0]
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "qt"], ["y"])],
        "bare",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", f])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", n])],
        [numpy_helper.from_array(np.ascontiguousarray(q.T), "qt")],
    )
    return _session(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)]), threads)


def _dn_bare(w2_row: np.ndarray, neg_c_t: np.ndarray, offset: np.ndarray, threads: int) -> Any:
    """DenseNet ceiling: ``a[B, H] -> scores[B, N]`` over the runtime's item tiles."""
    from onnx import TensorProto, helper, numpy_helper

    from recsys_export.export import DN_BLOCK_USERS, _dn_item_tiles, dn_tile_width

    f32 = TensorProto.FLOAT
    hidden, n_items = neg_c_t.shape
    tiles, tile_inits = _dn_item_tiles(neg_c_t, dn_tile_width(hidden, n_items, DN_BLOCK_USERS))
    graph = helper.make_graph(
        [
            helper.make_node("Unsqueeze", ["a", "axis2"], ["a3"]),
            *tiles,
            helper.make_node("Add", ["y", "item_offset"], ["out"]),
        ],
        "bare_tiles",
        [helper.make_tensor_value_info("a", f32, ["b", hidden])],
        [helper.make_tensor_value_info("out", f32, ["b", n_items])],
        [
            numpy_helper.from_array(w2_row, "w2_row"),
            numpy_helper.from_array(offset, "item_offset"),
            numpy_helper.from_array(np.array([2], dtype=np.int64), "axis2"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"),
            *tile_inits,
        ],
    )
    return _session(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)]), threads)


def _parallel(starts: list[int], threads: int, work: Callable[[list[int]], None]) -> None:
    if threads <= 1:
        work(starts)
        return
    pool = [threading.Thread(target=work, args=(starts[i::threads],)) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()


# --------------------------------------------------------------------------- one model
def _bench_model(kind: str, cfg: dict[str, Any], args: argparse.Namespace, work: Path) -> dict:
    import torch

    from recsys_export.export.frozen import inference_module
    from recsys_export.runtime import Recommender
    from recsys_export.topk import mask_pairs, topk

    threads = cfg["threads"]
    torch.set_num_threads(threads)
    skip = set(cfg["skip"])
    built = _synthetic(kind, cfg, args.seen, work)
    model, bundle = built["model"], built["bundle"]
    module = inference_module(model)
    n_users, n_items, k, repeat = cfg["users"], cfg["items"], cfg["k"], cfg["repeat"]
    hidden = cfg["hidden"]
    flops = 2 * (cfg["factors"] + 2) if kind == "mf" else 3 * hidden
    slow_users = n_users
    if kind == "densenet" and cfg["slow_users"]:
        slow_users = min(n_users, cfg["slow_users"])
    rec = Recommender.load(bundle, intra_op_threads=threads)
    fallback = Recommender.load(bundle, intra_op_threads=threads, fast_paths=False)
    notes: list[str] = []
    all_users = np.arange(n_users, dtype=np.int64)
    score: dict[str, Any] = {}

    pending: list[tuple[dict, str, Callable[[], Any], int]] = []

    def add(table: dict, name: str, fn: Callable[[], Any], users: int) -> None:
        table[name] = {}  # keeps the row order; filled by flush()
        pending.append((table, name, fn, users))

    def flush() -> None:
        # One warm-up round (sessions, caches; a long first run, > 2 s, counts as a run),
        # then rounds in which every pending row runs once: a drift of the machine's
        # speed over minutes hits every row of the section alike, not the later ones.
        runs = []
        for _table, _name, fn, _users in pending:
            first = _timed(fn, 1)
            runs.append(first if first[0] > 2.0 else [])
        for _ in range(max(1, repeat)):
            for (_table, _name, fn, _users), got in zip(pending, runs):
                if len(got) < max(1, repeat):
                    got.extend(_timed(fn, 1))
        for (table, name, _fn, users), got in zip(pending, runs):
            table[name] = _row(got, users, n_items, flops)
        pending.clear()

    # ---- ceiling
    if kind == "mf":
        p = model.user_factors.weight.detach().numpy().copy()
        q = model.item_factors.weight.detach().numpy().copy()
        bare = _mf_bare(q, threads)
        bbuf = np.empty((1024, n_items), dtype=np.float32)

        def run_bare(block: int) -> None:
            for s in range(0, n_users, block):
                x = p[s : s + block]
                b = bare.io_binding()
                b.bind_cpu_input("x", x)
                b.bind_output("y", "cpu", 0, np.float32, [x.shape[0], n_items], bbuf.ctypes.data)
                bare.run_with_iobinding(b)

        tries = {b: _timed(lambda b=b: run_bare(b), 1)[0] for b in (16, 64, 256, 1024)}
        best_block = min(tries, key=tries.get)
        notes.append(f"ceiling block {best_block} (tried {sorted(tries)})")
        add(score, "ceiling", lambda: run_bare(best_block), n_users)
    else:
        from recsys_export.export import DN_BLOCK_USERS, dn_tile_width

        a_all = module.user_factors.numpy() @ module.w1_user_t.numpy()  # precomputed user half
        neg = module.neg_c_t.numpy()
        off = module.item_offset.numpy()
        w2_row = module.w2_row.numpy()
        width = dn_tile_width(hidden, n_items, DN_BLOCK_USERS)
        tiles = [
            (np.ascontiguousarray(neg[:, t : t + width]), off[t : t + width].copy(), t)
            for t in range(0, n_items, width)
        ]
        starts = list(range(0, n_users, DN_BLOCK_USERS))

        def run_bare_dn(py_threads: bool) -> None:
            # the best of both ways to use the cores: Python threads on single-threaded
            # calls, or one caller and onnxruntime's intra-op threads
            sess = bare_1 if py_threads else bare_n

            def work_(my_starts: list[int]) -> None:
                out = np.empty((DN_BLOCK_USERS, n_items), dtype=np.float32)  # reused
                for s in my_starts:
                    a = a_all[s : s + DN_BLOCK_USERS]
                    b = sess.io_binding()
                    b.bind_cpu_input("a", a)
                    dst = out[: a.shape[0]]
                    b.bind_output("out", "cpu", 0, np.float32, list(dst.shape), dst.ctypes.data)
                    sess.run_with_iobinding(b)

            _parallel(starts, threads if py_threads else 1, work_)

        bare_1 = _dn_bare(w2_row, neg, off, 1)
        bare_n = _dn_bare(w2_row, neg, off, threads)
        tries = {m: _timed(lambda m=m: run_bare_dn(m), 1)[0] for m in (True, False)}
        best_mode = min(tries, key=tries.get)
        notes.append(
            "ceiling: "
            + ("Python threads" if best_mode else "onnxruntime intra-op threads")
            + f" (first run {tries[True]:.2f} s with Python threads, {tries[False]:.2f} s with"
            " intra-op threads)"
        )
        add(score, "ceiling", lambda: run_bare_dn(best_mode), n_users)

    # ---- numpy
    if "numpy" in skip:
        score["numpy"] = {"skipped": "--skip numpy"}
    elif kind == "mf":
        bu = model.user_bias.weight.detach().numpy().reshape(-1)
        bi = (model.item_bias.weight.detach().reshape(-1) + model.global_mean).numpy()
        qt = np.ascontiguousarray(q.T)
        nbuf = np.empty((1024, n_items), dtype=np.float32)

        def numpy_mf() -> None:
            for s in range(0, n_users, 1024):
                x = p[s : s + 1024]
                o = nbuf[: x.shape[0]]
                np.matmul(x, qt, out=o)
                o += bu[s : s + 1024, None]
                o += bi

        add(score, "numpy", numpy_mf, n_users)
    else:
        mbuf = np.empty((DN_BLOCK_USERS, hidden, width), dtype=np.float32)
        nbuf = np.empty((DN_BLOCK_USERS, n_items), dtype=np.float32)

        def numpy_dn() -> None:
            for s in range(0, slow_users, DN_BLOCK_USERS):
                a = a_all[s : min(s + DN_BLOCK_USERS, slow_users)]
                b = a.shape[0]
                for nc, dd, t0 in tiles:
                    m = mbuf[:b, :, : dd.size]
                    np.maximum(a[:, :, None], nc[None], out=m)
                    y = np.matmul(w2_row, m)[:, 0, :]
                    np.add(y, dd, out=nbuf[:b, t0 : t0 + dd.size])

        add(score, "numpy", numpy_dn, slow_users)

    # ---- torch rows
    t_block = 1024 if kind == "mf" else max(1, (32 << 20) // (n_items * hidden * 4))
    t_users = n_users if kind == "mf" else slow_users

    def torch_rows(fn: Callable[[Any], Any]) -> Callable[[], None]:
        def run_() -> None:
            with torch.no_grad():
                for s in range(0, t_users, t_block):
                    fn(torch.arange(s, min(s + t_block, t_users), dtype=torch.int64))

        return run_

    if "torch" in skip:
        score["torch_eager"] = {"skipped": "--skip torch"}
    else:
        add(score, "torch_eager", torch_rows(model.score_all), t_users)
    if "torchscript" in skip:
        score["torchscript"] = {"skipped": "--skip torchscript"}
    else:
        import warnings

        warnings.filterwarnings("ignore", category=DeprecationWarning)
        scripted = torch.jit.load(str(bundle / "torchscript" / "model.pt"))
        add(score, "torchscript", torch_rows(scripted.score_all), t_users)
    if "pt2" in skip:
        score["pt2"] = {"skipped": "--skip pt2"}
    else:
        prog = torch.export.load(str(bundle / "pt2" / "score_all.pt2")).module()
        add(score, "pt2", torch_rows(lambda u: prog(u)), t_users)

    # ---- runtime
    def runtime_all(r: Any, users: int) -> Callable[[], None]:
        idx = all_users[:users]

        def run_() -> None:
            for _ in r.iter_score_all(idx, progress=False):  # default chunks, as users get
                pass

        return run_

    add(score, "runtime", runtime_all(rec, n_users), n_users)
    if kind == "densenet":
        # the other way to use the cores: one caller, onnxruntime's intra-op threads
        intra = Recommender.load(bundle, intra_op_threads=threads, python_threads=False)
        add(score, "runtime_intra_op", runtime_all(intra, n_users), n_users)
    if "fallback" in skip:
        score["runtime_fallback"] = {"skipped": "--skip fallback"}
    else:
        add(score, "runtime_fallback", runtime_all(fallback, slow_users), slow_users)
    flush()
    ceiling = score["ceiling"]["ns_per_pair"]
    for row in score.values():
        if "ns_per_pair" in row:
            row["ratio_to_ceiling"] = row["ns_per_pair"] / ceiling

    # ---- recommend all
    recs: dict[str, Any] = {}
    rec.seen_csr()
    fallback.seen_csr()
    add(recs, "runtime", lambda: rec.recommend(all_users, k, by_index=True), n_users)
    if "fallback" in skip:
        recs["runtime_fallback"] = {"skipped": "--skip fallback"}
    else:
        fu = all_users[:slow_users]
        add(recs, "runtime_fallback", lambda: fallback.recommend(fu, k, by_index=True), slow_users)
    if "numpy" in skip:
        recs["numpy"] = {"skipped": "--skip numpy"}
    else:
        indptr, seen = rec.seen_csr()
        nu = min(n_users, cfg["slow_users"]) if cfg["slow_users"] else n_users

        def numpy_topk() -> None:
            for idx, sc in rec.iter_score_all(all_users[:nu], chunk_size=256, progress=False):
                lo, hi = indptr[idx[0]], indptr[idx[-1] + 1]
                rows = np.repeat(np.arange(idx.size), np.diff(indptr[idx[0] : idx[-1] + 2]))
                mask_pairs(sc, rows, seen[lo:hi])
                topk(sc, k)

        add(recs, "numpy", numpy_topk, nu)
        notes.append("recommend_all numpy = runtime score_all + numpy mask + argpartition")
    flush()
    for row in recs.values():
        if "ns_per_pair" in row:
            row["ratio_to_ceiling"] = row["ns_per_pair"] / ceiling

    # ---- GPU rows: a CUDA device is visible (run() checked, else cfg says why not)
    if cfg.get("gpu_skipped") is None:
        _gpu_rows(kind, cfg, bundle, score, recs, flops)
        notes.append(
            "gpu_* rows: the torch engine on the device (score_all; top-k with exclusions) "
            "and a bare torch.matmul (+ topk) of width "
            f"{_gpu_width(kind, cfg)}; their x ceil is to gpu_ceiling"
        )

    # ---- single user
    single: dict[str, Any] = {}
    rng = np.random.default_rng(1)
    picks = rng.integers(0, n_users, max(2000, cfg["calls"])).tolist()

    def latency(fn: Callable[[int], Any], n: int | None = None) -> dict[str, Any]:
        calls = picks if n is None else picks[:n]
        for u in calls[:50]:
            fn(u)
        lat = np.empty(len(calls))
        for j, u in enumerate(calls):
            t0 = time.perf_counter()
            fn(u)
            lat[j] = time.perf_counter() - t0
        return {
            "p50_us": float(np.percentile(lat, 50) * 1e6),
            "p99_us": float(np.percentile(lat, 99) * 1e6),
            "mean_us": float(lat.mean() * 1e6),
            "calls": len(calls),
        }

    single["runtime"] = latency(lambda u: rec.recommend(u, k, by_index=True))
    raw = rec.user_map.raw_ids
    single["runtime_raw_ids"] = latency(lambda u: rec.recommend(raw[u], k))
    if "fallback" in skip:
        single["runtime_fallback"] = {"skipped": "--skip fallback"}
    else:
        single["runtime_fallback"] = latency(lambda u: fallback.recommend(u, k, by_index=True))
    if "torch" in skip:
        single["torch_eager"] = {"skipped": "--skip torch"}
    else:
        indptr, seen = rec.seen_csr()

        def eager_one(u: int) -> None:
            ex = torch.from_numpy(seen[indptr[u] : indptr[u + 1]])
            with torch.no_grad():
                model.recommend(
                    torch.tensor([u]), k, torch.zeros(ex.numel(), dtype=torch.int64), ex
                )

        single["torch_eager"] = latency(eager_one)

    return {
        "sizes": {
            "users": n_users,
            "items": n_items,
            "factors": cfg["factors"],
            **({"hidden": hidden} if kind == "densenet" else {}),
            "pairs": n_users * n_items,
        },
        "flops_per_pair": flops,
        "export_seconds": built["export_seconds"],
        "export_total_seconds": built["export_total_seconds"],
        "train": None,
        "peak_rss_mib": _rss_mib(),
        "score_all": score,
        "recommend_all": recs,
        "single_user": single,
        "notes": notes,
    }


def _gpu_width(kind: str, cfg: dict[str, Any]) -> int:
    """Inner dimension of the GPU ceiling's matmul: MF's augmented factors, DenseNet's
    hidden layer (a lower bound on its work)."""
    return int(cfg["factors"]) + 2 if kind == "mf" else int(cfg["hidden"])


def _gpu_rows(
    kind: str,
    cfg: dict[str, Any],
    bundle: Path,
    score: dict[str, Any],
    recs: dict[str, Any],
    flops: int,
) -> None:
    """Add ``gpu_ceiling`` and ``gpu_torch_engine`` rows to the score_all and recommend_all
    sections (:func:`recsys_export.torch_bench.device_timings` on :data:`_GPU_DEVICE`)."""
    from recsys_export.torch_bench import device_timings

    t = device_timings(
        bundle, _GPU_DEVICE, k=cfg["k"], width=_gpu_width(kind, cfg), repeat=cfg["repeat"]
    )
    eng = t["engine"]
    for table, name in ((score, "score_all"), (recs, "topk")):
        ceil = _row(t[f"ceiling_{name}"], eng.n_users, eng.n_items, flops)
        ours = _row(t[f"engine_{name}"], eng.n_users, eng.n_items, flops)
        ceil["ratio_to_ceiling"] = 1.0
        ours["ratio_to_ceiling"] = ours["ns_per_pair"] / ceil["ns_per_pair"]
        ours["device"] = ceil["device"] = str(eng.device)
        table["gpu_ceiling"] = ceil
        table["gpu_torch_engine"] = ours


def _gpu_status(skip: list[str]) -> dict[str, Any]:
    """``{"device", "name"}`` of the GPU rows' device, or ``{"skipped": why}``."""
    if "gpu" in skip:
        return {"skipped": "--skip gpu"}
    try:
        from recsys_export.torch_bench import cuda_unavailable_reason
    except Exception as exc:  # torch without a working torch engine
        return {"skipped": f"the torch engine does not import ({exc})"}
    if _GPU_DEVICE == "cuda":
        why = cuda_unavailable_reason()
        if why is not None:
            return {"skipped": why}
        import torch

        return {"device": "cuda", "name": torch.cuda.get_device_name(0)}
    return {"device": _GPU_DEVICE, "name": _GPU_DEVICE}


def run(args: argparse.Namespace) -> int:
    """Run the benchmark described by ``args`` (see :func:`add_arguments`)."""
    import onnx
    import onnxruntime
    import torch

    sizes = dict(PRESETS[args.preset])
    for key in ("users", "items", "factors", "hidden"):
        if getattr(args, key) is not None:
            sizes[key] = int(getattr(args, key))
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    skip = [s.strip() for s in args.skip.split(",") if s.strip()]
    bad = [m for m in models if m not in ("mf", "densenet")] + [
        s for s in skip if s not in ROW_GROUPS
    ]
    if bad or not models or min(sizes.values()) < 1 or args.k < 1 or args.k > sizes["items"]:
        print(f"recsys-export bench: bad options {bad or sizes}", file=sys.stderr)
        return 2
    slow = args.slow_users
    if slow is None:
        slow = 2000 if args.preset == "full" else 0
    gpu = _gpu_status(skip)
    if "skipped" in gpu:
        print(f"recsys-export bench: GPU rows skipped: {gpu['skipped']}", file=sys.stderr)
    cfg = {
        **sizes,
        "gpu_skipped": gpu.get("skipped"),
        "k": args.k,
        "repeat": max(1, args.repeat),
        "calls": args.calls,
        "skip": skip,
        "slow_users": slow,
        "threads": args.threads or os.cpu_count() or 1,
    }
    report: dict[str, Any] = {
        "schema_version": 1,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {
            "nproc": os.cpu_count(),
            "loadavg_start": _loadavg(),
            "python": platform.python_version(),
            "versions": {
                "numpy": np.__version__,
                "onnxruntime": onnxruntime.__version__,
                "torch": torch.__version__,
                "onnx": onnx.__version__,
            },
        },
        "config": {**cfg, "preset": args.preset, "seen": args.seen, "train": args.train},
        "gpu": gpu,
        "models": {},
    }
    trained = (
        _train(args.train, args.epochs, sizes["factors"], sizes["hidden"]) if args.train else {}
    )
    with tempfile.TemporaryDirectory(prefix="recsys_bench_") as tmp:
        for kind in models:
            res = _bench_model(kind, cfg, args, Path(tmp))
            res["train"] = trained.get(kind)
            report["models"][kind] = res
    report["machine"]["loadavg_end"] = _loadavg()
    print(format_table(report))
    json_path = args.json or Path(".bench") / f"bench-{args.preset}.json"
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(report, indent=2))
    print(f"\nJSON written to {json_path}")
    if args.plot is not None:
        print(plot(report, args.plot))
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m recsys_export.bench``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
