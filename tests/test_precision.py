"""Reduced-precision variants: written beside the exact graphs, judged on recall of the
exact lists, loaded only when asked for, refused clearly where they do not apply."""

from __future__ import annotations

import json

import numpy as np
import pytest

from recsys_export.cli import main
from recsys_export.errors import BundleError, ConfigError
from recsys_export.export.precision import fp16_weights, quantize_rows
from recsys_export.runtime import Recommender


def test_quantize_rows_error_is_half_a_step():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((50, 16)).astype(np.float32) * rng.uniform(0.01, 3, (50, 1))
    x[3] = 0.0
    q, scale = quantize_rows(x)
    assert q.dtype == np.int8 and np.abs(q).max() == 127 and scale[3] == 1.0
    err = np.abs(q * scale[:, None] - x)
    assert (err <= scale[:, None] / 2 + 1e-7).all()


def _graph(weights: np.ndarray):
    from onnx import TensorProto, helper, numpy_helper

    g = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w"], ["y0"]),
            helper.make_node("Add", ["y0", "b"], ["y"]),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", weights.shape[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", weights.shape[1]])],
        [
            numpy_helper.from_array(weights, "w"),
            numpy_helper.from_array(np.full(weights.shape[1], 1000.123, np.float32), "b"),
        ],
    )
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 20)])
    model.ir_version = 9
    return model


def test_fp16_weights_keeps_vectors_and_refuses_out_of_range():
    import onnxruntime as ort
    from onnx import TensorProto

    rng = np.random.default_rng(1)
    w = rng.standard_normal((32, 64)).astype(np.float32)
    half = fp16_weights(_graph(w), "test")
    kinds = {i.name: i.data_type for i in half.graph.initializer}
    assert kinds == {"w__fp16": TensorProto.FLOAT16, "b": TensorProto.FLOAT}
    x = rng.standard_normal((5, 32)).astype(np.float32)
    sess = ort.InferenceSession(half.SerializeToString(), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"x": x})[0]
    np.testing.assert_allclose(
        got, x @ w.astype(np.float16).astype(np.float32) + 1000.123, rtol=1e-5
    )
    w[0, 0] = 1e5
    with pytest.raises(ConfigError, match="beyond float16's range"):
        fp16_weights(_graph(w), "test")


@pytest.fixture(scope="module")
def int8_bundle(tmp_path_factory):
    from recsys_export.export import export_bundle
    from recsys_export.models.synthetic import synthetic_checkpoint

    ck = synthetic_checkpoint("mf", 300, 2000, factors=16, init_std=0.5, seen_per_user=20)
    path = tmp_path_factory.mktemp("int8") / "mf"
    manifest = export_bundle(ck, path, formats="onnx", precision="int8").to_dict()
    return path, manifest


def test_int8_variant_is_judged_and_recorded(int8_bundle):
    path, manifest = int8_bundle
    variant = manifest["formats"]["onnx"]["variants"]["int8"]
    assert manifest["parity"]["passed"]  # the exact graphs are still verified
    assert set(variant["graphs"]) == {"score_all_partial", "score", "score_groups", "group_max"}
    assert set(variant["arrays"]) == {"users", "items", "user_bias"}
    for rel in [*variant["graphs"].values(), *variant["arrays"].values()]:
        assert rel.startswith("onnx/variants/int8/") and rel in manifest["files"]
    sizes = variant["factor_bytes"]
    rows = 300 + 2000
    assert sizes == {"int8": rows * (16 + 4), "fp32": rows * 16 * 4}  # + a scale per row
    quality = variant["quality"]
    doc = json.loads((path / "parity.json").read_text())
    assert doc["variants"]["int8"] == quality
    assert quality["users"] == 300
    for key in ("recall@10", "recall@100", "score_recall@10", "score_recall@100"):
        assert 0.9 <= quality[key] <= 1.0
    assert quality["recall@10"] >= quality["score_recall@10"]  # the exact re-rank helps
    assert 0 < quality["score_abs_max"] < 0.2 and quality["score_abs_mean"] > 0


