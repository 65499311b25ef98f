"""Tests of recsys_export.data: toy matrix, file reading, synthetic data, splits."""

from __future__ import annotations

import gzip
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recsys_export.data import (
    TOY_MATRIX,
    Ratings,
    default_dataset_path,
    from_matrix,
    random_split,
    read_ratings,
    split,
    synthetic_ratings,
    time_split,
    toy_ratings,
)
from recsys_export.errors import DataError
from recsys_export.ids import IdMap, runs_to_coo

SHARED_DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"


def write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def raw_pairs(r: Ratings) -> list[tuple[object, object, float]]:
    """(raw user, raw item, rating) per row, in row order."""
    return [
        (u, i, float(x))
        for u, i, x in zip(
            r.user_map.raw_ids[r.users].tolist(),
            r.item_map.raw_ids[r.items].tolist(),
            r.ratings.tolist(),
            strict=True,
        )
    ]


# ---------------------------------------------------------------------------- toy matrix


def test_toy_matrix_is_the_posts_matrix() -> None:
    expected = [[5, 3, 0, 1], [4, 0, 0, 1], [1, 1, 0, 5], [1, 0, 0, 4], [0, 1, 5, 4]]
    assert TOY_MATRIX.dtype == np.float64
    assert TOY_MATRIX.shape == (5, 4)
    np.testing.assert_array_equal(TOY_MATRIX, np.array(expected, dtype=float))


def test_toy_ratings_follow_the_training_loop_order() -> None:
    r = toy_ratings()
    pairs = list(zip(*TOY_MATRIX.nonzero(), strict=True))
    assert list(zip(r.users.tolist(), r.items.tolist(), strict=True)) == [
        (int(u), int(i)) for u, i in pairs
    ]
    np.testing.assert_array_equal(r.ratings, [TOY_MATRIX[u, i] for u, i in pairs])
    assert len(r) == 13 and r.n_users == 5 and r.n_items == 4
    assert r.users.dtype == np.int64 and r.items.dtype == np.int64
    assert r.ratings.dtype == np.float32
    assert r.timestamps is None
    assert r.user_map.raw_ids.tolist() == [0, 1, 2, 3, 4]
    assert r.item_map.raw_ids.tolist() == [0, 1, 2, 3]
    np.testing.assert_array_equal(r.to_matrix(), TOY_MATRIX)


def test_from_matrix_maps_cover_empty_rows_and_columns() -> None:
    m = np.zeros((4, 3))
    m[0, 1] = 2.0
    m[2, 0] = -1.5  # negative ratings are allowed
    r = from_matrix(m)
    assert r.n_users == 4 and r.n_items == 3
    assert r.users.tolist() == [0, 2] and r.items.tolist() == [1, 0]
    assert r.ratings.tolist() == [2.0, -1.5]
    np.testing.assert_array_equal(r.to_matrix(), m)


@pytest.mark.parametrize(
    "bad, words",
    [
        (np.array([1.0, 2.0]), "2-D"),
        (np.array([[1.0, np.nan]]), "NaN"),
        (np.array([[1.0, np.inf]]), "infinite"),
        (np.zeros((0, 3)), "empty"),
        ([["a", "b"]], "numeric"),
    ],
)
def test_from_matrix_rejects_bad_input(bad: object, words: str) -> None:
    with pytest.raises(DataError, match=words):
        from_matrix(bad)


# ---------------------------------------------------------------------------- Ratings


def test_subset_by_index_and_mask_keeps_maps() -> None:
    r = toy_ratings()
    a = r.subset(np.array([3, 0, 5]))
    assert a.users.tolist() == r.users[[3, 0, 5]].tolist()
    assert a.user_map is r.user_map and a.item_map is r.item_map
    mask = r.ratings >= 4
    b = r.subset(mask)
    assert len(b) == int(mask.sum())
    assert np.all(b.ratings >= 4)
    assert len(r.subset(np.array([], dtype=np.int64))) == 0
    with pytest.raises(DataError, match="mask"):
        r.subset(np.ones(3, dtype=bool))
    with pytest.raises(DataError, match="out of range"):
        r.subset(np.array([100]))


