"""The engine contract (``runtime/protocol.Engine``) and its one factory
(``engines.open_engine``, ``EngineOptions``): every engine implements the protocol, gives
the same numbers through the same writers, and every option that does not go with an
engine is refused with a message naming the flag (issue #29)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from recsys_export.bundle import Bundle
from recsys_export.engines import ENGINES, EngineOptions, open_engine
from recsys_export.errors import ConfigError, UnknownIdError
from recsys_export.export import export_bundle
from recsys_export.models.synthetic import synthetic_checkpoint
from recsys_export.runtime import Recommender, writers
from recsys_export.runtime.protocol import Engine

N_USERS, N_ITEMS = 23, 17
ATOL = 1e-5


@pytest.fixture(scope="module", params=["mf", "densenet"])
def bundle(request, tmp_path_factory) -> Path:
    rng = np.random.default_rng(5)
    users = np.repeat(np.arange(N_USERS), 3)
    items = rng.integers(0, N_ITEMS, users.size)
    ck = synthetic_checkpoint(
        request.param,
        N_USERS,
        N_ITEMS,
        init_std=0.3,
        seed=7,
        seen=(users.astype(np.int64), items.astype(np.int64)),
        user_ids=np.arange(100, 100 + N_USERS),
        item_ids=[f"i{j}" for j in range(N_ITEMS)],
    )
    path = tmp_path_factory.mktemp(request.param) / "bundle"
    export_bundle(ck, path, formats="onnx,torchscript", verify=False)
    return path


@pytest.mark.parametrize("name", ["onnx", "torch"])
def test_every_engine_implements_the_contract(bundle: Path, name: str) -> None:
    engine = open_engine(bundle, engine=name)
    try:
        assert isinstance(engine, Engine)
        assert engine.name == name
        assert (engine.n_users, engine.n_items) == (N_USERS, N_ITEMS)
        assert len(engine.user_map) == N_USERS and len(engine.item_map) == N_ITEMS
        assert engine.chunk_users(1) >= 1
        assert engine.check_k(3) == 3
        with pytest.raises(ConfigError):
            engine.check_k(N_ITEMS + 1)
    finally:
        engine.close()


def test_engines_agree_on_every_method(bundle: Path) -> None:
    """Pairs, full rows and top-k (seen items excluded) of the onnxruntime and torch
    engines are the same numbers; the writers turn both into the same table."""
    onnx, torch_engine = open_engine(bundle), open_engine(bundle, engine="torch")
    users = np.array([0, 5, 5, 22], dtype=np.int64)
    items = np.array([3, 0, 16, 9], dtype=np.int64)
    np.testing.assert_allclose(
        onnx.score_pairs(users, items), torch_engine.score_pairs(users, items), atol=ATOL
    )
    rows = [np.empty((users.size, N_ITEMS), dtype=np.float32) for _ in range(2)]
    onnx.score_all_into(users, rows[0])
    torch_engine.score_all_into(users, rows[1])
    np.testing.assert_allclose(rows[0], rows[1], atol=ATOL)
    # pairs are the rows' entries: the contract's two scoring methods agree
    np.testing.assert_allclose(
        onnx.score_pairs(users, items), rows[0][np.arange(users.size), items], atol=ATOL
    )
    distinct = np.arange(N_USERS, dtype=np.int64)
    s_onnx, i_onnx = onnx.topk(distinct, 5, exclude_seen=True)
    s_torch, i_torch = torch_engine.topk(distinct, 5, exclude_seen=True)
    np.testing.assert_array_equal(i_onnx, i_torch)
    np.testing.assert_allclose(s_onnx, s_torch, atol=ATOL)
    indptr, seen = onnx.seen_csr()
    for u in range(N_USERS):  # the seen items are never recommended
        assert not set(i_onnx[u]) & set(seen[indptr[u] : indptr[u + 1]].tolist())
    a = writers.topk_table(onnx, distinct, 5)
    b = writers.topk_table(torch_engine, distinct, 5)
    assert a.column("item").to_pylist() == b.column("item").to_pylist()
    assert a.schema == b.schema


def test_writers_take_any_engine(bundle: Path, tmp_path: Path) -> None:
    """The writer functions write the same files from either engine, and the engines'
    own methods are those functions."""
    for name in ("onnx", "torch"):
        engine = open_engine(bundle, engine=name)
        writers.write_topk(engine, tmp_path / f"{name}.parquet", 4, progress=False)
        writers.write_score_matrix(engine, tmp_path / f"{name}.npy", progress=False)
        engine.write_topk(tmp_path / f"{name}-method.parquet", 4, progress=False)
    tables = {p.stem: pq.read_table(p) for p in tmp_path.glob("*.parquet")}
    assert tables["onnx"].column("item").to_pylist() == tables["torch"].column("item").to_pylist()
    assert tables["onnx"].equals(tables["onnx-method"])
    np.testing.assert_allclose(
        np.load(tmp_path / "onnx.npy"), np.load(tmp_path / "torch.npy"), atol=ATOL
    )


def test_open_engine_takes_a_loaded_bundle(bundle: Path) -> None:
    loaded = Bundle.load(bundle)
    rec = open_engine(loaded)
    assert isinstance(rec, Recommender) and rec.bundle is loaded
    assert open_engine(loaded, engine="torch").bundle.root == loaded.root


@pytest.mark.parametrize(
    ("options", "words"),
    [
        (EngineOptions("onnx", device="cuda"), ["--device", "--engine torch or ray"]),
        (EngineOptions("local", device="cuda:1"), ["--device"]),
        (EngineOptions("torch", providers=["CPUExecutionProvider"]), ["--providers", "torch"]),
        (EngineOptions("torch", precision="int8"), ["--precision int8", "--engine torch"]),
        (EngineOptions("ray", precision="fp16"), ["--precision fp16", "--engine ray"]),
        (EngineOptions("ray", device="cuda:0"), ["cuda:0", "cpu or cuda"]),
        (
            EngineOptions("ray", device="cpu", providers=["CPUExecutionProvider"]),
            ["providers", "device='cpu'"],
        ),
        (EngineOptions("gpu"), ["engine", "onnx", "torch", "ray"]),
    ],
)
def test_every_refused_combination_names_its_flag(options: EngineOptions, words) -> None:
    with pytest.raises(ConfigError) as err:
        options.checked()
    for word in words:
        assert word in str(err.value)


def test_the_matrix_normalises_what_it_accepts() -> None:
    assert EngineOptions("local", device="cpu").checked().engine == "onnx"
    assert EngineOptions("local", device="CPU").checked().device is None
    assert EngineOptions("torch", device="CUDA:1").checked().device == "cuda:1"
    assert EngineOptions("ray").for_workers().engine == "onnx"
    workers = EngineOptions("ray", device="cuda").for_workers()
    assert (workers.engine, workers.device, workers.precision) == ("torch", "cuda", "fp32")
    assert EngineOptions().checked() == EngineOptions("onnx", precision="fp32")
    assert set(ENGINES) == {"onnx", "torch", "ray"}


def test_open_engine_refuses_what_is_not_an_engine_here(bundle: Path) -> None:
    with pytest.raises(ConfigError, match="score_topk_ray"):
        open_engine(bundle, engine="ray")
    with pytest.raises(ConfigError, match="prefer.*onnx engine"):
        open_engine(bundle, prefer="pt2")
    with pytest.raises(ConfigError, match="fast_paths.*torch engine"):
        open_engine(bundle, engine="torch", fast_paths=False)
    for threads in (0, 10_000):  # torch.set_num_threads is never called with them
        with pytest.raises(ConfigError, match="threads"):
            open_engine(bundle, engine="torch", threads=threads)


def test_index_validation_is_the_callers_not_the_contracts(bundle: Path) -> None:
    """The raw-id API validates before the engine runs (the contract takes valid
    indices): an index out of range is a named error, never a wrapped score."""
    rec = open_engine(bundle)
    with pytest.raises(UnknownIdError):
        rec.score([0], [N_ITEMS], by_index=True)
    with pytest.raises(UnknownIdError):
        writers.users_of(rec, [N_USERS])
