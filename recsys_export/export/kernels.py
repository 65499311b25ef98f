"""The ONNX fast-path kernels: internal graphs the runtime uses when a bundle has them.

Not entry points (the contract graphs are :mod:`recsys_export.export.formats`): an
MF/DenseNet ``score_all`` over augmented or tiled weights, a ``topk`` and a one-user
``recommend_one``, listed under ``formats.onnx.kernels`` in the manifest.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from recsys_export import __version__
from recsys_export.bundle import BundleWriter
from recsys_export.export.formats import ONNX_IR_VERSION, ONNX_OPSET, ONNX_SINGLE_FILE_LIMIT
from recsys_export.manifest import DN_BLOCK_USERS, KERNELS_DIR, KERNELS_VERSION
from recsys_export.topk import EMPTY_ITEM, EMPTY_SCORE

#: The kernel version and directory, and the DenseNet ``score_all`` kernel's users per
#: call (``DN_BLOCK_USERS``) are in :mod:`recsys_export.manifest`. The bytes of one
#: ``[users, hidden, items]`` intermediate a tile may take: 8 x 128 x 512 floats = 2 MB
#: measured fastest on 2 cores (8 MB L3, 512 KB L2 per core); 4 MB tiles thrash L3 once
#: both cores run, 16 MB is slower even on one.
DN_TILE_BYTES = 2 << 20
#: Upper bound on tiles per graph (two nodes each): wide catalogues get wider tiles.
DN_MAX_TILES = 512


def dn_tile_width(hidden: int, n_items: int, users: int) -> int:
    """Items per DenseNet tile so ``users x hidden x width`` floats fit ``DN_TILE_BYTES``."""
    width = max(64, DN_TILE_BYTES // (4 * max(1, hidden) * max(1, users)))
    width = max(width, -(-n_items // DN_MAX_TILES))
    return int(min(width, n_items))


def _dn_item_tiles(neg_c_t: np.ndarray, width: int) -> tuple[list[Any], list[Any]]:
    """Nodes ``a3[B, H, 1] -> y[B, N]`` over item tiles of ``width``, and their weights.

    Each tile is ``Relu(Sub(a3, -C^T tile)) -> MatMul(w2 row) -> [B, 1, T]``: the
    hidden layer ``relu(a + c)`` exactly as the portable graphs compute it (``a - (-c)``
    is ``a + c`` bit for bit), so the sum over hidden units has only the terms of the
    units that are on. (The rewrite ``max(a, -c) . w2 + c . w2`` saved one elementwise
    pass but summed two large opposite terms per item: on DenseNets whose item terms
    reach ~50 it lost 1.7e-5 on scores near 0, past the float32 error bound of the
    model's own arithmetic.) onnxruntime's planner reuses one intermediate buffer for
    every tile, so it stays in cache, and the whole row costs one session call instead
    of one per tile.
    """
    from onnx import helper, numpy_helper

    nodes, inits, parts = [], [], []
    for k, t0 in enumerate(range(0, neg_c_t.shape[1], width)):
        tile = np.ascontiguousarray(neg_c_t[:, t0 : t0 + width])
        inits.append(numpy_helper.from_array(tile, f"neg_c_t_{k}"))
        nodes.append(helper.make_node("Sub", ["a3", f"neg_c_t_{k}"], [f"z_{k}"]))
        nodes.append(helper.make_node("Relu", [f"z_{k}"], [f"m_{k}"]))
        nodes.append(helper.make_node("MatMul", ["w2_row", f"m_{k}"], [f"y3_{k}"]))
        parts.append(f"y3_{k}")
    if len(parts) == 1:
        nodes.append(helper.make_node("Squeeze", [parts[0], "axis1"], ["y"]))
    else:
        nodes.append(helper.make_node("Concat", parts, ["y3"], axis=2))
        nodes.append(helper.make_node("Squeeze", ["y3", "axis1"], ["y"]))
    return nodes, inits


#: Item groups of the MF ``score_groups`` kernel: about ``MF_GROUPS`` groups whose width
#: is a multiple of ``MF_GROUP_ALIGN`` items and at least ``MF_GROUP_MIN_WIDTH``.
#: onnxruntime's ReduceMax ran at 0.07 ns per score over groups of 160 or 80 items, 0.12
#: over groups of 157. At 20k items: 250 groups of 80 (no padding); against 125 of 160
#: the selection reads half the candidates for a partition over twice the maxima
#: (4.3 against 5.1 us per user of CPU, blocks of 204 users, machine shared).
MF_GROUPS = 256
MF_GROUP_ALIGN = 16
MF_GROUP_MIN_WIDTH = 32


def mf_augmented(module: torch.nn.Module) -> tuple[np.ndarray, np.ndarray]:
    """MF factors augmented so that one dot product is the score: users ``[P, bu, 1]``
    and items ``[Q, 1, bi + mu]``, float32 ``[n, factors + 2]`` each."""

    def buf(name: str) -> np.ndarray:
        return getattr(module, name).detach().cpu().numpy().astype(np.float32)

    p, q = buf("user_factors"), buf("item_factors")
    bu, bi = buf("user_bias"), buf("item_bias")
    pa = np.concatenate([p, bu[:, None], np.ones((p.shape[0], 1), np.float32)], axis=1)
    qa = np.concatenate([q, np.ones((q.shape[0], 1), np.float32), bi[:, None]], axis=1)
    return pa, qa


def mf_group_shape(n_items: int) -> tuple[int, int]:
    """``(groups, width)`` of the MF ``score_groups`` kernel: ``groups * width >=
    n_items`` (the rest is padding that scores ``-inf``)."""
    width = max(-(-n_items // MF_GROUPS), MF_GROUP_MIN_WIDTH)
    width = -(-width // MF_GROUP_ALIGN) * MF_GROUP_ALIGN
    return -(-n_items // width), width


def mf_score_groups(pa: np.ndarray, qa_t: np.ndarray, kind: str = "mf") -> Any:
    """The MF ``score_groups`` kernel: ``users int64[B] -> scores float32[B, G * w]``.

    One MatMul of the augmented factors over the items padded to ``G`` groups of ``w``
    (:func:`mf_group_shape`; a padding item scores ``-inf``: its bias entry is ``-inf``,
    the entry the user bias multiplies 0). The runtime masks the exclusions in the output,
    takes the group maxima (:func:`group_max_graph`) and keeps only the groups that can
    hold a top-k item (:func:`recsys_export.topk.group_topk`). Scores of real items are
    bitwise those of the ``score_all`` kernel (the same product, column by column).
    """
    from onnx import TensorProto, helper, numpy_helper

    f, n_items = qa_t.shape
    groups, width = mf_group_shape(n_items)
    padded = np.zeros((f, groups * width), dtype=np.float32)
    padded[:, :n_items] = qa_t
    padded[f - 1, n_items:] = EMPTY_SCORE  # times the user's constant 1
    vi = helper.make_tensor_value_info
    return _kernel_model(
        [
            helper.make_node("Gather", ["user_aug", "users"], ["x"], axis=0),
            helper.make_node("MatMul", ["x", "item_aug_t"], ["scores"]),
        ],
        "mf_score_groups",
        [vi("users", TensorProto.INT64, ["batch"])],
        [vi("scores", TensorProto.FLOAT, ["batch", groups * width])],
        [
            numpy_helper.from_array(np.ascontiguousarray(pa), "user_aug"),
            numpy_helper.from_array(padded, "item_aug_t"),
        ],
        kind,
    )


def mf_topk_kernels(pa: np.ndarray, qa: np.ndarray, kind: str = "mf") -> dict[str, Any]:
    """The MF top-k kernels beside ``score_all``/``topk``/``recommend_one``:
    ``score_groups`` and ``group_max`` (recommend-all, :func:`mf_score_groups`) and
    ``recommend_user`` (one user: gather, product, ``ScatterElements`` of the seen items
    with the ``-inf`` the runtime passes, TopK; four nodes where ``recommend_one`` has
    nine), from the augmented factors (:func:`mf_augmented`)."""
    from onnx import TensorProto, helper, numpy_helper

    f32, i64 = TensorProto.FLOAT, TensorProto.INT64
    vi, node = helper.make_tensor_value_info, helper.make_node
    qa_t = np.ascontiguousarray(qa.T)
    user_kernel = _kernel_model(
        [
            node("Gather", ["user_aug", "users"], ["x"], axis=0),
            node("MatMul", ["x", "item_aug_t"], ["row"]),
            node("ScatterElements", ["row", "exclude", "exclude_scores"], ["masked"], axis=1),
            node("TopK", ["masked", "k"], ["scores", "items"], axis=1, largest=1, sorted=1),
        ],
        "mf_recommend_user",
        [
            vi("users", i64, [1]),
            vi("k", i64, [1]),
            vi("exclude", i64, [1, "m"]),
            vi("exclude_scores", f32, [1, "m"]),
        ],
        [vi("scores", f32, [1, "k"]), vi("items", i64, [1, "k"])],
        [
            numpy_helper.from_array(np.ascontiguousarray(pa), "user_aug"),
            numpy_helper.from_array(qa_t, "item_aug_t"),
        ],
        kind,
    )
    return {
        "score_groups": mf_score_groups(pa, qa_t, kind),
        "group_max": group_max_graph(*mf_group_shape(qa.shape[0]), kind),
        "recommend_user": user_kernel,
    }


def group_max_graph(groups: int, width: int, kind: str) -> Any:
    """``scores float32[B, groups * width] -> group_max float32[B, groups]`` (Reshape,
    ReduceMax): the maxima of consecutive groups of ``width`` items. A graph of its own
    so the runtime can mask the exclusions in between, and the product's output is
    written straight into the runtime's buffer (an output that another node also reads
    cost onnxruntime a copy: 22% of the product at 204 x 20k)."""
    from onnx import TensorProto, helper, numpy_helper

    vi = helper.make_tensor_value_info
    return _kernel_model(
        [
            helper.make_node("Reshape", ["scores", "grouped_shape"], ["grouped"]),
            helper.make_node("ReduceMax", ["grouped", "axis2"], ["group_max"], keepdims=0),
        ],
        "group_max",
        [vi("scores", TensorProto.FLOAT, ["batch", groups * width])],
        [vi("group_max", TensorProto.FLOAT, ["batch", groups])],
        [
            numpy_helper.from_array(np.array([0, groups, width], dtype=np.int64), "grouped_shape"),
            numpy_helper.from_array(np.array([2], dtype=np.int64), "axis2"),
        ],
        kind,
    )


def _kernel_model(
    nodes: list[Any], name: str, inputs: list[Any], outputs: list[Any], inits: list[Any], kind: str
) -> Any:
    import onnx
    from onnx import helper

    graph = helper.make_graph(nodes, name, inputs, outputs, inits)
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET)], producer_name="recsys_export"
    )
    model.ir_version = ONNX_IR_VERSION
    helper.set_model_props(
        model,
        {
            "recsys_export.model_kind": kind,
            "recsys_export.kernel": name,
            "recsys_export.version": __version__,
        },
    )
    onnx.checker.check_model(model, full_check=True)
    return model


def build_kernels(module: torch.nn.Module, kind: str) -> dict[str, Any]:
    """Internal fast-path graphs (and item-side arrays) for the runtime.

    They are not entry points: the runtime uses them when the manifest lists them under
    ``formats.onnx.kernels`` and falls back to the contract graphs otherwise.

    * ``topk``: ``scores float32[B, N], k int64[1] -> values float32[B, k], indices int64``
      (the runtime writes ``-inf`` at excluded positions before calling it).
    * ``recommend_one``: ``users int64[1], k int64[1], exclude_items int64[M] ->
      scores float32[1, k], items int64[1, k]`` (one user, one call; ``-1`` in empty slots).
    * MF ``score_all``: ``users int64[B] -> scores float32[B, N]``, one MatMul of augmented
      factors ``[P, bu, 1] x [Q, 1, bi + mu]^T``; and :func:`mf_topk_kernels`.
    * DenseNet ``score_all``: ``users int64[B] -> scores float32[B, N]``: the user half
      ``a = P[u] Wu^T``, then item tiles of :func:`dn_tile_width` items, each ``Relu(a -
      (-C^T tile))`` and ``MatMul`` with the ``w2`` row in ``[B, H, T]`` layout, plus the
      output bias. Its ``recommend_one`` uses the same tiles sized for one user.

    Returns
    -------
    dict
        name -> ``onnx.ModelProto``.
    """
    from onnx import TensorProto, helper, numpy_helper

    f32, i64 = TensorProto.FLOAT, TensorProto.INT64
    vi = helper.make_tensor_value_info
    node = helper.make_node

    def init(arr: np.ndarray, name: str) -> Any:
        return numpy_helper.from_array(np.ascontiguousarray(arr), name)

    def buf(name: str) -> np.ndarray:
        return getattr(module, name).detach().cpu().numpy().astype(np.float32)

    out: dict[str, Any] = {}
    neg_inf = np.array([EMPTY_SCORE], dtype=np.float32)
    minus_one = np.array([EMPTY_ITEM], dtype=np.int64)
    topk_tail = [
        node("TopK", ["masked", "k"], ["scores", "idx"], axis=1, largest=1, sorted=1),
        node("IsInf", ["scores"], ["empty"], detect_positive=0),
        node("Where", ["empty", "minus_one", "idx"], ["items"]),
    ]
    out["topk"] = _kernel_model(
        [node("TopK", ["scores", "k"], ["values", "indices"], axis=1, largest=1, sorted=1)],
        "topk",
        [vi("scores", f32, ["batch", "n"]), vi("k", i64, [1])],
        [vi("values", f32, ["batch", "k"]), vi("indices", i64, ["batch", "k"])],
        [],
        kind,
    )
    one_inputs = [vi("users", i64, [1]), vi("k", i64, [1]), vi("exclude_items", i64, ["m"])]
    one_outputs = [vi("scores", f32, [1, "k"]), vi("items", i64, [1, "k"])]
    scatter = [
        node("Unsqueeze", ["exclude_items", "axis0"], ["ex2"]),
        node("Shape", ["ex2"], ["ex_shape"]),
        node("Expand", ["neg_inf", "ex_shape"], ["ex_vals"]),
        node("ScatterElements", ["row", "ex2", "ex_vals"], ["masked"], axis=1),
    ]
    common = [
        init(neg_inf, "neg_inf"),
        init(minus_one, "minus_one"),
        init(np.array([0], dtype=np.int64), "axis0"),
    ]
    if kind == "mf":
        pa, qa = mf_augmented(module)
        qa_t = qa.T
        gather = node("Gather", ["user_aug", "users"], ["x"], axis=0)
        weights = [init(pa, "user_aug"), init(qa_t, "item_aug_t")]
        out["score_all"] = _kernel_model(
            [gather, node("MatMul", ["x", "item_aug_t"], ["scores"])],
            "mf_score_all",
            [vi("users", i64, ["batch"])],
            [vi("scores", f32, ["batch", qa.shape[0]])],
            weights,
            kind,
        )
        out["recommend_one"] = _kernel_model(
            [gather, node("MatMul", ["x", "item_aug_t"], ["row"]), *scatter, *topk_tail],
            "mf_recommend_one",
            one_inputs,
            one_outputs,
            [*weights, *common],
            kind,
        )
        out.update(mf_topk_kernels(pa, qa, kind))
    else:
        p, w1u_t, w2_row = buf("user_factors"), buf("w1_user_t"), buf("w2_row")
        neg_c_t, offset = buf("neg_c_t"), buf("item_offset")
        hidden, n_items = neg_c_t.shape
        user_half = [
            node("Gather", ["user_factors", "users"], ["p"], axis=0),
            node("MatMul", ["p", "w1_user_t"], ["a"]),
            node("Unsqueeze", ["a", "axis2"], ["a3"]),  # [B, H, 1]
        ]
        shared = [
            init(p, "user_factors"),
            init(w1u_t, "w1_user_t"),
            init(w2_row, "w2_row"),
            init(offset, "item_offset"),
            init(np.array([2], dtype=np.int64), "axis2"),
            init(np.array([1], dtype=np.int64), "axis1"),
        ]
        width = dn_tile_width(hidden, n_items, DN_BLOCK_USERS)
        rows_nodes, rows_inits = _dn_item_tiles(neg_c_t, width)
        out["score_all"] = _kernel_model(
            [*user_half, *rows_nodes, node("Add", ["y", "item_offset"], ["scores"])],
            "densenet_score_all",
            [vi("users", i64, ["batch"])],
            [vi("scores", f32, ["batch", n_items])],
            [*shared, *rows_inits],
            kind,
        )
        one_nodes, one_inits = _dn_item_tiles(neg_c_t, dn_tile_width(hidden, n_items, 1))
        out["recommend_one"] = _kernel_model(
            [
                *user_half,
                *one_nodes,
                node("Add", ["y", "item_offset"], ["row"]),
                *scatter,
                *topk_tail,
            ],
            "densenet_recommend_one",
            one_inputs,
            one_outputs,
            [*shared, *one_inits, *common],
            kind,
        )
    return out


def write_kernels(
    module: torch.nn.Module, kind: str, writer: BundleWriter, *, external_data: bool | None
) -> dict[str, Any]:
    """Write :func:`build_kernels` into ``onnx/kernels/`` and return the manifest entry."""
    if kind not in ("mf", "densenet"):  # other models (byom's generic path): no fast paths
        return {}
    entry: dict[str, Any] = {"version": KERNELS_VERSION}
    if kind == "densenet":
        entry["block_users"] = DN_BLOCK_USERS  # what the score_all tiles are sized for
    else:
        entry["groups"], entry["group_width"] = mf_group_shape(module.item_factors.shape[0])
    for name, obj in build_kernels(module, kind).items():
        entry[name] = save_graph(obj, writer, KERNELS_DIR, name, "onnx-kernel", external_data)
    return entry


def save_graph(
    obj: Any, writer: BundleWriter, folder: str, name: str, role: str, external_data: bool | None
) -> str:
    """Write the graph ``obj`` to ``folder/name.onnx`` in the bundle (weights in a
    ``.data`` file beside it when ``external_data``, or when None and over protobuf's
    limit) and return its bundle-relative name."""
    import onnx

    rel = f"{folder}/{name}.onnx"
    path = writer.add(rel, f"{role}:{name}")
    size = sum(len(t.raw_data) for t in obj.graph.initializer)
    ext = external_data if external_data is not None else size > ONNX_SINGLE_FILE_LIMIT
    if ext:
        onnx.save_model(
            obj,
            str(path),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=f"{name}.onnx.data",
        )
        if path.with_name(f"{name}.onnx.data").exists():  # small graphs stay inline
            writer.add(f"{folder}/{name}.onnx.data", f"{role}-data:{name}")
    else:
        onnx.save_model(obj, str(path))
    return rel
