"""Every graph the benchmarks build, and the runtime's new kernels and variants, are at
the bundles' IR version and opset, so they load wherever the bundles do (the runtime's
onnxruntime floor, 1.18.1, reads IR <= 10 and ai.onnx opsets <= 21; 1.17 reads IR <= 9)."""

from __future__ import annotations

import numpy as np
import onnx

from recsys_export.bench_graphs import bench_graphs
from recsys_export.export.formats import ONNX_IR_VERSION, ONNX_OPSET


def _check(name: str, model: onnx.ModelProto) -> None:
    assert model.ir_version == ONNX_IR_VERSION == 9, name
    assert {o.domain: o.version for o in model.opset_import} == {"": ONNX_OPSET}, name
    assert ONNX_OPSET <= 21
    onnx.checker.check_model(model, full_check=True)


def test_every_bench_graph_is_at_the_exported_ir_and_opset():
    graphs = bench_graphs()
    assert {"mf_bare", "mf_one_topk", "dn_bare", "recipe_tile", "recipe_single"} <= set(graphs)
    for name, model in graphs.items():
        _check(name, model)


def test_new_kernels_and_variants_are_at_the_exported_ir_and_opset(tmp_path):
    from recsys_export.export import export_bundle
    from recsys_export.synthetic_models import synthetic_checkpoint

    ck = synthetic_checkpoint("mf", 20, 300, factors=4, seen_per_user=3)
    manifest = export_bundle(
        ck, tmp_path / "mf", formats="onnx", precision="fp16,int8", verify=False
    )
    onnx_files = [rel for rel in manifest["files"] if rel.endswith(".onnx")]
    assert "onnx/kernels/score_groups.onnx" in onnx_files
    assert "onnx/kernels/recommend_user.onnx" in onnx_files
    assert sum(rel.startswith("onnx/variants/") for rel in onnx_files) == 6
    for rel in onnx_files:
        _check(rel, onnx.load(str(tmp_path / "mf" / rel)))
    assert np.load(tmp_path / "mf" / "onnx/variants/int8/rerank_items.npy").shape == (300, 6)
