"""Bring your own model (issue 17): the post's classes and any pairwise nn.Module.

Models "trained elsewhere" are in ``tests/helpers/own_models.py`` (our own code). Every
check compares with the user's module itself: scores over every (user, item) pair and
top-k lists within the parity contract (atol = rtol = 1e-5; items tied with the k-th
score within tolerance are interchangeable).
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers.own_models import DataDependent, PostDenseNet, PostMF, TwoTower
from test_embedding import (  # the C++/Node fixtures and checks of docs/runtimes.md
    _make_case,
    _run_program,
    assert_matches,
    cpp_example,  # noqa: F401
    node_example,  # noqa: F401
)

from recsys_export.byom import (
    ModuleRecommender,
    export_model,
    model_from_state_dict,
    verify_module,
)
from recsys_export.cli import main
from recsys_export.errors import CheckpointError, ConfigError, DataError, ExportError
from recsys_export.runtime import Recommender

ROOT = Path(__file__).resolve().parents[1]
HELPERS = ROOT / "tests" / "helpers" / "own_models.py"
ATOL = RTOL = 1e-5
N_USERS, N_ITEMS = 23, 17


def _ratings(seed: int = 0) -> pd.DataFrame:
    """Raw ids that are not indices: int users 1000+, string items; ~30% of the pairs."""
    rng = np.random.default_rng(seed)
    users = rng.permutation(1000 + 7 * np.arange(N_USERS))
    items = np.array([f"film-{j:02d}" for j in rng.permutation(N_ITEMS)])
    mask = rng.random((N_USERS, N_ITEMS)) < 0.3
    mask[:, 0] = True  # every user and item has a rating
    mask[0, :] = True
    u, i = np.nonzero(mask)
    return pd.DataFrame(
        {"userId": users[u], "movieId": items[i], "rating": rng.integers(1, 6, u.size)}
    )


def _train(model: torch.nn.Module, df: pd.DataFrame, steps: int = 30) -> torch.nn.Module:
    """A few SGD steps on the ratings, indices = sorted unique raw ids (as pandas codes)."""
    u = torch.from_numpy(pd.Categorical(df["userId"]).codes.astype(np.int64))
    i = torch.from_numpy(pd.Categorical(df["movieId"]).codes.astype(np.int64))
    r = torch.tensor(df["rating"].to_numpy(), dtype=torch.float32)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(u, i).reshape(-1), r)
        loss.backward()
        opt.step()
    return model.eval()


def _eager(module: torch.nn.Module, users: torch.Tensor, items: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return module(users, items).reshape(-1).numpy()


def _full_matrix(module: torch.nn.Module, n_users: int, n_items: int) -> np.ndarray:
    u = torch.arange(n_users).repeat_interleave(n_items)
    i = torch.arange(n_items).repeat(n_users)
    return _eager(module, u, i).reshape(n_users, n_items)


def assert_serves_module(rec: Recommender, module: torch.nn.Module, df: pd.DataFrame) -> None:
    """The runtime, on raw ids, equals the user's module (scores and top-k, seen removed)."""
    users = np.sort(df["userId"].unique())
    items = np.sort(df["movieId"].unique())
    assert rec.user_map.raw_ids.tolist() == users.tolist()
    assert rec.item_map.raw_ids.tolist() == items.tolist()
    want = _full_matrix(module, len(users), len(items))
    got = rec.score_all(users)
    np.testing.assert_allclose(got, want, atol=ATOL, rtol=RTOL)
    pu, pi = np.repeat(users, len(items)), np.tile(items, len(users))
    np.testing.assert_allclose(rec.score(pu, pi), want.ravel(), atol=ATOL, rtol=RTOL)
    seen = df.groupby("userId")["movieId"].apply(set).to_dict()
    k = 5
    res = rec.recommend(users, k=k)
    for row, user in enumerate(users):
        masked = want[row].astype(np.float64)
        seen_idx = np.searchsorted(items, sorted(seen[user]))
        masked[seen_idx] = -np.inf
        best = np.sort(masked)[::-1][:k]
        got_items = [x for x in res.items[row] if x is not None]
        assert not set(got_items) & seen[user], "a seen item was recommended"
        got_idx = np.searchsorted(items, got_items)
        # rank by rank, the recommended item's eager score equals the eager k-th best
        want_scores = best[: len(got_idx)]
        assert len(got_idx) == np.isfinite(best).sum()
        np.testing.assert_allclose(masked[got_idx], want_scores, atol=ATOL, rtol=RTOL)


