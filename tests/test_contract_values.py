"""Hostile values, messages and the first hour (issue 28, defects 6, 9 and 10).

Values are read exactly or refused with a line naming the value: numerals Python would
read loosely (``float("1_96") == 196.0``, Arabic-Indic digits), ids that are not ids
(None, NaN, floats past 2^53), ids that differ only in surrounding whitespace. Output
never carries raw control characters (a title holding ``ESC ] 0; ... BEL`` retitles a
terminal). Command lines are refused in one line when an option would be ignored or is
malformed; valid CSV (quoted line breaks) is read; outputs' directories are created.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recsys_export.cli import main
from recsys_export.cli.terminal import safe_text
from recsys_export.core.ids import IdMap
from recsys_export.data import read_ratings
from recsys_export.data.items import read_item_names
from recsys_export.errors import DataError, UnknownIdError

ROOT = Path(__file__).resolve().parents[1]
ESC_TITLE = "Evil \x1b]0;pwned\x07 \x1b[2J\x9b31m title"  # retitle, clear, C1 CSI
USERS = ["alice", "None", "nan", "bob\x1b[31m", "carol"]
ITEMS = ["i0", "i1", "i2", "i3", "i4", "i5"]


def _run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(argv)
        except SystemExit as exc:  # argparse
            rc = int(exc.code or 0)
    return rc, out.getvalue(), err.getvalue()


def _one_error_line(rc: int, err: str, *words: str) -> str:
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def str_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small MF bundle with string ids 'None' and 'nan' and a hostile title."""
    from recsys_export.export import export_bundle
    from recsys_export.models.synthetic import synthetic_checkpoint

    ckpt = synthetic_checkpoint(
        "mf", len(USERS), len(ITEMS), seen_per_user=1, user_ids=USERS, item_ids=ITEMS
    )
    ckpt.item_names = [ESC_TITLE, "Plain", None, "Tab\there", "Bidi \u202egnp.exe", "Fine"]
    out = tmp_path_factory.mktemp("contract") / "bundle"
    export_bundle(ckpt, out, formats="onnx", verify=False)
    return out


# ------------------------------------------------------------------ defect 6: values


@pytest.mark.parametrize(
    "value",
    ["1_96", "\u0663", "\u0661.\u0665", "4\u00a0"],
    ids=["underscore", "ar3", "ar1.5", "nbsp"],
)
def test_ratings_that_python_reads_loosely_are_refused(tmp_path, value):
    path = _write(tmp_path, "r.csv", f"user,item,rating\n1,1,4\n1,2,{value}\n2,1,3\n")
    with pytest.raises(DataError, match=r"r\.csv: line 3: rating .* is not a plain number"):
        read_ratings(path)


def test_parquet_rating_strings_are_read_like_csv(tmp_path):
    df = pd.DataFrame({"user": [1, 1, 2], "item": [1, 2, 1], "rating": ["4", "1_96", "3"]})
    df.to_parquet(tmp_path / "r.parquet")
    with pytest.raises(DataError, match=r"row 2: rating '1_96' is not a plain number"):
        read_ratings(tmp_path / "r.parquet")


def test_timestamps_with_underscores_are_refused(tmp_path):
    path = _write(tmp_path, "r.csv", "user,item,rating,ts\n1,1,4,1_000\n1,2,3,5\n2,1,3,6\n")
    with pytest.raises(DataError, match=r"line 2: timestamp '1_000' is not a plain number"):
        read_ratings(path)


def test_the_relevance_threshold_cannot_be_moved_by_a_loose_numeral(tmp_path):
    # before: 1_96 read as 196.0 moved the default threshold (80% of the max) to 156.8
    path = _write(tmp_path, "r.csv", "user,item,rating\n1,1,4\n1,2,1_96\n2,1,3\n2,2,5\n")
    rc, _, err = _run(["train", str(path), "--out", str(tmp_path / "m.pt"), "-q"])
    _one_error_line(rc, err, "line 3", "'1_96'", "not a plain number")


@pytest.mark.parametrize("bad", [None, math.nan, np.float64("nan"), object()])
def test_non_ids_are_not_string_ids(str_bundle, bad):
    from recsys_export.runtime import Recommender

    rec = Recommender.load(str_bundle)
    with pytest.raises(UnknownIdError, match="is not an id"):
        rec.recommend([bad], k=2)
    with pytest.raises(UnknownIdError, match="is not an id"):
        rec.score([bad], ["i0"])
    # the users really named 'None' and 'nan' are served by their names
    assert rec.recommend(["None", "nan"], k=2).items.shape == (2, 2)


