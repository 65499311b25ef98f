"""A catalogue of bad inputs and what the user sees on the command line.

Every case of :data:`CASES` runs one ``recsys-export`` command on a bad input and
asserts the CLI contract of ``recsys_export.cli.main``: exit status 2, exactly one line
on stderr of the form ``recsys-export CMD: error: ...`` with words naming the problem,
no traceback anywhere, and nothing left at the ``--out`` path (no file, no half bundle,
no ``.partial`` leftover). Most cases run in-process (fast); the ones marked
``subprocess`` run ``python -m recsys_export.cli`` to prove that the real process
prints no traceback or stray warnings either.

Decisions documented here:

* Negative or out-of-scale ratings are accepted (the model is a regression on the
  file's scale); ``train`` prints one ``warning:`` line on stderr when ratings are
  negative or none reaches ``--threshold`` (ranking metrics would be undefined), and
  training continues (:func:`test_negative_ratings_warn_and_train`).
* Duplicate (user, item) rows are resolved by the default policy (keep the last) with
  a ``note:`` on stderr giving the count; ``--duplicates error`` is a user error.
* ``recommend`` without ``-k`` asks for ``min(10, n_items)`` items; an explicit ``-k``
  outside ``1..n_items`` is a user error. Slots no admissible item can fill are left
  out of the output.

All cases share one small bundle, built once by the CLI itself (train + export) from
a CSV whose ids hold unicode, spaces and a quoted comma: that is also the positive
end-to-end case (:func:`test_unicode_ids_end_to_end`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from helpers.cli_contract import assert_one_line_error as _assert_one_line_error
from helpers.cli_contract import cli_env as _env
from helpers.cli_contract import leftovers as _leftovers
from helpers.cli_contract import run_inprocess as _run_inprocess
from helpers.cli_contract import run_subprocess as _run_subprocess

ROOT = Path(__file__).resolve().parents[1]

# ids with non-ASCII letters, emoji, inner spaces and (for one user) a quoted comma
USERS = ["Zoë Ünïcode", "Doe, Jane ☕", "Łukasz Żółć", "用户 三", "ana maría", "O'Brien 7"]
ITEMS = ["🎬 film ü", "Amélie (2001)", "Ärger im Paradies", "電影 二", "plain item"]
N_ITEMS = len(ITEMS)


def _csv_field(value: str) -> str:
    return f'"{value}"' if "," in value or '"' in value else value


def _unicode_csv() -> str:
    rows = ["user,item,rating"]
    for u, user in enumerate(USERS):
        for i, item in enumerate(ITEMS):
            if (u + i) % 3:  # every user leaves some items unrated
                rows.append(f"{_csv_field(user)},{_csv_field(item)},{(u * i) % 5 + 1}")
    return "\n".join(rows) + "\n"


@dataclass
class World:
    """What the cases build on: the shared checkpoint and bundle, and a scratch dir."""

    tmp: Path
    checkpoint: Path | None
    bundle: Path
    saved: dict = field(default_factory=dict)

    def write(self, name: str, content: str | bytes) -> Path:
        path = self.tmp / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
        return path

    def bundle_copy(self, name: str = "bundle_copy") -> Path:
        dest = self.tmp / name
        shutil.copytree(self.bundle, dest)
        return dest


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Train and export through the CLI (in-process) on the unicode-id CSV."""
    root = tmp_path_factory.mktemp("catalogue")
    csv_path = root / "unicode ratings.csv"
    csv_path.write_text(_unicode_csv(), encoding="utf-8")
    ckpt = root / "model ü.pt"
    rc, out, err = _run_inprocess(
        ["train", str(csv_path), "--out", str(ckpt), "--preset", "tiny", "--epochs", "30", "-q"]
    )
    assert rc == 0, err
    bundle = root / "bundle ü"
    rc, out, err = _run_inprocess(["export", str(ckpt), "--out", str(bundle), "--formats", "onnx"])
    assert rc == 0, err
    assert "parity: PASS" in out
    return {"csv": csv_path, "checkpoint": ckpt, "bundle": bundle}


@pytest.fixture
def world(trained: dict[str, Path], tmp_path: Path) -> World:
    return World(tmp=tmp_path, checkpoint=trained["checkpoint"], bundle=trained["bundle"])


# ------------------------------------------------------------------------- the catalogue

GOOD = "user,item,rating\n" + "".join(
    f"u{u},i{i},{(u * i) % 5 + 1}\n" for u in range(6) for i in range(5) if (u + i) % 3
)


@dataclass
class Case:
    """One bad input.

    ``build(world)`` creates the input and returns ``(argv, out)``: the command line
    and the path the command was asked to write (None if it writes nothing), which
    must not exist afterwards. ``words`` must all occur (case-insensitively) in the
    one-line error message. ``check(world)``, if given, then asserts that nothing the
    user had was lost.
    """

    id: str
    build: Callable[[World], tuple[list[str], Path | None]]
    words: list[str]
    subprocess: bool = False
    forbidden: list[str] = field(default_factory=list)
    #: runs after the command: checks that nothing was lost (an existing file, a bundle)
    check: Callable[[World], None] | None = None


def _train(world: World, name: str, content: str | bytes, *extra: str):
    data = world.write(name, content)
    out = world.tmp / "model.pt"
    return ["train", str(data), "--out", str(out), "--preset", "tiny", "-q", *extra], out


def _export(world: World, checkpoint: Path, out: Path | None = None, *extra: str):
    out = out or world.tmp / "exported"
    return ["export", str(checkpoint), "--out", str(out), "--formats", "onnx", "-q", *extra], out