def test_ratings_validates_arrays() -> None:
    m = IdMap(np.arange(3), "user")
    with pytest.raises(DataError, match="same length"):
        Ratings(np.array([0, 1]), np.array([0]), np.array([1.0, 2.0]), None, m, m)
    with pytest.raises(DataError, match="out of range"):
        Ratings(np.array([5]), np.array([0]), np.array([1.0]), None, m, m)


def test_to_matrix_refuses_huge_matrices() -> None:
    big_u = IdMap(np.arange(10_000), "user")
    big_i = IdMap(np.arange(10_000), "item")
    r = Ratings(np.array([0]), np.array([0]), np.array([1.0]), None, big_u, big_i)
    with pytest.raises(DataError, match="cells"):
        r.to_matrix()


# ---------------------------------------------------------------------------- formats

ROWS = [("1", "10", "4.0", "100"), ("1", "20", "3.5", "50"), ("2", "10", "5", "70")]
EXPECTED = [(1, 10, 4.0), (1, 20, 3.5), (2, 10, 5.0)]


@pytest.mark.parametrize(
    "name, sep, header",
    [
        ("r.csv", ",", "userId,movieId,rating,timestamp"),
        ("r.csv", ";", "user;item;rating;timestamp"),
        ("r.csv", "|", "USER_ID|ITEM_ID|RATING|TIMESTAMP"),
        ("r.tsv", "\t", "user id\titem id\tscore\ttime"),
        ("r.csv", ",", None),
        ("ratings.dat", "::", None),
        ("u.data", "\t", None),
        ("r.txt", " ", None),
    ],
)
def test_read_text_formats(tmp_path: Path, name: str, sep: str, header: str | None) -> None:
    lines = ([header] if header else []) + [sep.join(row) for row in ROWS]
    r = read_ratings(write(tmp_path, name, "\n".join(lines) + "\n"))
    assert raw_pairs(r) == EXPECTED
    assert r.user_map.kind == "int" and r.item_map.kind == "int"
    assert r.timestamps is not None and r.timestamps.tolist() == [100, 50, 70]
    assert r.source.endswith(name) and r.n_duplicates == 0


def test_read_three_columns_without_timestamps(tmp_path: Path) -> None:
    r = read_ratings(write(tmp_path, "r.csv", "1,10,4\n2,20,3\n"))
    assert r.timestamps is None
    assert raw_pairs(r) == [(1, 10, 4.0), (2, 20, 3.0)]


def test_read_crlf_bom_blank_lines_and_quotes(tmp_path: Path) -> None:
    text = '\ufeffuser,item,rating\r\n\r\n"a, b",x,1\r\nc,"y",2\r\n\r\n'
    r = read_ratings(write(tmp_path, "r.csv", text))
    assert raw_pairs(r) == [("a, b", "x", 1.0), ("c", "y", 2.0)]


def test_read_parquet(tmp_path: Path) -> None:
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    df = pd.DataFrame(
        {
            "timestamp": pd.to_datetime(
                ["2020-01-01 00:00", "2020-01-02 00:00", "1970-01-01 00:01"]
            ),
            "item_id": ["0104257", "b", "b"],
            "user_id": np.array([7, 7, 9], dtype=np.int64),
            "rating": np.array([1.0, 2.5, 4.0], dtype=np.float32),
        }
    )
    for name in ("r.parquet", "r.pq"):
        p = tmp_path / name
        df.to_parquet(p)
        r = read_ratings(p)
        assert raw_pairs(r) == [(7, "0104257", 1.0), (7, "b", 2.5), (9, "b", 4.0)]
        assert r.item_map.kind == "str" and r.user_map.kind == "int"
        assert r.timestamps.tolist() == [1577836800, 1577923200, 60]


