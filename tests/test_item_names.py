"""Item names: reading names files, the checkpoint, the bundle, the runtime and the CLI."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from recsys_export import data
from recsys_export.bundle import Bundle, sha256_file, update_bundle
from recsys_export.bundle.schema import ITEM_NAMES_FILE
from recsys_export.cli import main
from recsys_export.core.ids import IdMap
from recsys_export.data.items import default_item_names_path, read_item_names
from recsys_export.errors import BundleError, CheckpointError, DataError, UnknownIdError
from recsys_export.export import export_bundle
from recsys_export.models import MatrixFactorization
from recsys_export.models.checkpoint import Checkpoint, load_checkpoint
from recsys_export.runtime import Recommender
from recsys_export.training.run import TrainRequest, load_item_names

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
ITEM_IDS = ["m01", "m02", "m03", "m04", "m05", "m06"]
TITLES = {
    "m01": "Godfather, The (1972)",
    "m02": "Amélie (2001)",
    "m03": "Alien (1979)",
    "m05": "Heat (1995)",
    "m06": "Up (2009)",
}  # m04 has no name


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def _read(path: Path, ids: list, **kw):
    return read_item_names(path, item_map=IdMap(np.asarray(ids), "item"), **kw)


# ------------------------------------------------------------------ reading


def test_movielens_csv_with_header_quotes_unknown_and_missing_ids(tmp_path):
    f = _write(
        tmp_path / "movies.csv",
        "movieId,title,genres\n"
        '1,"Godfather, The (1972)",Crime|Drama\n'
        "3,Alien (1979),Horror\n"
        "99,Not Rated (2000),Drama\n"
        "98,Nor This,Drama\n",
    )
    got = _read(f, [1, 2, 3])
    assert got.names == ["Godfather, The (1972)", None, "Alien (1979)"]
    assert (got.n_rows, got.n_unknown, got.n_named) == (4, 2, 2)
    assert got.unknown_examples == [99, 98]
    assert "2 of 3 items named" in got.summary() and "ignored 2 ids" in got.summary()


def test_headerless_double_colon_file_with_zero_padded_ids(tmp_path):
    """MovieTweetings' movies.dat: id::Title (year)::genres, no header."""
    f = _write(
        tmp_path / "movies.dat",
        "0002844::Fantômas - À l'ombre de la guillotine (1913)::Crime|Drama\n"
        "0004936::The Bank (1915)::Comedy|Short\n",
    )
    # the ratings' ids stay strings when zero-padded ...
    got = _read(f, ["0002844", "0004936", "0010000"])
    assert got.names == ["Fantômas - À l'ombre de la guillotine (1913)", "The Bank (1915)", None]
    assert got.n_unknown == 0
    # ... and an integer id map matches the padded ids by value
    by_value = _read(f, [4936, 2844]).names
    assert by_value == ["The Bank (1915)", "Fantômas - À l'ombre de la guillotine (1913)"]


def test_string_ids_tab_separated_with_header(tmp_path):
    lines = [f"{i}\t{t}" for i, t in TITLES.items()]
    f = _write(tmp_path / "items.tsv", "item_id\ttitle\n" + "\n".join(lines) + "\n")
    got = _read(f, ITEM_IDS)
    assert got.names == [TITLES.get(i) for i in ITEM_IDS]
    assert got.names[3] is None and got.n_unknown == 0


def test_columns_named_by_header_or_position(tmp_path):
    f = _write(tmp_path / "p.csv", "genre,label_text,sku\ndrama,Alpha,10\ncomedy,Beta,20\n")
    by_name = _read(f, [10, 20], id_col="sku", name_col="label_text")
    by_pos = _read(f, [10, 20], id_col=2, name_col="1")
    assert by_name.names == by_pos.names == ["Alpha", "Beta"]
    # a headerless file: columns by position
    g = _write(tmp_path / "q.csv", "Alpha,10\nBeta,20\n")
    assert _read(g, [10, 20], id_col=1, name_col=0).names == ["Alpha", "Beta"]


def test_header_detected_from_a_non_integer_first_id(tmp_path):
    f = _write(tmp_path / "p.txt", "sku;description\n1;Foo\n2;Bar\n")
    got = _read(f, [1, 2])
    assert got.names == ["Foo", "Bar"] and got.n_rows == 2


