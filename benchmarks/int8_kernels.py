"""MF ``score_all`` in onnxruntime: the float32 MatMul against int8 candidate graphs, one
process, the same factors, interleaved rounds.

Usage::

    python benchmarks/int8_kernels.py --json .bench/int8_kernels.json
    python benchmarks/int8_kernels.py --checkpoint runs/precision/syn-mf.pt --users 20000

Each graph maps ``users int64[B] -> scores float32[B, items]`` and runs as the runtime runs
it: calls of ``--calls`` users, each call one onnxruntime thread, the calls spread over
``--threads`` Python threads, written straight into one preallocated matrix.

* ``fp32``: the exact kernel, one MatMul of the augmented factors (biases inside).
* ``int8``: the int8 variant's ``score_all_partial``: per-row int8 users dequantized,
  ``DynamicQuantizeLinear`` + ``MatMulInteger`` + scales + item bias (which onnxruntime
  fuses into one ``DynamicQuantizeMatMul``), then the runtime's in-place user-bias add.
* ``int8_no_user_bias``: the same without the add: the bound for any way of folding the
  user bias into the product.
* ``int8_prequant``: users stored as per-tensor uint8, ``MatMulIntegerToFloat``
  (com.microsoft; item scales per column, item bias fused): no dynamic quantization of
  the users; then the user-bias add.
* ``store``: writing every score once (``fill``): the floor of any kernel.

Columns: median wall seconds over ``--repeat`` rounds and the process CPU seconds (both
threads; steadier than wall time on a shared machine), each as best fp32 / this (> 1:
faster than the best fp32 call size), recall@10 of the exact lists on the graph's scores
alone and after an exact re-rank of 20 candidates (what the variant's recommendations
do), on the first 2000 users, and the largest score error. Default factors are
generated (rank-4 taste, user norms spread 0.5 lognormal); ``--checkpoint`` reads a
trained MF checkpoint's first ``--users`` users instead.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

F32_MS = "com.microsoft"


def _factors(args: argparse.Namespace) -> tuple[np.ndarray, ...]:
    if args.checkpoint:
        import torch

        sd = torch.load(args.checkpoint, weights_only=True)["state_dict"]
        p = sd["user_factors.weight"].numpy()[: args.users]
        q = sd["item_factors.weight"].numpy()
        bu = sd["user_bias.weight"].numpy()[: args.users, 0]
        bi = sd["item_bias.weight"].numpy()[:, 0] + float(sd["global_mean"])
        return tuple(np.ascontiguousarray(a, dtype=np.float32) for a in (p, q, bu, bi))
    rng = np.random.default_rng(0)
    f = args.factors
    basis = rng.normal(size=(4, f))
    p = rng.normal(size=(args.users, 4)) @ basis + 0.3 * rng.normal(size=(args.users, f))
    p *= rng.lognormal(0.0, 0.5, size=(args.users, 1))
    q = rng.normal(size=(args.items, 4)) @ basis + 0.3 * rng.normal(size=(args.items, f))
    q *= rng.lognormal(0.0, 0.3, size=(args.items, 1))
    bu = 0.3 * rng.normal(size=args.users)
    bi = 0.5 * rng.normal(size=args.items) + 3.5
    return tuple(np.asarray(a, dtype=np.float32) for a in (0.1 * p, 0.1 * q, bu, bi))


def _rows_int8(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scale = np.abs(x).max(axis=1) / 127.0
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
    return np.clip(np.rint(x / scale[:, None]), -127, 127).astype(np.int8), scale


def _model(nodes: list[Any], inits: dict[str, np.ndarray], n_items: int) -> bytes:
    from onnx import TensorProto, helper, numpy_helper

    vi = helper.make_tensor_value_info
    graph = helper.make_graph(
        nodes,
        "g",
        [vi("users", TensorProto.INT64, ["batch"])],
        [vi("scores", TensorProto.FLOAT, ["batch", n_items])],
        [numpy_helper.from_array(np.ascontiguousarray(a), n) for n, a in inits.items()],
    )
    ops = [helper.make_opsetid("", 20), helper.make_opsetid(F32_MS, 1)]
    model = helper.make_model(graph, opset_imports=ops)
    model.ir_version = 9  # what the runtime's floor (onnxruntime 1.18.1) reads
    return model.SerializeToString()


def build(p: np.ndarray, q: np.ndarray, bu: np.ndarray, bi: np.ndarray) -> dict[str, Any]:
    """Graph bytes and whether the runtime adds the user bias after each call."""
    from onnx import TensorProto, helper

    node = helper.make_node
    n_users, n_items = len(p), len(q)
    pa = np.hstack([p, bu[:, None], np.ones((n_users, 1), np.float32)])
    qa = np.hstack([q, np.ones((n_items, 1), np.float32), bi[:, None]])
    uq, us = _rows_int8(p)
    iq, isc = _rows_int8(q)
    gscale = np.float32(np.abs(p).max() / 127.0)
    u8 = (np.clip(np.rint(p / gscale), -127, 127) + 128).astype(np.uint8)
    today = [
        node("Gather", ["user_q", "users"], ["uq"], axis=0),
        node("Cast", ["uq"], ["uqf"], to=TensorProto.FLOAT),
        node("Gather", ["user_scale", "users"], ["us"], axis=0),
        node("Unsqueeze", ["us", "axis1"], ["us2"]),
        node("Mul", ["uqf", "us2"], ["x"]),
        node("DynamicQuantizeLinear", ["x"], ["xq", "xs", "xz"]),
        node("MatMulInteger", ["xq", "item_q_t", "xz"], ["acc"]),
        node("Cast", ["acc"], ["accf"], to=TensorProto.FLOAT),
        node("Mul", ["xs", "item_scale"], ["scale"]),
        node("Mul", ["accf", "scale"], ["dot"]),
        node("Add", ["dot", "item_bias"], ["scores"]),
    ]
    int8 = _model(
        today,
        {
            "user_q": uq,
            "user_scale": us,
            "axis1": np.array([1], np.int64),
            "item_q_t": iq.T,
            "item_scale": isc,
            "item_bias": bi,
        },
        n_items,
    )
    prequant = [
        node("Gather", ["user_u8", "users"], ["uq"], axis=0),
        node(
            "MatMulIntegerToFloat",
            ["uq", "item_q_t", "a_scale", "item_scale", "a_zero", "", "item_bias"],
            ["scores"],
            domain=F32_MS,
        ),
    ]
    fp32 = [
        node("Gather", ["user_aug", "users"], ["x"], axis=0),
        node("MatMul", ["x", "item_aug_t"], ["scores"]),
    ]
    pq = {"user_u8": u8, "a_scale": np.array(gscale, np.float32), "a_zero": np.uint8(128)}
    pq.update(item_q_t=iq.T, item_scale=isc, item_bias=bi)
    return {
        "fp32": (_model(fp32, {"user_aug": pa, "item_aug_t": qa.T}, n_items), False),
        "int8": (int8, True),
        "int8_no_user_bias": (int8, False),
        "int8_prequant": (
            _model(prequant, {k: np.asarray(v) for k, v in pq.items()}, n_items),
            True,
        ),
        "store": (None, False),
    }


def _runner(blob: bytes | None, add_bias: bool, bu: np.ndarray) -> Callable[..., None]:
    import onnxruntime as ort

    if blob is None:

        def fill(users: np.ndarray, dst: np.ndarray) -> None:
            dst.fill(1.0)

        return fill
    so = ort.SessionOptions()
    so.intra_op_num_threads = so.inter_op_num_threads = 1
    so.log_severity_level = 3
    sess = ort.InferenceSession(blob, so, providers=["CPUExecutionProvider"])

    def call(users: np.ndarray, dst: np.ndarray) -> None:
        binding = sess.io_binding()
        binding.bind_cpu_input("users", users)
        binding.bind_output("scores", "cpu", 0, np.float32, list(dst.shape), dst.ctypes.data)
        sess.run_with_iobinding(binding)
        if add_bias:
            dst += bu[users][:, None]

    return call


def score_all(fn: Callable[..., None], out: np.ndarray, call: int, pool: Any, threads: int) -> None:
    """Every user's scores into ``out``, ``call`` users per call, over ``threads``."""
    starts = list(range(0, out.shape[0], call))

    def work(mine: list[int]) -> None:
        for s in mine:
            users = np.arange(s, min(s + call, out.shape[0]), dtype=np.int64)
            fn(users, out[s : s + users.size])

    futures = [pool.submit(work, starts[i::threads]) for i in range(1, threads)]
    work(starts[0::threads])
    for fut in futures:
        fut.result()