def test_integral_float_ids_become_int_ids():
    assert IdMap(np.array([1.0, 2.0, 30.0]), "user").raw_ids.tolist() == [1, 2, 30]
    m = IdMap([5.0, 7], "item")
    assert m.kind == "int" and m.raw_ids.tolist() == [5, 7]
    built, codes = IdMap.build(np.array([3.0, 1.0, 3.0]), "user")
    assert built.kind == "int" and built.raw_ids.tolist() == [1, 3]


@pytest.mark.parametrize(
    "ids",
    [
        [9007199254740993.0, 5],  # already 9007199254740992.0: the id is lost
        np.array([1.5, 2.0]),
        [1, None],
        [float("nan"), "a"],
        [True, 2],
    ],
    ids=["beyond-2^53", "fraction", "none", "nan", "bool"],
)
def test_ids_that_are_not_exact_are_refused(ids):
    with pytest.raises(DataError, match=r"not an id|not an exact integer|boolean"):
        IdMap(ids, "user")


def test_export_model_keeps_float_ids_as_integers(tmp_path):
    torch = pytest.importorskip("torch")
    from recsys_export.byom import export_model
    from recsys_export.runtime import Recommender

    class Pairwise(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.user_embedding = torch.nn.Embedding(2, 3)
            self.item_embedding = torch.nn.Embedding(3, 3)

        def forward(self, users, items):
            return (self.user_embedding(users) * self.item_embedding(items)).sum(-1)

    torch.manual_seed(0)
    out = tmp_path / "b"
    export_model(
        Pairwise(),
        out,
        user_ids=np.array([1.0, 2.0]),
        item_ids=[10.0, 20, 30],
        item_names={10: "Ten", 30.0: "Thirty", 99: "not an item"},
        formats="onnx",
        verify=False,
    )
    stored = json.loads((out / "ids" / "users.json").read_text())
    assert stored["kind"] == "int" and stored["ids"] == [1, 2]
    rec = Recommender.load(out)
    assert rec.item_map.raw_ids.tolist() == [10, 20, 30]
    top = rec.recommend([1], k=3)
    assert dict(zip(top.items[0], top.names[0])) == {10: "Ten", 20: None, 30: "Thirty"}
    with pytest.raises(DataError, match="not an exact integer"):
        export_model(Pairwise(), tmp_path / "c", user_ids=[9007199254740993.0, 5])
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_ids_differing_only_in_whitespace_are_refused_alike(tmp_path, fmt):
    df = pd.DataFrame({"user": [" x", "x", "y"], "item": ["a", "b", "a"], "rating": [1, 2, 3]})
    path = tmp_path / f"r.{fmt}"
    df.to_csv(path, index=False) if fmt == "csv" else df.to_parquet(path)
    where = "line 3" if fmt == "csv" else "row 2"
    with pytest.raises(DataError, match=rf"{where}: user id 'x' differs from ' x' .* only in "):
        read_ratings(path)
    # one spelling of an id: stripped the same way in both formats
    df["user"] = [" x", " x", "y"]
    df.to_csv(path, index=False) if fmt == "csv" else df.to_parquet(path)
    assert read_ratings(path).user_map.raw_ids.tolist() == ["x", "y"]


def test_parquet_float_ids_beyond_2_53_are_refused(tmp_path):
    pd.DataFrame({"user": [1.0, 2.0**60], "item": [1, 2], "rating": [1.0, 2.0]}).to_parquet(
        tmp_path / "r.parquet"
    )
    with pytest.raises(DataError, match=r"row 2: user id .*beyond 2\^53"):
        read_ratings(tmp_path / "r.parquet")


# ------------------------------------------------------------------ defect 9: escapes


def test_safe_text_escapes_controls_and_keeps_text():
    assert safe_text("Amélie 電影 🎬 👨‍👩‍👧") == "Amélie 電影 🎬 👨‍👩‍👧"
    assert safe_text(ESC_TITLE) == "Evil \\x1b]0;pwned\\x07 \\x1b[2J\\x9b31m title"
    assert safe_text("a\tb\nc\x7f\u202e") == "a\\tb\\nc\\x7f\\u202e"
    assert safe_text("a\tb\n", keep="\t\n") == "a\tb\n"


def _no_raw_controls(text: str) -> None:
    bad = [c for c in text if c not in "\n\t" and safe_text(c) != c]
    assert not bad, f"raw control characters in the output: {bad!r}"


def test_recommend_escapes_names_and_ids(str_bundle):
    from recsys_export.runtime import Recommender

    users = ["bob\x1b[31m", "alice", "carol"]
    rc, out, err = _run(["recommend", str(str_bundle), *sum((["--user", u] for u in users), [])])
    assert rc == 0, err
    _no_raw_controls(out)
    assert "user bob\\x1b[31m:" in out
    names = Recommender.load(str_bundle).item_names
    shown = [safe_text(n) for n in names if n]
    assert any(s in out for s in shown[:1] + shown[3:5])  # the hostile titles, escaped
    # --json: valid JSON holding the exact values
    rc, out, err = _run(["recommend", str(str_bundle), "--user", users[0], "--json"])
    assert rc == 0, err
    _no_raw_controls(out)
    row = json.loads(out)[0]
    assert row["user"] == users[0]
    assert set(row["names"]) <= set(names)


def test_error_lines_and_score_lines_are_escaped(str_bundle):
    rc, _, err = _run(["recommend", str(str_bundle), "--user", "\x1b]0;x\x07"])
    line = _one_error_line(rc, err, "unknown user")
    _no_raw_controls(line)
    rc, out, err = _run(["score", str(str_bundle), "--user", "bob\x1b[31m", "--item", "i1"])
    assert rc == 0, err
    assert out.startswith("bob\\x1b[31m\ti1\t")


def test_every_printed_line_is_escaped(str_bundle, tmp_path):
    """Output with no explicit escaping (inspect's manifest fields) goes through the guard."""
    import shutil

    bundle = tmp_path / "b"
    shutil.copytree(str_bundle, bundle)
    manifest = json.loads((bundle / "manifest.json").read_text(encoding="utf-8"))
    manifest["created"] = "\x1b]0;pwned\x07today"
    (bundle / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    rc, out, err = _run(["inspect", str(bundle)])
    assert rc == 0, err
    _no_raw_controls(out)
    assert "created \\x1b]0;pwned\\x07today)" in out
    rc, out, err = _run(["inspect", str(bundle), "--json"])
    assert rc == 0 and json.loads(out)["created"] == manifest["created"]


def test_recommend_json_ids_are_typed_as_in_the_bundle(tmp_path):
    rc, _, err = _run(["train", "toy", "--preset", "tiny", "-q", "--out", str(tmp_path / "m.pt")])
    assert rc == 0, err
    rc, _, err = _run(["export", str(tmp_path / "m.pt"), "--out", str(tmp_path / "b"), "-q"])
    assert rc == 0, err
    rc, out, err = _run(["recommend", str(tmp_path / "b"), "--user", "3", "--json", "-k", "2"])
    row = json.loads(out)[0]
    assert row["user"] == 3 and all(isinstance(i, int) for i in row["items"])


# ------------------------------------------------------------------ defect 10: files


def test_quoted_line_breaks_are_valid_csv(tmp_path):
    buf = io.StringIO()
    writer = csv.writer(buf)  # what Python's csv module writes: CRLF, quotes where needed
    writer.writerows([["user", "item", "rating"], [1, "two\nlines", 4], [1, "b", 3], [2, "b", 5]])
    r = read_ratings(_write(tmp_path, "r.csv", buf.getvalue()))
    assert sorted(r.item_map.raw_ids.tolist()) == ["b", "two\nlines"]
    # a line of the quoted field without the separator does not hide it either
    text = 'user,item,rating\n1,"multi\nline item\nthird",4\n\n1,b,3\n2,b,x\n'
    with pytest.raises(DataError, match=r"r2\.csv: line 7: rating 'x' is not a number"):
        read_ratings(_write(tmp_path, "r2.csv", text))


def test_items_written_by_the_csv_module_are_read(tmp_path):
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerows([["item", "title"], ["a", "Line one\nline two"], ["b", 'Say "hi", x']])
    names = read_item_names(
        _write(tmp_path, "items.csv", buf.getvalue()), item_map=IdMap(["a", "b"], "item")
    )
    assert names.names == ["Line one\nline two", 'Say "hi", x']


def test_mixed_separators_name_the_row_that_differs(tmp_path):
    text = "user,item,rating\n1,2,3\n1,3,4\n2;2;5\n2,3,1\n"
    with pytest.raises(DataError, match=r"line 4: no ',' in '2;2;5', while line 1"):
        read_ratings(_write(tmp_path, "r.csv", text))


def test_items_parquet_is_read(tmp_path):
    pd.DataFrame({"movieId": [1, 2, 9], "title": ["One", "Two", "Nine"]}).to_parquet(
        tmp_path / "items.parquet"
    )
    names = read_item_names(tmp_path / "items.parquet", item_map=IdMap([1, 2, 3], "item"))
    assert names.names == ["One", "Two", None] and names.n_unknown == 1


def test_items_named_twice_are_counted(tmp_path):
    path = _write(tmp_path, "items.csv", "id,title\n1,One\n2,Two\n2,Deux\n1,One\n")
    names = read_item_names(path, item_map=IdMap([1, 2], "item"))
    assert names.names == ["One", "Deux"]
    assert names.n_renamed == 1 and "1 rows name an item again" in names.summary()


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "--model", "xgboost"],
        ["recommend"],
        ["score", "b", "--top-k", "ten"],
        ["--no-such-flag"],
    ],
)
def test_usage_errors_are_one_line(argv):
    rc, out, err = _run(argv)
    line = _one_error_line(rc, err, "error:", "--help")
    assert line.startswith("recsys-export")


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["score", "B", "--all", "--user", "1", "--out", "x.npy"], "--user"),
        (["score", "B", "--all", "--include-seen", "--out", "x.npy"], "--include-seen"),
        (["score", "B", "--user", "1", "--item", "2", "--top-k", "3"], "--top-k"),
        (["score", "B", "--all", "--top-k", "3", "--out", "x.csv", "--workers", "2"], "--workers"),
        (["train", "toy", "--user-col", "u"], "--user-col"),
        (["train", "toy", "--duplicates", "first"], "--duplicates"),
        (["train", "r.csv", "--test", "t.csv", "--split", "time"], "--split"),
        (["train", "r.csv", "--item-name-col", "title"], "--item-name-col"),
        (["evaluate", "m.pt", "--sep", ";"], "--sep"),
        (["export", "m.pt", "--out", "b", "--keep-partial"], "--keep-partial"),
        (["export", "m.pt", "--out", "b", "--item-id-col", "id"], "--item-id-col"),
    ],
)
def test_ignored_options_are_refused(tmp_path, monkeypatch, argv, flag):
    monkeypatch.chdir(tmp_path)
    rc, _, err = _run(argv)
    _one_error_line(rc, err, f"{flag} would be ignored")
    assert list(tmp_path.iterdir()) == []  # refused before anything is created


