"""Export: bundles of every format, the default formats (pt2 opt-in), graph structure,
recommend contract, atomicity."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from recsys_export import data
from recsys_export.bundle import Bundle
from recsys_export.checkpoint import Checkpoint, load_checkpoint
from recsys_export.errors import BundleError, CheckpointError, ConfigError, ParityError
from recsys_export.export import ONNX_OPSET, export_bundle, parse_formats
from recsys_export.manifest import DEFAULT_FORMATS, FORMATS
from recsys_export.parity import (
    EagerBackend,
    OnnxBackend,
    TorchScriptBackend,
    call_users,
    load_backends,
    reference_model,
)
from recsys_export.plan import BATCH_BYTES
from recsys_export.train import TrainConfig, fit

REPO = Path(__file__).resolve().parents[1]


def small_checkpoint(kind: str, seed: int = 0) -> Checkpoint:
    r = data.synthetic_ratings(40, 30, n_ratings=600, seed=seed)
    cfg = TrainConfig(model=kind, n_factors=4, hidden=8, epochs=2, batch_size=128, seed=seed)
    model, _ = fit(r, None, cfg, progress=False)
    return Checkpoint(model, r.user_map, r.item_map, r.users, r.items, config=cfg.__dict__)


@pytest.fixture(scope="module")
def small_bundles(tmp_path_factory):
    root = tmp_path_factory.mktemp("small")
    out = {}
    for kind in ("mf", "densenet"):
        ck = small_checkpoint(kind)
        ck.save(root / f"{kind}.pt")
        export_bundle(ck, root / kind, formats="onnx,torchscript")
        out[kind] = (root / kind, root / f"{kind}.pt")
    return out


@pytest.mark.parametrize("kind", ["mf", "densenet"])
def test_movielens_bundle_passes_parity_on_every_format_entry_and_batch(ml_bundles, kind):
    bundle = Bundle.load(ml_bundles[kind])
    man = bundle.manifest
    assert man["parity"]["passed"] is True
    report = bundle.read_json("parity.json")
    assert report["passed"] and report["atol"] is None and report["rtol"] is None
    assert report["bound"]["model"] == kind and 0 < report["max_ratio"] <= 1
    seen = {(c["format"], c["entry_point"], c["case"]) for c in report["comparisons"]}
    # 5.9M pairs fit the default budget: the whole matrix; score on random pairs
    assert report["plan"]["mode"] == "full" and report["plan"]["fraction"] == 1.0
    # the large batch through score_all / recommend is what fits BATCH_BYTES in one call
    large = call_users(reference_model(bundle.root, man), BATCH_BYTES)
    assert large == (1024 if kind == "mf" else 63)
    for fmt in ("onnx", "torchscript", "pt2"):
        for b in (1, 2, 7, 1024):
            assert (fmt, "score", f"batch={b}") in seen
            assert (fmt, "score_all", f"batch={min(b, large)}") in seen
            assert (fmt, "recommend", f"batch={min(b, large)} k=10") in seen
        assert (fmt, "score_all", "full matrix") in seen
        assert (fmt, "score", "random pairs") in seen
    # the torch-free runtime, fast-path graphs included, is checked on the written bundle
    assert ("runtime", "score_all", "full matrix") in seen
    assert ("runtime", "score", "random pairs") in seen
    for k in (1, 10, man["model"]["n_items"]):
        assert ("runtime", "recommend", f"all users k={k} excluded") in seen
    full = [
        c
        for c in report["comparisons"]
        if c["case"] == "full matrix" and c["entry_point"] == "score_all"
    ]
    assert all(c["n_values"] == man["model"]["n_users"] * man["model"]["n_items"] for c in full)
    print(f"{kind} export seconds: {man['timings']['export_seconds']}")


def test_manifest_describes_the_bundle(ml_bundles):
    man = Bundle.load(ml_bundles["mf"]).manifest
    assert man["model"]["kind"] == "mf" and man["model"]["n_users"] == 610
    assert man["model"]["n_items"] == 9724
    assert set(man["formats"]) == {"onnx", "torchscript", "pt2"}
    assert man["formats"]["onnx"]["opset"] == ONNX_OPSET
    assert set(man["entry_points"]) == {"score", "score_all", "recommend"}
    rec = man["entry_points"]["recommend"]
    assert [i["name"] for i in rec["inputs"]] == ["users", "k", "exclude_rows", "exclude_items"]
    assert man["entry_points"]["score_all"]["outputs"][0]["shape"] == ["batch", 9724]
    for key in ("torch", "onnx", "onnxruntime"):
        assert man["versions"][key]
    assert "rmse" in man["training"]["metrics"]
    for rel, info in man["files"].items():
        assert (
            len(info["sha256"]) == 64 and (ml_bundles["mf"] / rel).stat().st_size == info["bytes"]
        )


@pytest.mark.parametrize("kind", ["mf", "densenet"])
def test_onnx_graphs_are_valid_with_dynamic_batch_and_metadata(small_bundles, kind):
    root, _ = small_bundles[kind]
    graphs = Bundle.load(root).manifest["formats"]["onnx"]["graphs"]
    for entry, rel in graphs.items():
        model = onnx.load(str(root / rel))
        onnx.checker.check_model(model, full_check=True)
        assert model.opset_import[0].version >= 18
        meta = {p.key: p.value for p in model.metadata_props}
        assert meta["recsys_export.model_kind"] == kind
        assert meta["recsys_export.entry_point"] == entry
        assert meta["recsys_export.bundle_format_version"] == "1"
        first = model.graph.input[0].type.tensor_type
        assert first.elem_type == onnx.TensorProto.INT64
        assert first.shape.dim[0].dim_param  # symbolic batch dimension


def _concat_sources(graph: onnx.GraphProto) -> set[str]:
    """Graph inputs and initializers that feed any Concat node, transitively."""
    producer = {out: node for node in graph.node for out in node.output}
    sources: set[str] = set()
    stack = [name for node in graph.node if node.op_type == "Concat" for name in node.input]
    seen: set[str] = set()
    while stack:
        name = stack.pop()
        if name in seen or not name:
            continue
        seen.add(name)
        if name in producer:
            stack.extend(producer[name].input)
        else:
            sources.add(name)
    return sources


def test_densenet_score_all_never_concatenates_pairs(small_bundles):
    root, _ = small_bundles["densenet"]
    graphs = Bundle.load(root).manifest["formats"]["onnx"]["graphs"]
    score_all = onnx.load(str(root / graphs["score_all"])).graph
    assert "Concat" not in [n.op_type for n in score_all.node]
    # recommend concatenates only the (row, item) exclusion indices for ScatterND,
    # never anything derived from users or embeddings
    recommend = onnx.load(str(root / graphs["recommend"])).graph
    inits = {i.name for i in recommend.initializer}
    sources = _concat_sources(recommend) - inits
    assert sources <= {"exclude_rows", "exclude_items"}, sources
    assert not (
        _concat_sources(recommend) & {i.name for i in recommend.initializer if len(i.dims) == 2}
    )
    score = onnx.load(str(root / graphs["score"])).graph
    assert "Concat" in [n.op_type for n in score.node]  # the post's pairwise forward does


@pytest.mark.parametrize("kind", ["mf", "densenet"])
def test_recommend_contract_on_exported_formats(small_bundles, kind):
    root, ckpt_path = small_bundles[kind]
    man = Bundle.load(root).manifest
    ck = load_checkpoint(ckpt_path)
    n_items = ck.model.n_items
    users = np.array([0, 3, 5], dtype=np.int64)
    rows = np.array([0] * (n_items - 2) + [1, 1, 2], dtype=np.int64)
    items = np.concatenate([np.arange(n_items - 2), [4, 4, n_items - 1]]).astype(np.int64)
    for name, backend in [*load_backends(root, man).items(), ("eager", EagerBackend(ck.model))]:
        scores, top = backend.recommend(users, 5, rows, items)
        assert top.dtype == np.int64 and scores.dtype == np.float32
        assert top.shape == (3, 5)
        # user 0 has only two admissible items: the rest are empty slots
        assert set(top[0, :2]) == {n_items - 2, n_items - 1}, name
        assert (top[0, 2:] == -1).all() and np.isneginf(scores[0, 2:]).all(), name
        assert 4 not in top[1] and n_items - 1 not in top[2], name
        assert (np.diff(scores[1:], axis=1) <= 0).all(), name


def test_torchscript_recommend_rejects_bad_k(small_bundles):
    root, _ = small_bundles["mf"]
    ts = TorchScriptBackend(root / "torchscript" / "model.pt")
    empty = np.zeros(0, dtype=np.int64)
    for k in (0, 31):
        with pytest.raises(Exception, match="k must be between 1 and 30"):
            ts.recommend(np.array([0], dtype=np.int64), k, empty, empty)


def test_external_data_path(tmp_path):
    ck = small_checkpoint("mf")
    export_bundle(ck, tmp_path / "b", formats="onnx", external_data=True)
    bundle = Bundle.load(tmp_path / "b")
    roles = {info["role"] for info in bundle.manifest["files"].values()}
    assert {"onnx-data:score", "onnx-data:score_all", "onnx-data:recommend"} <= roles
    assert bundle.manifest["parity"]["passed"]
    sess = OnnxBackend(
        {e: tmp_path / "b" / p for e, p in bundle.manifest["formats"]["onnx"]["graphs"].items()}
    )
    got = sess.score_all(np.arange(40, dtype=np.int64))
    want = EagerBackend(ck.model).score_all(np.arange(40, dtype=np.int64))
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
    # the graph alone is small; the weights live in the side file
    assert (tmp_path / "b" / "onnx" / "score_all.onnx").stat().st_size < 10_000


def test_export_refuses_non_finite_weights(tmp_path):
    ck = small_checkpoint("mf")
    with torch.no_grad():
        ck.model.item_factors.weight[2, 1] = float("inf")
    with pytest.raises(CheckpointError, match="NaN or infinite"):
        export_bundle(ck, tmp_path / "b")
    assert not (tmp_path / "b").exists()


def test_export_refuses_existing_bundle_without_overwrite(small_bundles):
    root, ckpt_path = small_bundles["mf"]
    with pytest.raises(BundleError, match="exists"):
        export_bundle(load_checkpoint(ckpt_path), root, formats="onnx")


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["runtime", "onnx"])
def test_export_failing_parity_leaves_previous_bundle(
    small_bundles, tmp_path, monkeypatch, backend
):
    """Parity runs on the staged bundle: a failure replaces nothing and leaves nothing."""
    from recsys_export import parity

    _, ckpt_path = small_bundles["mf"]
    ck = load_checkpoint(ckpt_path)
    dest = tmp_path / "bundle"
    written = export_bundle(ck, dest, formats="onnx")
    before = json.loads((dest / "manifest.json").read_text())
    assert written == before  # the manifest as written, checksums and parity included
    cls = parity.RuntimeBackend if backend == "runtime" else parity.OnnxBackend
    real = cls.score_all
    monkeypatch.setattr(cls, "score_all", lambda self, users: real(self, users) + 1e-3)
    with pytest.raises(ParityError, match=f"{backend}:score_all"):
        export_bundle(ck, dest, formats="onnx", overwrite=True)
    assert Bundle.load(dest).manifest == before
    with pytest.raises(ParityError):
        export_bundle(ck, tmp_path / "fresh", formats="onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]


def test_parse_formats():
    assert parse_formats("pt2, onnx") == ["onnx", "pt2"]
    with pytest.raises(ConfigError, match="unknown export format"):
        parse_formats("onnx,tflite")


def test_parse_formats_default_and_all():
    """None is the defaults (pt2 opt-in); ``all`` is every format, alone or in a list."""
    assert parse_formats(None) == list(DEFAULT_FORMATS) == ["onnx", "torchscript"]
    assert parse_formats("all") == list(FORMATS) == ["onnx", "torchscript", "pt2"]
    assert parse_formats(" all ") == parse_formats(["all"]) == list(FORMATS)
    assert parse_formats("pt2,all") == parse_formats("all,onnx") == list(FORMATS)
    assert parse_formats(["pt2", "torchscript"]) == ["torchscript", "pt2"]
    with pytest.raises(ConfigError, match=r"choose from onnx, torchscript, pt2 or all"):
        parse_formats("every")
    with pytest.raises(ConfigError, match="unknown export format"):
        parse_formats(" , ")


def test_default_export_has_onnx_and_torchscript_only(tmp_path):
    """No ``formats``: ONNX and TorchScript, verified; no pt2 file, manifest entry or
    timing. ``formats="all"`` adds the three programs."""
    ck = small_checkpoint("mf", seed=2)
    man = export_bundle(ck, tmp_path / "d")
    assert set(man["formats"]) == {"onnx", "torchscript"}
    assert set(man["timings"]["export_seconds"]) == {"onnx", "torchscript"}
    assert not (tmp_path / "d" / "pt2").exists()
    assert not [f for f in man["files"] if f.startswith("pt2/")]
    assert man["parity"]["passed"]
    report = Bundle.load(tmp_path / "d").read_json("parity.json")
    checked = {c["format"] for c in report["comparisons"]} - {"eager"}  # eager: self-checks
    assert checked == {"onnx", "torchscript", "runtime"} and not report["skipped"]
    man = export_bundle(ck, tmp_path / "a", formats="all", verify=False)
    assert set(man["formats"]) == {"onnx", "torchscript", "pt2"}
    programs = man["formats"]["pt2"]["programs"]
    assert programs == {e: f"pt2/{e}.pt2" for e in ("score", "score_all", "recommend")}
    assert all((tmp_path / "a" / p).is_file() and p in man["files"] for p in programs.values())


def test_export_prints_nothing_and_warns_nothing(tmp_path, capfd, recwarn):
    ck = small_checkpoint("densenet", seed=1)
    export_bundle(ck, tmp_path / "b", formats="onnx,torchscript,pt2", verify=False)
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    assert not [w for w in recwarn if issubclass(w.category, DeprecationWarning)]


@pytest.mark.slow
def test_kill_during_export_keeps_previous_bundle(small_bundles, tmp_path):
    _, ckpt_path = small_bundles["densenet"]
    dest = tmp_path / "bundle"
    export_bundle(load_checkpoint(ckpt_path), dest, formats="onnx", verify=False)
    before = json.loads((dest / "manifest.json").read_text())
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [
            sys.executable,
            str(REPO / "tests" / "helpers" / "export_blocking.py"),
            str(ckpt_path),
            str(dest),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
        text=True,
    )
    try:
        assert proc.stdout.readline().strip() == "WRITING"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert Bundle.load(dest).manifest == before
    loadable = []
    for d in tmp_path.rglob("*"):
        if d.is_dir():
            try:
                Bundle.load(d)
                loadable.append(d)
            except BundleError:
                pass
    assert loadable == [dest]