def test_read_gzip_csv(tmp_path: Path) -> None:
    p = tmp_path / "r.csv.gz"
    p.write_bytes(gzip.compress(b"user,item,rating\n1,2,3\n4,5,1\n"))
    assert raw_pairs(read_ratings(p)) == [(1, 2, 3.0), (4, 5, 1.0)]


def test_sep_override(tmp_path: Path) -> None:
    p = write(tmp_path, "r.txt", "a;b,1;x,4\nc;d,2;y,5\n")
    r = read_ratings(p, sep=",")
    assert raw_pairs(r) == [("a;b", "1;x", 4.0), ("c;d", "2;y", 5.0)]
    p = write(tmp_path, "r2.txt", "1\t2\t3\n4\t5\t6\n")
    assert raw_pairs(read_ratings(p, sep="tab")) == [(1, 2, 3.0), (4, 5, 6.0)]
    p = write(tmp_path, "r3.txt", "1%%2%%3\n4%%5%%6\n")
    assert raw_pairs(read_ratings(p, sep="%%")) == [(1, 2, 3.0), (4, 5, 6.0)]


def test_date_timestamps_become_epoch_seconds(tmp_path: Path) -> None:
    text = "User,Item,Stars,Date\n1,1,4,2020-01-01\n2,2,3,2020-01-01 00:00:10\n"
    r = read_ratings(write(tmp_path, "r.csv", text))
    assert r.timestamps.tolist() == [1577836800, 1577836810]


# ---------------------------------------------------------------------------- header & columns


def test_header_detection(tmp_path: Path) -> None:
    # string ids but numeric rating: a data row, not a header
    r = read_ratings(write(tmp_path, "a.csv", "alice,item1,5\nbob,item2,3\n"))
    assert raw_pairs(r) == [("alice", "item1", 5.0), ("bob", "item2", 3.0)]
    # negative numbers in the first row are data too
    r = read_ratings(write(tmp_path, "b.csv", "-1,2,-3.5\n4,5,6\n"))
    assert raw_pairs(r) == [(-1, 2, -3.5), (4, 5, 6.0)]
    # known names, any case
    r = read_ratings(write(tmp_path, "c.csv", "RATING,ItemID,UserID\n4,i,u\n3,j,v\n"))
    assert raw_pairs(r) == [("u", "i", 4.0), ("v", "j", 3.0)]


def test_column_flags_by_name_and_position(tmp_path: Path) -> None:
    text = "when,who,what,how_much\n5,u1,i1,4\n6,u2,i2,2\n"
    p = write(tmp_path, "r.csv", text)
    r = read_ratings(p, user_col="who", item_col="WHAT", rating_col=3, timestamp_col="0")
    assert raw_pairs(r) == [("u1", "i1", 4.0), ("u2", "i2", 2.0)]
    assert r.timestamps.tolist() == [5, 6]
    # headerless file, positions only
    p = write(tmp_path, "n.csv", "4,u1,i1\n2,u2,i2\n")
    r = read_ratings(p, user_col=1, item_col=2, rating_col=0)
    assert raw_pairs(r) == [("u1", "i1", 4.0), ("u2", "i2", 2.0)]


def test_column_flag_errors(tmp_path: Path) -> None:
    p = write(tmp_path, "r.csv", "user,item,rating\n1,2,3\n4,5,6\n")
    with pytest.raises(DataError, match="'stars' is not a column.*user, item, rating"):
        read_ratings(p, rating_col="stars")
    with pytest.raises(DataError, match="out of range"):
        read_ratings(p, rating_col=7)
    q = write(tmp_path, "n.csv", "1,2,3\n4,5,6\n")
    with pytest.raises(DataError, match="no header"):
        read_ratings(q, rating_col="rating")
    with pytest.raises(DataError, match="must differ"):
        read_ratings(p, user_col=0, item_col="user")
    with pytest.raises(DataError, match="no user column"):
        read_ratings(p, rating_col=0)  # the user column is taken


