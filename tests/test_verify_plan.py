"""Verification at size: the plan in reports and on the CLI, and what it catches.

A perturbation confined to one user's or one item's weights in one exported graph:

* an item: every planned user's row covers every item, so ``score_all`` and
  ``recommend`` catch it whatever users were sampled (the item sweep);
* a sampled (edge) user: caught by ``score_all`` / ``recommend``;
* an unsampled user in the ``score`` graph: caught by the random pairs (16 per user on
  average with the default budget);
* an unsampled user in the ``score_all`` or ``recommend`` graph: missed by the default
  plan (documented in docs/parity.md), caught by ``--full``.
"""

from __future__ import annotations

import io
import json
import shutil

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from recsys_export.bundle import Bundle, update_bundle
from recsys_export.checkpoint import Checkpoint
from recsys_export.cli import main
from recsys_export.export import export_bundle
from recsys_export.ids import IdMap
from recsys_export.models import DenseNet, MatrixFactorization
from recsys_export.parity import (
    bundle_seen,
    load_backends,
    reference_model,
    run_parity,
    verify_bundle,
)
from recsys_export.plan import DEFAULT_BUDGET, plan_parity


def _checkpoint(model, seen_per_user: int = 3) -> Checkpoint:
    n_u, n_i = model.n_users, model.n_items
    rng = np.random.default_rng(0)
    users = np.repeat(np.arange(n_u, dtype=np.int64), seen_per_user)
    items = rng.integers(0, n_i, size=users.size, dtype=np.int64)
    keep = users != 1  # user 1 has seen nothing
    return Checkpoint(
        model.eval(),
        IdMap(np.arange(n_u), "user"),
        IdMap(np.arange(n_i), "item"),
        users[keep],
        items[keep],
    )


def _mf(n_users: int, n_items: int, seed: int = 0) -> MatrixFactorization:
    torch.manual_seed(seed)
    model = MatrixFactorization(n_users, n_items, 4, biased=True, global_mean=3.0, init_std=0.3)
    with torch.no_grad():
        model.user_bias.weight.normal_()
        model.item_bias.weight.normal_()
    return model


def _perturb(src, dst, entry: str, n: int, index: int, delta: float = 1e-2) -> None:
    """Copy a bundle, then add ``delta`` to slice ``index`` of every initializer of the
    ONNX ``entry`` graph with an axis of length ``n`` (one user's or item's weights);
    checksums are re-recorded so only the numbers are wrong."""
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)
    rel = f"onnx/{entry}.onnx"
    model = onnx.load(str(dst / rel))
    touched = 0
    for init in model.graph.initializer:
        arr = numpy_helper.to_array(init)
        axes = [a for a, d in enumerate(arr.shape) if d == n]
        if not axes or arr.dtype != np.float32:
            continue
        arr = arr.copy()
        np.moveaxis(arr, axes[0], 0)[index] += delta
        init.CopyFrom(numpy_helper.from_array(arr, init.name))
        touched += 1
    assert touched, f"no initializer of {entry} has an axis of {n}"
    buf = io.BytesIO(model.SerializeToString())
    update_bundle(dst, manifest_updates={}, new_files={rel: (buf.getvalue(), f"onnx:{entry}")})


def _failed(report) -> set[tuple[str, str]]:
    return {(r["format"], r["entry_point"]) for r in report.rows() if not r["passed"]}


# --------------------------------------------------------------------------- small model


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """60 x 50 MF; a budget of 500 pairs samples 10 of its 60 users."""
    root = tmp_path_factory.mktemp("small") / "b"
    export_bundle(_checkpoint(_mf(60, 50)), root, budget=500)
    return root


def test_export_records_the_plan(small):
    bundle = Bundle.load(small)
    plan = bundle.manifest["parity"]["plan"]
    assert plan["mode"] == "sample" and plan["users"] == 10 and plan["budget_pairs"] == 500
    report = bundle.read_json("parity.json")
    assert report["plan"] == plan
    assert {"reference", "eager", "onnx", "runtime", "compare"} <= set(report["timings"])
    sampled = next(c for c in report["comparisons"] if c["case"] == "sampled rows")
    assert sampled["n_values"] == 10 * 50


def test_full_compares_every_pair(small, tmp_path):
    report = verify_bundle(small, full=True, budget=500, record=False)
    assert report.passed and report.plan["mode"] == "full" and report.plan["forced_full"]
    rows = [c for c in report.comparisons if c.case == "full matrix"]
    # a default bundle (no pt2): every format it holds, the runtime and eager float32
    assert {c.format for c in rows} == {"eager", "onnx", "torchscript", "runtime"}
    assert all(c.n_values == 60 * 50 for c in rows)
    # every user through recommend k=1 and k=10
    rec = [c for c in report.comparisons if c.case.startswith("all users k=")]
    assert rec and all(c.topk_users == 60 for c in rec if not c.case.startswith("all users k=50"))


def test_unsampled_user_in_score_all_needs_full(small, tmp_path):
    manifest = Bundle.load(small).manifest
    seen = bundle_seen(small, manifest)
    plan = plan_parity(60, 50, seen=seen, budget=500)
    assert plan.to_dict()["users_sha256"] == manifest["parity"]["plan"]["users_sha256"]
    outside = int(np.setdiff1d(np.arange(60), plan.users)[0])
    _perturb(small, tmp_path / "p", "score_all", 60, outside)
    backends = load_backends(tmp_path / "p", Bundle.load(tmp_path / "p").manifest, ["onnx"])
    ref = reference_model(small, manifest)
    # the documented miss: the plan alone (no random batches) never computes that row
    report = run_parity(ref, backends, 60, 50, seen=seen, batch_sizes=(), plan=plan)
    assert report.passed
    full = plan_parity(60, 50, seen=seen, budget=500, full=True)
    report = run_parity(ref, backends, 60, 50, seen=seen, batch_sizes=(), plan=full)
    assert _failed(report) == {("onnx", "score_all")}
    # verify --full (random batches included) names it too
    report = verify_bundle(tmp_path / "p", full=True, budget=500, record=False)
    assert _failed(report) == {("onnx", "score_all")}


