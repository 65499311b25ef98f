"""Parity suite: verify passes on real models, fails on perturbed or mismatched ones.

Property-based tests cover odd model shapes (1 user, 1 item, 1 factor, ...) and id
draws (repeats, unsorted, all users) across every format and entry point. The error
model itself (bounds, conditioning, kernel fallback) is tested in test_parity_bounds.py.
"""

from __future__ import annotations

import io
import json

import numpy as np
import onnx
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import numpy_helper

from recsys_export.bundle import Bundle, update_bundle
from recsys_export.checkpoint import Checkpoint
from recsys_export.export import export_bundle
from recsys_export.ids import IdMap
from recsys_export.models import DenseNet, MatrixFactorization
from recsys_export.parity import (
    CHECKED_BACKENDS,
    HIST_LABELS,
    Comparison,
    EagerBackend,
    ParityReport,
    load_backends,
    reference_for,
    run_parity,
    verify_bundle,
)


def _checkpoint(model) -> Checkpoint:
    n_u, n_i = model.n_users, model.n_items
    users = np.arange(n_u, dtype=np.int64)
    return Checkpoint(
        model.eval(), IdMap(users, "user"), IdMap(np.arange(n_i), "item"), users, users % n_i
    )


def _random_model(kind, n_users, n_items, n_factors, hidden, seed):
    torch.manual_seed(seed)
    if kind == "mf":
        model = MatrixFactorization(n_users, n_items, n_factors, biased=True, global_mean=3.0)
        with torch.no_grad():
            model.user_bias.weight.normal_()
            model.item_bias.weight.normal_()
        return model
    return DenseNet(n_users, n_items, n_factors, hidden, global_mean=2.5)


@pytest.fixture(scope="module")
def mf_bundle(tmp_path_factory):
    root = tmp_path_factory.mktemp("mf")
    model = _random_model("mf", 23, 19, 4, 0, seed=5)
    export_bundle(_checkpoint(model), root / "b", formats="all")  # pt2 checked too
    return root / "b", model


def test_verify_records_report_and_keeps_checksums(mf_bundle, tmp_path):
    src, _ = mf_bundle
    import shutil

    path = tmp_path / "b"
    shutil.copytree(src, path)
    report = verify_bundle(path, record=True)
    assert report.passed
    bundle = Bundle.load(path)  # checksums rewritten atomically
    parity = bundle.read_json("parity.json")
    assert parity["schema"] == "recsys-export-parity/2"
    assert parity["histogram_bins"] == HIST_LABELS
    assert bundle.manifest["parity"]["passed"] is True
    rows = {(r["format"], r["entry_point"]) for r in parity["rows"]}
    for fmt in ("eager", "onnx", "torchscript", "pt2", "runtime"):
        for entry in ("score", "score_all", "recommend"):
            assert (fmt, entry) in rows
    ks = {c["case"] for c in parity["comparisons"] if c["entry_point"] == "recommend"}
    assert {"all users k=1 excluded", "all users k=10 excluded", "all users k=19 excluded"} <= ks
    assert "recommend" in report.table() and "PASS" in report.table()


