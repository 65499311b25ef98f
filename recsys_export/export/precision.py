"""Reduced-precision variants: approximate graphs written beside the exact ones.

``export --precision fp16|int8`` adds ``onnx/variants/<precision>/`` to a bundle; the
exact graphs stay the default and a variant is loaded only when asked for
(``Recommender.load(..., precision=)``, ``--precision`` on ``recommend``/``score``).
Parity judges a variant on what users feel (:mod:`recsys_export.parity.approx`: recall
of the exact top-k lists and the score error), recorded in ``parity.json`` and the
manifest.

* ``int8`` (MF only): per-row scaled int8 factors (one float32 scale per user and per
  item), scored with onnxruntime's u8 x s8 integer product (``DynamicQuantizeLinear``
  + ``MatMulInteger``, fused by onnxruntime into one kernel: the user rows are
  quantized per call); biases stay float32. Graphs: ``score_all_partial`` (the scores
  without the user bias, added by the runtime from ``user_bias.npy``), ``score``,
  ``score_groups`` (the scores over items padded to groups, without the user bias) and
  ``group_max`` (their group maxima), for the threshold top-k. Recommendations re-rank
  the int8 candidates exactly: the float32 augmented factors are stored as ``.npy``
  beside the graphs and read through a memory map, only the candidates' rows.
* ``fp16``: the float32 weight matrices of the graphs the runtime runs (``score_all``
  and ``score``: MF/DenseNet kernels, or a generic model's entry points) stored as
  float16 and cast to float32 in the graph, which onnxruntime folds at load: about half
  the file,
  float32 arithmetic on the rounded weights (its CPU float16 kernels measured 2.2x
  slower than float32 on this project's machine).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import torch

from recsys_export.bundle import BundleWriter
from recsys_export.bundle.schema import (
    VARIANTS_DIR,
    OnnxSection,
    VariantSection,
    check_precision,
)
from recsys_export.core.topk import EMPTY_SCORE
from recsys_export.errors import ConfigError
from recsys_export.export.kernels import (
    group_max_graph,
    kernel_model,
    mf_augmented,
    mf_group_shape,
    save_graph,
)

__all__ = ["fp16_weights", "mf_int8_graphs", "quantize_rows", "write_variant"]

#: Float32 initializers smaller than this stay float32 in an fp16 variant (constants).
FP16_MIN_SIZE = 1024
#: Largest finite float16.
FP16_MAX = 65504.0


def quantize_rows(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-row int8: ``x ~ q * scale[:, None]`` with ``|q| <= 127``.

    Returns
    -------
    (np.ndarray, np.ndarray)
        ``int8[n, f]`` and ``float32[n]`` scales (1 for an all-zero row).
    """
    scale = np.abs(x).max(axis=1) / 127.0
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
    q = np.clip(np.rint(x / scale[:, None]), -127, 127).astype(np.int8)
    return q, scale


def fp16_weights(model: Any, what: str) -> Any:
    """A copy of the ONNX ``model`` whose float32 weight matrices (initializers of 2 or
    more dimensions and at least :data:`FP16_MIN_SIZE` values) are stored as float16 and
    cast back to float32 in the graph. Vectors (biases, DenseNet's per-item offsets)
    stay float32: rounding the item offsets (up to ~50) to float16 cost the
    ml-latest-small DenseNet 1.4 points of recall@10.

    Raises
    ------
    ConfigError
        A weight beyond float16's range (``|w| > 65504``).
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    inits, casts = [], []
    for init in graph.initializer:
        small = len(init.dims) < 2 or int(np.prod(init.dims)) < FP16_MIN_SIZE
        if init.data_type != TensorProto.FLOAT or small:  # biases, item offsets, constants
            inits.append(init)
            continue
        arr = numpy_helper.to_array(init)
        finite = arr[np.isfinite(arr)]
        if finite.size and float(np.abs(finite).max()) > FP16_MAX:
            raise ConfigError(
                f"cannot write an fp16 variant: {what} has weights beyond float16's range "
                f"(|w| up to {float(np.abs(finite).max()):.3g} > {FP16_MAX:g}); export "
                "without --precision or with --precision int8 (MF)"
            )
        half = f"{init.name}__fp16"
        inits.append(numpy_helper.from_array(arr.astype(np.float16), half))
        casts.append(helper.make_node("Cast", [half], [init.name], to=TensorProto.FLOAT))
    del graph.initializer[:]
    graph.initializer.extend(inits)
    nodes = casts + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.checker.check_model(out, full_check=True)
    return out


def _user_rows() -> list[Any]:
    """Nodes ``users -> x float32[B, f]``: the users' int8 rows times their scales."""
    from onnx import TensorProto, helper

    node = helper.make_node
    return [
        node("Gather", ["user_q", "users"], ["uq"], axis=0),
        node("Cast", ["uq"], ["uqf"], to=TensorProto.FLOAT),
        node("Gather", ["user_scale", "users"], ["us"], axis=0),
        node("Unsqueeze", ["us", "axis1"], ["us2"]),
        node("Mul", ["uqf", "us2"], ["x"]),
    ]


