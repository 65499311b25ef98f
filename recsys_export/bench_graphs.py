"""The bare onnxruntime graphs the benchmarks compare against (the ceilings).

Built with ``onnx.helper`` at the bundles' opset and IR version
(:data:`~recsys_export.export.formats.ONNX_OPSET`, ``ONNX_IR_VERSION``: ``make_model``
would default to onnx's newest IR, which an older onnxruntime rejects), so every bench
row runs wherever the bundles do. :func:`bench_graphs` lists every graph the benchmarks
build, for the test that checks them against the runtime's onnxruntime floor.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = [
    "bench_graphs",
    "bench_model",
    "dn_bare",
    "mf_bare",
    "mf_one_topk",
    "parallel",
    "session",
]


def bench_model(graph: Any) -> Any:
    """``graph`` as a checked model at the bundles' opset and IR version."""
    import onnx
    from onnx import helper

    from recsys_export.export.formats import ONNX_IR_VERSION, ONNX_OPSET

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET)])
    model.ir_version = ONNX_IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    return model


def session(model: Any, threads: int) -> Any:
    """An onnxruntime CPU session of ``model`` with ``threads`` intra-op threads."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def mf_bare(qt: np.ndarray) -> Any:
    """MF ceiling: ``x float32[b, f] -> y float32[b, n]``, one MatMul with ``qt [f, n]``."""
    from onnx import TensorProto, helper, numpy_helper

    f, n = qt.shape
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "qt"], ["y"])],
        "bare",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", f])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", n])],
        [numpy_helper.from_array(np.ascontiguousarray(qt), "qt")],
    )
    return bench_model(graph)


def mf_one_topk(qt: np.ndarray) -> Any:
    """Single-user ceiling: ``x float32[1, f], k int64[1] -> values, indices``: the
    one-row MatMul and TopK, nothing else (no user lookup, no exclusions)."""
    from onnx import TensorProto, helper, numpy_helper

    f, n = qt.shape
    vi = helper.make_tensor_value_info
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "qt"], ["row"]),
            helper.make_node("TopK", ["row", "k"], ["values", "indices"], axis=1),
        ],
        "bare_one_topk",
        [vi("x", TensorProto.FLOAT, [1, f]), vi("k", TensorProto.INT64, [1])],
        [vi("values", TensorProto.FLOAT, [1, "k"]), vi("indices", TensorProto.INT64, [1, "k"])],
        [numpy_helper.from_array(np.ascontiguousarray(qt), "qt")],
    )
    return bench_model(graph)


def dn_bare(w2_row: np.ndarray, neg_c_t: np.ndarray, offset: np.ndarray) -> Any:
    """DenseNet ceiling: ``a[B, H] -> scores[B, N]`` over the runtime kernel's item tiles."""
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
    return bench_model(graph)


def parallel(starts: list[int], threads: int, work: Callable[[list[int]], None]) -> None:
    """Run ``work(starts[i::threads])`` on ``threads`` threads and wait for them."""
    if threads <= 1:
        work(starts)
        return
    pool = [threading.Thread(target=work, args=(starts[i::threads],)) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()


def bench_graphs(factors: int = 4, items: int = 600, hidden: int = 8) -> dict[str, Any]:
    """Every graph the benchmarks build, at a small size: name -> ``onnx.ModelProto``
    (the ceilings here and the probe recipe of ``benchmarks/densenet_recipe.py``)."""
    import importlib.util
    from pathlib import Path

    rng = np.random.default_rng(0)
    qt = rng.standard_normal((factors + 2, items)).astype(np.float32)
    w2 = rng.standard_normal((1, hidden)).astype(np.float32)
    neg = rng.standard_normal((hidden, items)).astype(np.float32)
    off = rng.standard_normal(items).astype(np.float32)
    out = {"mf_bare": mf_bare(qt), "mf_one_topk": mf_one_topk(qt), "dn_bare": dn_bare(w2, neg, off)}
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "densenet_recipe.py"
    if script.exists():  # a source checkout: the calibration script's own graphs too
        spec = importlib.util.spec_from_file_location("densenet_recipe", script)
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        out.update(mod.recipe_graphs(w2, neg, hidden))
    return out
