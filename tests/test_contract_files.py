"""Hostile inputs against the files, bundles, concurrency and resources of the contract.

One test (or a few) per defect of issue 28's files half, each asserting the contract of
docs/cli.md ("Files: what is never overwritten, what is cleaned up"): a one-line error
and exit 2 instead of a signal or a traceback, nothing half-written left, nothing the
user had replaced or deleted, a loaded bundle read whole.

1. A full disk (a 128 KiB tmpfs, mounted where root may; skipped elsewhere) and a
   file-size limit (``RLIMIT_FSIZE``, anywhere) while ``score --all`` and ``train``
   write.
2. ``export OUR_CHECKPOINT --model ...`` / ``--ids-from``.
3. A file created at ``--out`` while the command runs.
4. ``verify`` on a read-only bundle.
5. A bundle replaced (``export --force``) while, and after, it is loaded.
7. Tracebacks: a symlink loop as ``--out``, an unreadable bundle file, re-signed
   tampered bundles, sets and None as arguments, a closed stdout.
8. ``--threads`` past its bound.
10. A manifest without ``seen``, a bundle inside a bundle, a ``kill -9`` leftover met
    by a refused rerun.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.cli_contract import (
    assert_one_line_error,
    cli_env,
    dead_pid,
    leftovers,
    run_inprocess,
    run_subprocess,
)

from recsys_export import atomic
from recsys_export.bundle import Bundle, BundleWriter
from recsys_export.checkpoint import load_checkpoint
from recsys_export.errors import BundleError, ConfigError
from recsys_export.export import export_bundle
from recsys_export.runtime import Recommender
from recsys_export.synthetic_models import synthetic_checkpoint

USERS_A = [f"user {i}" for i in range(40)]
ITEMS_A = [f"item {j}" for j in range(30)]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two checkpoints of different sizes (A: string ids and titles; B: int ids), their
    bundles, and a bigger bundle whose outputs overflow a 128 KiB disk."""
    root = tmp_path_factory.mktemp("contract")
    a = synthetic_checkpoint("mf", 40, 30, seen_per_user=3, user_ids=USERS_A, item_ids=ITEMS_A)
    a.item_names = [f"Title {j}" for j in range(30)]
    b = synthetic_checkpoint("mf", 25, 50, seen_per_user=5, seed=1)
    big = synthetic_checkpoint("mf", 400, 300, seen_per_user=3, seed=2)
    out = {"ckpt_a": a.save(root / "a.pt"), "ckpt_b": b.save(root / "b.pt")}
    for name, ckpt in (("a", a), ("b", b), ("big", big)):
        out[name] = root / f"bundle-{name}"
        export_bundle(ckpt, out[name], formats="onnx", verify=False)
    return out


def _copy(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest)
    return dest


def _resign(bundle: Path, *rels: str) -> None:
    """Record the current size and sha256 of ``rels`` in the manifest (a re-signed edit)."""
    path = bundle / "manifest.json"
    manifest = json.loads(path.read_text())
    for rel in rels:
        data = (bundle / rel).read_bytes()
        manifest["files"][rel].update(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data))
    path.write_text(json.dumps(manifest))


def _edit_manifest(bundle: Path, edit) -> None:  # type: ignore[no-untyped-def]
    path = bundle / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))


def _snapshot(path: Path) -> dict[str, tuple[int, int, bytes]]:
    """(inode, mtime_ns, content) of a directory and every file under it."""
    snap = {".": (path.stat().st_ino, path.stat().st_mtime_ns, b"")}
    for p in sorted(path.rglob("*")):
        st = p.stat()
        snap[p.relative_to(path).as_posix()] = (
            st.st_ino,
            st.st_mtime_ns,
            p.read_bytes() if p.is_file() else b"",
        )
    return snap