def _int8_product(item_q_t: str, item_scale: str, item_bias: str, out: str) -> list[Any]:
    """``x -> out = x_u8 . item_q * scales + item_bias``: the pattern onnxruntime fuses
    into its dynamically quantized matrix product."""
    from onnx import TensorProto, helper

    node = helper.make_node
    return [
        node("DynamicQuantizeLinear", ["x"], ["xq", "xs", "xz"]),
        node("MatMulInteger", ["xq", item_q_t, "xz"], ["acc"]),
        node("Cast", ["acc"], ["accf"], to=TensorProto.FLOAT),
        node("Mul", ["xs", item_scale], ["scale"]),
        node("Mul", ["accf", "scale"], ["dot"]),
        node("Add", ["dot", item_bias], [out]),
    ]


def mf_int8_graphs(module: torch.nn.Module) -> tuple[dict[str, Any], dict[str, np.ndarray], dict]:
    """The int8 graphs of an MF inference module, its re-rank arrays and its sizes.

    ``score_all_partial`` leaves out the user bias (a per-row term would cost
    onnxruntime a second pass over the scores: the runtime adds it in place, on a block
    still in cache); ``score_groups`` leaves it out too (it does not change a user's
    ranking); ``group_max`` is :func:`~recsys_export.export.kernels.group_max_graph`.

    Returns
    -------
    (dict, dict, dict)
        ``score_all_partial``, ``score``, ``score_groups``, ``group_max`` ->
        ``onnx.ModelProto``;
        ``users``, ``items`` (the float32 augmented factors for the exact re-rank) and
        ``user_bias`` -> arrays; ``groups`` and the bytes of the int8 and float32 factor
        matrices.
    """
    from onnx import TensorProto, helper, numpy_helper

    pa, qa = mf_augmented(module)
    f = pa.shape[1] - 2
    n_items = qa.shape[0]
    user_q, user_scale = quantize_rows(pa[:, :f])
    item_q, item_scale = quantize_rows(qa[:, :f])
    user_bias, item_bias = pa[:, f], qa[:, f + 1]
    groups, width = mf_group_shape(n_items)
    padded = groups * width
    pad_q = np.zeros((f, padded), dtype=np.int8)
    pad_q[:, :n_items] = item_q.T
    pad_scale = np.ones(padded, dtype=np.float32)
    pad_scale[:n_items] = item_scale
    pad_bias = np.full(padded, EMPTY_SCORE, dtype=np.float32)  # padding items score -inf
    pad_bias[:n_items] = item_bias

    def init(arr: np.ndarray, name: str) -> Any:
        return numpy_helper.from_array(np.ascontiguousarray(arr), name)

    vi = helper.make_tensor_value_info
    node = helper.make_node
    f32, i64 = TensorProto.FLOAT, TensorProto.INT64
    users_in = [vi("users", i64, ["batch"])]
    user_inits = [
        init(user_q, "user_q"),
        init(user_scale, "user_scale"),
        init(np.array([1], dtype=np.int64), "axis1"),
    ]
    graphs = {
        "score_all_partial": kernel_model(
            [
                *_user_rows(),
                *_int8_product("item_q_t", "item_scale", "item_bias", "scores"),
            ],
            "mf_int8_score_all_partial",
            users_in,
            [vi("scores", f32, ["batch", n_items])],
            [
                *user_inits,
                init(item_q.T, "item_q_t"),
                init(item_scale, "item_scale"),
                init(item_bias, "item_bias"),
            ],
            "mf",
        ),
        "score_groups": kernel_model(
            [*_user_rows(), *_int8_product("item_q_t", "item_scale", "item_bias", "scores")],
            "mf_int8_score_groups",
            users_in,
            [vi("scores", f32, ["batch", padded])],
            [
                *user_inits,
                init(pad_q, "item_q_t"),
                init(pad_scale, "item_scale"),
                init(pad_bias, "item_bias"),
            ],
            "mf",
        ),
        "group_max": group_max_graph(groups, width, "mf"),
        "score": kernel_model(
            [
                *_user_rows(),
                node("Gather", ["item_q", "items"], ["iq"], axis=0),
                node("Cast", ["iq"], ["iqf"], to=f32),
                node("Gather", ["item_scale", "items"], ["is"], axis=0),
                node("Unsqueeze", ["is", "axis1"], ["is2"]),
                node("Mul", ["iqf", "is2"], ["y"]),
                node("Mul", ["x", "y"], ["xy"]),
                node("ReduceSum", ["xy", "axis1"], ["dot"], keepdims=0),
                node("Gather", ["user_bias", "users"], ["bu"], axis=0),
                node("Gather", ["item_bias", "items"], ["bi"], axis=0),
                node("Add", ["dot", "bu"], ["dot_u"]),
                node("Add", ["dot_u", "bi"], ["scores"]),
            ],
            "mf_int8_score",
            [vi("users", i64, ["n"]), vi("items", i64, ["n"])],
            [vi("scores", f32, ["n"])],
            [
                *user_inits,
                init(user_bias, "user_bias"),
                init(item_q, "item_q"),
                init(item_scale, "item_scale"),
                init(item_bias, "item_bias"),
            ],
            "mf",
        ),
    }
    sizes = {
        "groups": groups,
        "group_width": width,
        "factor_bytes": {
            "int8": int(user_q.nbytes + item_q.nbytes + user_scale.nbytes + item_scale.nbytes),
            "fp32": int(4 * (user_q.size + item_q.size)),
        },
    }
    return graphs, {"users": pa, "items": qa, "user_bias": user_bias}, sizes