# --------------------------------------------------------------------------- the post's classes


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["mf", "densenet"])
def test_post_class_state_dict_through_the_cli(kind, tmp_path, capsys):
    torch.manual_seed(3)
    df = _ratings()
    module = (
        PostMF(N_USERS, N_ITEMS, 3) if kind == "mf" else PostDenseNet(N_USERS, N_ITEMS, 3, 16, 1)
    )
    _train(module, df)
    state_path = tmp_path / "state.pt"
    torch.save(module.state_dict(), state_path)
    csv = tmp_path / "ratings.csv"
    df.to_csv(csv, index=False)
    out = tmp_path / "bundle"
    args = ["export", str(state_path), "--model", kind, "--ids-from", str(csv), "--out", str(out)]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert f"({kind} via the converted path" in text and "parity: PASS" in text
    rec = Recommender.load(out)
    assert rec.kind == kind and rec.fast_paths  # our model: every fast path
    origin = rec.manifest["training"]["config"]["origin"]
    assert origin["path"] == "converted"
    assert_serves_module(rec, module, df)


@pytest.mark.slow
def test_post_mf_with_biases_module_is_converted_and_verified_against_it(tmp_path):
    torch.manual_seed(4)
    df = _ratings(1)
    module = _train(PostMF(N_USERS, N_ITEMS, 4, biases=True), df)
    result = export_model(module, tmp_path / "b", ratings=df)
    assert (result.path, result.kind) == ("converted", "mf")
    assert result.manifest["model"]["hyperparameters"]["biased"] is True
    assert result.parity["passed"]
    assert result.manifest["training"]["config"]["origin"]["reference"] == "the user's module"
    assert_serves_module(Recommender.load(tmp_path / "b"), module, df)


@pytest.mark.slow
def test_post_names_but_another_forward_goes_generic(tmp_path):
    class Squashed(PostMF):
        def forward(self, user, item):
            return torch.sigmoid(super().forward(user, item))

    torch.manual_seed(5)
    module = Squashed(N_USERS, N_ITEMS, 3)
    result = export_model(module, tmp_path / "b", formats="onnx")
    assert result.path == "generic" and "scores differently" in result.reason
    rec = Recommender.load(tmp_path / "b")
    want = _full_matrix(module, N_USERS, N_ITEMS)
    np.testing.assert_allclose(rec.score_all(np.arange(N_USERS)), want, atol=ATOL, rtol=RTOL)