# ---------------------------------------------------------------------------- ids


def test_unicode_ids_with_inner_spaces(tmp_path: Path) -> None:
    text = "user,item,rating\n  Zoë Smith ,  café au lait ,4\n李 雷,東京 タワー,5\n"
    r = read_ratings(write(tmp_path, "r.csv", text + "  Zoë Smith ,x,1\n"))
    assert r.user_map.kind == "str"
    assert raw_pairs(r) == [
        ("Zoë Smith", "café au lait", 4.0),  # surrounding whitespace is stripped
        ("李 雷", "東京 タワー", 5.0),
        ("Zoë Smith", "x", 1.0),
    ]
    assert r.n_users == 2
    assert sorted(r.user_map.raw_ids.tolist()) == r.user_map.raw_ids.tolist()
    # two raw ids that differ only in surrounding whitespace are not merged silently
    with pytest.raises(
        DataError,
        match=r"line 4: user id 'Zoë Smith' differs from "
        r"'  Zoë Smith ' \(line 2\) only in surrounding whitespace",
    ):
        read_ratings(write(tmp_path, "r2.csv", text + "Zoë Smith,x,1\n"))


def test_leading_zero_ids_stay_strings(tmp_path: Path) -> None:
    text = "1::0104257::8::1\n2::104257::7::2\n2::0002844::3::3\n"
    r = read_ratings(write(tmp_path, "ratings.dat", text))
    assert r.user_map.kind == "int"
    assert r.item_map.kind == "str"
    assert r.item_map.raw_ids.tolist() == ["0002844", "0104257", "104257"]
    assert r.n_items == 3


def test_non_canonical_and_huge_integers_stay_strings(tmp_path: Path) -> None:
    text = "+1,99999999999999999999,1\n-0,2,2\n0,3,3\n"
    r = read_ratings(write(tmp_path, "r.csv", text))
    assert r.user_map.raw_ids.tolist() == ["+1", "-0", "0"]
    assert r.item_map.raw_ids.tolist() == ["2", "3", "99999999999999999999"]
    r = read_ratings(write(tmp_path, "s.csv", " 7 , -12 ,1\n8,9223372036854775807,2\n"))
    assert r.user_map.kind == "int" and r.item_map.kind == "int"
    assert r.item_map.raw_ids.tolist() == [-12, 9223372036854775807]


# ---------------------------------------------------------------------------- errors


def error_of(tmp_path: Path, text: str | bytes, name: str = "bad.csv", **kw: object) -> str:
    p = tmp_path / name
    if isinstance(text, bytes):
        p.write_bytes(text)
    else:
        p.write_text(text, encoding="utf-8")
    with pytest.raises(DataError) as info:
        read_ratings(p, **kw)
    msg = str(info.value)
    assert str(p) in msg, msg  # every file error names the file
    return msg


def test_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found") as info:
        read_ratings(tmp_path / "missing.csv")
    assert "missing.csv" in str(info.value)
    with pytest.raises(DataError, match="directory"):
        read_ratings(tmp_path)


