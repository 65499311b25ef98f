"""Tests of recsys_export.bundle: atomic writing, verified loading, updates, crash safety."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from helpers.cli_contract import dead_pid
from hypothesis import given, settings
from hypothesis import strategies as st

from recsys_export.bundle import (
    FORMAT_NAME,
    FORMAT_VERSION,
    MANIFEST_NAME,
    Bundle,
    BundleWriter,
    sha256_file,
    update_bundle,
)
from recsys_export.bundle import files as bundle_files
from recsys_export.bundle import writer as bundle_writer
from recsys_export.core import atomic
from recsys_export.core.ids import IdMap
from recsys_export.errors import BundleError, RecsysExportError

REPO_ROOT = Path(__file__).resolve().parents[1]
HELPER = Path(__file__).resolve().parent / "helpers" / "slow_bundle_writer.py"

ONNX_BYTES = b"\x08\x07fake-onnx-graph" * 100
EXTRA = {"model": {"kind": "mf", "factors": 8}, "entry_points": {"score": {"opset": 20}}}


def make_bundle(
    dest: Path,
    *,
    users: list | None = None,
    items: list | None = None,
    onnx: bytes = ONNX_BYTES,
    overwrite: bool = False,
    extra: dict | None = None,
) -> Path:
    users = [10, 20, 30] if users is None else users
    items = ["a", "b"] if items is None else items
    with BundleWriter(dest, overwrite=overwrite) as w:
        w.write_id_maps(IdMap(users, "user"), IdMap(items, "item"))
        w.write_bytes("onnx/score.onnx", onnx, role="onnx:score")
        w.write_json("reports/parity.json", {"max_abs": 1e-7}, role="report:parity")
        w.commit(dict(EXTRA if extra is None else extra))
    return dest


def read_manifest(root: Path) -> dict:
    return json.loads((root / MANIFEST_NAME).read_text())


def write_manifest(root: Path, manifest: dict) -> None:
    (root / MANIFEST_NAME).write_text(json.dumps(manifest))


def siblings(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir())


# ---------------------------------------------------------------------- basics
def test_sha256_file_matches_hashlib(tmp_path: Path) -> None:
    import hashlib

    data = os.urandom((1 << 20) * 2 + 123)  # crosses the 1 MiB block boundary
    p = tmp_path / "x.bin"
    p.write_bytes(data)
    assert sha256_file(p) == hashlib.sha256(data).hexdigest()
    (tmp_path / "empty").write_bytes(b"")
    assert sha256_file(tmp_path / "empty") == hashlib.sha256(b"").hexdigest()


def test_bundle_error_is_a_recsys_export_error() -> None:
    assert issubclass(BundleError, RecsysExportError)


def test_module_does_not_import_torch() -> None:
    code = (
        "import sys, recsys_export.bundle; "
        "bad = [m for m in sys.modules if m == 'torch' or m.startswith('torch.')]; "
        "assert not bad, bad"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=REPO_ROOT)


# ---------------------------------------------------------------------- roundtrip
@pytest.mark.parametrize(
    ("users", "items"),
    [([10, 20, 30], ["a", "b"]), (["u1", "u2"], [5, 7, 9, 11]), ([3], [np.int64(4)])],
)
def test_roundtrip_with_id_maps(tmp_path: Path, users: list, items: list) -> None:
    dest = make_bundle(tmp_path / "b", users=users, items=items)
    assert siblings(tmp_path) == ["b"]  # no temporary directory left behind
    b = Bundle.load(dest)
    assert b.root == dest
    assert b.format_version == FORMAT_VERSION
    assert b.user_map() == IdMap(users, "user")
    assert b.item_map() == IdMap(items, "item")
    assert b.user_map() is b.user_map()  # cached
    assert b.user_map().kind == ("int" if isinstance(users[0], int) else "str")
    assert b.file("onnx/score.onnx").read_bytes() == ONNX_BYTES
    assert b.manifest.to_dict()["model"] == EXTRA["model"]
    assert b.manifest.to_dict()["entry_points"] == EXTRA["entry_points"]
    assert b.read_json("reports/parity.json") == {"max_abs": 1e-7}


def test_manifest_generic_keys(tmp_path: Path) -> None:
    dest = make_bundle(tmp_path / "b")
    m = read_manifest(dest)
    assert m["format"] == FORMAT_NAME
    assert m["format_version"] == FORMAT_VERSION
    assert m["created"].endswith("Z") and "T" in m["created"]
    assert m["id_maps"] == {"users": "ids/users.json", "items": "ids/items.json"}
    assert set(m["files"]) == {
        "ids/users.json",
        "ids/items.json",
        "onnx/score.onnx",
        "reports/parity.json",
    }
    for rel, entry in m["files"].items():
        assert entry["sha256"] == sha256_file(dest / rel)
        assert entry["bytes"] == (dest / rel).stat().st_size
    assert m["files"]["ids/users.json"]["role"] == "id_map:users"
    assert m["files"]["ids/items.json"]["role"] == "id_map:items"
    assert (
        json.loads((dest / "ids/users.json").read_text()) == IdMap([10, 20, 30], "user").to_json()
    )


def test_files_with_role_and_file(tmp_path: Path) -> None:
    b = Bundle.load(make_bundle(tmp_path / "b"))
    assert b.files_with_role("id_map:") == {
        "ids/items.json": b.root / "ids/items.json",
        "ids/users.json": b.root / "ids/users.json",
    }
    assert b.files_with_role("onnx") == {"onnx/score.onnx": b.root / "onnx/score.onnx"}
    assert b.files_with_role("nothing") == {}
    assert b.role("onnx/score.onnx") == "onnx:score"
    with pytest.raises(BundleError, match="no file 'onnx/other.onnx'"):
        b.file("onnx/other.onnx")


def test_add_registers_a_file_written_by_someone_else(tmp_path: Path) -> None:
    with BundleWriter(tmp_path / "b") as w:
        w.write_id_maps(IdMap([1], "user"), IdMap([2], "item"))
        target = w.add("onnx/model.onnx.data", role="onnx:weights")
        assert target.parent.is_dir()
        target.write_bytes(b"weights")  # e.g. torch.onnx.export writing its side file
        w.commit({})
    b = Bundle.load(tmp_path / "b")
    assert b.file("onnx/model.onnx.data").read_bytes() == b"weights"


def test_manifest_values_numpy_are_serialised(tmp_path: Path) -> None:
    make_bundle(
        tmp_path / "b",
        extra={"training": {"rmse": np.float32(0.5), "n": np.int64(3), "curve": np.arange(3)}},
    )
    assert Bundle.load(tmp_path / "b").manifest.to_dict()["training"] == {
        "rmse": 0.5,
        "n": 3,
        "curve": [0, 1, 2],
    }


# ---------------------------------------------------------------------- load refusals
ALL_FILES = ["ids/users.json", "ids/items.json", "onnx/score.onnx", "reports/parity.json"]


@pytest.mark.parametrize("rel", ALL_FILES)
def test_changed_byte_is_detected(tmp_path: Path, rel: str) -> None:
    dest = make_bundle(tmp_path / "b")
    p = dest / rel
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0x01
    p.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="altered/corrupted: checksum mismatch") as ei:
        Bundle.load(dest)
    assert str(dest) in str(ei.value) and rel in str(ei.value)
    # verify=False skips only the checksums; the size is unchanged, so it loads.
    assert Bundle.load(dest, verify=False).root == dest


@pytest.mark.parametrize("rel", ALL_FILES)
def test_truncated_file_is_detected_even_without_verify(tmp_path: Path, rel: str) -> None:
    dest = make_bundle(tmp_path / "b")
    p = dest / rel
    p.write_bytes(p.read_bytes()[:-1])
    for verify in (True, False):
        with pytest.raises(BundleError, match="truncated") as ei:
            Bundle.load(dest, verify=verify)
        assert rel in str(ei.value)


def test_grown_file_is_detected(tmp_path: Path) -> None:
    dest = make_bundle(tmp_path / "b")
    with open(dest / "onnx/score.onnx", "ab") as fh:
        fh.write(b"x")
    with pytest.raises(BundleError, match="altered"):
        Bundle.load(dest, verify=False)


@pytest.mark.parametrize("rel", ALL_FILES)
def test_missing_file_is_detected(tmp_path: Path, rel: str) -> None:
    dest = make_bundle(tmp_path / "b")
    (dest / rel).unlink()
    with pytest.raises(BundleError, match=f"'{rel}' is missing"):
        Bundle.load(dest, verify=False)


def test_no_bundle_at_missing_path(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="no bundle at .*does not exist"):
        Bundle.load(tmp_path / "nope")
    (tmp_path / "f").write_text("x")
    with pytest.raises(BundleError, match="no bundle at .*is a file"):
        Bundle.load(tmp_path / "f")


def test_missing_manifest(tmp_path: Path) -> None:
    dest = make_bundle(tmp_path / "b")
    (dest / MANIFEST_NAME).unlink()
    with pytest.raises(BundleError, match="not a recsys-export bundle: it has no manifest.json"):
        Bundle.load(dest)


@pytest.mark.parametrize("text", ["{not json", "", "\xff\xfe garbage"])
def test_invalid_json_manifest(tmp_path: Path, text: str) -> None:
    dest = make_bundle(tmp_path / "b")
    (dest / MANIFEST_NAME).write_bytes(text.encode("latin-1"))
    with pytest.raises(BundleError, match="manifest.json is not valid JSON"):
        Bundle.load(dest)


def test_manifest_not_an_object(tmp_path: Path) -> None:
    dest = make_bundle(tmp_path / "b")
    (dest / MANIFEST_NAME).write_text("[1, 2]")
    with pytest.raises(BundleError, match="must hold a JSON object"):
        Bundle.load(dest)


def test_wrong_format_name(tmp_path: Path) -> None:
    dest = make_bundle(tmp_path / "b")
    m = read_manifest(dest)
    m["format"] = "something-else"
    write_manifest(dest, m)
    with pytest.raises(BundleError, match="not a recsys-export bundle.*'something-else'"):
        Bundle.load(dest)


def test_future_format_version_says_upgrade(tmp_path: Path) -> None:
    dest = make_bundle(tmp_path / "b")
    m = read_manifest(dest)
    m["format_version"] = FORMAT_VERSION + 1
    write_manifest(dest, m)
    with pytest.raises(BundleError) as ei:
        Bundle.load(dest)
    msg = str(ei.value)
    assert "newer recsys-export" in msg
    assert f"format {FORMAT_VERSION + 1} > {FORMAT_VERSION}" in msg
    assert "upgrade recsys-export" in msg
    assert str(dest) in msg


@pytest.mark.parametrize("version", ["1", 1.0, True, 0, -1, None])
def test_bad_format_version(tmp_path: Path, version: object) -> None:
    dest = make_bundle(tmp_path / "b")
    m = read_manifest(dest)
    m["format_version"] = version
    write_manifest(dest, m)
    with pytest.raises(BundleError, match="format_version must be a positive integer"):
        Bundle.load(dest)


@pytest.mark.parametrize("files", [None, [], "x"])
def test_files_table_must_be_an_object(tmp_path: Path, files: object) -> None:
    dest = make_bundle(tmp_path / "b")
    m = read_manifest(dest)
    if files is None:
        del m["files"]
    else:
        m["files"] = files
    write_manifest(dest, m)
    with pytest.raises(BundleError, match="'files' table"):
        Bundle.load(dest)


@pytest.mark.parametrize(
    ("rel", "reason"),
    [
        ("../x", "contains '..'"),
        ("onnx/../../x", "contains '..'"),
        ("/etc/passwd", "absolute path"),
        ("C:/x", "absolute path"),
        ("onnx\\score.onnx", "backslash"),
        ("", "empty name"),
        ("a//b", "not a normalised"),
        ("./a", "not a normalised"),
    ],
)
def test_unsafe_names_in_manifest_are_refused(tmp_path: Path, rel: str, reason: str) -> None:
    dest = make_bundle(tmp_path / "b")
    (tmp_path / "x").write_bytes(b"outside")
    m = read_manifest(dest)
    m["files"][rel] = {"role": "evil", "sha256": sha256_file(tmp_path / "x"), "bytes": 7}
    write_manifest(dest, m)
    for verify in (True, False):
        with pytest.raises(BundleError, match="unsafe file name") as ei:
            Bundle.load(dest, verify=verify)
        assert reason in str(ei.value)


@pytest.mark.parametrize("link_dir", [False, True])
def test_symlink_leaving_the_bundle_is_refused(tmp_path: Path, link_dir: bool) -> None:
    dest = make_bundle(tmp_path / "b")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "score.onnx").write_bytes(ONNX_BYTES)  # identical bytes: checksum would pass
    if link_dir:  # a directory symlink on the way
        for p in (dest / "onnx").iterdir():
            p.unlink()
        (dest / "onnx").rmdir()
        (dest / "onnx").symlink_to(outside, target_is_directory=True)
    else:
        (dest / "onnx/score.onnx").unlink()
        (dest / "onnx/score.onnx").symlink_to(outside / "score.onnx")
    for verify in (True, False):
        with pytest.raises(BundleError, match="outside the bundle"):
            Bundle.load(dest, verify=verify)


def test_symlink_inside_the_bundle_is_allowed(tmp_path: Path) -> None:
    dest = make_bundle(tmp_path / "b")
    real = dest / "onnx/real.onnx"
    os.replace(dest / "onnx/score.onnx", real)
    (dest / "onnx/score.onnx").symlink_to("real.onnx")
    assert Bundle.load(dest).file("onnx/score.onnx").read_bytes() == ONNX_BYTES


def test_malformed_file_entry(tmp_path: Path) -> None:
    dest = make_bundle(tmp_path / "b")
    m = read_manifest(dest)
    m["files"]["onnx/score.onnx"]["sha256"] = "abc"
    write_manifest(dest, m)
    with pytest.raises(BundleError, match="malformed manifest.json entry for 'onnx/score.onnx'"):
        Bundle.load(dest)


def test_id_map_not_listed_in_files(tmp_path: Path) -> None:
    dest = make_bundle(tmp_path / "b")
    m = read_manifest(dest)
    del m["files"]["ids/users.json"]
    write_manifest(dest, m)
    with pytest.raises(BundleError, match="id map 'users' names 'ids/users.json'.*not listed"):
        Bundle.load(dest)


def test_malformed_id_map_content_is_a_bundle_error(tmp_path: Path) -> None:
    with BundleWriter(tmp_path / "b") as w:
        w.write_id_maps(IdMap([1], "user"), IdMap([2], "item"))
        w.write_json("ids/users.json", {"kind": "float", "ids": [1.5]}, role="id_map:users")
        w.commit({})
    b = Bundle.load(tmp_path / "b")
    with pytest.raises(BundleError, match="ids/users.json"):
        b.user_map()
    assert b.item_map() == IdMap([2], "item")


def test_bundle_without_id_maps_says_so(tmp_path: Path) -> None:
    with BundleWriter(tmp_path / "b") as w:
        w.write_bytes("x.bin", b"x", role="data")
        w.commit({})
    with pytest.raises(BundleError, match="has no users id map"):
        Bundle.load(tmp_path / "b").user_map()


# ---------------------------------------------------------------------- writer refusals
@pytest.mark.parametrize("rel", ["../x", "/abs", "a\\b", "", "a/./b", "a/../b", MANIFEST_NAME])
def test_writer_rejects_unsafe_names(tmp_path: Path, rel: str) -> None:
    with BundleWriter(tmp_path / "b") as w:
        with pytest.raises(BundleError):
            w.path(rel)
        with pytest.raises(BundleError):
            w.write_bytes(rel, b"x", role="r")
    assert siblings(tmp_path) == []


def test_writer_rejects_empty_role(tmp_path: Path) -> None:
    with BundleWriter(tmp_path / "b") as w, pytest.raises(BundleError, match="role"):
        w.add("x.bin", role="")


def test_overwrite_false_refuses_existing_dest(tmp_path: Path) -> None:
    dest = make_bundle(tmp_path / "b")
    before = read_manifest(dest)
    with pytest.raises(BundleError, match="already exists; pass overwrite=True.*--force"):
        BundleWriter(dest)
    assert read_manifest(dest) == before


def test_overwrite_replaces_contents(tmp_path: Path) -> None:
    dest = make_bundle(tmp_path / "b")
    (dest / "stray.txt").write_text("left from the old bundle")
    make_bundle(dest, users=["x", "y"], onnx=b"new graph", overwrite=True)
    b = Bundle.load(dest)
    assert b.user_map() == IdMap(["x", "y"], "user")
    assert b.file("onnx/score.onnx").read_bytes() == b"new graph"
    assert not (dest / "stray.txt").exists()  # the old directory is gone, not merged
    assert siblings(tmp_path) == ["b"]


@pytest.mark.skipif(atomic.libc_renameat2() is None, reason="no renameat2 here")
def test_overwrite_uses_atomic_exchange(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = atomic.renameat2

    def spy(src: Path, dst: Path, flags: int) -> None:
        calls.append(flags)
        real(src, dst, flags)

    monkeypatch.setattr(bundle_writer, "_renameat2", spy)
    monkeypatch.setattr(atomic, "renameat2", spy)  # rename_noreplace's
    dest = make_bundle(tmp_path / "b")
    make_bundle(dest, onnx=b"second", overwrite=True)
    assert calls == [atomic.RENAME_NOREPLACE, atomic.RENAME_EXCHANGE]
    assert Bundle.load(dest).file("onnx/score.onnx").read_bytes() == b"second"
    assert siblings(tmp_path) == ["b"]


def test_overwrite_falls_back_without_renameat2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unsupported(src: Path, dst: Path, flags: int) -> None:
        raise OSError(errno.ENOSYS, "no renameat2")

    monkeypatch.setattr(bundle_writer, "_renameat2", unsupported)
    monkeypatch.setattr(atomic, "renameat2", unsupported)
    dest = make_bundle(tmp_path / "b")  # dest absent: plain rename
    make_bundle(dest, onnx=b"second", overwrite=True)  # dest present: rename dance
    assert Bundle.load(dest).file("onnx/score.onnx").read_bytes() == b"second"
    assert siblings(tmp_path) == ["b"]


def test_overwrite_refuses_non_bundle_directory(tmp_path: Path) -> None:
    dest = tmp_path / "home"
    dest.mkdir()
    (dest / "precious.txt").write_text("keep me")
    with pytest.raises(BundleError, match="refusing to replace .*not a recsys-export bundle"):
        BundleWriter(dest, overwrite=True)
    assert (dest / "precious.txt").read_text() == "keep me"
    # an empty directory is fine to replace
    empty = tmp_path / "empty"
    empty.mkdir()
    make_bundle(empty, overwrite=True)
    assert Bundle.load(empty).file("onnx/score.onnx").read_bytes() == ONNX_BYTES


def test_dest_parent_must_exist(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="parent directory .* does not exist"):
        BundleWriter(tmp_path / "missing" / "b")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root can write anywhere")
def test_dest_parent_must_be_writable(tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(BundleError, match="not writable"):
            BundleWriter(ro / "b")
    finally:
        ro.chmod(0o700)


def test_dest_that_is_a_file_or_symlink(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(BundleError, match="is a file"):
        BundleWriter(tmp_path / "f", overwrite=True)
    real = make_bundle(tmp_path / "real")
    (tmp_path / "link").symlink_to(real)
    with pytest.raises(BundleError, match="symbolic link"):
        BundleWriter(tmp_path / "link", overwrite=True)


def test_writer_exception_leaves_no_temp_and_previous_bundle_untouched(tmp_path: Path) -> None:
    dest = make_bundle(tmp_path / "b")
    before = {p: p.read_bytes() for p in dest.rglob("*") if p.is_file()}
    with pytest.raises(RuntimeError, match="boom"):
        with BundleWriter(dest, overwrite=True) as w:
            w.write_bytes("onnx/score.onnx", b"half", role="onnx:score")
            assert w.tmp_dir.is_dir()
            raise RuntimeError("boom")
    assert siblings(tmp_path) == ["b"]
    assert {p: p.read_bytes() for p in dest.rglob("*") if p.is_file()} == before
    Bundle.load(dest)


def test_exit_without_commit_cleans_up(tmp_path: Path) -> None:
    with BundleWriter(tmp_path / "b") as w:
        w.write_bytes("x.bin", b"x", role="data")
    assert siblings(tmp_path) == []


def test_commit_refuses_registered_but_missing_file(tmp_path: Path) -> None:
    dest = make_bundle(tmp_path / "b")
    before = read_manifest(dest)
    with pytest.raises(BundleError, match="'onnx/late.onnx'.*never written"):
        with BundleWriter(dest, overwrite=True) as w:
            w.add("onnx/late.onnx", role="onnx:late")
            w.commit({})
    assert read_manifest(dest) == before
    assert siblings(tmp_path) == ["b"]


def test_commit_refuses_unregistered_file(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match=r"\['onnx/model.onnx.data'\].*never registered"):
        with BundleWriter(tmp_path / "b") as w:
            w.write_bytes("onnx/model.onnx", b"g", role="onnx:score")
            w.path("onnx/model.onnx.data").write_bytes(b"w")
            w.commit({})
    assert siblings(tmp_path) == []


def test_commit_refuses_nan_in_manifest(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="NaN"):
        with BundleWriter(tmp_path / "b") as w:
            w.write_bytes("x.bin", b"x", role="data")
            w.commit({"training": {"loss": float("nan")}})
    assert siblings(tmp_path) == []


def test_commit_ignores_reserved_keys_from_caller(tmp_path: Path) -> None:
    with BundleWriter(tmp_path / "b") as w:
        w.write_bytes("x.bin", b"x", role="data")
        w.commit({"format": "fake", "format_version": 99, "files": {}, "created": "never"})
    m = Bundle.load(tmp_path / "b").manifest.to_dict()
    assert m["format"] == FORMAT_NAME and m["format_version"] == FORMAT_VERSION
    assert set(m["files"]) == {"x.bin"} and m["created"] != "never"


def test_writer_misuse(tmp_path: Path) -> None:
    w = BundleWriter(tmp_path / "b")
    with pytest.raises(BundleError, match="outside its 'with' block"):
        w.path("x")
    with w:
        w.write_bytes("x.bin", b"x", role="data")
        w.commit({})
        with pytest.raises(BundleError, match="after commit"):
            w.write_bytes("y.bin", b"y", role="data")
    with pytest.raises(BundleError, match="only once"):
        w.__enter__()
    assert set(Bundle.load(tmp_path / "b").files) == {"x.bin"}


def test_dest_appearing_during_write_is_not_clobbered(tmp_path: Path) -> None:
    dest = tmp_path / "b"
    with pytest.raises(BundleError, match="already exists"):
        with BundleWriter(dest) as w:
            w.write_bytes("x.bin", b"x", role="data")
            dest.mkdir()  # another process creates it meanwhile
            (dest / "theirs").write_text("theirs")
            w.commit({})
    assert (dest / "theirs").read_text() == "theirs"
    assert siblings(tmp_path) == ["b"]


# ---------------------------------------------------------------------- stale partial dirs
def test_stale_partial_dirs_of_dead_processes_are_removed(tmp_path: Path) -> None:
    dest = make_bundle(tmp_path / "b")
    dead = dead_pid()
    stale = tmp_path / f".b.partial-{dead}-deadbeef"
    stale_old = tmp_path / f".b.old-{dead}-cafe"
    live = tmp_path / f".b.partial-{os.getppid()}-abcd"  # our parent is alive
    other = tmp_path / f".other.partial-{dead}-beef"  # another destination's
    weird = tmp_path / ".b.partial-notapid-x"
    for d in (stale, stale_old, live, other, weird):
        d.mkdir()
        (d / "junk").write_bytes(b"junk")
    make_bundle(dest, overwrite=True)
    assert not stale.exists() and not stale_old.exists()
    assert live.exists() and other.exists() and weird.exists()


def test_stale_old_dir_is_kept_when_dest_is_missing(tmp_path: Path) -> None:
    # An interrupted fallback swap: the .old directory is the only copy of the bundle.
    old = tmp_path / f".b.old-{dead_pid()}-cafe"
    make_bundle(old)
    with BundleWriter(tmp_path / "b"):
        pass
    assert Bundle.load(old).root == old


# ---------------------------------------------------------------------- update_bundle
def test_update_bundle_adds_file_and_updates_checksums(tmp_path: Path) -> None:
    dest = make_bundle(tmp_path / "b")
    before = read_manifest(dest)
    inodes = {rel: (dest / rel).stat().st_ino for rel in before["files"]}
    contents = {rel: (dest / rel).read_bytes() for rel in before["files"]}

    b = update_bundle(
        dest,
        manifest_updates={"parity": {"ok": True}, "model": {"kind": "mf", "factors": 16}},
        new_files={"parity/report.json": (b'{"ok": true}', "report:parity-full")},
    )
    m = read_manifest(dest)
    assert b.root == dest
    assert m["parity"] == {"ok": True}
    assert m["model"] == {"kind": "mf", "factors": 16}
    assert m["entry_points"] == before["entry_points"]  # passed through
    assert m["id_maps"] == before["id_maps"]
    assert m["files"]["parity/report.json"] == {
        "role": "report:parity-full",
        "sha256": sha256_file(dest / "parity/report.json"),
        "bytes": 12,
    }
    for rel, entry in before["files"].items():
        assert m["files"][rel] == entry
        assert (dest / rel).read_bytes() == contents[rel]
        assert (dest / rel).stat().st_ino == inodes[rel]  # hard-linked, not copied
    assert b.user_map() == IdMap([10, 20, 30], "user")
    assert siblings(tmp_path) == ["b"]


def test_update_bundle_replaces_a_file(tmp_path: Path) -> None:
    dest = make_bundle(tmp_path / "b")
    old_sha = read_manifest(dest)["files"]["onnx/score.onnx"]["sha256"]
    b = update_bundle(
        dest, manifest_updates={}, new_files={"onnx/score.onnx": (b"v2", "onnx:score")}
    )
    assert b.file("onnx/score.onnx").read_bytes() == b"v2"
    assert b.files["onnx/score.onnx"].sha256 != old_sha
    assert b.files["onnx/score.onnx"].bytes == 2


def test_update_bundle_copies_when_links_fail(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dest = make_bundle(tmp_path / "b")

    def no_link(src: object, dst: object) -> None:
        raise OSError(errno.EXDEV, "cross-device link")

    monkeypatch.setattr(os, "link", no_link)
    b = update_bundle(dest, manifest_updates={"x": 1})
    assert b.file("onnx/score.onnx").read_bytes() == ONNX_BYTES
    assert b.manifest.to_dict()["x"] == 1


def test_update_bundle_refuses_corrupted_source_and_changes_nothing(tmp_path: Path) -> None:
    dest = make_bundle(tmp_path / "b")
    p = dest / "onnx/score.onnx"
    p.write_bytes(b"X" + p.read_bytes()[1:])
    before = read_manifest(dest)
    with pytest.raises(BundleError, match="checksum mismatch"):
        update_bundle(dest, manifest_updates={"x": 1})
    assert read_manifest(dest) == before
    assert siblings(tmp_path) == ["b"]


@pytest.mark.parametrize("key", ["files", "format", "format_version", "id_maps", "created"])
def test_update_bundle_refuses_reserved_keys(tmp_path: Path, key: str) -> None:
    dest = make_bundle(tmp_path / "b")
    with pytest.raises(BundleError, match="cannot set"):
        update_bundle(dest, manifest_updates={key: {}})


def test_update_bundle_refuses_bad_new_files(tmp_path: Path) -> None:
    dest = make_bundle(tmp_path / "b")
    with pytest.raises(BundleError, match="unsafe file name"):
        update_bundle(dest, manifest_updates={}, new_files={"../x": (b"x", "r")})
    with pytest.raises(BundleError, match=r"\(bytes, role\)"):
        update_bundle(dest, manifest_updates={}, new_files={"x": "not a tuple"})  # type: ignore[dict-item]
    assert siblings(tmp_path) == ["b"]
    Bundle.load(dest)


# ---------------------------------------------------------------------- property test
@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("ab./\\:C\x00 ")), max_size=12))
def test_any_accepted_name_stays_inside(rel: str) -> None:
    root = Path("/bundle/root")
    try:
        bundle_files.check_rel(rel, "test")
    except BundleError:
        return
    full = os.path.normpath(root / rel)
    assert full.startswith(str(root) + os.sep)
    assert Path(full).relative_to(root).as_posix() == rel  # names are canonical


# ---------------------------------------------------------------------- crash safety
def test_sigkill_during_overwrite_keeps_previous_bundle(tmp_path: Path) -> None:
    dest = make_bundle(tmp_path / "b", users=["old-u1", "old-u2"])
    before = {rel: (dest / rel).read_bytes() for rel in read_manifest(dest)["files"]}
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO_ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    )
    proc = subprocess.Popen(
        [sys.executable, str(HELPER), str(dest)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    try:
        line = proc.stdout.readline()  # blocks until the helper is inside the writer
        assert line.strip() == "WRITING", proc.stderr.read() if not line else line
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()

    b = Bundle.load(dest)
    assert b.user_map() == IdMap(["old-u1", "old-u2"], "user")
    assert {rel: b.file(rel).read_bytes() for rel in b.files} == before
    # The killed writer left its partial directory; it must not pass for a bundle.
    partials = [p for p in tmp_path.iterdir() if p.name.startswith(".b.partial-")]
    assert len(partials) == 1 and (partials[0] / "data/big.bin").stat().st_size > 0
    loadable = []
    for dirpath, _dirs, _files in os.walk(tmp_path):
        try:
            loadable.append(Bundle.load(dirpath).root)
        except BundleError:
            pass
    assert loadable == [dest]
    # The next writer removes the dead process's leftovers.
    make_bundle(dest, overwrite=True)
    assert siblings(tmp_path) == ["b"]


def test_tempfile_dir_is_not_a_bundle() -> None:
    with tempfile.TemporaryDirectory() as d, pytest.raises(BundleError, match="no manifest"):
        Bundle.load(d)


def test_staged_bundle_loads_before_commit_and_abort_keeps_dest(tmp_path: Path) -> None:
    dest = make_bundle(tmp_path / "b")
    before = Bundle.load(dest).manifest.to_dict()
    with pytest.raises(RuntimeError, match="check failed"):
        with BundleWriter(dest, overwrite=True) as w:
            w.write_id_maps(IdMap([1, 2], "user"), IdMap(["x"], "item"))
            w.write_bytes("onnx/score.onnx", b"new graph", role="onnx:score")
            staged = Bundle.load(w.stage(dict(EXTRA)))
            assert staged.root != dest and len(staged.user_map()) == 2
            raise RuntimeError("check failed")
    assert Bundle.load(dest).manifest.to_dict() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


def test_files_written_after_stage_are_checksummed_at_commit(tmp_path: Path) -> None:
    with BundleWriter(tmp_path / "b") as w:
        w.write_id_maps(IdMap([1], "user"), IdMap(["x"], "item"))
        w.stage(dict(EXTRA))
        w.write_bytes("parity.json", b"{}", role="parity:report")
        w.commit(dict(EXTRA))
    loaded = Bundle.load(tmp_path / "b")
    assert loaded.role("parity.json") == "parity:report"