def _recall(exact: np.ndarray, approx: np.ndarray, k: int = 10, rerank: int = 0) -> float:
    top = np.argpartition(-exact, k, axis=1)[:, :k]
    if rerank:
        cand = np.argpartition(-approx, rerank, axis=1)[:, :rerank]
        order = np.argsort(-np.take_along_axis(exact, cand, axis=1), axis=1)[:, :k]
        got = np.take_along_axis(cand, order, axis=1)
    else:
        got = np.argpartition(-approx, k, axis=1)[:, :k]
    return float(np.mean([len(set(a) & set(b)) for a, b in zip(top, got)])) / k


def main(argv: list[str] | None = None) -> int:
    import onnxruntime as ort

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, default=20000)
    parser.add_argument("--items", type=int, default=20000)
    parser.add_argument("--factors", type=int, default=64)
    parser.add_argument("--checkpoint", type=Path, default=None, help="a trained MF .pt")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--calls", default="16,32,104,512", help="users per call, a list")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", type=Path, default=Path(".bench/int8_kernels.json"))
    args = parser.parse_args(argv)
    p, q, bu, bi = _factors(args)
    graphs = {name: _runner(blob, add, bu) for name, (blob, add) in build(p, q, bu, bi).items()}
    out = np.zeros((len(p), len(q)), np.float32)  # touched: no page faults in the timings
    pool = ThreadPoolExecutor(max_workers=max(1, args.threads - 1))
    m = min(2000, len(p))
    exact = np.hstack([p[:m], bu[:m, None]]) @ np.hstack([q, np.ones((len(q), 1))]).T + bi
    quality = {}
    for name, fn in graphs.items():
        score_all(fn, out[:m], 256, pool, args.threads)
        quality[name] = {
            "recall@10": _recall(exact, out[:m]),
            "recall@10_rerank20": _recall(exact, out[:m], rerank=20),
            "max_abs_error": float(np.abs(out[:m] - exact).max()),
        }
    calls = [int(c) for c in args.calls.split(",")]
    wall: dict[tuple[str, int], list[float]] = {(n, c): [] for n in graphs for c in calls}
    cpu: dict[tuple[str, int], list[float]] = {(n, c): [] for n in graphs for c in calls}
    for _ in range(args.repeat):
        for c in calls:
            for name, fn in graphs.items():
                t, tc = time.perf_counter(), time.process_time()
                score_all(fn, out, c, pool, args.threads)
                wall[(name, c)].append(time.perf_counter() - t)
                cpu[(name, c)].append(time.process_time() - tc)
    load = os.getloadavg()
    med = {key: statistics.median(v) for key, v in wall.items()}
    med_cpu = {key: statistics.median(v) for key, v in cpu.items()}
    best = min(med[("fp32", c)] for c in calls)
    best_cpu = min(med_cpu[("fp32", c)] for c in calls)
    print(
        f"onnxruntime {ort.__version__}; {len(p)} users x {len(q)} items x {p.shape[1]} "
        f"factors; {args.threads} threads; median of {args.repeat}; load average "
        f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f} (end)"
    )
    head = (
        f"{'graph':18s} {'call':>5s} {'wall s':>7s} {'fp32/x':>7s} {'cpu s':>7s} "
        f"{'fp32/x':>7s} {'r@10':>6s} {'r@10 rr':>7s} {'max err':>8s}"
    )
    print(head + "\n" + "-" * len(head))
    rows = []
    for c in calls:
        for name in graphs:
            qual = quality[name] if name != "store" else {}
            row = {"graph": name, "call": c, "wall_s": med[(name, c)], "cpu_s": med_cpu[(name, c)]}
            row.update(qual)
            rows.append(row)
            extra = (
                f"{qual['recall@10']:6.3f} {qual['recall@10_rerank20']:7.3f} "
                f"{qual['max_abs_error']:8.4f}"
                if qual
                else ""
            )
            print(
                f"{name:18s} {c:5d} {row['wall_s']:7.3f} {best / row['wall_s']:7.2f} "
                f"{row['cpu_s']:7.3f} {best_cpu / row['cpu_s']:7.2f} {extra}"
            )
    print("fp32/x: the best fp32 call size's median / this one's (> 1: faster than fp32)")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "machine": {"nproc": os.cpu_count(), "loadavg_end": list(load), "ort": ort.__version__},
        "args": {k: str(v) for k, v in vars(args).items()},
        "rows": rows,
    }
    args.json.write_text(json.dumps(report, indent=2))
    print(f"JSON written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