@pytest.mark.parametrize(
    "text, words",
    [
        ("", ["empty"]),
        ("\n\n  \n", ["empty"]),
        ("userId,movieId,rating,timestamp\n", ["no data rows"]),
        (b"\x00\x01\x02PK\x00\x00binary", ["binary"]),
        (b"\xff\xfe\xfa\xfb" * 64, ["binary"]),
        ("12\n34\n", ["line 1", "separator", "at least 2", "--sep"]),
        ("1 2\n3 4\n", ["separator", "--sep"]),
        ("user,item,stars_x\n1,2,3\n", ["no rating column", "stars_x", "--rating-col"]),
        ("u,i,r\n1,2,3\n", ["no user column", "u, i, r", "--user-col"]),
        ("user,item,rating\n1,1,4\n2,2,abc\n", ["line 3", "'abc'", "not a number"]),
        ("1,1,4\n\n2,2,x5\n", ["line 3", "'x5'", "not a number"]),
        ("1,1,4\n2,2,nan\n", ["line 2", "NaN or infinite"]),
        ("1,1,4\n2,2,-inf\n", ["line 2", "NaN or infinite"]),
        ("1,1,4\n2,2,\n", ["line 2", "empty rating"]),
        ("user,item,rating\n1,1,4\n ,2,3\n", ["line 3", "empty user id"]),
        ("1,1,4\n2,,3\n", ["line 2", "empty item id"]),
        ("1,1,4,5\n2,2,3,6,7\n", ["line 2", "fields"]),
        ("1,1,4,100\n2,2,3,yesterday-ish\n", ["line 2", "timestamp", "yesterday-ish"]),
        ("7,1,4\n7,2,3\n7,3,5\n", ["single user", "7"]),
        ("1,9,4\n2,9,3\n", ["single item", "9"]),
    ],
)
def test_read_errors(tmp_path: Path, text: str | bytes, words: list[str]) -> None:
    msg = error_of(tmp_path, text)
    for w in words:
        assert w in msg, (w, msg)


def test_non_utf8_after_first_kb_names_the_line(tmp_path: Path) -> None:
    body = "".join(f"{i},{i},3\n" for i in range(200)).encode() + b"5,\xe9t\xe9,4\n"
    msg = error_of(tmp_path, body)
    assert "line 201" in msg and "UTF-8" in msg


def test_multibyte_character_at_the_1kb_boundary_is_text(tmp_path: Path) -> None:
    head = "user,item,rating\n"
    text = head + "a" * (1023 - len(head)) + "€,i,4\nb,j,5\n"
    assert text.encode().index("€".encode()) == 1023  # straddles the first KB
    r = read_ratings(write(tmp_path, "r.csv", text))
    assert r.user_map.raw_ids.tolist() == ["a" * 1006 + "€", "b"]


def test_bad_dates_and_unbalanced_quotes_name_the_line(tmp_path: Path) -> None:
    msg = error_of(tmp_path, "user,item,rating,date\n1,1,4,2020-01-01\n2,2,3,garbage\n")
    assert "line 3" in msg and "'garbage'" in msg and "--timestamp-col" in msg
    msg = error_of(tmp_path, '1,1,4\n2,"abc,3\n3,3,3\n')
    assert "line 2" in msg and "quote" in msg


def test_wrong_separator_override(tmp_path: Path) -> None:
    msg = error_of(tmp_path, "1,2,3\n4,5,6\n", sep=";")
    assert "1 column" in msg and "';'" in msg and "--sep" in msg


def test_bad_duplicates_policy(tmp_path: Path) -> None:
    p = write(tmp_path, "r.csv", "1,2,3\n4,5,6\n")
    with pytest.raises(DataError, match="policy"):
        read_ratings(p, duplicates="median")


def test_out_of_scale_ratings_are_allowed(tmp_path: Path) -> None:
    r = read_ratings(write(tmp_path, "r.csv", "1,1,-2\n2,2,11.5\n"))
    assert r.ratings.tolist() == [-2.0, 11.5]


# ---------------------------------------------------------------------------- duplicates

DUPS = "user,item,rating,ts\na,x,1,10\nb,x,2,20\na,x,3,30\na,y,4,40\na,x,5,50\n"