def _edit_manifest(bundle: Path, edit: Callable[[dict], None]) -> None:
    path = bundle / "manifest.json"
    manifest = json.loads(path.read_text(encoding="utf-8"))
    edit(manifest)
    path.write_text(json.dumps(manifest), encoding="utf-8")


def _truncated_onnx(world: World):
    b = world.bundle_copy()
    f = b / "onnx" / "score_all.onnx"
    f.write_bytes(f.read_bytes()[:100])
    return ["recommend", str(b), "--user", USERS[0]], None


def _truncated_onnx_consistent_manifest(world: World):
    # truncated AND the manifest updated to match: only onnxruntime can tell
    b = world.bundle_copy()
    f = b / "onnx" / "recommend.onnx"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 3])

    def edit(m: dict) -> None:
        entry = m["files"]["onnx/recommend.onnx"]
        entry["bytes"] = f.stat().st_size
        entry["sha256"] = hashlib.sha256(f.read_bytes()).hexdigest()

    _edit_manifest(b, edit)
    return ["recommend", str(b), "--user", USERS[0]], None


def _wrong_checksum(world: World):
    b = world.bundle_copy()
    _edit_manifest(b, lambda m: m["files"]["onnx/score.onnx"].update(sha256="0" * 64))
    return ["recommend", str(b), "--user", USERS[0]], None


def _path_leaving_bundle(world: World):
    b = world.bundle_copy()
    (world.tmp / "x").write_bytes((b / "onnx" / "score.onnx").read_bytes())

    def edit(m: dict) -> None:
        m["files"]["../x"] = m["files"].pop("onnx/score.onnx")
        m["formats"]["onnx"]["graphs"]["score"] = "../x"

    _edit_manifest(b, edit)
    return ["score", str(b), "--user", USERS[0], "--item", ITEMS[0]], None


def _newer_format(world: World):
    b = world.bundle_copy()
    _edit_manifest(b, lambda m: m.update(format_version=m["format_version"] + 1))
    return ["recommend", str(b), "--user", USERS[0]], None


def _missing_manifest(world: World):
    b = world.bundle_copy()
    (b / "manifest.json").unlink()
    return ["inspect", str(b)], None


def _not_our_checkpoint(world: World):
    import torch

    path = world.tmp / "other.pt"
    torch.save({"state_dict": {"w": torch.zeros(3)}, "epoch": 7}, path)
    return _export(world, path)


