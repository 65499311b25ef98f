"""DenseNet runtime kernel, before and after issue 27: speed and error, interleaved.

    python benchmarks/densenet_kernel_ab.py                 # 20k items, 128 hidden, 64 factors
    python benchmarks/densenet_kernel_ab.py --items 9724 --hidden 64 --json .bench/dn_ab.json
    python benchmarks/densenet_kernel_ab.py --tiny          # seconds (smoke test)

Two ``score_all`` kernels over the same item tiles of one synthetic DenseNet (the
badly conditioned kind: item terms ``sum_h |c_h w2_h|`` of ``--item-terms`` on units held
far below zero, as the MovieLens 100K models that failed the fixed tolerance):

``max rewrite``
    the kernel before the fix: ``Max(a, -C^T tile) . w2`` plus the item term ``C w2 + b2``;
``relu``
    the kernel now: ``Relu(a - (-C^T tile)) . w2 + b2``.

Each round times one call of ``--users`` users per kernel (one session, one intra-op
thread, as the runtime's Python-thread mode runs them), alternating, so a drift of the
machine's speed hits both alike; the table gives the median ns per pair and the
relu/max ratio, and the worst error / bound of each kernel against the float64
reference (``recsys_export.parity.bounds``). Writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from recsys_export.export.formats import ONNX_OPSET
from recsys_export.export.kernels import _dn_item_tiles, dn_tile_width
from recsys_export.manifest import DN_BLOCK_USERS
from recsys_export.models import DenseNet
from recsys_export.parity.bounds import reference_for


def model_of(args: argparse.Namespace) -> DenseNet:
    """A seeded DenseNet whose dead units carry item terms of ``args.item_terms``."""
    gen = torch.Generator().manual_seed(0)
    k, h = args.factors, args.hidden
    model = DenseNet(args.users, args.items, k, h)
    with torch.no_grad():
        for emb in (model.user_factors, model.item_factors):
            emb.weight.copy_(torch.randn(emb.weight.shape, generator=gen) * 0.5)
        model.linear1.weight.copy_(torch.randn(h, 2 * k, generator=gen) * (0.3 / k**0.5))
        w2 = torch.randn(h, generator=gen) * 0.5
        model.linear2.weight.copy_(w2.view(1, -1))
        live = max(1, h // 10)
        bias = torch.full((h,), -args.item_terms / float(w2[live:].abs().sum()))
        bias[:live] = 0.1
        model.linear1.bias.copy_(bias)
    return model.eval()


def sessions(model: DenseNet) -> dict[str, Any]:
    """``a[B, H] -> scores[B, N]`` for both kernels, one intra-op thread each."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    with torch.no_grad():
        _, c = model.split_first_layer()
        w2 = model.linear2.weight.detach()
        b2 = float(model.linear2.bias) + float(model.global_mean)
    neg_c_t = np.ascontiguousarray((-c).t().numpy())
    hidden, n = neg_c_t.shape
    width = dn_tile_width(hidden, n, DN_BLOCK_USERS)
    offsets = {
        "max rewrite": (c @ w2[0] + b2).numpy().astype(np.float32),
        "relu": np.full(n, b2, dtype=np.float32),
    }
    out = {}
    for name, offset in offsets.items():
        if name == "relu":
            tiles, inits = _dn_item_tiles(neg_c_t, width)
        else:
            tiles, inits = _max_tiles(neg_c_t, width)
        graph = helper.make_graph(
            [
                helper.make_node("Unsqueeze", ["a", "axis2"], ["a3"]),
                *tiles,
                helper.make_node("Add", ["y", "offset"], ["out"]),
            ],
            name.replace(" ", "_"),
            [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["b", hidden])],
            [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["b", n])],
            [
                numpy_helper.from_array(w2.numpy().reshape(1, -1).copy(), "w2_row"),
                numpy_helper.from_array(offset, "offset"),
                numpy_helper.from_array(np.array([2], dtype=np.int64), "axis2"),
                numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"),
                *inits,
            ],
        )
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET)])
        out[name] = ort.InferenceSession(proto.SerializeToString(), opts)
    return out


def _max_tiles(neg_c_t: np.ndarray, width: int) -> tuple[list[Any], list[Any]]:
    from onnx import helper, numpy_helper

    nodes, inits, parts = [], [], []
    for k, t0 in enumerate(range(0, neg_c_t.shape[1], width)):
        tile = np.ascontiguousarray(neg_c_t[:, t0 : t0 + width])
        inits.append(numpy_helper.from_array(tile, f"neg_c_t_{k}"))
        nodes.append(helper.make_node("Max", ["a3", f"neg_c_t_{k}"], [f"m_{k}"]))
        nodes.append(helper.make_node("MatMul", ["w2_row", f"m_{k}"], [f"y3_{k}"]))
        parts.append(f"y3_{k}")
    nodes.append(helper.make_node("Concat", parts, ["y3"], axis=2))
    nodes.append(helper.make_node("Squeeze", ["y3", "axis1"], ["y"]))
    return nodes, inits


def main(argv: list[str] | None = None) -> int:
    """Run the A/B; returns 0."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--users", type=int, default=8, help="users per call (the runtime's block)")
    p.add_argument("--items", type=int, default=20_000)
    p.add_argument("--factors", type=int, default=64)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--item-terms", type=float, default=50.0)
    p.add_argument("--rounds", type=int, default=200)
    p.add_argument("--tiny", action="store_true", help="2,000 items, 32 hidden, 20 rounds")
    p.add_argument("--json", type=Path, default=Path(".bench") / "densenet_kernel_ab.json")
    args = p.parse_args(argv)
    if args.tiny:
        args.items, args.hidden, args.factors, args.rounds = 2000, 32, 16, 20
    torch.set_num_threads(1)
    model = model_of(args)
    sess = sessions(model)
    users = np.arange(args.users)
    with torch.no_grad():
        a = (model.user_factors.weight @ model.linear1.weight[:, : args.factors].t()).numpy()
    ref, bound = reference_for(model).score_all(users)
    times: dict[str, list[float]] = {name: [] for name in sess}
    worst: dict[str, float] = {}
    for name, s in sess.items():
        got = s.run(None, {"a": a})[0]
        worst[name] = float((np.abs(got - ref) / bound).max())
    for _ in range(args.rounds):
        for name, s in sess.items():
            t0 = time.perf_counter()
            s.run(None, {"a": a})
            times[name].append(time.perf_counter() - t0)
    pairs = args.users * args.items
    rows = {
        name: {
            "ns_per_pair": float(np.median(t)) / pairs * 1e9,
            "worst_err_over_bound": worst[name],
        }
        for name, t in times.items()
    }
    ratio = float(np.median(np.array(times["relu"]) / np.array(times["max rewrite"])))
    print(
        f"DenseNet score_all kernel: {args.users} users x {args.items} items, {args.hidden} "
        f"hidden, item terms {args.item_terms:g}; {args.rounds} interleaved rounds, 1 thread"
    )
    print(f"{'kernel':<12} {'ns/pair':>8} {'worst err/bound':>16}")
    for name, r in rows.items():
        print(f"{name:<12} {r['ns_per_pair']:>8.2f} {r['worst_err_over_bound']:>16.3g}")
    print(f"relu / max rewrite time (median of per-round ratios): {ratio:.3f}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "schema_version": 1,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"nproc": os.cpu_count(), "loadavg": list(os.getloadavg())},
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "rows": rows,
        "relu_over_max_time": ratio,
    }
    args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