@pytest.mark.parametrize(
    "policy, expected, ts",
    [
        ("last", [("b", "x", 2.0), ("a", "y", 4.0), ("a", "x", 5.0)], [20, 40, 50]),
        ("first", [("a", "x", 1.0), ("b", "x", 2.0), ("a", "y", 4.0)], [10, 20, 40]),
        ("mean", [("b", "x", 2.0), ("a", "y", 4.0), ("a", "x", 3.0)], [20, 40, 50]),
    ],
)
def test_duplicate_policies(
    tmp_path: Path, policy: str, expected: list[tuple[str, str, float]], ts: list[int]
) -> None:
    r = read_ratings(write(tmp_path, "r.csv", DUPS), duplicates=policy)
    assert raw_pairs(r) == expected
    assert r.timestamps.tolist() == ts
    assert r.n_duplicates == 2


def test_duplicates_default_is_last(tmp_path: Path) -> None:
    r = read_ratings(write(tmp_path, "r.csv", DUPS))
    assert raw_pairs(r)[-1] == ("a", "x", 5.0) and r.n_duplicates == 2


def test_duplicates_error_names_pair_and_lines(tmp_path: Path) -> None:
    msg = error_of(tmp_path, DUPS, duplicates="error")
    assert "duplicate" in msg and "'a'" in msg and "'x'" in msg
    assert "line 2" in msg and "line 4" in msg


# ---------------------------------------------------------------------------- synthetic


def test_synthetic_is_deterministic_and_sized() -> None:
    a = synthetic_ratings(200, 100, n_ratings=3000, seed=3)
    b = synthetic_ratings(200, 100, n_ratings=3000, seed=3)
    c = synthetic_ratings(200, 100, n_ratings=3000, seed=4)
    for f in ("users", "items", "ratings", "timestamps"):
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f))
    assert not np.array_equal(a.items, c.items)
    assert len(a) == 3000 and a.n_users == 200 and a.n_items == 100
    assert a.ratings.dtype == np.float32
    assert a.ratings.min() >= 1.0 and a.ratings.max() <= 5.0
    keys = a.users * a.n_items + a.items
    assert len(np.unique(keys)) == len(keys)  # no duplicate pairs
    assert np.all(np.diff(a.timestamps) > 0)
    assert a.user_map.raw_ids.tolist() == list(range(200))
    assert a.item_map.raw_ids.tolist() == list(range(100))


def test_synthetic_density_and_popularity() -> None:
    r = synthetic_ratings(300, 200, density=0.05, popularity_skew=1.0)
    assert len(r) == round(0.05 * 300 * 200)
    counts = np.sort(np.bincount(r.items, minlength=200))
    assert counts[-10:].sum() > 3 * counts[:10].sum()  # skewed popularity
    flat = synthetic_ratings(300, 200, density=0.05, popularity_skew=0.0)
    assert np.bincount(flat.items, minlength=200).max() < counts[-1]


def test_synthetic_dense_and_full_grid() -> None:
    r = synthetic_ratings(30, 20, n_ratings=600, popularity_skew=2.0)
    assert len(np.unique(r.users * 20 + r.items)) == 600


def test_synthetic_has_low_rank_structure() -> None:
    r = synthetic_ratings(50, 40, density=1.0, noise=0.0, n_factors=2)
    m = r.to_matrix().astype(np.float64) - 3.0
    unclipped = (r.to_matrix() > 1) & (r.to_matrix() < 5)
    assert unclipped.mean() > 0.9
    s = np.linalg.svd(m, compute_uv=False)
    assert s[2] < 0.2 * s[0]


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"n_users": 0, "n_items": 5}, "n_users"),
        ({"n_users": 5, "n_items": 5, "n_ratings": 26}, "n_ratings"),
        ({"n_users": 5, "n_items": 5, "density": 0.0}, "density"),
        ({"n_users": 5, "n_items": 5, "popularity_skew": -1.0}, "popularity_skew"),
        ({"n_users": 5, "n_items": 5, "noise": float("nan")}, "noise"),
    ],
)
def test_synthetic_rejects_bad_arguments(kwargs: dict, words: str) -> None:
    with pytest.raises(DataError, match=words):
        synthetic_ratings(**kwargs)