def _truncated_checkpoint(world: World):
    raw = world.checkpoint.read_bytes()
    return _export(world, world.write("truncated.pt", raw[: len(raw) // 2]))


class _RunsCode:
    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (print, ("this pickle ran code",))


def _pickle_checkpoint(world: World, obj: object, name: str, protocol: int):
    import pickle

    path = world.tmp / name
    with open(path, "wb") as fh:
        pickle.dump(obj, fh, protocol=protocol)  # protocol 4 makes torch.load warn on stderr
    return _export(world, path)


def _text_checkpoint(world: World):
    return _export(world, world.write("notes.pt", "this is not a checkpoint\n"))


def _unwritable_dir(world: World):
    ro = world.tmp / "readonly"
    ro.mkdir()
    ro.chmod(0o555)
    if os.access(ro, os.W_OK):
        pytest.skip("running as root: permissions do not stop writes (see 'under-a-file')")
    out = ro / "scores.npy"
    return ["score", str(world.bundle), "--all", "--out", str(out), "-q"], out


def _score_all(world: World, out: Path, *extra: str):
    return ["score", str(world.bundle), "--all", "--out", str(out), "-q", *extra], out


def _resign(bundle: Path, rel: str) -> None:
    """Record a changed file's size and sha256 in the manifest (a 're-signed' bundle)."""
    f = bundle / rel

    def edit(m: dict) -> None:
        m["files"][rel].update(
            bytes=f.stat().st_size, sha256=hashlib.sha256(f.read_bytes()).hexdigest()
        )

    _edit_manifest(bundle, edit)


def _score_all_over(world: World, name: str, content: bytes, *extra: str):
    """``score --all`` asked to write over an existing file (saved for ``check``)."""
    path = world.write(name, content)
    world.saved[str(path)] = content
    return _score_all(world, path, *extra)[0], None  # `out` exists: `check` covers it


def _saved_unchanged(world: World) -> None:
    """A ``check``: every file a builder saved still holds what it held."""
    for name, content in world.saved.items():
        assert Path(name).read_bytes() == content, f"{name} was changed"


def _bundle_loads(world: World) -> None:
    from recsys_export.runtime import Recommender

    Recommender.load(world.saved["bundle"])  # every checksum still matches


def _out_inside_bundle(world: World):
    b = world.bundle_copy()
    world.saved["bundle"] = b
    out = b / "ids" / "seen_items.npy"
    return ["score", str(b), "--all", "--out", str(out), "--force", "-q"], None


def _no_model_entry(world: World):
    b = world.bundle_copy()
    _edit_manifest(b, lambda m: m.pop("model"))
    return ["verify", str(b), "--quick", "-q"], None


def _seen_out_of_range(world: World):
    b = world.bundle_copy()
    f = b / "ids" / "seen_items.npy"
    seen = np.load(f)
    seen[-1] = N_ITEMS  # one past the last item, in a re-signed file
    np.save(f, seen)
    _resign(b, "ids/seen_items.npy")
    return ["verify", str(b), "--quick", "-q"], None


CASES = [
    # ---- ratings files (train)
    Case("empty-file", lambda w: _train(w, "empty.csv", ""), ["empty"], subprocess=True),
    Case(
        "header-only",
        lambda w: _train(w, "header.csv", "user,item,rating\n"),
        ["header", "no data rows"],
    ),
    Case(
        "blank-lines-only",
        lambda w: _train(w, "blank.csv", "\n \n\r\n"),
        ["empty"],
    ),
    Case(
        "wrong-delimiter",
        lambda w: _train(w, "tabs.tsv", GOOD.replace(",", "\t"), "--sep", ","),
        ["1 column", "separator", "--sep"],
    ),
    Case(
        "missing-rating-column",
        # an unknown column that may be the ratings: ask (user, item[, timestamp]) alone
        # is implicit feedback, see tests/test_ranking.py
        lambda w: _train(w, "norating.csv", "user,item,stars_x\n1,2,3\n2,3,4\n3,1,5\n"),
        ["no rating column", "user, item, stars_x"],
    ),
    Case(
        "ratings-as-text",
        lambda w: _train(w, "text.csv", "user,item,rating\n1,2,good\n2,3,bad\n"),
        ["line 2", "'good'", "not a number"],
    ),
    Case(
        "nan-rating",
        lambda w: _train(w, "nan.csv", "user,item,rating\n1,2,4\n2,3,NaN\n"),
        ["line 3", "NaN", "finite"],
    ),
    Case(
        "inf-rating",
        lambda w: _train(w, "inf.csv", "user,item,rating\n1,2,4\n2,3,-inf\n"),
        ["line 3", "infinite"],
    ),
    Case(
        "binary-file",
        lambda w: _train(w, "ratings.csv", bytes(range(256)) * 16),
        ["binary", "not a text ratings file"],
    ),
    Case(
        "binary-file-without-nul",
        lambda w: _train(w, "ratings.csv", bytes(range(128, 256)) * 16),
        ["binary", "UTF-8"],
    ),
    Case(
        "duplicates-error",
        lambda w: _train(w, "dup.csv", GOOD + "u1,i1,3\n", "--duplicates", "error"),
        ["duplicate", "'u1', 'i1'", "line 6 and line 22", "--duplicates"],
    ),
    Case(
        "single-user",
        lambda w: _train(w, "single.csv", "user,item,rating\n7,1,4\n7,2,3\n7,3,5\n"),
        ["single user", "(7)"],
        forbidden=["np.int64"],
    ),
    Case(
        "train-bad-hyperparameter",
        lambda w: _train(w, "good.csv", GOOD, "--factors", "0"),
        ["n_factors", ">= 1"],
    ),
    # ---- checkpoints (export)
    Case("checkpoint-not-ours", _not_our_checkpoint, ["not a recsys-export checkpoint"]),
    Case(
        "checkpoint-truncated",
        _truncated_checkpoint,
        ["not a readable checkpoint", "truncated"],
    ),
    Case(
        "checkpoint-is-a-plain-pickle",
        lambda w: _pickle_checkpoint(w, {"weights": [1.0, 2.0]}, "plain.pt", 4),
        ["refusing to load", "not plain weights", "Unsupported operand"],
        subprocess=True,
    ),
    Case(
        "checkpoint-pickle-runs-code",
        lambda w: _pickle_checkpoint(w, _RunsCode(), "evil.pt", 2),
        # the global is named: print, or Ray's safe_print once ray.init patched builtins
        ["refusing to load", "Unsupported global: GLOBAL", "print was not an allowed global"],
        forbidden=["this pickle ran code"],
    ),
    Case("checkpoint-is-text", _text_checkpoint, ["not a readable checkpoint", "corrupted"]),
    Case(
        "checkpoint-missing",
        lambda w: _export(w, w.tmp / "nowhere.pt"),
        ["no checkpoint", "nowhere.pt"],
    ),
    Case(
        "export-bad-formats",
        lambda w: (
            ["export", str(w.checkpoint), "--out", str(w.tmp / "b"), "--formats", "onnx,tflite"],
            w.tmp / "b",
        ),
        ["tflite"],
    ),
    # ---- bundles (recommend / score / inspect)
    Case("bundle-truncated-onnx", _truncated_onnx, ["score_all.onnx", "truncated"]),
    Case(
        "bundle-truncated-onnx-consistent-manifest",
        _truncated_onnx_consistent_manifest,
        ["onnxruntime cannot load", "recommend graph", "export the bundle again"],
    ),
    Case(
        "bundle-wrong-checksum",
        _wrong_checksum,
        ["score.onnx", "checksum mismatch"],
        subprocess=True,
    ),
    Case("bundle-path-leaves-bundle", _path_leaving_bundle, ["unsafe file name", "'../x'"]),
    Case("bundle-newer-format", _newer_format, ["newer recsys-export", "upgrade"]),
    Case("bundle-without-manifest", _missing_manifest, ["no manifest.json"]),
    Case(
        "bundle-is-a-checkpoint-file",
        lambda w: (["recommend", str(w.checkpoint), "--user", USERS[0]], None),
        ["no bundle", "is a file"],
    ),
    # ---- requests
    Case(
        "recommend-unknown-user",
        lambda w: (["recommend", str(w.bundle), "--user", "nobody at all"], None),
        ["unknown user", "'nobody at all'"],
    ),
    Case(
        "recommend-k-zero",
        lambda w: (["recommend", str(w.bundle), "--user", USERS[0], "-k", "0"], None),
        ["k=0", "out of range"],
    ),
    Case(
        "recommend-k-above-n-items",
        lambda w: (["recommend", str(w.bundle), "--user", USERS[0], "-k", "99"], None),
        ["k=99", "out of range", f"({N_ITEMS})"],
    ),
    Case(
        "score-user-item-count-mismatch",
        lambda w: (
            ["score", str(w.bundle), "--user", USERS[0], "--user", USERS[1], "--item", ITEMS[0]],
            None,
        ),
        ["--user", "--item", "same number"],
    ),
    Case(
        "score-unknown-item",
        lambda w: (["score", str(w.bundle), "--user", USERS[0], "--item", "no such film"], None),
        ["unknown item", "'no such film'"],
    ),
    Case(
        "score-all-out-under-a-file",
        lambda w: _score_all(w, w.write("somefile", "x") / "scores.npy"),
        ["somefile", "is a file, not a directory"],
        subprocess=True,
    ),
    Case("score-all-out-unwritable-dir", _unwritable_dir, ["not writable"]),
    Case(
        "score-all-out-not-npy",
        lambda w: _score_all(w, w.tmp / "scores.txt"),
        [".npy", "--top-k"],
    ),
    Case(
        "score-all-top-k-zero",
        lambda w: _score_all(w, w.tmp / "top.csv", "--top-k", "0"),
        ["k=0", "out of range"],
    ),
    Case(
        "score-all-without-out",
        lambda w: (["score", str(w.bundle), "--all"], None),
        ["--all needs --out"],
    ),
    Case(
        "latin-1-file",
        lambda w: _train(
            w, "latin1.csv", "user,item,rating\nJosé,Amélie,4\nZoë,Ärger,3\n".encode("latin-1")
        ),
        ["line 2", "Latin-1", "UTF-8"],
        forbidden=["binary"],
    ),
    # ---- verify
    Case("verify-manifest-without-model", _no_model_entry, ["no valid 'model'", "manifest"]),
    Case("verify-seen-out-of-range", _seen_out_of_range, ["seen-items CSR", "malformed"]),
    Case(
        "verify-negative-atol",
        lambda w: (["verify", str(w.bundle), "--atol", "-1", "-q"], None),
        ["atol", "finite number >= 0", "-1"],
    ),
    Case(
        "verify-nan-rtol",
        lambda w: (["verify", str(w.bundle), "--rtol", "nan", "-q"], None),
        ["rtol", "finite number >= 0", "nan"],
    ),
    Case(
        "export-nan-atol",
        lambda w: _export(w, w.checkpoint, None, "--atol", "nan"),
        ["atol", "finite number >= 0"],
    ),
    # ---- score --all never loses a file
    Case(
        "score-all-out-existing-csv",
        lambda w: _score_all_over(w, "ratings.csv", GOOD.encode(), "--top-k", "2"),
        ["already exists", "--force"],
        check=_saved_unchanged,
    ),
    Case(
        "score-all-out-existing-npy",
        lambda w: _score_all_over(w, "old.npy", b"\x93NUMPY an older result"),
        ["already exists", "--force"],
        check=_saved_unchanged,
    ),
    Case(
        "score-all-out-inside-bundle",
        _out_inside_bundle,
        ["inside the bundle", "write outside it"],
        check=_bundle_loads,
    ),
]


def _assert_contract(case: Case, world: World, argv: list[str], out: Path | None) -> None:
    runner = _run_subprocess if case.subprocess else _run_inprocess
    rc, stdout, stderr = runner(argv)
    _assert_one_line_error(rc, stdout, stderr, argv[0], case.words, case.forbidden)
    if out is not None:
        assert not out.exists(), f"{out} was written"
        assert _leftovers(out.parent) == []
    assert _leftovers(world.tmp) == []
    assert _leftovers(world.bundle.parent) == []
    if case.check is not None:
        case.check(world)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, world: World) -> None:
    argv, out = case.build(world)
    _assert_contract(case, world, argv, out)


# ------------------------------------------------------------------------- positive cases


def test_unicode_ids_end_to_end(trained: dict[str, Path]) -> None:
    """Ids with unicode, spaces and a quoted comma survive train -> export -> recommend."""
    from recsys_export.runtime import Recommender

    rec = Recommender.load(trained["bundle"])
    assert sorted(rec.user_map.raw_ids.tolist()) == sorted(USERS)
    assert sorted(rec.item_map.raw_ids.tolist()) == sorted(ITEMS)
    user = "Doe, Jane ☕"
    rc, stdout, stderr = _run_subprocess(
        ["recommend", str(trained["bundle"]), "--user", user, "-k", "3", "--json"]
    )
    assert rc == 0, stderr
    assert stderr == ""
    (row,) = json.loads(stdout)
    assert row["user"] == user
    # the user rated every item with (u + i) % 3 != 0; only the others are recommended
    u = USERS.index(user)
    unseen = [item for i, item in enumerate(ITEMS) if (u + i) % 3 == 0]
    assert sorted(row["items"]) == sorted(unseen)  # fewer than k: empty slots left out
    expected = rec.recommend([user], k=len(unseen))
    assert row["items"] == expected.items[0].tolist()
    np.testing.assert_allclose(row["scores"], expected.scores[0], rtol=0, atol=0)

    # the human-readable output and score with unicode ids (in-process)
    rc, stdout, _ = _run_inprocess(["recommend", str(trained["bundle"]), "--user", user])
    assert rc == 0
    assert "None" not in stdout and "-inf" not in stdout
    assert all(item in stdout for item in unseen)
    rc, stdout, _ = _run_inprocess(
        ["score", str(trained["bundle"]), "--user", "用户 三", "--item", "🎬 film ü"]
    )
    assert rc == 0
    u3, item, score = stdout.rstrip("\n").split("\t")
    assert (u3, item) == ("用户 三", "🎬 film ü")
    assert float(score) == pytest.approx(float(rec.score(["用户 三"], ["🎬 film ü"])[0]), abs=1e-6)


def test_duplicates_default_policy_reports_count(tmp_path: Path) -> None:
    data = tmp_path / "dup.csv"
    data.write_text(GOOD + "u1,i1,3\nu2,i2,1\n", encoding="utf-8")
    out = tmp_path / "m.pt"
    rc, stdout, stderr = _run_inprocess(
        ["train", str(data), "--out", str(out), "--preset", "tiny", "--epochs", "5", "-q"]
    )
    assert rc == 0, stderr
    assert "Traceback" not in stderr
    assert stderr.strip() == (
        f"note: 2 duplicate (user, item) rows in {data}; kept the last occurrence"
    )
    assert out.is_file()
    from recsys_export.checkpoint import load_checkpoint

    assert load_checkpoint(out).data["n_duplicates"] == 2


def test_negative_ratings_warn_and_train(tmp_path: Path) -> None:
    """Negative / out-of-scale ratings: one warning line on stderr, training continues."""
    data = tmp_path / "votes.csv"
    data.write_text(
        "user,item,rating\n"
        + "".join(f"u{u},i{i},{1 if (u + i) % 2 else -1}\n" for u in range(6) for i in range(5)),
        encoding="utf-8",
    )
    out = tmp_path / "m.pt"
    rc, stdout, stderr = _run_inprocess(
        ["train", str(data), "--out", str(out), "--preset", "tiny", "--epochs", "5", "-q"]
    )
    assert rc == 0, stderr
    (line,) = stderr.strip().split("\n")
    assert line.startswith("warning: ")
    assert "negative" in line and "--threshold" in line and "training continues" in line
    assert out.is_file()


def test_runtime_rejects_negative_indices(trained: dict[str, Path]) -> None:
    """onnxruntime would wrap -1 to the last row: the runtime refuses it first."""
    from recsys_export.errors import UnknownIdError
    from recsys_export.runtime import Recommender

    rec = Recommender.load(trained["bundle"])
    with pytest.raises(UnknownIdError, match="-1"):
        rec.recommend([-1], by_index=True, k=1)
    with pytest.raises(UnknownIdError):
        rec.recommend([0, -1], by_index=True, k=1)
    with pytest.raises(UnknownIdError):
        rec.score([-1], [0], by_index=True)
    with pytest.raises(UnknownIdError):
        rec.score([0], [-1], by_index=True)
    with pytest.raises(UnknownIdError):
        rec.score_all([-1], by_index=True)
    with pytest.raises(UnknownIdError):
        rec.recommend([rec.n_users], by_index=True, k=1)


# ------------------------------------------------------------- runtime only (no torch)
# These need numpy and onnxruntime only: they run on copies of the committed golden
# bundles (int ids 0..4), and CI's runtime-floor job runs them in a venv without torch
# (``pytest --noconftest -m runtime_only``).

GOLDEN = ROOT / "artifacts"
BIG = 2**53  # float64 (and JavaScript's Number) holds every integer only up to here


@pytest.fixture
def rt_world(tmp_path: Path) -> World:
    bundle = tmp_path / "golden-mf"
    shutil.copytree(GOLDEN / "toy-mf", bundle)
    return World(tmp=tmp_path, checkpoint=None, bundle=bundle)


def _onnx_too_new(world: World):
    """A graph stamped with IR version 99: what an old onnxruntime sees in a new graph."""
    b = world.bundle_copy()
    f = b / "onnx" / "recommend.onnx"
    raw = f.read_bytes()
    assert raw[0] == 0x08  # field 1 (ir_version), varint
    f.write_bytes(b"\x08\x63" + raw[2:])  # was one byte (10 at most); 0x63 = 99
    _resign(b, "onnx/recommend.onnx")
    return ["recommend", str(b), "--user", "1"], None


RUNTIME_CASES = [
    Case(
        "recommend-id-with-underscore",
        lambda w: (["recommend", str(w.bundle), "--user", "0_1"], None),
        ["unknown user", "'0_1'"],
    ),
    Case(
        "recommend-float-id-beyond-2^53",
        lambda w: (["recommend", str(w.bundle), "--user", "9007199254740995.0"], None),
        ["unknown user", "9007199254740995.0"],
    ),
    Case(
        "bundle-graph-newer-than-onnxruntime",
        _onnx_too_new,
        ["installed onnxruntime", "too old", "IR version", "upgrade onnxruntime"],
    ),
]


@pytest.mark.runtime_only
@pytest.mark.parametrize("case", RUNTIME_CASES, ids=[c.id for c in RUNTIME_CASES])
def test_bad_runtime_input(case: Case, rt_world: World) -> None:
    argv, out = case.build(rt_world)
    _assert_contract(case, rt_world, argv, out)


@pytest.mark.runtime_only
def test_too_old_onnxruntime_names_both_versions(rt_world: World) -> None:
    import onnxruntime

    argv, _ = _onnx_too_new(rt_world)
    rc, _, stderr = _run_inprocess(argv)
    assert rc == 2
    assert f"onnxruntime {onnxruntime.__version__} is too old" in stderr
    assert "verified with onnxruntime 1.32.0" in stderr  # the golden bundle's


@pytest.mark.runtime_only
@pytest.mark.parametrize("command", ["train", "evaluate", "export", "verify"])
def test_runtime_only_install_names_the_extra(command: str, rt_world: World) -> None:
    """Without the train extra (torch, onnx, onnxscript, pandas): one line naming it."""
    args = {
        "train": ["toy", "--out", str(rt_world.tmp / "m.pt")],
        "evaluate": [str(rt_world.tmp / "m.pt")],
        "export": [str(rt_world.tmp / "m.pt"), "--out", str(rt_world.tmp / "b")],
        "verify": [str(rt_world.bundle)],
    }[command]
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "helpers" / "cli_without_train_extra.py"), command]
        + args,
        capture_output=True,
        text=True,
        encoding="utf-8",
        env=_env(),
        timeout=180,
    )
    line = _assert_one_line_error(
        proc.returncode, proc.stdout, proc.stderr, command, ["'train' extra", "pip install"]
    )
    assert "recsys-export[train]" in line
    assert sorted(p.name for p in rt_world.tmp.iterdir()) == ["golden-mf"]