# ------------------------------------------------------------------ 1. full disk


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 128 KiB tmpfs (root only; skipped where mounting is not allowed)."""
    mnt = tmp_path / "small-disk"
    mnt.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root (RLIMIT_FSIZE tests cover the rest)")
    got = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=128k", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
    )
    if got.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {got.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _training_csv(path: Path) -> Path:
    """1,500 users x 40 items: a checkpoint of a few hundred KiB."""
    rows = ["user,item,rating"] + [
        f"u{u},i{(u * 7 + j) % 40},{1 + (u + j) % 5}" for u in range(1500) for j in range(3)
    ]
    path.write_text("\n".join(rows) + "\n")
    return path


SCORE_OUTPUTS = {
    "npy": ["--all"],
    "csv": ["--all", "--top-k", "100"],
    "parquet": ["--all", "--top-k", "100"],
}


@pytest.mark.parametrize("ext", sorted(SCORE_OUTPUTS))
def test_score_all_on_a_full_disk(world: dict[str, Path], small_disk: Path, ext: str) -> None:
    """Main: the .npy run died of SIGBUS (exit 135) leaving a full-size temporary; CSV and
    Parquet printed tracebacks."""
    out = small_disk / f"scores.{ext}"
    argv = ["score", str(world["big"]), *SCORE_OUTPUTS[ext], "--out", str(out), "-q"]
    rc, stdout, stderr = run_subprocess(argv)
    assert_one_line_error(rc, stdout, stderr, "score", ["cannot write", "No space left"])
    assert list(small_disk.iterdir()) == []


def test_train_on_a_full_disk(tmp_path: Path, small_disk: Path) -> None:
    data = _training_csv(tmp_path / "ratings.csv")
    out = small_disk / "model.pt"
    argv = ["train", str(data), "--out", str(out), "--factors", "32", "--epochs", "1", "-q"]
    rc, stdout, stderr = run_subprocess(argv)
    assert_one_line_error(rc, stdout, stderr, "train", ["cannot write", "No space left"])
    assert list(small_disk.iterdir()) == []


@pytest.mark.parametrize("what", ["npy", "csv", "parquet", "train"])
def test_outputs_under_a_file_size_limit(world: dict[str, Path], tmp_path: Path, what: str) -> None:
    """RLIMIT_FSIZE (EFBIG; Python ignores SIGXFSZ): the portable stand-in for a full
    disk. Main: tracebacks for CSV, Parquet and train (the .npy was already a line)."""
    out = tmp_path / f"out.{'pt' if what == 'train' else what}"
    if what == "train":
        data = _training_csv(tmp_path / "ratings.csv")
        argv = ["train", str(data), "--out", str(out), "--factors", "32", "--epochs", "1", "-q"]
    else:
        argv = ["score", str(world["big"]), *SCORE_OUTPUTS[what], "--out", str(out), "-q"]

    def limited() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (8192, 8192))

    rc, stdout, stderr = run_subprocess(argv, preexec_fn=limited)
    assert_one_line_error(rc, stdout, stderr, argv[0], ["cannot write", "File too large"])
    assert not out.exists() and leftovers(tmp_path) == []


def test_reserve_space_reports_a_full_disk(small_disk: Path) -> None:
    """The library call behind the .npy writer: ENOSPC before any page is mapped."""
    sparse = small_disk / "sparse"
    with open(sparse, "wb") as fh:
        fh.truncate(1 << 20)  # a 1 MiB hole on a 128 KiB disk
    with pytest.raises(OSError) as exc:
        atomic.reserve_space(sparse, 1 << 20)
    assert exc.value.errno == 28  # ENOSPC


# ------------------------------------------------------------------ 2. our checkpoint, --model


def test_export_our_checkpoint_with_model_keeps_its_ids(
    world: dict[str, Path], tmp_path: Path
) -> None:
    """Main built a bundle with ids 0..n-1, no titles, no seen items: ``--user 1`` then
    served another user."""
    out = tmp_path / "bundle"
    argv = ["export", str(world["ckpt_a"]), "--model", "mf", "--out", str(out), "--no-verify", "-q"]
    rc, stdout, stderr = run_inprocess(argv)
    assert rc == 0, stderr
    assert stderr.startswith("note: ") and "recsys-export checkpoint" in stderr
    rec = Recommender.load(out)
    ckpt = load_checkpoint(world["ckpt_a"])
    assert rec.user_map.raw_ids.tolist() == USERS_A
    assert rec.item_names == ckpt.item_names
    indptr, seen = rec.seen_csr()
    assert seen.size == ckpt.seen_items.size > 0
    result = rec.recommend("user 3", k=5)
    rated = set(ckpt.seen_items[ckpt.seen_users == 3].tolist())
    assert not rated & set(rec.item_map.to_index(result.items[0]).tolist())


@pytest.mark.parametrize(
    "extra, words",
    [
        (
            ["--model", "densenet"],
            ["recsys-export checkpoint", "--model densenet", "without --model"],
        ),
        (["--ids-from", "{csv}"], ["recsys-export checkpoint", "--ids-from"]),
        (["--model", "mf", "--ids-from", "{csv}"], ["recsys-export checkpoint", "--ids-from"]),
    ],
    ids=["other-kind", "ids-from", "model-and-ids-from"],
)
def test_export_our_checkpoint_refuses_own_model_options(
    world: dict[str, Path], tmp_path: Path, extra: list[str], words: list[str]
) -> None:
    """Main ignored ``--ids-from`` (exit 0) and exported an MF checkpoint under
    ``--model densenet`` through the state-dict path."""
    csv = tmp_path / "ratings.csv"
    csv.write_text("user,item,rating\n1,2,3\n")
    out = tmp_path / "bundle"
    argv = ["export", str(world["ckpt_a"]), "--out", str(out), "--no-verify", "-q"]
    rc, stdout, stderr = run_inprocess(argv + [e.format(csv=csv) for e in extra])
    assert_one_line_error(rc, stdout, stderr, "export", words)
    assert not out.exists()


# ------------------------------------------------------------------ 3. appeared meanwhile


def _appear_during(monkeypatch: pytest.MonkeyPatch, owner: object, name: str, path: Path) -> None:
    """Make ``owner.name`` create ``path`` (b"theirs") on its first call, as another
    process would while the command runs."""
    original = getattr(owner, name)

    def creating(*args, **kwargs):  # type: ignore[no-untyped-def]
        if not path.exists():
            path.write_bytes(b"theirs")
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, creating)


@pytest.mark.parametrize("ext", ["npy", "csv"])
def test_score_all_never_replaces_a_file_that_appeared(
    world: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ext: str
) -> None:
    """Main checked ``--out`` at the start only, then ``os.replace``-d over the file."""
    out = tmp_path / f"scores.{ext}"
    hook = "_score_all_into" if ext == "npy" else "topk_rows"
    _appear_during(monkeypatch, Recommender, hook, out)
    argv = ["score", str(world["a"]), *SCORE_OUTPUTS[ext][:1], "--out", str(out), "-q"]
    if ext == "csv":
        argv += ["--top-k", "3"]
    rc, stdout, stderr = run_inprocess(argv)
    assert_one_line_error(rc, stdout, stderr, "score", [str(out), "appeared", "--force"])
    assert out.read_bytes() == b"theirs" and leftovers(tmp_path) == []
    # with --force the same race replaces it, as asked
    rc, _, stderr = run_inprocess([*argv, "--force"])
    assert rc == 0, stderr
    assert out.read_bytes() != b"theirs"


def test_train_never_replaces_a_checkpoint_that_appeared(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from recsys_export import experiment

    out = tmp_path / "model.pt"
    _appear_during(monkeypatch, experiment, "train_checkpoint", out)
    rc, stdout, stderr = run_inprocess(["train", "toy", "--out", str(out), "-q"])
    assert_one_line_error(rc, stdout, stderr, "train", [str(out), "appeared", "--force"])
    assert out.read_bytes() == b"theirs" and leftovers(tmp_path) == []


@pytest.mark.parametrize("fallback", ["renameat2", "link", "rename"])
def test_rename_noreplace_refuses_an_existing_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fallback: str
) -> None:
    """Each mechanism of :func:`atomic.rename_noreplace`: renameat2, then a hard link,
    then an existence check."""
    import errno

    def unsupported(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise OSError(errno.ENOSYS, "not here")

    if fallback != "renameat2":
        monkeypatch.setattr(atomic, "renameat2", unsupported)
    if fallback == "rename":
        monkeypatch.setattr(
            os, "link", lambda *a, **k: (_ for _ in ()).throw(OSError(errno.EPERM, "no links"))
        )
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.write_bytes(b"new")
    dst.write_bytes(b"theirs")
    with pytest.raises(atomic.AppearedError):
        atomic.rename_noreplace(src, dst)
    assert dst.read_bytes() == b"theirs" and src.read_bytes() == b"new"
    dst.unlink()
    atomic.rename_noreplace(src, dst)
    assert dst.read_bytes() == b"new" and not src.exists()


# ------------------------------------------------------------------ 4. verify, read-only


@pytest.mark.parametrize("how", ["read-only", "writable"])
def test_verify_only_reads_the_bundle(world: dict[str, Path], tmp_path: Path, how: str) -> None:
    """Main replaced a read-only bundle with a writable copy (root writes anyway) and
    exited 0; ``verify`` now reads only, and ``--record`` refuses a read-only bundle."""
    bundle = _copy(world["a"], tmp_path / "bundle")
    if how == "read-only":
        for p in [bundle, *bundle.rglob("*")]:
            p.chmod(0o555 if p.is_dir() else 0o444)
    before = _snapshot(bundle)
    try:
        rc, stdout, stderr = run_inprocess(["verify", str(bundle), "--quick", "-q"])
        assert rc == 0, stderr
        assert "PASS" in stdout and stderr == ""
        assert _snapshot(bundle) == before  # same inodes, times and bytes
        rc, stdout, stderr = run_inprocess(["verify", str(bundle), "--quick", "-q", "--record"])
        if how == "read-only":
            assert_one_line_error(rc, stdout, stderr, "verify", ["read-only", "chmod"])
            assert "PASS" in stdout  # the check ran; recording it was refused
            assert _snapshot(bundle) == before and leftovers(tmp_path) == []
        else:
            assert rc == 0, stderr
            assert Bundle.load(bundle).manifest["parity"]["passed"] is True
    finally:
        for p in [bundle, *bundle.rglob("*")]:
            p.chmod(0o755 if p.is_dir() else 0o644)


# ------------------------------------------------------------------ 5. replaced while loaded


def _replace_with(dest: Path, src: Path) -> None:
    """What ``export --force`` does to ``dest``: a new bundle (``src``'s files) swapped
    in atomically, the old directory deleted."""
    manifest = json.loads((src / "manifest.json").read_text())
    with BundleWriter(dest, overwrite=True) as writer:
        for rel, entry in manifest.pop("files").items():
            writer.write_bytes(rel, (src / rel).read_bytes(), entry["role"])
        writer.commit(manifest)


def _answers(rec: Recommender, users: list) -> tuple:  # type: ignore[type-arg]
    result = rec.recommend(users, k=4)
    return (
        rec.n_users,
        result.items.tolist(),
        np.round(result.scores, 5).tolist(),
        None if result.names is None else result.names.tolist(),
        np.round(rec.score_all(users), 5).tolist(),
        np.round(rec.score(users, list(rec.item_map.raw_ids[: len(users)])), 5).tolist(),
    )


def test_a_loaded_bundle_is_read_whole_after_it_is_replaced(
    world: dict[str, Path], tmp_path: Path
) -> None:
    """Main read the seen items, names and graphs lazily by path: after the swap they
    came from the other bundle ("seen-items CSR is malformed", wrong shapes)."""
    path = _copy(world["a"], tmp_path / "served")
    expected = _answers(Recommender.load(world["a"]), USERS_A[:3])
    rec = Recommender.load(path)  # nothing read yet beyond the first graph and id maps
    _replace_with(path, world["b"])
    assert Bundle.load(path).spec.model.n_users == 25  # the new one is in place
    assert _answers(rec, USERS_A[:3]) == expected  # the loaded one answers, whole
    assert Recommender.load(path).n_users == 25


def test_an_int8_variant_is_read_as_loaded(tmp_path: Path) -> None:
    """The int8 variant's arrays (user bias, re-rank factors) come from the files the
    bundle checked at load, also when the bundle is replaced before the variant engine
    is built (they were read by path: the other bundle's arrays, or a shape error)."""
    ckpts = [
        synthetic_checkpoint("mf", n, 30, seen_per_user=3, seed=s) for n, s in ((40, 3), (25, 4))
    ]
    a, b = (tmp_path / "a", tmp_path / "b")
    for ckpt, out in zip(ckpts, (a, b)):
        export_bundle(ckpt, out, formats="onnx", precision="int8", verify=False)
    expected = _answers(Recommender.load(a, precision="int8"), [0, 1, 2])
    path = _copy(a, tmp_path / "served")
    bundle = Bundle.load(path)
    _replace_with(path, b)
    rec = Recommender(bundle, precision="int8")
    assert _answers(rec, [0, 1, 2]) == expected


def test_loading_while_bundles_are_swapped_sees_one_whole(
    world: dict[str, Path], tmp_path: Path
) -> None:
    """A bounded race: one thread replaces the bundle 40 times (A, B, A, ...) while this
    one loads and queries it 40 times; every answer is A's or B's, whole."""
    path = _copy(world["a"], tmp_path / "served")
    users = {40: USERS_A[:2], 25: [0, 1]}
    expected = {
        n: _answers(Recommender.load(world[name]), users[n]) for n, name in ((40, "a"), (25, "b"))
    }
    errors: list[BaseException] = []

    def swapping() -> None:
        try:
            for i in range(40):
                _replace_with(path, world["b" if i % 2 == 0 else "a"])
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    swapper = threading.Thread(target=swapping)
    swapper.start()
    try:
        for _ in range(40):
            rec = Recommender.load(path)
            assert _answers(rec, users[rec.n_users]) == expected[rec.n_users]
    finally:
        swapper.join()
    assert errors == []


# ------------------------------------------------------------------ 7. tracebacks


def test_export_to_a_symlink_loop(world: dict[str, Path], tmp_path: Path) -> None:
    loop = tmp_path / "loop"
    (tmp_path / "other").symlink_to(loop)
    loop.symlink_to(tmp_path / "other")
    argv = ["export", str(world["ckpt_a"]), "--out", str(loop), "--no-verify", "-q"]
    rc, stdout, stderr = run_inprocess(argv)
    assert_one_line_error(rc, stdout, stderr, "export", ["symbolic link"])


def _without_dac_override() -> list[str]:
    """A command prefix under which file permissions apply (root reads any file unless
    it drops CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH); empty when not root."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: permissions cannot deny a read")
    drop = "-dac_override,-dac_read_search"
    return [setpriv, "--inh-caps=-all", f"--bounding-set={drop}", "--"]


def test_unreadable_file_inside_a_bundle(world: dict[str, Path], tmp_path: Path) -> None:
    """Main: a PermissionError traceback while checksumming."""
    bundle = _copy(world["a"], tmp_path / "bundle")
    (bundle / "ids" / "seen_items.npy").chmod(0)
    proc = subprocess.run(
        [
            *_without_dac_override(),
            sys.executable,
            "-m",
            "recsys_export.cli",
            "inspect",
            str(bundle),
        ],
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=120,
    )
    assert_one_line_error(
        proc.returncode,
        proc.stdout,
        proc.stderr,
        "inspect",
        ["cannot read", "seen_items.npy", "Permission denied"],
    )


def _swap_graphs(bundle: Path) -> list[str]:
    a, b = bundle / "onnx" / "score.onnx", bundle / "onnx" / "score_all.onnx"
    data_a, data_b = a.read_bytes(), b.read_bytes()
    a.write_bytes(data_b)
    b.write_bytes(data_a)
    _resign(bundle, "onnx/score.onnx", "onnx/score_all.onnx")
    return ["score", str(bundle), "--user", USERS_A[0], "--item", ITEMS_A[0]]


def _reference(bundle: Path, edit) -> list[str]:  # type: ignore[no-untyped-def]
    rel = "reference/state_dict.pt"
    state = torch.load(bundle / rel, weights_only=True)
    edit(bundle, state)
    _resign(bundle, rel)
    return ["verify", str(bundle), "--quick", "-q"]


class _RunsCode:
    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (print, ("this must never run",))


TAMPERED = {
    "graphs-swapped": (
        _swap_graphs,
        "score",
        ["onnxruntime cannot run", "score graph", "export it again"],
    ),
    "n-factors-changed": (
        lambda b: (
            _edit_manifest(b, lambda m: m["model"]["hyperparameters"].update(n_factors=3)),
            ["verify", str(b), "--quick", "-q"],
        )[1],
        "verify",
        ["reference weights do not fit", "export it again"],
    ),
    "weights-reshaped": (
        lambda b: _reference(
            b,
            lambda b, s: torch.save(
                {**s, "user_factors.weight": s["user_factors.weight"].reshape(-1)},
                b / "reference/state_dict.pt",
            ),
        ),
        "verify",
        ["reference weights do not fit", "user_factors.weight"],
    ),
    "weights-pickled": (
        lambda b: _reference(
            b, lambda b, s: torch.save({"x": _RunsCode()}, b / "reference/state_dict.pt")
        ),
        "verify",
        ["not plain weights", "export the bundle again"],
    ),
}


@pytest.mark.parametrize("case", sorted(TAMPERED))
def test_re_signed_tampered_bundles(world: dict[str, Path], tmp_path: Path, case: str) -> None:
    """Edits whose checksums were recomputed: each is a line, not onnxruntime's
    InvalidArgument or torch's load_state_dict / unpickling traceback (main)."""
    build, command, words = TAMPERED[case]
    argv = build(_copy(world["a"], tmp_path / "bundle"))
    rc, stdout, stderr = run_inprocess(argv)
    assert_one_line_error(rc, stdout, stderr, command, words)


def test_sets_and_none_as_arguments(world: dict[str, Path], tmp_path: Path) -> None:
    """Main: bare TypeErrors ("unhashable type: 'set'", "expected str ... not NoneType")."""
    rec = Recommender.load(world["a"])
    for call in (
        lambda: rec.recommend(set()),
        lambda: rec.recommend({USERS_A[0]}),
        lambda: rec.score({USERS_A[0]}, [ITEMS_A[0]]),
        lambda: rec.score_all(frozenset()),
        lambda: rec.recommend({USERS_A[0]: 1}),
    ):
        with pytest.raises(ConfigError, match="ordered sequence"):
            call()
    for method in (rec.write_topk, rec.write_score_matrix):
        with pytest.raises(ConfigError, match="output path must be a str or os.PathLike"):
            method(None)  # type: ignore[arg-type]
    # items may come as sets where order does not matter
    got = rec.recommend(USERS_A[0], k=3, exclude={ITEMS_A[0]}, include=set(ITEMS_A[:5]))
    assert ITEMS_A[0] not in got.items[0].tolist()
    assert set(got.items[0].tolist()) <= set(ITEMS_A[1:5])


def test_output_closed_early_ends_silently(world: dict[str, Path]) -> None:
    """``inspect B | head -1``: main printed a BrokenPipeError traceback (exit 1)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "recsys_export.cli", "inspect", str(world["a"])],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=cli_env(),
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the reader is gone before the first line is written
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 141  # 128 + SIGPIPE, as Unix tools end
    assert err == b""


# ------------------------------------------------------------------ 8. --threads


def test_threads_are_bounded(world: dict[str, Path]) -> None:
    """Main handed any count to onnxruntime: 100000 ran 9 minutes at 16.6 GB."""
    bound = 4 * (os.cpu_count() or 1)
    with pytest.raises(ConfigError, match=f"between 1 and {bound}"):
        Recommender.load(world["a"], intra_op_threads=bound + 1)
    argv = ["recommend", str(world["a"]), "--user", USERS_A[0], "--threads", str(bound + 1)]
    rc, stdout, stderr = run_inprocess(argv)
    assert_one_line_error(rc, stdout, stderr, "recommend", ["--threads", str(bound), "per core"])
    assert Recommender.load(world["a"], intra_op_threads=bound).recommend(USERS_A[0], k=2)


# ------------------------------------------------------------------ 10. smaller holes


def test_manifest_without_seen_is_refused(world: dict[str, Path], tmp_path: Path) -> None:
    """Main served the items each user rated as if none were."""
    bundle = _copy(world["a"], tmp_path / "bundle")
    _edit_manifest(bundle, lambda m: m.pop("seen"))
    rc, stdout, stderr = run_inprocess(["recommend", str(bundle), "--user", USERS_A[0]])
    assert_one_line_error(rc, stdout, stderr, "recommend", ["no 'seen' entry", "--include-seen"])
    rc, stdout, stderr = run_inprocess(
        ["recommend", str(bundle), "--user", USERS_A[0], "--include-seen"]
    )
    assert rc == 0, stderr


def test_a_bundle_inside_a_bundle(world: dict[str, Path], tmp_path: Path) -> None:
    """Main: ``export --force`` of the outer bundle deleted the inner one, and exporting
    into a bundle was allowed."""
    outer = _copy(world["a"], tmp_path / "outer")
    inner = _copy(world["b"], outer / "inner")
    argv = ["export", str(world["ckpt_a"]), "--out", str(outer), "--force", "--no-verify", "-q"]
    rc, stdout, stderr = run_inprocess(argv)
    assert_one_line_error(rc, stdout, stderr, "export", ["refusing to replace", str(inner)])
    assert Bundle.load(inner).spec.model.n_users == 25
    shutil.rmtree(inner)
    argv = ["export", str(world["ckpt_b"]), "--out", str(outer / "new"), "--no-verify", "-q"]
    rc, stdout, stderr = run_inprocess(argv)
    assert_one_line_error(rc, stdout, stderr, "export", ["inside the bundle", str(outer)])
    assert not (outer / "new").exists()


@pytest.mark.parametrize("command", ["score", "export", "train"])
def test_a_refused_rerun_cleans_what_kill_9_left(
    world: dict[str, Path], tmp_path: Path, command: str
) -> None:
    """A killed run leaves ``.OUT.partial-PID-HEX``; the rerun refuses (OUT exists, no
    --force) and main left the temporary there for good."""
    pid = dead_pid()
    if command == "export":
        out = _copy(world["a"], tmp_path / "bundle")
        stale = tmp_path / f".bundle.partial-{pid}-0123abcd"
        stale.mkdir()
        (stale / "onnx.part").write_bytes(b"x" * 100)
        argv = ["export", str(world["ckpt_a"]), "--out", str(out), "--no-verify", "-q"]
    else:
        out = tmp_path / ("scores.npy" if command == "score" else "model.pt")
        out.write_bytes(b"theirs")
        stale = tmp_path / f".{out.name}.partial-{pid}-0123abcd"
        stale.write_bytes(b"x" * 100)
        argv = (
            ["score", str(world["a"]), "--all", "--out", str(out), "-q"]
            if command == "score"
            else ["train", "toy", "--out", str(out), "-q"]
        )
    rc, stdout, stderr = run_inprocess(argv)
    assert_one_line_error(rc, stdout, stderr, command, ["exists"])
    assert not stale.exists() and leftovers(tmp_path) == []
    if command != "export":
        assert out.read_bytes() == b"theirs"


def test_a_live_writers_temporary_is_left_alone(world: dict[str, Path], tmp_path: Path) -> None:
    """Only the temporaries of dead processes are removed: a running writer's stays."""
    out = tmp_path / "scores.npy"
    out.write_bytes(b"theirs")
    live = tmp_path / f".scores.npy.partial-{os.getppid()}-0123abcd"
    live.write_bytes(b"being written")
    rc, stdout, stderr = run_inprocess(["score", str(world["a"]), "--all", "--out", str(out), "-q"])
    assert_one_line_error(rc, stdout, stderr, "score", ["exists"])
    assert live.read_bytes() == b"being written"


def test_bundle_errors_are_bundle_errors(world: dict[str, Path]) -> None:
    """A closed bundle says so instead of reading another file at its path."""
    bundle = Bundle.load(world["a"])
    bundle.close()
    with pytest.raises(BundleError, match="closed"):
        bundle.read_bytes("ids/users.json")