# ---------------------------------------------------------------------------- splits


def row_keys(r: Ratings) -> list[tuple[int, int]]:
    return list(zip(r.users.tolist(), r.items.tolist(), strict=True))


def test_random_split_disjoint_covering_seeded() -> None:
    r = synthetic_ratings(100, 80, n_ratings=1001, seed=1)
    train, test = random_split(r, 0.2, seed=5)
    assert len(test) == round(0.2 * 1001) and len(train) + len(test) == 1001
    assert not set(row_keys(train)) & set(row_keys(test))
    assert set(row_keys(train)) | set(row_keys(test)) == set(row_keys(r))
    assert train.user_map is r.user_map and test.item_map is r.item_map
    # original order within each part: timestamps increase with the row number
    assert np.all(np.diff(train.timestamps) > 0) and np.all(np.diff(test.timestamps) > 0)
    again = random_split(r, 0.2, seed=5)[1]
    np.testing.assert_array_equal(again.users, test.users)
    np.testing.assert_array_equal(again.items, test.items)
    other = random_split(r, 0.2, seed=6)[1]
    assert row_keys(other) != row_keys(test)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(2, 60), frac=st.floats(0.01, 0.99), seed=st.integers(0, 2**32 - 1))
def test_random_split_sizes_property(n: int, frac: float, seed: int) -> None:
    m = np.zeros((n, 1))
    m[:, 0] = 1.0
    r = from_matrix(m)
    train, test = random_split(r, frac, seed)
    assert len(train) + len(test) == n
    assert 1 <= len(test) <= n - 1
    assert abs(len(test) - frac * n) <= max(1.0, 0.5 + 1e-9)
    assert sorted(train.users.tolist() + test.users.tolist()) == list(range(n))


def test_random_split_errors() -> None:
    r = toy_ratings()
    for bad in (0.0, 1.0, -0.1, 1.5, float("nan")):
        with pytest.raises(DataError, match="test_fraction"):
            random_split(r, bad)
    one = r.subset(np.array([0]))
    with pytest.raises(DataError, match="need >= 2"):
        random_split(one)


def make_timed(rows: list[tuple[int, int, int]]) -> Ratings:
    users = np.array([u for u, _, _ in rows])
    items = np.array([i for _, i, _ in rows])
    ts = np.array([t for _, _, t in rows])
    return Ratings(
        users,
        items,
        np.ones(len(rows)),
        ts,
        IdMap(np.arange(users.max() + 1), "user"),
        IdMap(np.arange(items.max() + 1), "item"),
    )


def test_time_split_holds_out_latest_per_user() -> None:
    rows = [
        (0, 0, 50), (0, 1, 10), (0, 2, 40), (0, 3, 20), (0, 4, 30),  # user 0: 5 ratings
        (1, 0, 5), (1, 1, 1),  # user 1: 2 ratings
        (2, 2, 999),  # user 2: a single rating stays in train
    ]  # fmt: skip
    r = make_timed(rows)
    train, test = time_split(r, 0.3)
    # ceil(0.3 * 5) = 2 latest of user 0 (ts 50, 40); ceil(0.3 * 2) = 1 of user 1 (ts 5)
    assert row_keys(test) == [(0, 0), (0, 2), (1, 0)]  # original order kept
    assert row_keys(train) == [(0, 1), (0, 3), (0, 4), (1, 1), (2, 2)]
    for u in (0, 1):
        assert train.timestamps[train.users == u].max() < test.timestamps[test.users == u].min()
    assert train.user_map is r.user_map