@pytest.mark.runtime_only
@pytest.mark.parametrize(
    "bad",
    [True, np.True_, 1.5, float("nan"), float("inf"), float(BIG + 2), "1_0", "0x1", "1 2", "+-1"],
    ids=repr,
)
def test_ids_must_be_exact(rt_world: World, bad: object) -> None:
    """Bools, inexact floats and text that is not a plain integer are refused, never
    served as another user (``True`` was user 1, ``"1_96"`` user 196)."""
    from recsys_export.errors import UnknownIdError
    from recsys_export.runtime import Recommender

    rec = Recommender.load(rt_world.bundle)
    with pytest.raises(UnknownIdError):
        rec.recommend([bad], k=1)
    with pytest.raises(UnknownIdError):
        rec.score([bad], [0])


@pytest.mark.runtime_only
def test_exact_ids_in_any_form_are_accepted(rt_world: World) -> None:
    from recsys_export.runtime import Recommender

    rec = Recommender.load(rt_world.bundle)
    want = rec.score_all([3])
    for same in (3, np.int64(3), np.uint8(3), 3.0, np.float32(3.0), "3", " 3 ", b"3"):
        np.testing.assert_array_equal(rec.score_all([same]), want, err_msg=repr(same))


@pytest.mark.runtime_only
def test_include_empty_and_load_none(rt_world: World) -> None:
    """``include=[]`` leaves every slot empty; ``load(None)`` is a BundleError."""
    from recsys_export.errors import BundleError
    from recsys_export.runtime import Recommender

    rec = Recommender.load(rt_world.bundle)
    res = rec.recommend([0, 1], k=2, include=[])
    assert res.items.tolist() == [[None, None], [None, None]]
    assert np.isneginf(res.scores).all()
    res = rec.recommend([0, 1], k=2, include=[], by_index=True)
    assert (res.items == -1).all()
    for bad in (None, 3, ["a"]):
        with pytest.raises(BundleError, match="directory path"):
            Recommender.load(bad)  # type: ignore[arg-type]