def _npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
    return buf.getvalue()


def write_variant(
    module: torch.nn.Module,
    kind: str,
    precision: str,
    writer: BundleWriter,
    onnx: OnnxSection | None,
    *,
    external_data: bool | None,
) -> VariantSection | None:
    """Write the ``precision`` variant of a bundle being exported and return its manifest
    section (None for ``fp32``: the exact graphs are the fp32 bundle).

    Parameters
    ----------
    onnx : OnnxSection or None
        The exact ONNX graphs written so far (entry points and kernels), whose staged
        graphs the fp16 variant converts; None without the ``onnx`` format.

    Raises
    ------
    ConfigError
        ``int8`` for a model other than MF, a bundle without ONNX graphs, or weights
        float16 cannot hold.
    """
    import onnx as onnx_lib

    precision = check_precision(precision)
    if precision == "fp32":
        return None
    if onnx is None or not onnx.complete:
        raise ConfigError(f"--precision {precision} needs the onnx format (--formats onnx)")
    folder = f"{VARIANTS_DIR}/{precision}"
    role = f"onnx-variant-{precision}"
    graphs: dict[str, str] = {}
    if precision == "int8":
        if kind != "mf":
            raise ConfigError(
                f"--precision int8 is available for MF bundles (per-row int8 factors); a "
                f"{kind} model can be exported with --precision fp16"
            )
        objs, arrays, sizes = mf_int8_graphs(module)
        for name, obj in objs.items():
            graphs[name] = save_graph(obj, writer, folder, name, role, external_data)
        files: dict[str, str] = {}
        for name, arr in arrays.items():
            rel = f"{folder}/{'rerank_' if name != 'user_bias' else ''}{name}.npy"
            writer.write_bytes(rel, _npy_bytes(arr), f"{role}-array:{name}")
            files[name] = rel
        return VariantSection(
            precision,
            graphs,
            arrays=files,
            groups=sizes["groups"],
            group_width=sizes["group_width"],
            factor_bytes=sizes["factor_bytes"],
        )
    kernels = onnx.kernels.files if onnx.kernels is not None else {}
    sources = {
        "score_all": kernels.get("score_all") or onnx.graphs["score_all"],
        "score": onnx.graphs["score"],
    }
    for name, rel in sources.items():
        exact = onnx_lib.load(str(Path(writer.path(rel))))
        obj = fp16_weights(exact, f"the {name} graph")
        graphs[name] = save_graph(obj, writer, folder, name, role, external_data)
    return VariantSection(
        precision,
        graphs,
        kernel_score_all="score_all" in kernels,  # tiled like the exact kernel
        compute="float32 (float16 weights cast at load)",
    )
