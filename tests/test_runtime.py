"""Tests of the torch-free runtime (recsys_export.runtime) against the eager models."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

from recsys_export.errors import BundleError, ConfigError, UnknownIdError
from recsys_export.export import export_bundle
from recsys_export.runtime import Recommender
from recsys_export.synthetic_models import synthetic_checkpoint

ROOT = Path(__file__).resolve().parents[1]
HELPERS = Path(__file__).resolve().parent / "helpers"
N_USERS, N_ITEMS = 50, 40
ATOL = RTOL = 1e-5
USER_IDS = np.arange(100, 100 + N_USERS)
ITEM_IDS = [f"item {i}" for i in range(N_ITEMS)]
HEAVY_USER = 3  # has seen all but 2 items


def _seen() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    users, items = [], []
    for u in range(N_USERS):
        n = N_ITEMS - 2 if u == HEAVY_USER else int(rng.integers(0, 8))
        chosen = rng.choice(N_ITEMS, n, replace=False)
        users.append(np.full(n, u))
        items.append(chosen)
    return np.concatenate(users).astype(np.int64), np.concatenate(items).astype(np.int64)


def _make(kind: str, path: Path) -> tuple[torch.nn.Module, Path]:
    ck = synthetic_checkpoint(
        kind,
        N_USERS,
        N_ITEMS,
        init_std=0.3,
        seed=0 if kind == "mf" else 1,
        seen=_seen(),
        user_ids=USER_IDS,
        item_ids=ITEM_IDS,
    )
    export_bundle(ck, path, formats="onnx", verify=False)
    return ck.model, path


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    """Bundles built on first use, once per module (an export takes seconds)."""
    cache: dict[str, tuple] = {}

    def get(kind: str):
        if kind not in cache:
            model, path = _make(kind, tmp_path_factory.mktemp(kind) / "bundle")
            cache[kind] = (model, path, Recommender.load(path))
        return cache[kind]

    return get


@pytest.fixture(params=["mf", "densenet"])
def case(request, bundles):
    return bundles(request.param)


@pytest.fixture
def mf(bundles):
    return bundles("mf")


def _seen_coo(users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    su, si = _seen()
    rows, items = [], []
    for pos, u in enumerate(users):
        its = si[su == u]
        rows.append(np.full(its.size, pos))
        items.append(its)
    return np.concatenate(rows).astype(np.int64), np.concatenate(items).astype(np.int64)


def _eager_all(model, users: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model.score_all(torch.tensor(users, dtype=torch.int64)).numpy()


def _edited_copy(path: Path, dest: Path, edit) -> Path:
    """Copy a bundle to ``dest`` and apply ``edit(manifest)`` to its manifest."""
    shutil.copytree(path, dest)
    manifest = json.loads((dest / "manifest.json").read_text())
    edit(manifest)
    (dest / "manifest.json").write_text(json.dumps(manifest))
    return dest


def _eager_recommend(model, users, k, rows, items):
    with torch.no_grad():
        s, i = model.recommend(
            torch.tensor(users, dtype=torch.int64), k, torch.tensor(rows), torch.tensor(items)
        )
    return s.numpy(), i.numpy()


def _assert_topk(model, users, got_s, got_i, exp_s, exp_i):
    """Equal lists, except that items tied within tolerance are interchangeable."""
    np.testing.assert_allclose(got_s, exp_s, atol=ATOL, rtol=RTOL)
    full = _eager_all(model, users)
    diff = got_i != exp_i
    for r, c in zip(*np.nonzero(diff), strict=True):
        assert got_i[r, c] >= 0, (r, c)
        true = full[r, got_i[r, c]]
        assert abs(true - exp_s[r, c]) <= ATOL + RTOL * abs(exp_s[r, c]), (r, c)
    for r in range(got_i.shape[0]):
        valid = got_i[r][got_i[r] >= 0]
        assert len(set(valid.tolist())) == valid.size


BATCHES = [[0], [5, 9], [0, 3, 7, 11, 13, 2, 49], list(range(N_USERS))]


# ---------------------------------------------------------------------- parity
@pytest.mark.parametrize("idx", BATCHES, ids=["1", "2", "7", "all"])
def test_score_and_score_all_match_eager(case, idx):
    model, _, rec = case
    idx = np.asarray(idx, dtype=np.int64)
    raw = USER_IDS[idx]
    items = (idx * 7 + 3) % N_ITEMS
    with torch.no_grad():
        exp = model(torch.tensor(idx), torch.tensor(items)).numpy()
    got = rec.score(raw, [ITEM_IDS[i] for i in items])
    assert got.dtype == np.float32 and got.shape == (idx.size,)
    np.testing.assert_allclose(got, exp, atol=ATOL, rtol=RTOL)
    np.testing.assert_allclose(rec.score(idx, items, by_index=True), exp, atol=ATOL, rtol=RTOL)
    full = rec.score_all(raw)
    assert full.dtype == np.float32 and full.shape == (idx.size, N_ITEMS)
    np.testing.assert_allclose(full, _eager_all(model, idx), atol=ATOL, rtol=RTOL)
    np.testing.assert_array_equal(rec.score_all(idx, by_index=True), full)


@pytest.mark.parametrize("idx", BATCHES, ids=["1", "2", "7", "all"])
@pytest.mark.parametrize("k", [1, 5, N_ITEMS])
def test_recommend_matches_eager(case, idx, k):
    model, _, rec = case
    idx = np.asarray(idx, dtype=np.int64)
    rows, items = _seen_coo(idx)
    exp_s, exp_i = _eager_recommend(model, idx, k, rows, items)
    res = rec.recommend(idx, k, by_index=True)
    assert res.scores.dtype == np.float32 and res.scores.shape == (idx.size, k)
    assert res.items.dtype == np.int64
    _assert_topk(model, idx, res.scores, res.items, exp_s, exp_i)
    # the same through raw ids
    raw = rec.recommend(USER_IDS[idx], k)
    np.testing.assert_array_equal(raw.scores, res.scores)
    np.testing.assert_array_equal(raw.users, USER_IDS[idx])
    for r in range(idx.size):
        for c in range(k):
            j = res.items[r, c]
            assert raw.items[r, c] == (ITEM_IDS[j] if j >= 0 else None)
    # without seen exclusion
    exp_s, exp_i = _eager_recommend(model, idx, k, np.zeros(0, np.int64), np.zeros(0, np.int64))
    res = rec.recommend(idx, k, by_index=True, exclude_seen=False)
    _assert_topk(model, idx, res.scores, res.items, exp_s, exp_i)


def test_exclude_seen_and_empty_slots(mf):
    model, _, rec = mf
    su, si = _seen()
    res = rec.recommend(np.arange(N_USERS), 5, by_index=True)
    for u in range(N_USERS):
        assert not set(res.items[u][res.items[u] >= 0].tolist()) & set(si[su == u].tolist())
    heavy = rec.recommend(USER_IDS[HEAVY_USER], 5)
    assert heavy.items.dtype == object
    assert heavy.items[0, 2:].tolist() == [None, None, None]
    assert np.isneginf(heavy.scores[0, 2:]).all() and np.isfinite(heavy.scores[0, :2]).all()
    idx = rec.recommend(HEAVY_USER, 5, by_index=True)
    assert idx.items[0, 2:].tolist() == [-1, -1, -1]


def test_exclude_and_include(mf):
    model, _, rec = mf
    users = np.array([0, 1, 2])
    full = _eager_all(model, users)
    # exclude for every user
    drop = ["item 0", "item 1", "item 2"]
    res = rec.recommend(USER_IDS[users], N_ITEMS, exclude_seen=False, exclude=drop)
    for r in range(3):
        got = [x for x in res.items[r].tolist() if x is not None]
        assert not set(got) & set(drop) and len(got) == N_ITEMS - 3
    # per-user dict
    res = rec.recommend(
        USER_IDS[users], N_ITEMS, exclude_seen=False, exclude={int(USER_IDS[1]): ["item 5"]}
    )
    assert "item 5" in res.items[0].tolist() and "item 5" not in res.items[1].tolist()
    # include restricts the candidates (seen items still removed)
    su, si = _seen()
    inc = [3, 4, 10, 20, 30]
    res = rec.recommend(users, 3, include=inc, by_index=True, exclude_seen=False)
    for r in range(3):
        order = sorted(inc, key=lambda j: -full[r, j])[:3]
        assert res.items[r].tolist() == order
        np.testing.assert_allclose(res.scores[r], full[r, order], atol=ATOL, rtol=RTOL)
    res = rec.recommend(users, 5, include=inc, by_index=True)
    for r in range(3):
        allowed = [j for j in inc if j not in set(si[su == r].tolist())]
        got = res.items[r][res.items[r] >= 0].tolist()
        assert got == sorted(allowed, key=lambda j: -full[r, j])
        assert np.isneginf(res.scores[r, len(got) :]).all()


# ---------------------------------------------------------------------- bad input
def test_unknown_ids_and_bad_indices(mf):
    _, _, rec = mf
    with pytest.raises(UnknownIdError, match="99999"):
        rec.recommend([100, 99999])
    with pytest.raises(UnknownIdError, match="no such item"):
        rec.score([100], ["no such item"])
    with pytest.raises(UnknownIdError, match="99999"):
        rec.score_all([99999])
    for bad in (-1, N_USERS):
        with pytest.raises(UnknownIdError, match="out of range"):
            rec.score_all([0, bad], by_index=True)
        with pytest.raises(UnknownIdError, match="out of range"):
            rec.recommend([bad], by_index=True)
        with pytest.raises(UnknownIdError, match="out of range"):
            rec.score([bad], [0], by_index=True)
    for bad in (-1, N_ITEMS):
        with pytest.raises(UnknownIdError, match="out of range"):
            rec.score([0], [bad], by_index=True)
        with pytest.raises(UnknownIdError, match="out of range"):
            rec.recommend([0], include=[bad], by_index=True)
    with pytest.raises(ConfigError, match="k=0"):
        rec.recommend([100], k=0)
    with pytest.raises(ConfigError, match=f"k={N_ITEMS + 1}"):
        rec.recommend([100], k=N_ITEMS + 1)
    with pytest.raises(ConfigError):
        rec.recommend([100], unknown="ignore")
    with pytest.raises(ConfigError, match="as many users as items"):
        rec.score([100, 101], ["item 1"])


def test_unknown_skip_and_popular(mf):
    _, _, rec = mf
    res = rec.recommend([100, "nope", 102, 555], 3, unknown="skip")
    assert res.users.tolist() == [100, 102] and res.skipped == ["nope", 555]
    exp = rec.recommend([100, 102], 3)
    np.testing.assert_array_equal(res.scores, exp.scores)
    assert res.items.tolist() == exp.items.tolist()
    su, si = _seen()
    counts = np.bincount(si, minlength=N_ITEMS)
    res = rec.recommend([555, 101], 4, unknown="popular")
    assert res.fallback.tolist() == [True, False]
    top = [ITEM_IDS[j] for j in np.argsort(-counts, kind="stable")[:4]]
    got = res.items[0].tolist()
    assert sorted(counts[[ITEM_IDS.index(x) for x in got]].tolist(), reverse=True) == sorted(
        counts[[ITEM_IDS.index(x) for x in top]].tolist(), reverse=True
    )
    assert np.isnan(res.scores[0]).all()
    assert res.items[1].tolist() == rec.recommend(101, 4).items[0].tolist()


def test_bundle_without_onnx(mf, tmp_path):
    _, path, _ = mf
    copy = _edited_copy(path, tmp_path / "b", lambda m: m["formats"].pop("onnx"))
    with pytest.raises(BundleError, match="--formats onnx"):
        Recommender.load(copy)


def test_bad_output_paths(mf, tmp_path):
    _, _, rec = mf
    with pytest.raises(ConfigError, match="missing"):
        rec.write_score_matrix(tmp_path / "missing" / "m.npy", progress=False)
    with pytest.raises(ConfigError, match="missing"):
        rec.write_topk(tmp_path / "missing" / "t.csv", progress=False)
    with pytest.raises(ConfigError, match="extension"):
        rec.write_topk(tmp_path / "t.txt", progress=False)
    with pytest.raises(ConfigError, match="k=0"):
        rec.write_topk(tmp_path / "t.csv", 0, progress=False)


# ---------------------------------------------------------------------- bulk output
def test_iter_and_write_score_matrix(case, tmp_path):
    _, _, rec = case
    expected = rec.score_all(np.arange(N_USERS), by_index=True)
    chunks = list(rec.iter_score_all(chunk_size=7, progress=False))
    assert len(chunks) == 8 and [c[0].size for c in chunks][-1] == 1
    np.testing.assert_array_equal(np.concatenate([c[1] for c in chunks]), expected)
    budget_mb = 3 * rec.bytes_per_user / 2**20  # three users per chunk
    assert len(list(rec.iter_score_all(memory_budget_mb=budget_mb, progress=False))) == 17
    out = rec.write_score_matrix(tmp_path / "m.npy", memory_budget_mb=budget_mb, progress=False)
    got = np.load(out, mmap_mode="r")
    assert got.dtype == np.float32 and got.shape == (N_USERS, N_ITEMS)
    np.testing.assert_array_equal(got, expected)
    sub = rec.write_score_matrix(tmp_path / "s.npy", user_indices=[4, 1], progress=False)
    np.testing.assert_array_equal(np.load(sub), expected[[4, 1]])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.npy", "s.npy"]


def test_write_topk_csv_and_parquet(mf, tmp_path):
    _, _, rec = mf
    k = 4
    res = rec.recommend(USER_IDS, k)
    expected = [
        (int(u), r + 1, res.items[i, r], float(res.scores[i, r]))
        for i, u in enumerate(USER_IDS)
        for r in range(k)
        if res.items[i, r] is not None
    ]
    out = rec.write_topk(tmp_path / "t.csv", k, memory_budget_mb=0.001, progress=False)
    with open(out, newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["user", "rank", "item", "score"]
    got = [(int(a), int(b), c, float(d)) for a, b, c, d in rows[1:]]
    assert [g[:3] for g in got] == [e[:3] for e in expected]
    np.testing.assert_array_equal(
        np.float32([g[3] for g in got]), np.float32([e[3] for e in expected])
    )
    pq = pytest.importorskip("pyarrow.parquet")
    out = rec.write_topk(tmp_path / "t.parquet", k, progress=False)
    table = pq.read_table(out).to_pydict()
    assert list(table) == ["user", "rank", "item", "score"]
    assert list(zip(table["user"], table["rank"], table["item"], strict=True)) == [
        e[:3] for e in expected
    ]
    np.testing.assert_array_equal(np.float32(table["score"]), np.float32([e[3] for e in expected]))


# ---------------------------------------------------------------------- processes
def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def test_runtime_without_torch(mf, tmp_path):
    _, path, rec = mf
    exp = tmp_path / "expected"
    out = tmp_path / "out"
    exp.mkdir()
    out.mkdir()
    users = np.array([0, 3, 7, 49, 12], dtype=np.int64)
    items = np.array([1, 39, 0, 5, 6], dtype=np.int64)
    res = rec.recommend(users, 5, by_index=True)
    arrays = {
        "users": users,
        "items": items,
        "score": rec.score(users, items, by_index=True),
        "score_all": rec.score_all(users, by_index=True),
        "rec_scores": res.scores,
        "rec_items": res.items,
        "matrix": rec.score_all(np.arange(N_USERS), by_index=True),
        "topk_rows": np.array(int((rec.recommend(USER_IDS, 3).scores > -np.inf).sum())),
    }
    for name, arr in arrays.items():
        np.save(exp / f"{name}.npy", arr, allow_pickle=False)
    proc = subprocess.run(
        [sys.executable, str(HELPERS / "runtime_notorch.py"), str(path), str(exp), str(out)],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "OK"


def test_killed_write_leaves_no_file(mf, tmp_path):
    _, path, _ = mf
    out = tmp_path / "m.npy"
    proc = subprocess.Popen(
        [sys.executable, str(HELPERS / "runtime_slow_writer.py"), str(path), str(out)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    try:
        line = proc.stdout.readline()
        assert line.strip() == "WRITING", proc.stderr.read() if not line else line
        partial = [p.name for p in tmp_path.iterdir()]
        assert len(partial) == 1 and partial[0].startswith(".m.npy.partial-")
        assert not out.exists()
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for fh in (proc.stdin, proc.stdout, proc.stderr):
            fh.close()
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".npy")]


# ---------------------------------------------------------------------- threads
def test_thread_safety(mf):
    _, _, rec = mf
    rng = np.random.default_rng(1234)
    calls = []
    for _ in range(10_000):
        kind = int(rng.integers(0, 3))
        n = int(rng.integers(1, 9))
        users = rng.integers(0, N_USERS, n)
        if kind == 0:
            calls.append(("score", users, rng.integers(0, N_ITEMS, n)))
        elif kind == 1:
            calls.append(("score_all", users, None))
        else:
            calls.append(("recommend", users, int(rng.integers(1, N_ITEMS + 1))))

    def run(call):
        name, users, arg = call
        if name == "score":
            return (rec.score(users, arg, by_index=True),)
        if name == "score_all":
            return (rec.score_all(users, by_index=True),)
        res = rec.recommend(users, arg, by_index=True)
        return res.scores, res.items

    sequential = [run(c) for c in calls]
    with ThreadPoolExecutor(max_workers=8) as pool:
        threaded = list(pool.map(run, calls, chunksize=25))
    for a, b in zip(sequential, threaded, strict=True):
        for x, y in zip(a, b, strict=True):
            assert np.array_equal(x, y)


# ---------------------------------------------------------------------- fast paths
def test_fast_paths_match_eager_and_fallback(case):
    """The optional kernels (tiled DenseNet, augmented MF MatMul, TopK) keep parity."""
    model, path, rec = case
    assert rec.fast_paths
    kernels = rec.manifest["formats"]["onnx"]["kernels"]
    assert kernels["version"] == 2 and "recommend_one" in kernels
    slow = Recommender.load(path, fast_paths=False)
    assert not slow.fast_paths
    users = np.arange(N_USERS, dtype=np.int64)
    exp = _eager_all(model, users)
    for r in (rec, slow):
        np.testing.assert_allclose(r.score_all(users, by_index=True), exp, atol=ATOL, rtol=RTOL)
    rows, items = _seen_coo(users)
    for k in (1, 10, N_ITEMS):
        exp_s, exp_i = _eager_recommend(model, users, k, rows, items)
        for r in (rec, slow):
            res = r.recommend(users, k, by_index=True)
            _assert_topk(model, users, res.scores, res.items, exp_s, exp_i)
        for u in (0, HEAVY_USER, N_USERS - 1):  # the single-user kernel
            one = rec.recommend(int(u), k, by_index=True)
            ref = slow.recommend(int(u), k, by_index=True)
            np.testing.assert_allclose(one.scores, ref.scores, atol=ATOL, rtol=RTOL)
            _assert_topk(model, users[[u]], one.scores, one.items, exp_s[[u]], exp_i[[u]])


@pytest.mark.parametrize("width", [7, N_ITEMS - 1, N_ITEMS])
def test_fast_path_tiling_and_threads(width, tmp_path, monkeypatch):
    """DenseNet item tiles: ragged and single tiles, both threading modes, odd blocks."""
    from recsys_export.export import kernels

    monkeypatch.setattr(kernels, "dn_tile_width", lambda hidden, n_items, users: width)
    model, path = _make("densenet", tmp_path / "b")
    import onnx

    graph = onnx.load(str(path / "onnx" / "kernels" / "score_all.onnx")).graph
    assert sum(n.op_type == "Relu" for n in graph.node) == -(-N_ITEMS // width)
    assert not any(n.op_type == "Max" for n in graph.node)  # no cancelling max rewrite
    users = np.array([3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8, 9, 7, 9, 3, 2, 3, 8, 4, 6, 2, 6, 4, 3])
    exp = _eager_all(model, users)
    for py_threads in (True, False):
        rec = Recommender.load(
            path, intra_op_threads=2, python_threads=py_threads, call_users=3, block_users=7
        )
        assert rec.fast_paths and (rec.call_users, rec.block_users) == (3, 7)
        np.testing.assert_allclose(rec.score_all(users, by_index=True), exp, atol=ATOL, rtol=RTOL)
        rows, items = _seen_coo(users)
        exp_s, exp_i = _eager_recommend(model, users, 5, rows, items)
        res = rec.recommend(users, 5, by_index=True)  # top-k blocks of 7, calls of 3
        _assert_topk(model, users, res.scores, res.items, exp_s, exp_i)
    rows, items = _seen_coo(users[:1])
    exp_s, exp_i = _eager_recommend(model, users[:1], 10, rows, items)
    one = rec.recommend(int(users[0]), 10, by_index=True)  # the single-user kernel
    _assert_topk(model, users[:1], one.scores, one.items, exp_s, exp_i)


@pytest.mark.parametrize("bad", [0, -3, "8", 2.5, True, None])
def test_densenet_kernel_block_users(bundles, tmp_path, bad):
    """The manifest says how many users the DenseNet tiles are sized for; nonsense there
    means the kernels are not used (entry-point graphs instead), not a crash."""
    from recsys_export import export

    model, path, rec = bundles("densenet")
    entry = rec.manifest["formats"]["onnx"]["kernels"]
    assert entry["block_users"] == export.DN_BLOCK_USERS == rec.call_users

    def edit(manifest: dict) -> None:
        manifest["formats"]["onnx"]["kernels"]["block_users"] = bad

    other = Recommender.load(_edited_copy(path, tmp_path / "odd", edit))
    assert not other.fast_paths
    users = np.arange(N_USERS, dtype=np.int64)
    np.testing.assert_allclose(
        other.score_all(users, by_index=True), _eager_all(model, users), atol=ATOL, rtol=RTOL
    )


def test_bundle_without_kernels_falls_back(case, tmp_path):
    """Older bundles (no formats.onnx.kernels) keep working on the entry-point graphs."""
    model, path, rec = case
    old = tmp_path / "old"

    def edit(manifest: dict) -> None:
        del manifest["formats"]["onnx"]["kernels"]
        for rel in [r for r in manifest["files"] if r.startswith("onnx/kernels/")]:
            del manifest["files"][rel]
            (old / rel).unlink()

    legacy = Recommender.load(_edited_copy(path, old, edit))
    assert not legacy.fast_paths
    users = np.arange(N_USERS, dtype=np.int64)
    np.testing.assert_allclose(
        legacy.score_all(users, by_index=True), _eager_all(model, users), atol=ATOL, rtol=RTOL
    )
    np.testing.assert_array_equal(
        legacy.recommend(users, 5, by_index=True).items,
        Recommender.load(path, fast_paths=False).recommend(users, 5, by_index=True).items,
    )


@pytest.mark.parametrize("name", ["toy-mf", "toy-densenet"])
def test_committed_artifacts_load(name):
    """Committed bundles predate the kernels: they load and answer via the fallback."""
    rec = Recommender.load(ROOT / "artifacts" / name)
    users = np.arange(rec.n_users, dtype=np.int64)
    assert rec.score_all(users, by_index=True).shape == (rec.n_users, rec.n_items)
    res = rec.recommend(users, min(3, rec.n_items), by_index=True)
    assert res.items.shape == (rec.n_users, min(3, rec.n_items))
    rec.recommend(int(users[0]), 1, by_index=True)


def test_execution_providers_pass_through(mf, tmp_path, capsys):
    """``providers=`` reaches every session; unknown names are one-line ConfigErrors."""
    import onnxruntime as ort

    from recsys_export.cli import main

    _, path, rec = mf
    cpu = Recommender.load(path, providers=["CPUExecutionProvider"])
    users = np.arange(N_USERS)
    np.testing.assert_array_equal(
        cpu.score_all(users, by_index=True), rec.score_all(users, by_index=True)
    )
    cpu.recommend(users, 3, by_index=True)
    sessions = cpu._engine.sessions._sessions
    assert sessions and all(
        s.get_providers() == ["CPUExecutionProvider"] for s in sessions.values()
    )
    with pytest.raises(ConfigError) as info:
        Recommender.load(path, providers=["NoSuchExecutionProvider"])
    msg = str(info.value)
    assert "NoSuchExecutionProvider" in msg
    assert all(p in msg for p in ort.get_available_providers())
    with pytest.raises(ConfigError, match="non-empty"):
        Recommender.load(path, providers=[])
    user = str(USER_IDS[0])
    assert (
        main(["recommend", str(path), "--user", user, "--providers", "CPUExecutionProvider"]) == 0
    )
    capsys.readouterr()
    assert main(["recommend", str(path), "--user", user, "--providers", "Nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Nope" in err and "CPUExecutionProvider" in err
    out = str(tmp_path / "t.parquet")
    argv = ["score", str(path), "--all", "--top-k", "2", "--out", out, "--engine", "torch"]
    assert main([*argv, "--providers", "CPUExecutionProvider"]) == 2
    assert "--providers is for the onnxruntime engines" in capsys.readouterr().err