def _big_id_bundle(world: World) -> tuple[Path, list[int]]:
    """The golden MF bundle with user ids just above 2^53, written by the bundle module."""
    from recsys_export.bundle import update_bundle
    from recsys_export.ids import IdMap

    ids = [BIG + 1, BIG, BIG + 3, BIG + 4, -(BIG + 1)]  # pairs a float64 merges
    text = json.dumps(IdMap(np.array(ids, dtype=np.int64), "user").to_json())
    update_bundle(
        world.bundle,
        manifest_updates={},
        new_files={"ids/users.json": (text.encode(), "id_map:users")},
    )
    return world.bundle, ids


@pytest.mark.runtime_only
def test_int_ids_beyond_2_53_read_back_exactly(rt_world: World) -> None:
    from recsys_export.runtime import Recommender

    bundle, ids = _big_id_bundle(rt_world)
    stored = json.loads((bundle / "ids" / "users.json").read_text(encoding="utf-8"))
    assert stored["encoding"] == "decimal-strings"
    assert stored["ids"] == [str(i) for i in ids]
    rec = Recommender.load(bundle)
    assert rec.user_map.raw_ids.tolist() == ids
    golden = Recommender.load(GOLDEN / "toy-mf")
    for index, raw in enumerate(ids):
        res = rec.recommend([raw], k=2)
        assert res.users.tolist() == [raw]
        np.testing.assert_array_equal(res.scores, golden.recommend([index], k=2).scores)
    with pytest.raises(Exception, match="not an exact integer"):
        rec.recommend([float(BIG + 3)], k=1)  # would have been BIG + 4 as a float