def test_empty_names_are_none_and_a_later_row_wins(tmp_path):
    f = _write(tmp_path / "n.csv", "id,name\n1,  \n2,Old\n2,  New  \n")
    assert _read(f, [1, 2]).names == [None, "New"]


def test_latin1_pipe_file_and_gzip(tmp_path):
    """MovieLens 100k's u.item is Latin-1 and '|'-separated, with more columns."""
    raw = "1|Misérables, Les (1995)|01-Jan-1995||http://x|0|1\n2|Heat (1995)|01-Jan-1995||http://y|1|0\n"
    f = tmp_path / "u.item"
    f.write_bytes(raw.encode("latin-1"))
    assert _read(f, [1, 2]).names == ["Misérables, Les (1995)", "Heat (1995)"]
    gz = tmp_path / "u.item.gz"
    gz.write_bytes(gzip.compress(raw.encode("utf-8")))
    assert _read(gz, [2]).names == ["Heat (1995)"]


@pytest.mark.parametrize(
    ("content", "kw", "message"),
    [
        (None, {}, "file not found"),
        ("", {}, "empty"),
        ("1\n2\n3\n", {}, "cannot find the separator"),
        ("1 Toy Story\n2 Heat\n", {}, "cannot find the separator"),
        ("movieId,title\n", {}, "no rows"),
        ("movieId,title\n1,A\n", {"name_col": "name"}, "'name' is not a column"),
        ("movieId,title\n1,A\n", {"id_col": 5}, "out of range"),
        ("movieId,title\n1,A\n", {"id_col": 1, "name_col": "title"}, "must differ"),
        ("movieId,genre,descr\n1,a,b\n", {}, "no item name column"),
        ("sku,genre,title\n1,a,b\n", {}, "no item id column"),
        ("id,title\n1,A\n,B\n", {}, "line 3: empty item id"),
        ('id,title\n1,"A\n', {}, "unbalanced double quote"),
        ("1,A\n2,B,C\n", {"sep": ","}, "fields"),
    ],
)
def test_bad_files_are_data_errors(tmp_path, content, kw, message):
    f = tmp_path / "names.csv"
    if content is not None:
        f.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=message) as exc:
        _read(f, [1, 2], **kw)
    assert str(f) in str(exc.value) or "must be" in str(exc.value)


def test_binary_file_is_refused(tmp_path):
    f = tmp_path / "model.bin"
    f.write_bytes(b"PK\x03\x04\x00\x00binary")
    with pytest.raises(DataError, match="binary"):
        _read(f, [1])


def test_bundled_movielens_titles(movielens):
    path = default_item_names_path()
    assert path.is_file() and path.parent == data.default_dataset_path().parent
    names = load_item_names(TrainRequest(), movielens)
    assert len(names) == movielens.n_items
    by_id = dict(zip(movielens.item_map.raw_ids.tolist(), names))
    assert by_id[1] == "Toy Story (1995)" and by_id[318] == "Shawshank Redemption, The (1994)"
    assert all(n is not None for n in names)  # every rated movie has a title
    # another file: no titles unless --items
    assert load_item_names(TrainRequest(data="ratings.csv"), movielens) is None


# ------------------------------------------------------------------ checkpoint


def _checkpoint(names: list | None) -> Checkpoint:
    torch.manual_seed(0)
    n_users = 5
    model = MatrixFactorization(n_users, len(ITEM_IDS), 4, biased=True, sparse=False, init_std=0.5)
    model.eval()
    users = np.array([0, 0, 1, 2, 3, 4], dtype=np.int64)
    items = np.array([0, 1, 2, 3, 4, 5], dtype=np.int64)
    return Checkpoint(
        model,
        IdMap(np.arange(10, 10 + n_users), "user"),
        IdMap(np.asarray(ITEM_IDS), "item"),
        users,
        items,
        item_names=names,
    )


NAMES = [TITLES.get(i) for i in ITEM_IDS]


def test_checkpoint_round_trip_keeps_names(tmp_path):
    numpy_names = [None if n is None else np.str_(n) for n in NAMES]  # numpy strings too
    _checkpoint(numpy_names).save(tmp_path / "c.pt")
    loaded = load_checkpoint(tmp_path / "c.pt")  # weights_only=True inside
    assert loaded.item_names == NAMES
    assert all(type(n) in (str, type(None)) for n in loaded.item_names)
    _checkpoint(None).save(tmp_path / "plain.pt")
    assert load_checkpoint(tmp_path / "plain.pt").item_names is None