def _perturbed_copy(src, dst, entry):
    import shutil

    shutil.copytree(src, dst)
    rel = f"onnx/{entry}.onnx"
    model = onnx.load(str(dst / rel))
    big = max(model.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    arr = numpy_helper.to_array(big).copy()
    arr.flat[0] += 1e-3
    big.CopyFrom(numpy_helper.from_array(arr, big.name))
    buf = io.BytesIO()
    buf.write(model.SerializeToString())
    # re-record the checksums: the bundle is well-formed, only its numbers are wrong
    update_bundle(dst, manifest_updates={}, new_files={rel: (buf.getvalue(), f"onnx:{entry}")})


def test_perturbed_onnx_weights_fail_verify_naming_the_entry_point(mf_bundle, tmp_path):
    src, _ = mf_bundle
    _perturbed_copy(src, tmp_path / "b", "score_all")
    report = verify_bundle(tmp_path / "b", record=False)
    assert not report.passed
    failed = {(r["format"], r["entry_point"]) for r in report.rows() if not r["passed"]}
    assert failed == {("onnx", "score_all")}
    assert "onnx" in report.table() and "FAIL" in report.table()
    row = next(r for r in report.rows() if (r["format"], r["entry_point"]) == ("onnx", "score_all"))
    assert row["max_abs_diff"] >= 5e-4


def test_verify_against_wrong_checkpoint_fails(mf_bundle, tmp_path):
    src, _ = mf_bundle
    other = _random_model("mf", 23, 19, 4, 0, seed=6)
    _checkpoint(other).save(tmp_path / "other.pt")
    report = verify_bundle(src, checkpoint=tmp_path / "other.pt", record=False, full_matrix=False)
    assert not report.passed
    wrong_size = _random_model("mf", 5, 19, 4, 0, seed=6)
    _checkpoint(wrong_size).save(tmp_path / "small.pt")
    report = verify_bundle(src, checkpoint=tmp_path / "small.pt", record=False)
    assert not report.passed and "users" in json.dumps(report.to_dict())


def test_comparison_statistics():
    c = Comparison("onnx", "score", "x")
    e = np.array([1.0, 2.0, -np.inf, 1.5])
    bound = np.array([1e-5, 1e-5, 1e-5, 1e-4])
    a = np.array([1.0, 2.0 + 2e-6, -np.inf, 1.5 + 5e-4], dtype=np.float32)
    c.add_values(e, bound, a)
    assert c.n_values == 4
    assert c.histogram[0] == 2  # exact matches, the -inf pair included
    assert c.max_abs_diff == pytest.approx(5e-4, rel=1e-2)
    assert c.n_out_of_bound == 1 and not c.passed
    # the worst ratio, and the error and bound where it occurred
    assert c.max_ratio == pytest.approx(5.0, rel=1e-2)
    assert c.worst_bound == 1e-4 and c.worst_error == pytest.approx(5e-4, rel=1e-2)
    assert (c.min_bound, c.max_bound) == (1e-5, 1e-4)
    c2 = Comparison("onnx", "score", "y")
    c2.add_values(e, bound * 100, a.astype(np.float64))
    assert not c2.dtype_ok and not c2.passed
    c3 = Comparison("onnx", "score", "z")
    c3.add_values(e, bound, a[:3])
    assert not c3.shape_ok


def test_non_finite_outputs_are_named_and_json_safe():
    c = Comparison("onnx", "score_all", "batch=2")
    e = np.array([0.5, 1.0, 2.0])
    c.add_values(e, np.full(3, 1e-6), np.array([0.5, np.nan, np.inf], dtype=np.float32))
    assert not c.passed and c.n_nonfinite == 2 and c.max_abs_diff == np.inf
    assert "non-finite outputs (nan" in c.problems[0]
    report = ParityReport(comparisons=[c])
    text = json.dumps(report.to_dict(), allow_nan=False)  # what the bundle writer needs
    assert '"max_abs_diff": null' in text and '"n_nonfinite": 2' in text


def test_topk_ties_are_interchangeable():
    c = Comparison("onnx", "recommend", "ties")
    full = np.array([[3.0, 2.0, 2.0 + 1e-7, 1.0]])
    bound = np.full_like(full, 1e-6)
    excluded = np.zeros_like(full, dtype=bool)
    c.add_topk(full, bound, np.array([[0, 2]]), np.array([[0, 1]]), excluded)
    assert c.topk_agree == 1  # items 1 and 2 are 1e-7 apart: within their bounds
    c.add_topk(full, bound, np.array([[0, 2]]), np.array([[0, 3]]), excluded)
    assert c.topk_agree == 1 and c.topk_users == 2
    c.add_topk(full, bound * 0.01, np.array([[0, 2]]), np.array([[0, 1]]), excluded)
    assert c.topk_agree == 1 and c.topk_users == 3  # tighter bounds: no longer tied
    excluded[0, 1] = True
    c.add_topk(full, bound, np.array([[0, 2]]), np.array([[0, 1]]), excluded)
    assert c.topk_agree == 1 and c.topk_users == 4  # an excluded item never agrees


@settings(
    max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    kind=st.sampled_from(["mf", "densenet"]),
    n_users=st.integers(1, 6),
    n_items=st.integers(1, 7),
    n_factors=st.integers(1, 3),
    hidden=st.integers(1, 5),
    seed=st.integers(0, 1000),
)
@pytest.mark.slow
def test_property_every_format_matches_eager_on_odd_shapes(
    tmp_path_factory, kind, n_users, n_items, n_factors, hidden, seed
):
    model = _random_model(kind, n_users, n_items, n_factors, hidden, seed)
    root = tmp_path_factory.mktemp("prop") / "b"
    export_bundle(_checkpoint(model), root, formats="all", verify=False)
    backends = load_backends(root, Bundle.load(root).manifest, CHECKED_BACKENDS)
    report = run_parity(model, backends, n_users, n_items, batch_sizes=(1, 2, 7))
    assert report.passed, report.table()
    formats = ("eager", "onnx", "torchscript", "pt2")
    assert {(r["format"], r["entry_point"]) for r in report.rows()} >= {
        (f, e) for f in formats for e in ("score", "score_all", "recommend")
    } | {("runtime", "score"), ("runtime", "score_all")}


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_property_id_draws(mf_bundle, data):
    root, model = mf_bundle
    if not hasattr(test_property_id_draws, "_backends"):
        manifest = Bundle.load(root).manifest
        test_property_id_draws._backends = {
            "eager": EagerBackend(model),
            **load_backends(root, manifest),  # not the runtime: it takes seen items only
        }
    backends = test_property_id_draws._backends
    reference = reference_for(model)
    users = np.array(
        data.draw(st.lists(st.integers(0, model.n_users - 1), min_size=1, max_size=40)),
        dtype=np.int64,
    )
    items = np.array(
        data.draw(
            st.lists(st.integers(0, model.n_items - 1), min_size=len(users), max_size=len(users))
        ),
        dtype=np.int64,
    )
    k = data.draw(st.integers(1, model.n_items))
    n_ex = data.draw(st.integers(0, 30))
    rows = np.array(
        data.draw(st.lists(st.integers(0, len(users) - 1), min_size=n_ex, max_size=n_ex)),
        dtype=np.int64,
    )
    ex = np.array(
        data.draw(st.lists(st.integers(0, model.n_items - 1), min_size=n_ex, max_size=n_ex)),
        dtype=np.int64,
    )
    want_all, bound_all = reference.score_all(users)
    for name, be in backends.items():
        c = Comparison(name, "draw", "draw")
        c.add_values(*reference.score(users, items), be.score(users, items))
        c.add_values(want_all, bound_all, be.score_all(users))
        got_s, got_i = be.recommend(users, k, rows, ex)
        full = want_all.copy()
        mask = np.zeros(full.shape, dtype=bool)
        mask[rows, ex] = True
        full[mask] = -np.inf
        want_i = np.argsort(-full, axis=1, kind="stable")[:, :k]
        want_i = np.where(np.isinf(np.take_along_axis(full, want_i, 1)), -1, want_i)
        got_ref = np.where(got_i >= 0, np.take_along_axis(full, np.maximum(got_i, 0), 1), -np.inf)
        got_bound = np.take_along_axis(bound_all, np.maximum(got_i, 0), 1)
        c.add_values(got_ref, got_bound, got_s)
        c.add_topk(full, bound_all, want_i, got_i, mask)
        assert c.passed and c.topk_agree == c.topk_users, (name, c.problems, c.max_ratio)
