"""Tests of the torch batch engine (recsys_export.torch_engine) on the CPU device,
against the onnxruntime runtime's files (the same writers, so the same formats)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from recsys_export.cli import main
from recsys_export.errors import BundleError, ConfigError, UnknownIdError
from recsys_export.export import export_bundle
from recsys_export.runtime import Recommender
from recsys_export.synthetic_models import synthetic_checkpoint
from recsys_export.torch_engine import TorchEngine, resolve_device

ROOT = Path(__file__).resolve().parents[1]
N_USERS, N_ITEMS = 37, 29
ATOL = 1e-5
USER_IDS = np.arange(500, 500 + N_USERS)
ITEM_IDS = [f"item {i}" for i in range(N_ITEMS)]
HEAVY_USER = 4  # has seen all but 2 items: top-5 lists have 3 empty slots


def _seen() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(11)
    users, items = [], []
    for u in range(N_USERS):
        n = N_ITEMS - 2 if u == HEAVY_USER else int(rng.integers(0, 8))
        users.append(np.full(n, u))
        items.append(rng.choice(N_ITEMS, n, replace=False))
    return np.concatenate(users).astype(np.int64), np.concatenate(items).astype(np.int64)


def _make(kind: str, path: Path, formats: str | None) -> Path:
    ck = synthetic_checkpoint(
        kind,
        N_USERS,
        N_ITEMS,
        init_std=0.3,
        seed=3 if kind == "mf" else 4,
        seen=_seen(),
        user_ids=USER_IDS,
        item_ids=ITEM_IDS,
    )
    export_bundle(ck, path, formats=formats, verify=False)
    return path


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    """(kind, formats) -> bundle path, built once per module. Every format unless told
    (the engine prefers pt2, which export writes only when asked); None: the defaults."""
    cache: dict[tuple[str, str | None], Path] = {}

    def get(kind: str, formats: str | None = "onnx,torchscript,pt2") -> Path:
        key = (kind, formats)
        if key not in cache:
            name = formats.replace(",", "-") if formats else "default"
            root = tmp_path_factory.mktemp(f"{kind}-{name}")
            cache[key] = _make(kind, root / "bundle", formats)
        return cache[key]

    return get


@pytest.fixture(params=["mf", "densenet"])
def kind(request) -> str:
    return request.param


def _read_topk(path: Path) -> list[tuple]:
    if path.suffix == ".parquet":
        t = pq.read_table(path).to_pydict()
        return list(zip(t["user"], t["rank"], t["item"], t["score"], strict=True))
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["user", "rank", "item", "score"]
    return [(int(u), int(r), i, float(s)) for u, r, i, s in rows[1:]]


def _assert_same_topk(ours: list[tuple], ref: list[tuple]) -> None:
    """Same users/ranks, scores within ATOL, same items except swaps among tied scores."""
    assert [(u, r) for u, r, _, _ in ours] == [(u, r) for u, r, _, _ in ref]
    s_ours = np.array([s for *_, s in ours], dtype=np.float64)
    s_ref = np.array([s for *_, s in ref], dtype=np.float64)
    np.testing.assert_allclose(s_ours, s_ref, atol=ATOL, rtol=0)
    by_user: dict[int, tuple[list, list]] = {}
    for (u, _, i, s), (_, _, j, _) in zip(ours, ref, strict=True):
        by_user.setdefault(u, ([], []))
        by_user[u][0].append((i, s))
        by_user[u][1].append(j)
    for u, (mine, theirs) in by_user.items():
        for pos, ((i, s), j) in enumerate(zip(mine, theirs, strict=True)):
            if i != j:  # only a tie may reorder: the other item holds the same score
                tied = [x for x, t in mine if abs(t - s) <= ATOL]
                assert j in tied, f"user {u} rank {pos + 1}: {i} vs {j}"


@pytest.mark.parametrize("source", ["pt2", "torchscript"])
def test_score_matrix_matches_runtime(bundles, kind, source, tmp_path):
    path = bundles(kind)
    eng = TorchEngine.load(path, device="cpu", prefer=source)
    assert eng.source == source and eng.device == torch.device("cpu")
    ref = Recommender.load(path).write_score_matrix(tmp_path / "ref.npy", progress=False)
    # a tiny budget: several blocks, one of them a single user (pt2 batch-of-1 path)
    budget = 5 * eng.bytes_per_user / (1 << 20)
    assert eng.block_size(budget) == 5 and N_USERS % 5 == 2
    out = eng.write_score_matrix(tmp_path / "ours.npy", memory_budget_mb=budget, progress=False)
    a, b = np.load(out), np.load(ref)
    assert a.dtype == b.dtype == np.float32 and a.shape == b.shape == (N_USERS, N_ITEMS)
    np.testing.assert_allclose(a, b, atol=ATOL, rtol=0)
    # same .npy header: same format, byte for byte up to the float rounding
    assert out.read_bytes()[:128] == ref.read_bytes()[:128]
    assert not list(tmp_path.glob(".*partial*"))  # atomic: no temporary left


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
@pytest.mark.parametrize("exclude_seen", [True, False])
def test_topk_matches_runtime(bundles, kind, suffix, exclude_seen, tmp_path):
    path = bundles(kind)
    eng = TorchEngine.load(path)
    ref = Recommender.load(path).write_topk(
        tmp_path / f"ref{suffix}", k=5, exclude_seen=exclude_seen, progress=False
    )
    out = eng.write_topk(
        tmp_path / f"ours{suffix}",
        k=5,
        exclude_seen=exclude_seen,
        memory_budget_mb=4 * eng.bytes_per_user / (1 << 20),
        progress=False,
    )
    if suffix == ".parquet":
        assert pq.read_schema(out) == pq.read_schema(ref)
    ours, theirs = _read_topk(out), _read_topk(ref)
    _assert_same_topk(ours, theirs)
    heavy = [r for r in ours if r[0] == USER_IDS[HEAVY_USER]]
    # the empty-slot rule: the heavy user has 2 unseen items, so 2 rows (not 5)
    assert len(heavy) == (2 if exclude_seen else 5)
    if exclude_seen:
        su, si = _seen()
        seen = {(USER_IDS[u], ITEM_IDS[i]) for u, i in zip(su, si, strict=True)}
        assert not any((u, i) in seen for u, _, i, _ in ours)


def test_topk_on_device_empty_slots(bundles):
    eng = TorchEngine.load(bundles("mf"))
    scores, items = eng.topk(np.array([HEAVY_USER, 0]), 5)
    assert items.dtype == np.int64 and scores.dtype == np.float32
    assert (items[0, 2:] == -1).all() and np.isneginf(scores[0, 2:]).all()
    assert (items[0, :2] >= 0).all() and np.isfinite(scores[0, :2]).all()
    rec = Recommender.load(bundles("mf"))
    res = rec.recommend([HEAVY_USER, 0], 5, by_index=True)
    np.testing.assert_allclose(scores, res.scores, atol=ATOL, rtol=0)


def test_score_all_blocks_cover_users(bundles):
    eng = TorchEngine.load(bundles("densenet"))
    users = np.array([3, 0, 36, 3])
    ref = Recommender.load(bundles("densenet")).score_all(users, by_index=True)
    got = list(eng.score_all_blocks(users, memory_budget_mb=3 * eng.bytes_per_user / (1 << 20)))
    assert [b.tolist() for b, _ in got] == [[3, 0, 36], [3]]
    scores = torch.cat([s for _, s in got]).numpy()
    np.testing.assert_allclose(scores, ref, atol=ATOL, rtol=0)
    with pytest.raises(UnknownIdError):
        next(eng.score_all_blocks([N_USERS]))


def test_torchscript_only_and_pt2_only_bundles(bundles, tmp_path):
    ts = TorchEngine.load(bundles("mf", "torchscript"), prefer="pt2")
    assert ts.source == "torchscript"  # no pt2 program: the fallback
    p2 = TorchEngine.load(bundles("mf", "pt2"), prefer="torchscript")
    assert p2.source == "pt2"
    a = ts.write_score_matrix(tmp_path / "a.npy", progress=False)
    b = p2.write_score_matrix(tmp_path / "b.npy", progress=False)
    np.testing.assert_allclose(np.load(a), np.load(b), atol=ATOL, rtol=0)


def test_default_bundle_runs_its_torchscript_module(bundles, kind, tmp_path):
    """A bundle exported with the default formats (no pt2): the engine, preferring pt2,
    runs the TorchScript module, and its matrix and top-k are the runtime's."""
    from recsys_export.parity import verify_bundle

    path = bundles(kind, None)
    assert not (path / "pt2").exists()
    eng = TorchEngine.load(path)
    assert eng.source == "torchscript"
    rec = Recommender.load(path)
    a = np.load(eng.write_score_matrix(tmp_path / "ours.npy", progress=False))
    b = np.load(rec.write_score_matrix(tmp_path / "ref.npy", progress=False))
    np.testing.assert_allclose(a, b, atol=ATOL, rtol=0)
    ours = eng.write_topk(tmp_path / "ours.csv", k=5, progress=False)
    ref = rec.write_topk(tmp_path / "ref.csv", k=5, progress=False)
    _assert_same_topk(_read_topk(ours), _read_topk(ref))
    report = verify_bundle(path, formats=["torch_engine"], record=False)
    assert report.passed and report.skipped == {}