@pytest.mark.embedding
@pytest.mark.runtime_only
def test_node_reads_big_ids_exactly(rt_world: World) -> None:
    """The Node example's id reader gets every id; plain JSON numbers would merge them."""
    if shutil.which("node") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("node is missing on CI")
        pytest.skip("node is not installed")
    bundle, ids = _big_id_bundle(rt_world)
    script = ROOT / "examples" / "node" / "ids.js"
    got = subprocess.run(
        ["node", str(script), str(bundle), "users"], capture_output=True, text=True, timeout=60
    )
    assert got.returncode == 0, got.stderr
    assert json.loads(got.stdout) == [str(i) for i in ids]
    # why: JSON.parse reads numbers as float64
    naive = subprocess.run(
        ["node", "-e", f"console.log(new Set(JSON.parse('{json.dumps(ids)}')).size)"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert int(naive.stdout) < len(ids)
    items = subprocess.run(
        ["node", str(script), str(bundle), "items"], capture_output=True, text=True, timeout=60
    )
    assert json.loads(items.stdout) == ["0", "1", "2", "3"]


def _swap_on_first_call(
    monkeypatch: pytest.MonkeyPatch, owner: object, name: str, a: Path, b: Path
):
    """Make ``owner.name`` exchange directories ``a`` and ``b`` (as ``export --force``
    does) the first time it is called, then behave as before."""
    from recsys_export import atomic

    original = getattr(owner, name)
    calls = {"n": 0}

    def swapping(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 1:
            try:
                atomic.renameat2(a, b, atomic.RENAME_EXCHANGE)
            except OSError as exc:
                pytest.skip(f"renameat2(RENAME_EXCHANGE) unavailable here: {exc}")
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, swapping)
    return calls


@pytest.mark.runtime_only
@pytest.mark.parametrize("stage", ["checksums", "graphs"])
def test_bundle_swapped_while_loading_is_one_whole(
    rt_world: World, monkeypatch: pytest.MonkeyPatch, stage: str
) -> None:
    """``export --force`` swaps the DenseNet bundle in while the MF one loads: after the
    manifest was read (``checksums``: the load reads again and returns the new bundle,
    whole), or once the bundle was checked, before the id maps and graphs are read
    (``graphs``: the files it checked are open, so it is the old bundle, whole)."""
    from recsys_export import bundle as bundle_mod
    from recsys_export.runtime import Recommender

    other = rt_world.tmp / "golden-densenet"
    shutil.copytree(GOLDEN / "toy-densenet", other)
    owner, name = (
        (bundle_mod, "sha256_file") if stage == "checksums" else (bundle_mod.Bundle, "user_map")
    )
    calls = _swap_on_first_call(monkeypatch, owner, name, rt_world.bundle, other)
    rec = Recommender.load(rt_world.bundle)
    assert calls["n"] > (1 if stage == "checksums" else 0)
    kind = "densenet" if stage == "checksums" else "mf"
    assert rec.kind == kind and rec.bundle.swapped() == (stage == "graphs")
    expected = json.loads((GOLDEN / "expected" / f"toy-{kind}.json").read_text())
    users = np.asarray(expected["inputs"]["score_all"]["users"], dtype=np.int64)
    np.testing.assert_allclose(
        rec.score_all(users, by_index=True),
        expected["outputs"]["score_all"]["scores"],
        atol=1e-5,
        rtol=1e-5,
    )


# ------------------------------------------------------------------- train, export, verify


@contextlib.contextmanager
def _unwritable(directory: Path):  # type: ignore[no-untyped-def]
    """Make ``directory`` refuse new files: chmod, or ``chattr +i`` as root; else skip."""
    directory.chmod(0o555)
    immutable = False
    probe = directory / ".probe"
    try:
        try:
            probe.touch()
        except OSError:
            pass
        else:
            probe.unlink()
            immutable = (
                shutil.which("chattr") is not None
                and subprocess.run(["chattr", "+i", str(directory)], capture_output=True).returncode
                == 0
            )
            if not immutable:
                pytest.skip("cannot make a directory unwritable here (root without chattr +i)")
        yield directory
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(directory)], check=True)
        directory.chmod(0o755)