def test_checkpoint_refuses_names_of_the_wrong_length(tmp_path):
    with pytest.raises(CheckpointError, match="5 item names for a model of 6 items"):
        _checkpoint(NAMES[:5]).save(tmp_path / "c.pt")
    assert not (tmp_path / "c.pt").exists()
    _checkpoint(NAMES).save(tmp_path / "c.pt")
    payload = torch.load(tmp_path / "c.pt", weights_only=True)
    payload["item_names"] = ["x", 3, None, None, None, None]
    torch.save(payload, tmp_path / "c.pt")
    with pytest.raises(CheckpointError, match="strings or null"):
        load_checkpoint(tmp_path / "c.pt")


# ------------------------------------------------------------------ bundle and runtime


@pytest.fixture(scope="module")
def named_bundle(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("names") / "bundle"
    export_bundle(_checkpoint(NAMES), path, formats="onnx", verify=False)
    return path


def test_bundle_lists_checksummed_names(named_bundle):
    bundle = Bundle.load(named_bundle)
    assert bundle.manifest.to_dict()["item_names"] == ITEM_NAMES_FILE
    entry = bundle.files[ITEM_NAMES_FILE]
    assert entry.role == "item_names"
    assert entry.sha256 == sha256_file(named_bundle / ITEM_NAMES_FILE)
    assert bundle.read_json(ITEM_NAMES_FILE) == NAMES
    # aligned with the item id map
    assert bundle.read_json(bundle.id_maps["items"])["ids"] == ITEM_IDS


def test_recommender_returns_names_with_recommendations(named_bundle):
    rec = Recommender.load(named_bundle)
    assert rec.item_names == NAMES
    res = rec.recommend([10, 11, 12], k=4)
    assert res.names is not None and res.names.shape == res.items.shape
    for items, names in zip(res.items, res.names):
        assert [TITLES.get(i) for i in items] == names.tolist()
    by_index = rec.recommend([0, 1], k=3, by_index=True)
    assert by_index.names.tolist() == [[NAMES[i] for i in row] for row in by_index.items]
    assert rec.names_of(["m05", "m04"]) == ["Heat (1995)", None]
    assert rec.names_of([1, 0], by_index=True) == ["Amélie (2001)", "Godfather, The (1972)"]
    with pytest.raises(UnknownIdError, match="nope"):
        rec.names_of(["nope"])


def test_empty_slots_have_no_name(named_bundle):
    rec = Recommender.load(named_bundle)
    res = rec.recommend([10], k=6, include=["m03", "m05"])  # user 10 rated m01, m02
    assert res.items[0].tolist()[2:] == [None] * 4
    assert set(res.names[0].tolist()[:2]) == {"Alien (1979)", "Heat (1995)"}
    assert res.names[0].tolist()[2:] == [None] * 4


def test_altered_names_fail_the_checksum(named_bundle, tmp_path):
    import shutil

    copy = tmp_path / "b"
    shutil.copytree(named_bundle, copy)
    text = (copy / ITEM_NAMES_FILE).read_text().replace("Heat", "Hear")
    (copy / ITEM_NAMES_FILE).write_text(text)
    with pytest.raises(BundleError, match="item_names.json"):
        Recommender.load(copy)


def test_malformed_names_file_is_a_bundle_error(named_bundle, tmp_path):
    import shutil

    copy = tmp_path / "b"
    shutil.copytree(named_bundle, copy)
    update_bundle(copy, manifest_updates={}, new_files={ITEM_NAMES_FILE: (b'["a"]', "item_names")})
    rec = Recommender.load(copy)  # checksums are right: the content is checked on use
    with pytest.raises(BundleError, match="1 item names for a model of 6 items"):
        rec.recommend([10], k=2)


def test_bundles_without_names_still_work(tmp_path):
    export_bundle(_checkpoint(None), tmp_path / "plain", formats="onnx", verify=False)
    for path in (tmp_path / "plain", ARTIFACTS / "toy-mf"):  # new, and committed golden
        rec = Recommender.load(path)
        assert rec.item_names is None
        assert ITEM_NAMES_FILE not in rec.bundle.files
        assert rec.recommend(rec.user_map.raw_ids[:1], k=2).names is None
        assert rec.names_of(rec.item_map.raw_ids[:2]) == [None, None]


def test_verified_export_with_names(tmp_path):
    manifest = export_bundle(
        _checkpoint(NAMES), tmp_path / "v", formats="onnx", verify=True
    ).to_dict()
    assert manifest["parity"]["passed"] and manifest["item_names"] == ITEM_NAMES_FILE
    assert Recommender.load(tmp_path / "v").item_names == NAMES


# ------------------------------------------------------------------ CLI


@pytest.fixture(scope="module")
def cli_files(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cli_names")
    rows = ["user,item,rating"]
    for u in range(8):  # every item rated: the item map is ITEM_IDS
        for j in range(3):
            rows.append(f"u{u},{ITEM_IDS[(u + j) % len(ITEM_IDS)]},{1 + (u * 3 + j * 2) % 5}")
    _write(root / "ratings.csv", "\n".join(rows) + "\n")
    names = ["movieId,title,genres"] + [f'{i},"{t}",Drama' for i, t in TITLES.items()]
    _write(root / "movies.csv", "\n".join([*names, "zz9,Not Rated,Drama"]) + "\n")
    return root


#: parity is not the point of the CLI tests (test_verified_export_with_names verifies)
QUICK = ("--formats", "onnx", "--no-verify")


def _train(root: Path, *extra: str) -> int:
    argv = ["train", str(root / "ratings.csv"), "--preset", "tiny", "--epochs", "20"]
    return main([*argv, "--split", "none", "--out", str(root / "m.pt"), "--force", *extra])


def test_cli_train_export_recommend_prints_titles(cli_files, capsys):
    root = cli_files
    assert _train(root, "--items", str(root / "movies.csv")) == 0
    err = capsys.readouterr().err
    assert "items: 5 of 6 items named" in err and "ignored 1 ids" in err and "'zz9'" in err
    assert load_checkpoint(root / "m.pt").item_names == NAMES
    bundle = root / "bundle"
    assert main(["export", str(root / "m.pt"), "--out", str(bundle), "--force", "-q", *QUICK]) == 0
    assert Bundle.load(bundle).files[ITEM_NAMES_FILE].role == "item_names"
    capsys.readouterr()
    assert (
        main(["recommend", str(bundle), "--user", "u0", "--user", "u1", "-k", "3", "--json"]) == 0
    )
    rows = json.loads(capsys.readouterr().out)
    for row in rows:
        assert row["names"] == [TITLES.get(i) for i in row["items"]]
    assert main(["recommend", str(bundle), "--user", "u0", "-k", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "user u0:"
    for rank, (line, item, name, score) in enumerate(
        zip(lines[1:], rows[0]["items"], rows[0]["names"], rows[0]["scores"]), 1
    ):
        fields = line.split()
        assert fields[0] == f"{rank}." and fields[1] == item and fields[-1] == f"{score:.4f}"
        assert " ".join(fields[2:-1]) == (name or "")


def test_cli_names_by_column_flags(cli_files, capsys):
    root = cli_files
    _write(root / "odd.txt", "".join(f"{t}\t{i}\n" for i, t in TITLES.items()))
    code = _train(
        root, "--items", str(root / "odd.txt"), "--item-id-col", "1", "--item-name-col", "0"
    )
    assert code == 0
    assert load_checkpoint(root / "m.pt").item_names == NAMES


def test_cli_recommend_without_names_keeps_its_format(cli_files, capsys):
    root = cli_files
    assert _train(root, "-q") == 0
    assert load_checkpoint(root / "m.pt").item_names is None
    bundle = root / "plain"
    assert main(["export", str(root / "m.pt"), "--out", str(bundle), "--force", "-q", *QUICK]) == 0
    capsys.readouterr()
    assert main(["recommend", str(bundle), "--user", "u0", "-k", "2", "--json"]) == 0
    assert "names" not in json.loads(capsys.readouterr().out)[0]
    assert main(["recommend", str(bundle), "--user", "u0", "-k", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()[1:]
    assert all(len(line.split()) == 3 for line in lines)


def test_cli_bad_items_file_is_one_line_and_exit_2(cli_files, capsys):
    root = cli_files
    out = root / "never.pt"
    code = main(
        ["train", str(root / "ratings.csv"), "--preset", "tiny", "--out", str(out), "-q",
         "--items", str(root / "movies.csv"), "--item-name-col", "plot"]
    )  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--item-name-col 'plot' is not a column" in err
    assert not out.exists()