def test_state_dict_checks_list_missing_and_extra_keys(tmp_path, capsys):
    state = PostDenseNet(5, 4, 3, 8, 1).state_dict()
    with pytest.raises(CheckpointError, match=r"missing linear2.bias; unexpected extra.weight"):
        bad = dict(state)
        del bad["linear2.bias"]
        bad["extra.weight"] = torch.zeros(2)
        model_from_state_dict(bad, "densenet")
    with pytest.raises(CheckpointError, match=r"linear2.weight is \[3, 8\], expected \[1, 8\]"):
        model_from_state_dict(PostDenseNet(5, 4, 3, 8, 3).state_dict(), "densenet")
    path = tmp_path / "dn.pt"
    torch.save(state, path)
    out = str(tmp_path / "b")
    assert main(["export", str(path), "--model", "mf", "--out", out]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unexpected linear1.weight" in err
    # --ids-from must number the model's users and items
    torch.save(PostMF(4, 3).state_dict(), tmp_path / "mf.pt")
    pd.DataFrame({"user": [1, 2, 3], "item": [5, 6, 7]}).to_csv(tmp_path / "r.csv", index=False)
    argv = ["export", str(tmp_path / "mf.pt"), "--model", "mf", "--out", out]
    assert main([*argv, "--ids-from", str(tmp_path / "r.csv")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "has 3 distinct users, the model has 4 users" in err
    # a pickled module is refused (weights_only=True), not unpickled
    torch.save(PostMF(5, 4), tmp_path / "module.pt")
    assert main(["export", str(tmp_path / "module.pt"), "--model", "mf", "--out", out]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "refusing to load" in err
    assert not Path(out).exists()


# --------------------------------------------------------------------------- generic path


@pytest.fixture(scope="module")
def two_tower(tmp_path_factory):
    torch.manual_seed(6)
    df = _ratings(2)
    module = _train(TwoTower(N_USERS, N_ITEMS, 8, 16), df)
    out = tmp_path_factory.mktemp("tt") / "bundle"
    # every format: the tests below check the .pt2 programs too (pt2 is opt-in)
    result = export_model(module, out, ratings=df, block_pairs=64, formats="all")
    return module, df, result


def test_two_tower_generic_bundle(two_tower):
    module, df, result = two_tower
    assert (result.path, result.kind) == ("generic", "generic")
    man = result.manifest
    assert "kernels" not in man["formats"]["onnx"]  # no fast paths: entry-point graphs
    assert set(man["formats"]) == {"onnx", "torchscript", "pt2"}
    assert man["parity"]["passed"]
    origin = man["training"]["config"]["origin"]
    assert origin["path"] == "generic" and origin["module"].endswith("TwoTower")
    hp = man["model"]["hyperparameters"]
    assert hp["block_users"] == 64 // N_ITEMS  # bounded blocks of the pair budget
    rec = Recommender.load(result.bundle)
    assert not rec.fast_paths and rec.kind == "generic"
    assert_serves_module(rec, module, df)


def test_two_tower_entry_points_equal_the_module(two_tower):
    """TorchScript, pt2 and ONNX score_all over every pair; recommend = eager top-k."""
    import onnxruntime as ort

    module, _, result = two_tower
    want = _full_matrix(module, N_USERS, N_ITEMS)
    users = torch.arange(N_USERS)
    root = result.bundle
    scripted = torch.jit.load(str(root / "torchscript" / "model.pt"))
    np.testing.assert_allclose(scripted.score_all(users).numpy(), want, atol=ATOL, rtol=RTOL)
    program = torch.export.load(str(root / "pt2" / "score_all.pt2")).module()
    np.testing.assert_allclose(program(users).detach().numpy(), want, atol=ATOL, rtol=RTOL)
    sess = ort.InferenceSession(str(root / "onnx" / "score_all.onnx"))
    got = sess.run(None, {"users": users.numpy()})[0]
    np.testing.assert_allclose(got, want, atol=ATOL, rtol=RTOL)
    rows, ex = torch.tensor([0, 0, 3]), torch.tensor([1, 2, 5])
    ref_s, ref_i = torch.topk(
        torch.from_numpy(want).index_put((rows, ex), torch.tensor(-np.inf)), 4, dim=1
    )
    sess = ort.InferenceSession(str(root / "onnx" / "recommend.onnx"))
    s, i = sess.run(
        None,
        {"users": users.numpy(), "k": np.array(4), "exclude_rows": rows.numpy(),
         "exclude_items": ex.numpy()},
    )  # fmt: skip
    np.testing.assert_allclose(s, ref_s.numpy(), atol=ATOL, rtol=RTOL)
    np.testing.assert_allclose(want[np.arange(N_USERS)[:, None], i], s, atol=ATOL, rtol=RTOL)
    s2, i2 = scripted.recommend(users, 4, rows, ex)
    np.testing.assert_allclose(s2.numpy(), ref_s.numpy(), atol=ATOL, rtol=RTOL)


def test_two_tower_verify(two_tower, capsys):
    """`verify` cannot rebuild a user's module: one line pointing to verify_module."""
    module, _, result = two_tower
    report = verify_module(module, result.bundle)
    assert report.passed and {c.format for c in report.comparisons} >= {"onnx", "runtime"}
    assert main(["verify", str(result.bundle)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "verify_module(module, bundle)" in err


@pytest.mark.slow
def test_own_class_state_dict_through_the_cli(two_tower, tmp_path, capsys):
    """--model FILE.py:CLASS --model-args JSON: the generic path from a state dict."""
    module, df, _ = two_tower
    state = tmp_path / "tt.pt"
    torch.save(module.state_dict(), state)
    csv = tmp_path / "ratings.csv"
    df.to_csv(csv, index=False)
    spec = ["--model", f"{HELPERS}:TwoTower", "--ids-from", str(csv), "--formats", "onnx"]
    kwargs = {"n_users": N_USERS, "n_items": N_ITEMS, "dim": 8, "hidden": 16}
    out = tmp_path / "b"
    argv = ["export", str(state), *spec, "--out", str(out)]
    assert main([*argv, "--model-args", json.dumps(kwargs)]) == 0
    assert "(generic: TwoTower is not one of the post" in capsys.readouterr().out
    assert_serves_module(Recommender.load(out), module, df)
    # a class whose names or shapes differ: one line, nothing written
    kwargs["hidden"] = 8
    assert main([*argv[:-1], str(tmp_path / "c"), "--model-args", json.dumps(kwargs)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "user_tower.0.weight is [16, 8]" in err
    assert not (tmp_path / "c").exists()


def test_generic_path_refuses_what_it_cannot_score(tmp_path):
    class NoSizes(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Embedding(5, 2)

        def forward(self, users, items):
            return (self.a(users) * self.a(items)).sum(1)

    class TwoScores(NoSizes):
        def forward(self, users, items):
            return self.a(users) * self.a(items)

    with pytest.raises(ConfigError, match="pass n_users= and n_items="):
        export_model(NoSizes(), tmp_path / "b")
    with pytest.raises(ConfigError, match=r"returned \(3, 2\) for 3 pairs"):
        export_model(TwoScores(), tmp_path / "b", n_users=5, n_items=5)
    with pytest.raises(DataError, match="user_ids has 2 ids, the model has 5 users"):
        export_model(NoSizes(), tmp_path / "b", n_users=5, n_items=5, user_ids=[1, 2])
    assert not (tmp_path / "b").exists()


@pytest.mark.slow
def test_bench_tiny(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location(
        "own_model_bench", ROOT / "benchmarks" / "own_model_bench.py"
    )
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "own.json"
    assert bench.main(["--tiny", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert set(rows) == {"eager pairwise", "eager towers once", "torchscript", "runtime"}
    assert all(r["max_abs_diff"] < 1e-4 and r["pairs_per_s"] > 0 for r in rows.values())
    assert "runtime" in capsys.readouterr().out


@pytest.fixture(scope="module")
def two_tower_case(two_tower):
    """The two-tower bundle with Python references (eager: the user's module) per input."""
    module, _, result = two_tower
    return _make_case(result.bundle, ModuleRecommender(module, N_USERS, N_ITEMS))


@pytest.mark.embedding
@pytest.mark.usefixtures("cpp_example")  # builds examples/cpp, or skips without g++
def test_two_tower_runs_in_cpp(two_tower_case, tmp_path):
    for name in two_tower_case.cases:
        got = _run_program("cpp-run", two_tower_case, name, tmp_path)
        assert_matches(got, two_tower_case.expected[name], f"C++/{name}")


@pytest.mark.embedding
@pytest.mark.usefixtures("node_example")  # installs examples/node, or skips without npm
def test_two_tower_runs_in_node(two_tower_case, tmp_path):
    for name in two_tower_case.cases:
        got = _run_program("node-run", two_tower_case, name, tmp_path)
        assert_matches(got, two_tower_case.expected[name], f"Node/{name}")


_SOURCELESS = """
import torch


class Sourceless(torch.nn.Module):
    def __init__(self, n_users, n_items, dim=4):
        super().__init__()
        self.user_embedding = torch.nn.Embedding(n_users, dim)
        self.item_embedding = torch.nn.Embedding(n_items, dim)
        self.lin = torch.nn.Linear(dim, dim)

    def forward(self, users, items):
        return (self.lin(self.user_embedding(users)) * self.item_embedding(items)).sum(-1)
"""


def test_module_without_source_is_traced_for_torchscript(tmp_path):
    """A class defined by exec (as in ``python -``): torch.jit.script cannot read it, the
    export traces the module on (users, items) instead, says so, and parity checks it."""
    namespace: dict = {}
    exec(compile(_SOURCELESS, "<stdin>", "exec"), namespace)
    torch.manual_seed(3)
    module = namespace["Sourceless"](N_USERS, N_ITEMS).eval()
    with pytest.raises(OSError):  # what TorchScript itself runs into
        torch.jit.script(module)
    result = export_model(module, tmp_path / "b", ratings=_ratings(), formats="torchscript")
    assert len(result.notes) == 1 and "torch.jit.trace" in result.notes[0]
    assert "no source for Sourceless.forward" in result.notes[0]
    origin = result.manifest["training"]["config"]["origin"]
    assert origin["torchscript"].startswith("torch.jit.trace on (users, items)")
    assert result.parity["passed"]
    assert {r["format"] for r in result.parity["rows"]} >= {"torchscript", "eager"}
    scripted = torch.jit.load(str(tmp_path / "b" / "torchscript" / "model.pt"))
    users = torch.arange(N_USERS)
    want = _full_matrix(module, N_USERS, N_ITEMS)
    np.testing.assert_allclose(scripted.score_all(users).numpy(), want, atol=ATOL, rtol=RTOL)


def test_generic_verification_is_sized_by_the_module(two_tower):
    """The plan counts a pair of a generic module as its dense parameters / 64 MF pairs,
    and parity's calls are sized from the module's measured bytes per pair."""
    from recsys_export.parity import call_users
    from recsys_export.plan import plan_parity

    module, _, result = two_tower
    wrapper = ModuleRecommender(module, N_USERS, N_ITEMS)
    dense = sum(p.numel() for n, p in module.named_parameters() if "embedding" not in n)
    assert wrapper.pair_cost() == -(-dense // 64) > 1
    assert result.parity["plan"]["pair_cost"] == wrapper.pair_cost()
    wide = ModuleRecommender(TwoTower(N_USERS, N_ITEMS, 8, 512), N_USERS, N_ITEMS)
    assert wide.pair_bytes() > 8 * wrapper.pair_bytes()  # activations are measured
    assert call_users(wide, 1 << 20) < call_users(wrapper, 1 << 20)
    # a sample of rows once the matrix costs more than the budget
    plan = plan_parity(2000, 3000, budget=16_000_000, pair_cost=wrapper.pair_cost())
    assert plan.to_dict()["mode"] == "sample"
    assert len(plan.users) == 16_000_000 // wrapper.pair_cost() // 3000
    assert plan.score_pairs == 16 * 3000  # the pairwise sample keeps its size


# --------------------------------------------------------------------------- failures


def test_data_dependent_module_fails_with_one_line(tmp_path):
    module = DataDependent(6, 5)
    with pytest.raises(ExportError) as info:
        export_model(module, tmp_path / "b", n_users=6, n_items=5, formats="all")
    message = str(info.value)
    assert "\n" not in message and "pt2, onnx: torch.export" in message
    assert not (tmp_path / "b").exists()
    # TorchScript compiles the branch: with keep_partial it is kept. (Not verified here:
    # a score that depends on the rest of the batch is no per-pair score, and the parity
    # plan's score_all-vs-pairwise check flags it whenever the batches' signs differ.)
    result = export_model(module, tmp_path / "b", keep_partial=True, verify=False, formats="all")
    assert set(result.failed) == {"pt2", "onnx"}
    assert set(result.manifest["formats"]) == {"torchscript"}


@pytest.mark.slow
def test_data_dependent_module_exits_2_in_the_cli(tmp_path):
    path = tmp_path / "state.pt"
    torch.save(DataDependent(6, 5).state_dict(), path)
    proc = subprocess.run(
        [sys.executable, "-m", "recsys_export.cli", "export", str(path), "--model",
         f"{HELPERS}:DataDependent", "--model-args", json.dumps({"n_users": 6, "n_items": 5}),
         "--out", str(tmp_path / "b")],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()  # the default formats: onnx fails (not pt2)
    assert len(lines) == 1 and "cannot export DataDependent to onnx (" in lines[0]
    assert not (tmp_path / "b").exists()