def test_variant_is_loaded_only_when_asked(int8_bundle):
    path, _ = int8_bundle
    exact = Recommender.load(path)
    users = np.arange(40)
    exact.recommend(users, 5, by_index=True)
    exact.score_all(users[:3], by_index=True)
    exact.score([0], [1], by_index=True)
    assert exact.precision == "fp32"
    assert not any("variant" in name for name in exact._engine.sessions._sessions)
    approx = Recommender.load(path, precision="int8")
    assert approx.precision == "int8"
    a = approx.recommend(users, 10, by_index=True)
    e = exact.recommend(users, 10, by_index=True)
    overlap = np.mean([len(set(x) & set(y)) / 10 for x, y in zip(a.items, e.items)])
    assert overlap >= 0.95
    # re-ranked candidates carry exact scores: equal where the items agree
    same = a.items == e.items
    np.testing.assert_allclose(a.scores[same], e.scores[same], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(approx.recommend(7, 10, by_index=True).items[0], a.items[7])
    sa, se = approx.score_all(users, by_index=True), exact.score_all(users, by_index=True)
    assert 0 < np.abs(sa - se).max() < 0.2
    pairs = approx.score([0, 5], [3, 9], by_index=True)
    np.testing.assert_allclose(pairs, se[[0, 5], [3, 9]], atol=0.2)
    assert any("variant:int8" in name for name in approx._engine.sessions._sessions)


def test_precision_errors(int8_bundle, tmp_path):
    from recsys_export.export import export_bundle
    from recsys_export.models.synthetic import synthetic_checkpoint

    path, _ = int8_bundle
    with pytest.raises(BundleError, match="has no fp16 variant .*--precision fp16"):
        Recommender.load(path, precision="fp16")
    with pytest.raises(ConfigError, match="precision"):
        Recommender.load(path, precision="int4")
    ck = synthetic_checkpoint("densenet", 20, 30, factors=4, hidden=8)
    with pytest.raises(ConfigError, match="int8 is available for MF bundles"):
        export_bundle(ck, tmp_path / "dn", precision="int8", verify=False)
    assert not (tmp_path / "dn").exists()


@pytest.mark.slow
def test_fp16_densenet_and_cli(tmp_path, capsys):
    from recsys_export.models.synthetic import synthetic_checkpoint

    ck = synthetic_checkpoint("densenet", 120, 500, factors=8, hidden=16, seen_per_user=5)
    ckpt = tmp_path / "dn.pt"
    ck.save(ckpt)
    bundle = tmp_path / "dn"
    assert main(["export", str(ckpt), "--out", str(bundle), "--precision", "fp16"]) == 0
    out = capsys.readouterr().out
    assert "fp16 variant: recall@10" in out
    manifest = json.loads((bundle / "manifest.json").read_text())
    variant = manifest["formats"]["onnx"]["variants"]["fp16"]
    assert variant["kernel_score_all"] and variant["quality"]["recall@10"] >= 0.9
    user = str(ck.user_map.raw_ids[3])
    assert main(["recommend", str(bundle), "--user", user, "-k", "3", "--json"]) == 0
    exact = json.loads(capsys.readouterr().out)
    argv = ["recommend", str(bundle), "--user", user, "-k", "3", "--json", "--precision", "fp16"]
    assert main(argv) == 0
    approx = json.loads(capsys.readouterr().out)
    assert len(approx[0]["items"]) == 3
    np.testing.assert_allclose(approx[0]["scores"], exact[0]["scores"], rtol=1e-2)
    item = str(ck.item_map.raw_ids[4])
    assert main(["score", str(bundle), "--user", user, "--item", item, "--precision", "fp16"]) == 0
    assert main(["inspect", str(bundle)]) == 0
    assert "fp16 variant (loaded only when asked for): recall@10" in capsys.readouterr().out
    assert main(["recommend", str(bundle), "--user", user, "--precision", "int8"]) == 2
    assert "has no int8 variant" in capsys.readouterr().err


def test_two_variants_in_one_export(tmp_path):
    from recsys_export.export import export_bundle
    from recsys_export.models.synthetic import synthetic_checkpoint

    ck = synthetic_checkpoint("mf", 40, 300, factors=8, seen_per_user=4)
    manifest = export_bundle(ck, tmp_path / "mf", formats="onnx", precision="int8, fp16").to_dict()
    variants = manifest["formats"]["onnx"]["variants"]
    assert set(variants) == {"fp16", "int8"}
    doc = json.loads((tmp_path / "mf" / "parity.json").read_text())
    assert set(doc["variants"]) == {"fp16", "int8"}
    for precision in ("fp16", "int8"):
        rec = Recommender.load(tmp_path / "mf", precision=precision)
        assert rec.recommend(np.arange(40), 5, by_index=True).items.shape == (40, 5)
    with pytest.raises(ConfigError, match="precision must be one of"):
        export_bundle(ck, tmp_path / "bad", precision="fp16,int4", verify=False)


def test_verify_record_keeps_the_variants_quality(int8_bundle, tmp_path):
    """``verify --record`` rewrites parity.json with the new report; what export measured
    besides parity (the variants' recall) stays there, beside the manifest's copy."""
    import shutil

    from recsys_export.bundle import Bundle
    from recsys_export.parity import verify_bundle

    path = tmp_path / "mf"
    shutil.copytree(int8_bundle[0], path)
    before = json.loads((path / "parity.json").read_text())
    report = verify_bundle(path, record=True, full_matrix=False)
    assert report.passed
    after = json.loads((path / "parity.json").read_text())
    assert after["variants"] == before["variants"]
    assert (
        after["variants"]["int8"]
        == int8_bundle[1]["formats"]["onnx"]["variants"]["int8"]["quality"]
    )
    assert after["rows"] != before["rows"] or after.get("plan") != before.get("plan")
    Bundle.load(path)  # checksums rewritten with it
