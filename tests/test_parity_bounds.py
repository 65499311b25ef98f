"""The float32 error model of parity: sound for correct exports, tight enough for defects.

* the bound of a value is what docs/parity.md says, computed by hand here;
* a badly conditioned DenseNet (item terms ``sum |c_h w2_h| ~ 50``, scores near 0, as
  the MovieLens 100K models that failed the old fixed tolerance) passes every
  eager-equivalent backend, the runtime's fast paths included; the old ``max(a, -c) w2
  + c w2`` kernel fails it, and the export then falls back to the portable graphs;
* small defects fail: a 1e-4 relative change of one weight, one hidden unit, a wrong
  bias, a reversed kernel tile, a float64 output;
* parity.json carries the rule, the bounds and the ratios; the CLI prints the ratio;
* a model that scores NaN is a named parity failure, not an unwritable report.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from helpers.conditioning import checkpoint_of, ill_conditioned_densenet
from onnx import helper, numpy_helper

from recsys_export.bundle import Bundle, update_bundle
from recsys_export.checkpoint import Checkpoint
from recsys_export.cli import main
from recsys_export.errors import ParityError
from recsys_export.export import export_bundle, kernels
from recsys_export.ids import IdMap
from recsys_export.models import MatrixFactorization
from recsys_export.parity import verify_bundle
from recsys_export.parity.bounds import SAFETY, TINY32, U32, reference_for
from recsys_export.runtime import Recommender

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _bench_module(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _mf(seed: int = 0) -> MatrixFactorization:
    """A well-conditioned MF: 16 factors, no biases, weights of one scale."""
    torch.manual_seed(seed)
    return MatrixFactorization(60, 50, 16, init_std=0.3).eval()


def _checkpoint(model) -> Checkpoint:
    users = np.arange(model.n_users, dtype=np.int64)
    ids = IdMap(users, "user"), IdMap(np.arange(model.n_items), "item")
    return Checkpoint(model, *ids, users, users % model.n_items)


def _edit(src, dst, rel, fn) -> None:
    """Copy a bundle and replace the initializers of graph ``rel`` that ``fn(name,
    array)`` returns a new array for; checksums are re-recorded (only numbers change)."""
    shutil.copytree(src, dst)
    model = onnx.load(str(dst / rel))
    touched = 0
    for init in model.graph.initializer:
        new = fn(init.name, numpy_helper.to_array(init).copy())
        if new is not None:
            init.CopyFrom(numpy_helper.from_array(new, init.name))
            touched += 1
    assert touched, f"nothing edited in {rel}"
    role = Bundle.load(src).manifest["files"][rel]["role"]
    update_bundle(dst, manifest_updates={}, new_files={rel: (model.SerializeToString(), role)})


def _ratios(report, fmt: str) -> dict[str, float]:
    return {r["entry_point"]: r["max_ratio"] for r in report.rows() if r["format"] == fmt}


def _failed(report) -> set[tuple[str, str]]:
    return {(r["format"], r["entry_point"]) for r in report.rows() if not r["passed"]}


@pytest.fixture(scope="module")
def mf_bundle(tmp_path_factory):
    root = tmp_path_factory.mktemp("mf") / "b"
    model = _mf()
    export_bundle(_checkpoint(model), root)
    return root, model


@pytest.fixture(scope="module")
def dn_bundle(tmp_path_factory):
    root = tmp_path_factory.mktemp("dn") / "b"
    model = ill_conditioned_densenet()
    export_bundle(checkpoint_of(model), root)
    return root, model


# --------------------------------------------------------------------------- the bound


def test_mf_bound_is_the_documented_formula():
    model = MatrixFactorization(4, 3, 5, biased=True, global_mean=3.5, init_std=0.5).eval()
    with torch.no_grad():
        model.user_bias.weight.normal_()
        model.item_bias.weight.normal_()
    values, bounds = reference_for(model).score(np.array([2]), np.array([1]))
    p = model.user_factors.weight[2].detach().double().numpy()
    q = model.item_factors.weight[1].detach().double().numpy()
    bu, bi = (
        float(model.user_bias.weight[2, 0].detach()),
        float(model.item_bias.weight[1, 0].detach()),
    )
    terms = np.abs(p * q).sum() + abs(bu) + abs(bi) + 3.5
    n = 5 + 4
    assert values[0] == pytest.approx(float(p @ q) + bu + bi + 3.5, abs=1e-12)
    assert bounds[0] == pytest.approx(SAFETY * n * U32 * terms + n * TINY32, rel=1e-12)


def test_densenet_bound_ignores_units_held_far_below_zero():
    """The bound of the badly conditioned net comes from its few live units: the item
    terms of the others (~50 per item) do not enter it."""
    model = ill_conditioned_densenet()
    users = np.arange(model.n_users)
    values, bounds = reference_for(model).score_all(users)
    n1 = 2 * model.n_factors + 2
    with torch.no_grad():
        c = model.split_first_layer()[1].double()
        w2 = model.linear2.weight[0].double()
        terms = (c.abs() * w2.abs()).sum(1)  # per item: what the max rewrite sums
    assert float(terms.mean()) == pytest.approx(50.0, rel=0.01)
    # a bound of the unmasked first layer would be at least c N1 u sum_h |c_h w2_h|
    unmasked = SAFETY * n1 * U32 * float(terms.min())
    assert np.median(bounds) < unmasked / 20
    assert np.median(np.abs(values)) < 1.0  # scores near 0
    with torch.no_grad():
        eager = model.score_all(torch.from_numpy(users)).double().numpy()
    assert (np.abs(eager - values) <= bounds).all()  # the model's own float32 arithmetic


def test_explicit_tolerances_replace_the_bound(mf_bundle):
    root, _ = mf_bundle
    report = verify_bundle(root, atol=0.0, rtol=0.0, record=False, full_matrix=False)
    assert report.bound["formula"] == "atol + rtol * |ref|"
    assert not report.passed  # float32 is not float64: zero tolerance fails
    report = verify_bundle(root, atol=1e-3, record=False, full_matrix=False)
    assert report.passed and (report.atol, report.rtol) == (1e-3, 1e-5)
    assert "atol=0.001 rtol=1e-05" in report.table()


# --------------------------------------------------------------------------- conditioning


def test_ill_conditioned_densenet_passes_every_backend(dn_bundle):
    root, _ = dn_bundle
    parity = Bundle.load(root).read_json("parity.json")
    assert parity["passed"] and parity["max_ratio"] < 0.1
    assert {r["format"] for r in parity["rows"]} == {"eager", "torchscript", "onnx", "runtime"}
    assert Recommender.load(root).fast_paths  # the runtime's kernels passed too
    assert all(r["topk_agree"] == r["topk_users"] for r in parity["rows"])


@pytest.fixture
def old_kernel(monkeypatch):
    """Exports write the cancelling DenseNet kernel of recsys-export <= the fix."""
    from recsys_export.export import frozen

    original = frozen.DenseNetInference.__init__

    def init(self, model):
        original(self, model)
        with torch.no_grad():  # the old offset: the item terms c . w2 + b2
            self.item_offset = (-self.neg_c_t).t() @ self.w2 + self.b2

    monkeypatch.setattr(frozen.DenseNetInference, "__init__", init)
    # the tiles before the fix: Max(a, -c) . w2 (the item term c . w2 in the offset)
    monkeypatch.setattr(kernels, "_dn_item_tiles", _bench_module("densenet_kernel_ab")._max_tiles)


def test_failing_kernel_falls_back_to_the_portable_graphs(old_kernel, tmp_path, capsys):
    model = ill_conditioned_densenet(seed=1)
    manifest = export_bundle(checkpoint_of(model), tmp_path / "b")  # passes: the fallback
    onnx_fmt = manifest["formats"]["onnx"]
    assert "kernels" not in onnx_fmt
    fallback = onnx_fmt["kernels_fallback"]
    assert fallback["reason"].startswith("the runtime's fast-path kernels failed parity")
    assert "score_all (err/bound" in fallback["reason"]
    assert fallback["kernels"]["score_all"] == "onnx/kernels/score_all.onnx"
    parity = manifest["parity"]
    assert parity["passed"] and len(parity["notes"]) == 1
    assert parity["notes"][0].startswith("runtime: the runtime's fast-path kernels failed")
    rec = Recommender.load(tmp_path / "b")
    assert not rec.fast_paths  # the runtime serves the entry-point graphs
    report = Bundle.load(tmp_path / "b").read_json("parity.json")
    runtime = [c for c in report["comparisons"] if c["format"] == "runtime"]
    assert runtime and all(c["passed"] for c in runtime)  # re-verified on the graphs
    assert main(["inspect", str(tmp_path / "b")]) == 0
    assert "runtime: the runtime's fast-path kernels failed parity" in capsys.readouterr().out


def test_failing_kernel_and_graph_fail_the_export(old_kernel, tmp_path, monkeypatch):
    """The fallback is for the fast paths only: a failing portable graph fails."""
    from recsys_export.parity import backends

    def wrong(self, users):
        return self.sessions["score_all"].run(None, {"users": users})[0] + np.float32(1e-3)

    monkeypatch.setattr(backends.OnnxBackend, "score_all", wrong)
    with pytest.raises(ParityError, match="onnx:score_all"):
        export_bundle(checkpoint_of(ill_conditioned_densenet(seed=1)), tmp_path / "b")
    assert not (tmp_path / "b").exists()


# --------------------------------------------------------------------------- defects


def test_one_weight_off_by_1e_4_relative_fails(mf_bundle, tmp_path):
    root, model = mf_bundle
    user = 3
    f = int(np.argmax(np.abs(model.user_factors.weight[user].detach().numpy())))

    def perturb(name, arr):
        if arr.shape == (60, 16):
            arr[user, f] *= 1 + 1e-4
            return arr

    _edit(root, tmp_path / "p", "onnx/score_all.onnx", perturb)
    report = verify_bundle(tmp_path / "p", record=False)
    assert _failed(report) == {("onnx", "score_all")}
    assert _ratios(report, "onnx")["score_all"] > 2


@pytest.mark.parametrize(
    "defect",
    ["w2 of one live unit x (1 + 1e-4)", "one hidden unit's item half - 1e-4", "b2 + 1e-4"],
)
def test_small_defects_in_an_ill_conditioned_densenet_fail(dn_bundle, tmp_path, defect):
    root, model = dn_bundle
    live = int(np.argmax(np.abs(model.linear2.weight[0, :6].detach().numpy())))

    def perturb(name, arr):
        if defect.startswith("w2") and name.endswith("w2_row"):
            arr[0, live] *= 1 + 1e-4
            return arr
        if defect.startswith("one hidden") and arr.shape == (1, model.hidden, model.n_items):
            arr[0, live] -= 1e-4  # the graph holds -c: the unit's item half moves
            return arr
        if defect.startswith("b2") and name.endswith("b2"):
            return (arr + np.float32(1e-4)).astype(np.float32)
        return None

    _edit(root, tmp_path / "p", "onnx/score_all.onnx", perturb)
    report = verify_bundle(tmp_path / "p", record=False)
    assert _failed(report) == {("onnx", "score_all")}, report.table()
    assert _ratios(report, "onnx")["score_all"] > 2


def test_reversed_kernel_tile_fails_the_runtime(dn_bundle, tmp_path):
    root, _ = dn_bundle

    def reverse(name, arr):
        return np.ascontiguousarray(arr[:, ::-1]) if name == "neg_c_t_0" else None

    _edit(root, tmp_path / "p", "onnx/kernels/score_all.onnx", reverse)
    report = verify_bundle(tmp_path / "p", record=False)
    assert _failed(report) == {("runtime", "score_all"), ("runtime", "recommend")}


def test_float64_output_fails_as_a_dtype_change(mf_bundle, tmp_path):
    root, _ = mf_bundle
    shutil.copytree(root, tmp_path / "p")
    rel = "onnx/score_all.onnx"
    model = onnx.load(str(tmp_path / "p" / rel))
    out = model.graph.output[0]
    model.graph.node[-1].output[0] = "scores32"
    model.graph.node.append(helper.make_node("Cast", ["scores32"], [out.name], to=11))
    out.type.tensor_type.elem_type = onnx.TensorProto.DOUBLE
    role = Bundle.load(root).manifest["files"][rel]["role"]
    update_bundle(
        tmp_path / "p", manifest_updates={}, new_files={rel: (model.SerializeToString(), role)}
    )
    report = verify_bundle(tmp_path / "p", formats=["onnx"], record=False)
    assert _failed(report) == {("onnx", "score_all")}
    problems = [p for c in report.comparisons for p in c.problems]
    assert any("dtype float64 != expected float32" in p for p in problems)


# --------------------------------------------------------------------------- reports


def test_parity_json_carries_rule_bounds_and_ratios(mf_bundle):
    root, _ = mf_bundle
    parity = Bundle.load(root).read_json("parity.json")
    assert parity["schema"] == "recsys-export-parity/2"
    assert parity["atol"] is None and parity["rtol"] is None
    rule = parity["bound"]
    assert rule["model"] == "mf" and rule["N"] == 16 + 4 and rule["c"] == SAFETY
    for row in parity["rows"]:
        # recommend's empty slots (-inf, item -1) must match exactly: a bound of 0
        assert 0 <= row["min_bound"] <= row["worst_bound"] <= row["max_bound"]
        assert row["min_bound"] > 0 or row["entry_point"] == "recommend"
        assert row["max_ratio"] == pytest.approx(row["worst_error"] / row["worst_bound"])
        assert row["max_ratio"] <= 1
    summary = Bundle.load(root).manifest["parity"]
    assert summary["max_ratio"] == parity["max_ratio"] > 0
    assert {"max_ratio", "worst_bound"} <= set(summary["rows"][0])


def test_cli_table_shows_the_ratio(mf_bundle, tmp_path, capsys):
    root, _ = mf_bundle
    shutil.copytree(root, tmp_path / "b")
    assert main(["verify", str(tmp_path / "b"), "-q"]) == 0
    out = capsys.readouterr().out
    head = out.splitlines()[0]
    assert "err/bound" in head and "max rel" not in head
    assert "PASS: float32 error bound (mf, docs/parity.md); worst err/bound" in out
    assert main(["inspect", str(tmp_path / "b")]) == 0
    assert "parity: PASS (float32 error bound (mf" in capsys.readouterr().out
    argv = ["export", str(tmp_path / "c.pt"), "--out", str(tmp_path / "c")]
    _checkpoint(_mf()).save(tmp_path / "c.pt")
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "  onnx         score_all  max abs" in out and "err/bound" in out


class _NaNScores(torch.nn.Module):
    """Scores NaN for user 1 (a broken module of one's own)."""

    def __init__(self) -> None:
        super().__init__()
        self.user_embedding = torch.nn.Embedding(4, 3)
        self.item_embedding = torch.nn.Embedding(5, 3)

    def forward(self, users, items):
        s = (self.user_embedding(users) * self.item_embedding(items)).sum(1)
        return torch.where(users == 1, s * float("nan"), s)


def test_module_scoring_nan_is_a_named_parity_failure(tmp_path):
    from recsys_export.byom import export_model

    with pytest.raises(ParityError) as info:
        export_model(_NaNScores(), tmp_path / "b", n_users=4, n_items=5, formats="torchscript")
    message = str(info.value)
    assert message.startswith("parity check failed for reference:")
    assert "the model's own scores are not finite" in message
    assert "nan for user index 1" in message
    report = info.value.report
    json.dumps(report.to_dict(), allow_nan=False)  # parity.json is writable
    assert {r["format"] for r in report.rows() if not r["passed"]} == {"reference"}
    assert not (tmp_path / "b").exists()


# --------------------------------------------------------------------------- the doc

_DOC_BLOCK = re.compile(r"<!-- parity-test -->\n```(python|bash)\n(.*?)\n```", re.S)


def test_doc_check_by_hand_runs_and_matches_the_code(tmp_path, monkeypatch, capsys):
    """docs/parity.md's marked blocks run as written; its DenseNet formula gives the
    bound the code computes."""
    doc = (Path(__file__).resolve().parents[1] / "docs" / "parity.md").read_text()
    blocks = _DOC_BLOCK.findall(doc)
    assert [lang for lang, _ in blocks] == ["bash", "python", "python"]
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for lang, body in blocks:
        if lang == "python":
            exec(compile(body, "parity.md", "exec"), namespace)
            continue
        for line in body.splitlines():
            assert main(shlex.split(line)[1:]) == 0
    assert "|diff|" in capsys.readouterr().out
    model = ill_conditioned_densenet(n_users=5, n_items=7)
    ref = reference_for(model)
    w = {k: v.double() for k, v in model.state_dict().items()}
    for u, i in [(0, 0), (3, 6), (4, 2)]:
        want = ref.score(np.array([u]), np.array([i]))[1][0]
        got = namespace["densenet_bound"](
            w["user_factors.weight"], w["item_factors.weight"], w["linear1.weight"],
            w["linear1.bias"], w["linear2.weight"][0], float(w["linear2.bias"]),
            float(w["global_mean"]), u, i, ref.rule,
        )  # fmt: skip
        assert got == pytest.approx(want, rel=1e-9)


def test_kernel_ab_tiny(tmp_path, capsys):
    """The old kernel fails the badly conditioned net's bound, the new one does not."""
    out = tmp_path / "ab.json"
    assert _bench_module("densenet_kernel_ab").main(["--tiny", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert rows["relu"]["worst_err_over_bound"] < 0.1
    assert rows["max rewrite"]["worst_err_over_bound"] > 1
    assert "relu / max rewrite time" in capsys.readouterr().out


def test_parity_sweep_tiny(tmp_path, capsys):
    sweep = _bench_module("parity_sweep")
    out = tmp_path / "sweep.json"
    argv = ["--tiny", "--seeds", "0", "--models", "mf", "--json", str(out)]
    assert sweep.main([*argv, "--datasets", "synthetic-ratings,toy-post"]) == 0
    rows = json.loads(out.read_text())["rows"]
    keys = {(r["dataset"], r["objective"]) for r in rows}
    assert keys == {("synthetic-ratings", "ranking"), ("synthetic-ratings", "rating"),
                    ("toy-post", "rating")}  # fmt: skip
    assert all(r["passed"] and r["topk_agree"] for r in rows)
    assert all(0 < r["ratio"][b] <= 1 for r in rows for b in sweep.BACKENDS)
    table = capsys.readouterr().out
    assert "3 models: 3 passed, 0 failed, 0 errors" in table
    # a second run resumes: nothing left to do, the same rows
    assert sweep.main([*argv, "--datasets", "toy-post"]) == 0
    assert json.loads(out.read_text())["rows"] == rows


class _Float32Inside(torch.nn.Module):
    """Keeps a float32 tensor outside its parameters: it cannot run in float64."""

    def __init__(self) -> None:
        super().__init__()
        self.user_embedding = torch.nn.Embedding(6, 3)
        self.item_embedding = torch.nn.Embedding(5, 3)
        self.mix = torch.eye(3) * 0.5  # a plain attribute: .to(float64) leaves it float32

    def forward(self, users, items):
        return ((self.user_embedding(users) @ self.mix) * self.item_embedding(items)).sum(1)


def test_module_without_float64_is_checked_with_the_fixed_rule(tmp_path):
    from recsys_export.byom import export_model

    result = export_model(_Float32Inside(), tmp_path / "b", n_users=6, n_items=5,
                          formats="torchscript")  # fmt: skip
    parity = result.parity
    assert parity["passed"] and (parity["atol"], parity["rtol"]) == (1e-5, 1e-5)
    assert parity["tolerance"] == "atol=1e-05 rtol=1e-05"
    assert parity["reference"].startswith("float32 eager (the module cannot run in float64")
    assert parity["bound"]["formula"] == "atol + rtol * |ref|"