def test_verify_quick_excludes_full_and_budget():
    for extra in (["--full"], ["--budget", "100"]):
        rc, _, err = _run(["verify", "B", "--quick", *extra])
        _one_error_line(rc, err, "not allowed with argument --quick")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
@pytest.mark.parametrize("command", ["train", "items"])
def test_a_fifo_is_refused_not_waited_on(tmp_path, command):
    fifo = tmp_path / "ratings.csv"
    os.mkfifo(fifo)
    argv = ["train", str(fifo), "--out", str(tmp_path / "m.pt"), "-q"]
    if command == "items":
        argv = ["train", "toy", "--items", str(fifo), "--out", str(tmp_path / "m.pt"), "-q"]
    proc = subprocess.run(  # a subprocess: before the fix, reading the FIFO blocked forever
        [sys.executable, "-m", "recsys_export.cli", *argv],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    _one_error_line(proc.returncode, proc.stderr, str(fifo), "not a regular file")


def _pairs_csv(path: Path, rows) -> Path:
    path.write_text("user,item,rating\n" + "".join(f"{u},{i},{r}\n" for u, i, r in rows))
    return path


def test_test_file_drop_line_counts_rows_and_ids(tmp_path):
    train = [(u, i, (u + i) % 5 + 1) for u in range(6) for i in range(5) if (u + i) % 3]
    test = [(0, 0, 4), (7, 1, 3), (7, 2, 3), (8, 1, 5), (1, 9, 4), (2, 9, 4), (1, 8, 2)]
    argv = ["train", str(_pairs_csv(tmp_path / "r.csv", train)), "--preset", "tiny"]
    argv += ["--test", str(_pairs_csv(tmp_path / "t.csv", test)), "--out", str(tmp_path / "m.pt")]
    rc, out, err = _run([*argv, "-q", "--epochs", "2"])
    assert rc == 0, err
    assert (
        "test file: 1 of 7 rows kept; dropped 6 rows: 3 with an unknown user (2 distinct), "
        "3 with a known user but an unknown item (2 distinct)"
    ) in out
    assert "warning" not in err


def test_test_file_equal_to_the_training_rows_warns(tmp_path):
    rows = [(u, i, (u + i) % 5 + 1) for u in range(6) for i in range(5) if (u + i) % 3]
    data = _pairs_csv(tmp_path / "r.csv", rows)
    argv = ["train", str(data), "--test", str(data), "--out", str(tmp_path / "m.pt")]
    rc, out, err = _run([*argv, "--preset", "tiny", "--epochs", "2", "-q"])
    assert rc == 0, err
    assert f"warning: {len(rows)} of the {len(rows)} kept test rows (100%) are (user, item) " in err
    rc, out, err = _run(["evaluate", str(tmp_path / "m.pt"), "--test", str(data)])
    assert rc == 0 and "kept test rows (100%)" in err


# ------------------------------------------------------------------ the first hour


def test_output_directories_are_created(tmp_path):
    ckpt, bundle = tmp_path / "runs" / "deep" / "mf.pt", tmp_path / "artifacts" / "mf"
    scores = tmp_path / "out" / "scores.npy"
    for argv in (
        ["train", "toy", "--preset", "tiny", "-q", "--out", str(ckpt)],
        ["export", str(ckpt), "--out", str(bundle), "--formats", "onnx", "-q"],
        ["score", str(bundle), "--all", "--out", str(scores), "-q"],
    ):
        rc, _, err = _run(argv)
        assert rc == 0, err
    assert ckpt.is_file() and (bundle / "manifest.json").is_file() and scores.is_file()
    # a command that fails leaves no directory it created behind
    rc, _, err = _run(["export", str(tmp_path / "nothing.pt"), "--out", str(tmp_path / "a" / "b")])
    assert rc == 2 and not (tmp_path / "a").exists()


def _help(command: str) -> str:
    rc, out, err = _run([command, "--help"])
    assert rc == 0, err
    return out


def test_help_texts_point_to_the_right_places():
    bench = " ".join(_help("bench").split())
    assert "schema in docs/performance.md" in bench and "in the README" not in bench
    assert "examples:" in _help("inspect") and "recsys-export inspect artifacts/mf" in _help(
        "inspect"
    )
    train = " ".join(_help("train").split())
    assert "random holdout (default)" in train


def test_a_state_dict_without_model_is_told_about_model(tmp_path):
    torch = pytest.importorskip("torch")
    path = tmp_path / "mf_state.pt"
    torch.save(
        {"user_factors.weight": torch.zeros(3, 2), "item_factors.weight": torch.zeros(4, 2)}, path
    )
    rc, _, err = _run(["export", str(path), "--out", str(tmp_path / "b")])
    _one_error_line(rc, err, "not a recsys-export checkpoint", "--model mf|densenet|MODULE:CLASS")


def test_export_items_attaches_titles(tmp_path):
    names = _write(tmp_path, "names.csv", "id,title\n0,Zero\n1,One\n2,Two\n2,Deux\n9,Nine\n")
    rc, _, err = _run(["train", "toy", "--preset", "tiny", "-q", "--out", str(tmp_path / "m.pt")])
    assert rc == 0, err
    argv = ["export", str(tmp_path / "m.pt"), "--out", str(tmp_path / "b"), "--formats", "onnx"]
    rc, _, err = _run([*argv, "--items", str(names)])
    assert rc == 0, err
    assert "items: 3 of 4 items named from" in err and "1 rows name an item again" in err
    from recsys_export.runtime import Recommender

    assert Recommender.load(tmp_path / "b").item_names == ["Zero", "One", "Deux", None]