@pytest.mark.parametrize("where", ["existing-directory", "unwritable-directory"])
def test_train_out_is_checked_before_training(
    world: World, where: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--out`` naming a directory (even with --force) or an unwritable place fails
    before any training, and the directory keeps what it held."""
    from recsys_export import train

    def no_training(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("trained before checking --out")

    monkeypatch.setattr(train, "fit", no_training)
    target = world.tmp / "runs"
    target.mkdir()
    (target / "keep.txt").write_text("mine", encoding="utf-8")
    argv = ["train", "toy", "--preset", "tiny", "-q", "--force", "--out"]
    if where == "existing-directory":
        rc, stdout, stderr = _run_inprocess([*argv, str(target)])
        words = ["is a directory", "model.pt"]
    else:
        with _unwritable(target):
            rc, stdout, stderr = _run_inprocess([*argv, str(target / "m.pt")])
        words = ["not writable", "--out"]
    _assert_one_line_error(rc, stdout, stderr, "train", words)
    assert sorted(p.name for p in target.iterdir()) == ["keep.txt"]


def test_utf16_ratings_are_read(tmp_path: Path) -> None:
    """UTF-16 (what some Windows tools save) is read as text, with or without a BOM."""
    from recsys_export.checkpoint import load_checkpoint

    text = _unicode_csv()
    for encoding in ("utf-16", "utf-16-le"):
        data = tmp_path / f"{encoding}.csv"
        data.write_bytes(text.encode(encoding))
        out = tmp_path / f"{encoding}.pt"
        rc, _, stderr = _run_inprocess(
            ["train", str(data), "--out", str(out), "--preset", "tiny", "--epochs", "2", "-q"]
        )
        assert rc == 0, stderr
        assert sorted(load_checkpoint(out).user_map.raw_ids.tolist()) == sorted(USERS)


@pytest.fixture(scope="module")
def full_bundle(trained: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The catalogue checkpoint exported in every format (``--formats all``: pt2 too)."""
    out = tmp_path_factory.mktemp("full") / "bundle"
    argv = ["export", str(trained["checkpoint"]), "--out", str(out), "--formats", "all", "-q"]
    rc, _, err = _run_inprocess(argv)
    assert rc == 0, err
    return out


def test_export_disk_full_is_a_user_error(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """ENOSPC while a graph is written: one line, no partial bundle, no temporary."""
    import errno

    from recsys_export.export import build

    def full(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(args[2]))

    monkeypatch.setattr(build, "write_onnx", full)
    argv, out = _export(world, world.checkpoint)
    rc, stdout, stderr = _run_inprocess(argv)
    _assert_one_line_error(rc, stdout, stderr, "export", ["No space left on device", "nothing"])
    assert not out.exists() and _leftovers(world.tmp) == []


@pytest.mark.slow
@pytest.mark.parametrize("limit", ["2048", "torchscript/model.pt", "pt2/score.pt2", "largest-file"])
def test_export_hitting_a_file_size_limit(world: World, full_bundle: Path, limit: str) -> None:
    """A real failed write (RLIMIT_FSIZE: EFBIG, as a full disk gives ENOSPC) in every
    writer, torch's archive writers included: exit 2 and one line, not an abort (134).
    The limit is one byte below the size of the named file of a good export."""
    import resource

    sizes = {
        p.relative_to(full_bundle).as_posix(): p.stat().st_size for p in full_bundle.rglob("*")
    }
    if limit == "2048":
        cap = 2048
    elif limit == "largest-file":
        # the largest graph file: parity.json and the manifest carry timings, so their
        # sizes vary from one export to the next
        graphs = [n for n in sizes if n.split("/")[0] in ("onnx", "torchscript", "pt2")]
        cap = max(sizes[n] for n in graphs) - 1
    else:
        cap = sizes[limit] - 1

    def limited() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (cap, cap))

    out = world.tmp / "exported"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "recsys_export.cli",
            "export",
            str(world.checkpoint),
            "--out",
            str(out),
            "--formats",
            "all",  # every writer, pt2's included
            "-q",
        ],
        capture_output=True,
        text=True,
        encoding="utf-8",
        env=_env(),
        timeout=300,
        preexec_fn=limited,
    )
    _assert_one_line_error(
        proc.returncode, proc.stdout, proc.stderr, "export", ["cannot write", "File too large"]
    )
    assert not out.exists() and _leftovers(world.tmp) == []