def test_time_split_on_synthetic_data() -> None:
    r = synthetic_ratings(50, 40, n_ratings=600, seed=2)
    train, test = time_split(r, 0.25)
    assert len(train) + len(test) == len(r)
    assert not set(row_keys(train)) & set(row_keys(test))
    counts = np.bincount(r.users, minlength=r.n_users)
    test_counts = np.bincount(test.users, minlength=r.n_users)
    expected = np.where(counts >= 2, np.minimum(np.ceil(0.25 * counts), counts - 1), 0)
    np.testing.assert_array_equal(test_counts, expected)
    for u in np.unique(test.users):
        assert train.timestamps[train.users == u].max() < test.timestamps[test.users == u].min()


def test_time_split_errors_and_dispatcher() -> None:
    with pytest.raises(DataError, match="timestamps"):
        time_split(toy_ratings())
    with pytest.raises(DataError, match="timestamps"):
        split(toy_ratings(), "time")
    with pytest.raises(DataError, match="no user has 2"):
        time_split(make_timed([(0, 0, 1), (1, 1, 2)]))
    with pytest.raises(DataError, match="unknown split method"):
        split(toy_ratings(), "stratified")
    r = synthetic_ratings(20, 20, n_ratings=100)
    a, b = split(r, "random", 0.2, seed=1)
    c, d = random_split(r, 0.2, seed=1)
    np.testing.assert_array_equal(b.items, d.items)
    e, f = split(r, "time", 0.2)
    g, h = time_split(r, 0.2)
    np.testing.assert_array_equal(f.items, h.items)


# ---------------------------------------------------------------------------- real data


def test_default_dataset_path_is_the_shipped_movielens() -> None:
    p = default_dataset_path()
    assert p.name == "ratings.csv" and p.parent.name == "ml-latest-small"
    if not p.exists():
        pytest.skip(f"packaged dataset missing at {p}")
    r = read_ratings(p)
    assert (len(r), r.n_users, r.n_items) == (100836, 610, 9724)


def test_movielens_latest_small() -> None:
    p = SHARED_DATASETS / "ml-latest-small" / "ratings.csv"
    if not p.exists():
        pytest.skip(f"shared dataset not available at {p}")
    r = read_ratings(p)
    assert (len(r), r.n_users, r.n_items) == (100836, 610, 9724)
    assert r.user_map.kind == "int" and r.item_map.kind == "int"
    assert r.n_duplicates == 0
    assert r.ratings.min() == 0.5 and r.ratings.max() == 5.0
    assert raw_pairs(r)[0] == (1, 1, 4.0) and r.timestamps[0] == 964982703
    train, test = time_split(r, 0.2)
    assert len(train) + len(test) == len(r)


def test_movietweetings() -> None:
    p = SHARED_DATASETS / "movietweetings-100k" / "ratings.dat"
    if not p.exists():
        pytest.skip(f"shared dataset not available at {p}")
    r = read_ratings(p)
    assert len(r) == 100000 - r.n_duplicates
    assert r.item_map.kind == "str"
    assert "0104257" in set(r.item_map.raw_ids.tolist())
    assert r.user_map.kind == "int"
    assert 0.0 <= r.ratings.min() and r.ratings.max() <= 10.0
    assert np.all(np.isfinite(r.ratings))
    assert math.isclose(float(r.ratings.max()), 10.0)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 4), min_size=0, max_size=6), st.randoms(use_true_random=False))
def test_runs_to_coo_matches_a_loop(lengths, rnd):
    """Exclusion COO from CSR runs: runs in any order, empty runs, repeated runs."""
    values = np.arange(100, 100 + sum(lengths) + 3, dtype=np.int32)
    bounds = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    order = list(range(len(lengths))) * 2
    rnd.shuffle(order)
    starts, ends = bounds[order], bounds[np.array(order, dtype=np.int64) + 1]
    rows, items = runs_to_coo(starts, ends, values)
    want_rows = [r for r, (a, b) in enumerate(zip(starts, ends)) for _ in range(a, b)]
    want_items = [v for a, b in zip(starts, ends) for v in values[a:b]]
    assert rows.dtype == items.dtype == np.int64
    assert rows.tolist() == want_rows and items.tolist() == want_items