def test_sampled_edge_user_and_any_item_are_caught(small, tmp_path):
    _perturb(small, tmp_path / "u", "score_all", 60, 59)  # the last user is always planned
    assert _failed(verify_bundle(tmp_path / "u", budget=500, record=False)) == {
        ("onnx", "score_all")
    }
    _perturb(small, tmp_path / "i", "recommend", 50, 17)  # an item: every row covers it
    report = verify_bundle(tmp_path / "i", budget=500, record=False)
    assert ("onnx", "recommend") in _failed(report)
    assert _failed(report) <= {("onnx", "recommend")}


def test_cli_flags_and_inspect(small, tmp_path, capsys):
    path = tmp_path / "b"
    shutil.copytree(small, path)
    assert main(["verify", str(path), "--budget", "1_000", "-q", "--record"]) == 0
    out = capsys.readouterr().out
    assert "plan: sample: 20 of 60 users x 50 items = 1,000 pairs" in out
    assert main(["inspect", str(path)]) == 0
    assert "plan: sample: 20 of 60 users" in capsys.readouterr().out
    assert main(["verify", str(path), "--full", "-q", "--json", "--record"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["plan"]["mode"] == "full" and report["plan"]["users"] == 60
    assert Bundle.load(path).manifest["parity"]["plan"]["mode"] == "full"


def test_inspect_shows_the_plan_without_torch(small):
    """The runtime-only install: ``inspect`` describes the recorded plan, torch unimportable."""
    import subprocess
    import sys
    from pathlib import Path

    code = (
        "import sys; sys.modules['torch'] = None; from recsys_export.cli import main; "
        f"sys.exit(main(['inspect', {str(small)!r}]))"
    )
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "plan: sample: 10 of 60 users" in done.stdout


@pytest.mark.parametrize(
    "argv",
    [
        ["verify", "{b}", "--budget", "0"],
        ["verify", "{b}", "--budget", "lots"],
        ["verify", "{b}", "--full", "--budget", "10"],
        ["export", "{c}", "--out", "{o}", "--budget", "-3"],
    ],
)
def test_cli_bad_budget_is_one_line_exit_2(small, tmp_path, capsys, argv):
    ckpt = tmp_path / "c.pt"
    _checkpoint(_mf(5, 4)).save(ckpt)
    args = [a.format(b=small, c=ckpt, o=tmp_path / "out") for a in argv]
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "budget" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_export_bad_budget_raises_config_error(tmp_path):
    from recsys_export.errors import ConfigError

    with pytest.raises(ConfigError, match="budget"):
        export_bundle(_checkpoint(_mf(5, 4)), tmp_path / "b", budget=0)
    assert not (tmp_path / "b").exists()


def test_eager_densenet_reference_is_tiled_and_exact():
    from recsys_export.parity import backends as parity

    torch.manual_seed(0)
    model = DenseNet(9, 300, 5, 7, global_mean=1.5).eval()
    users = np.array([3, 0, 8, 3], dtype=np.int64)
    old = parity.EAGER_TILE_BYTES
    try:
        parity.EAGER_TILE_BYTES = 4 * 7 * 64  # 64 items x 1 user per tile: many tiles
        got = parity.EagerBackend(model).score_all(users)
    finally:
        parity.EAGER_TILE_BYTES = old
    with torch.no_grad():
        want = model.score_all(torch.from_numpy(users)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    assert got.dtype == np.float32


# --------------------------------------------------------------------------- default budget


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """20,000 x 1,000 MF: 20M pairs, over the default budget (16M): a 16,000-user sample."""
    root = tmp_path_factory.mktemp("big") / "b"
    manifest = export_bundle(_checkpoint(_mf(20_000, 1_000)), root, formats="onnx")
    return root, manifest


def test_default_budget_samples_big_models(big):
    root, manifest = big
    plan = manifest["parity"]["plan"]
    assert manifest["parity"]["passed"]
    assert plan["mode"] == "sample" and plan["budget_pairs"] == DEFAULT_BUDGET
    assert plan["users"] == DEFAULT_BUDGET // 1_000
    assert plan["edge_users"]["no_seen"] == [1]


def test_default_budget_catches_an_unsampled_user_in_score_via_random_pairs(big, tmp_path):
    root, _ = big
    plan = plan_parity(20_000, 1_000, seen=bundle_seen(root, Bundle.load(root).manifest))
    pairs_u = np.concatenate([u for u, _ in plan.score_chunks(1 << 16)])
    outside = np.setdiff1d(np.arange(20_000), plan.users)
    hit = outside[np.isin(outside, pairs_u)]
    assert len(hit) > 0.99 * len(outside)  # 16 random pairs per user on average
    _perturb(root, tmp_path / "p", "score", 20_000, int(hit[0]))
    report = verify_bundle(tmp_path / "p", formats=["onnx"], record=False)
    assert _failed(report) == {("onnx", "score")}


def test_default_budget_catches_a_single_item(big, tmp_path):
    root, _ = big
    _perturb(root, tmp_path / "p", "score_all", 1_000, 999)
    report = verify_bundle(tmp_path / "p", formats=["onnx"], record=False)
    assert _failed(report) == {("onnx", "score_all")}