def test_verify_skips_pt2_the_installed_torch_cannot_read(
    full_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A .pt2 written by a newer torch: one warning line naming both versions, and the
    other formats are still verified (torch 2.6 reading 2.13's files raised this)."""
    import torch

    bundle = tmp_path / "b"
    shutil.copytree(full_bundle, bundle)
    _edit_manifest(bundle, lambda m: m["versions"].update(torch="9.9.0"))

    def old_torch_load(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise KeyError("There is no item named 'version' in the archive")

    monkeypatch.setattr(torch.export, "load", old_torch_load)
    rc, stdout, stderr = _run_inprocess(["verify", str(bundle), "--quick", "-q", "--no-record"])
    assert rc == 0, stderr
    (line,) = stderr.strip().splitlines()
    assert line.startswith("recsys-export verify: warning: pt2 not checked")
    assert f"torch {torch.__version__}" in line and "torch 9.9.0" in line
    assert "PASS" in stdout and "torchscript" in stdout and "onnx" in stdout
    assert "pt2 " not in stdout


def test_verify_on_a_read_only_bundle_prints_the_table_first(world: World, tmp_path: Path) -> None:
    """The check runs; recording it fails: the table is printed, then one error line."""
    parent = tmp_path / "ro"
    parent.mkdir()
    bundle = parent / "bundle"
    shutil.copytree(world.bundle, bundle)
    before = (bundle / "manifest.json").read_bytes()
    with _unwritable(parent):
        rc, stdout, stderr = _run_inprocess(["verify", str(bundle), "--quick", "-q", "--record"])
    _assert_one_line_error(rc, stdout, stderr, "verify", ["cannot", str(parent)])
    assert "PASS: float32 error bound" in stdout and "onnx" in stdout
    assert (bundle / "manifest.json").read_bytes() == before


def test_int_ids_beyond_2_53_survive_train_and_export(tmp_path: Path) -> None:
    """Ids from a ratings file above 2^53 are written so that every reader gets them."""
    from recsys_export.runtime import Recommender

    users = [BIG + 1, BIG, BIG + 3, 12]
    data = tmp_path / "big.csv"
    data.write_text(
        "user,item,rating\n"
        + "".join(f"{u},{i},{(u + i) % 5 + 1}\n" for u in users for i in range(4) if (u + i) % 3),
        encoding="utf-8",
    )
    ckpt, bundle = tmp_path / "m.pt", tmp_path / "bundle"
    for argv in (
        ["train", str(data), "--out", str(ckpt), "--preset", "tiny", "--epochs", "2", "-q"],
        ["export", str(ckpt), "--out", str(bundle), "--formats", "onnx", "-q"],
    ):
        rc, _, stderr = _run_inprocess(argv)
        assert rc == 0, stderr
    stored = json.loads((bundle / "ids" / "users.json").read_text(encoding="utf-8"))
    assert stored["encoding"] == "decimal-strings"
    assert sorted(Recommender.load(bundle).user_map.raw_ids.tolist()) == sorted(users)
    rc, stdout, stderr = _run_inprocess(
        ["recommend", str(bundle), "--user", str(BIG + 1), "--json"]
    )
    assert rc == 0, stderr
    assert json.loads(stdout)[0]["user"] == str(BIG + 1)