def test_onnx_only_bundle_is_refused(bundles):
    with pytest.raises(BundleError, match="neither a pt2 score_all program nor a TorchScript"):
        TorchEngine.load(bundles("mf", "onnx"))


def test_corrupted_bundle_is_refused(bundles, tmp_path):
    import shutil

    src = bundles("mf", "torchscript")
    dst = tmp_path / "copy"
    shutil.copytree(src, dst)
    f = dst / "torchscript" / "model.pt"
    data = bytearray(f.read_bytes())
    data[-10] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="sha256|checksum"):
        TorchEngine.load(dst)


def test_bad_options(bundles, tmp_path):
    eng = TorchEngine.load(bundles("mf"))
    with pytest.raises(ConfigError, match="k=0 is out of range"):
        eng.write_topk(tmp_path / "t.csv", k=0, progress=False)
    with pytest.raises(ConfigError, match="unsupported file extension"):
        eng.write_topk(tmp_path / "t.txt", k=3, progress=False)
    with pytest.raises(ConfigError, match="memory_budget_mb must be positive"):
        eng.block_size(0)
    (tmp_path / "x.npy").write_bytes(b"")
    with pytest.raises(ConfigError, match="already exists"):
        eng.write_score_matrix(tmp_path / "x.npy", progress=False)
    with pytest.raises(ConfigError, match="prefer must be"):
        TorchEngine.load(bundles("mf"), prefer="onnx")
    with pytest.raises(ConfigError, match="unsupported device"):
        resolve_device("meta")


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present on this machine")
def test_cuda_without_cuda_is_one_line_error(bundles, tmp_path, capsys):
    with pytest.raises(ConfigError, match="CUDA is not available"):
        TorchEngine.load(bundles("mf"), device="cuda")
    out = tmp_path / "t.parquet"
    argv = ["score", str(bundles("mf")), "--all", "--top-k", "3", "--out", str(out)]
    assert main([*argv, "--engine", "torch", "--device", "cuda:1", "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "cuda:1" in err and "--device cpu" in err
    assert not out.exists()


def test_cli_torch_engine_matches_local(bundles, kind, tmp_path, capsys):
    b = str(bundles(kind))
    for name, extra in (("local", []), ("torch", ["--engine", "torch", "--device", "cpu"])):
        assert (
            main(["score", b, "--all", "--out", str(tmp_path / f"{name}.npy"), "-q", *extra]) == 0
        )
        argv = ["score", b, "--all", "--top-k", "4", "--out", str(tmp_path / f"{name}.csv")]
        assert main([*argv, "-q", *extra]) == 0
    capsys.readouterr()
    np.testing.assert_allclose(
        np.load(tmp_path / "torch.npy"), np.load(tmp_path / "local.npy"), atol=ATOL, rtol=0
    )
    _assert_same_topk(_read_topk(tmp_path / "torch.csv"), _read_topk(tmp_path / "local.csv"))
    # --device without --engine torch is refused in one line
    assert main(["score", b, "--all", "--out", str(tmp_path / "z.npy"), "--device", "cuda"]) == 2
    assert "--device needs --engine torch" in capsys.readouterr().err


def test_runtime_still_imports_without_torch():
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import recsys_export.runtime\n"
        "try:\n"
        "    import recsys_export.torch_engine\n"
        "except Exception as e:\n"
        "    print(type(e).__name__, e)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert proc.stdout.startswith("ConfigError the torch engine needs torch")
    assert "recsys-export[train]" in proc.stdout


@pytest.mark.slow
def test_gpu_check_tiny_on_cpu(tmp_path):
    out = tmp_path / "gpu_check.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "gpu_check.py"),
            "--tiny",
            "--device",
            "cpu",
            "--workdir",
            str(tmp_path / "work"),
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(out.read_text())
    assert res["device"] == "cpu"
    for kind in ("mf", "densenet"):
        row = res["models"][kind]
        assert row["matrix_max_abs_diff"] <= ATOL
        assert row["topk_items_match"] and row["topk_max_score_diff"] <= ATOL
        assert row["engine_topk_s"] > 0 and row["ceiling_topk_s"] > 0
        assert row["engine_source"] == "pt2"  # gpu_check exports pt2, opt-in elsewhere
    assert "engine" in proc.stdout and "ceiling" in proc.stdout


def test_verify_checks_the_torch_engine(bundles, kind, capsys):
    """``verify --formats runtime,torch_engine``: the engine against the eager model on
    the plan's users (score_all rows and top-k with seen items excluded)."""
    from recsys_export.cli import main
    from recsys_export.parity import verify_bundle

    path = bundles(kind)
    report = verify_bundle(path, formats=["torch_engine"], record=False)
    assert report.passed, report.table()
    ours = {(c.entry_point, c.case) for c in report.comparisons if c.format == "torch_engine"}
    assert any(e == "score_all" for e, _ in ours) and any(e == "recommend" for e, _ in ours)
    assert all(c.n_values > 0 or c.topk_users > 0 for c in report.comparisons)
    argv = ["verify", str(path), "--formats", "runtime,torch_engine", "--no-record", "-q"]
    assert main(argv) == 0
    assert "torch_engine" in capsys.readouterr().out


ALL_CHECKS = ["onnx", "torchscript", "pt2", "runtime", "torch_engine"]


def test_verify_device_cpu_equals_default(bundles, kind, tmp_path, capsys):
    """``verify --device cpu``: the torch side through the device code path (module and
    inputs moved, pt2 through torch's move_to_device_pass) gives the default's report;
    the device and providers are recorded in parity.json, the manifest and the table."""
    import shutil

    from recsys_export.bundle import Bundle
    from recsys_export.parity import verify_bundle

    path = bundles(kind)
    default = verify_bundle(path, formats=ALL_CHECKS, record=False)
    on_cpu = verify_bundle(
        path, formats=ALL_CHECKS, record=False, device="cpu", providers=["CPUExecutionProvider"]
    )
    assert default.passed and on_cpu.passed, on_cpu.table()
    # the same cases, sizes and verdicts; the error magnitudes may differ in the last bits
    # (onnxruntime's and the runtime's blocks run on threads, and a GEMM's rounding
    # depends on its block shape)
    exact = ("max_abs_diff", "histogram", "max_ratio", "worst_error", "worst_bound")
    exact += ("worst_reference",)  # where the worst ratio falls

    def shape(report):
        return [
            {k: v for k, v in c.to_dict().items() if k not in exact} for c in report.comparisons
        ]

    assert shape(on_cpu) == shape(default)
    for a, b in zip(on_cpu.comparisons, default.comparisons):
        assert abs(a.max_abs_diff - b.max_abs_diff) <= 1e-6, (a, b)
    assert (on_cpu.device, on_cpu.providers) == ("cpu", ["CPUExecutionProvider"])
    assert (default.device, default.providers) == ("cpu", ["CPUExecutionProvider"])
    assert "torch device: cpu; onnxruntime providers: CPUExecutionProvider" in on_cpu.table()
    # the CLI, recording into a copy of the bundle
    copy = tmp_path / "bundle"
    shutil.copytree(path, copy)
    argv = [
        "verify",
        str(copy),
        "--device",
        "cpu",
        "--formats",
        "pt2,torch_engine",
        "-q",
        "--record",
    ]
    assert main([*argv, "--providers", "CPUExecutionProvider", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    stored = json.loads((copy / "parity.json").read_text())
    assert printed["device"] == stored["device"] == "cpu" and printed["passed"]
    assert stored["providers"] == ["CPUExecutionProvider"]
    assert {r["format"] for r in stored["rows"]} >= {"pt2", "torch_engine"}
    assert Bundle.load(copy).manifest["parity"]["device"] == "cpu"  # checksums still valid


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present on this machine")
def test_verify_cuda_without_cuda_is_one_line_error(bundles, capsys):
    """``verify --device cuda`` where torch sees no GPU: the torch engine's ConfigError,
    one line on stderr, exit 2, nothing loaded or recorded; same for a bad provider."""
    from recsys_export.parity import verify_bundle

    path = bundles("mf")
    before = (path / "manifest.json").read_bytes()
    with pytest.raises(ConfigError, match="CUDA is not available.*use --device cpu"):
        verify_bundle(path, device="cuda", record=False)
    with pytest.raises(ConfigError, match="unsupported device"):
        verify_bundle(path, device="meta", record=False)
    for extra, words in (
        (["--device", "cuda:1"], ("cuda:1", "CUDA is not available", "--device cpu")),
        (["--providers", "NoSuchExecutionProvider"], ("NoSuchExecutionProvider",)),
    ):
        assert main(["verify", str(path), "-q", *extra]) == 2
        captured = capsys.readouterr()
        err = captured.err.strip()
        assert "\n" not in err and "Traceback" not in err and not captured.out
        assert err.startswith("recsys-export verify: error: ")
        assert all(w in err for w in words), err
    assert (path / "manifest.json").read_bytes() == before
