"""Helper for tests/test_runtime.py: use the runtime with torch made unimportable.

Usage: python runtime_notorch.py BUNDLE EXPECTED_DIR OUT_DIR

``sys.modules["torch"] = None`` is set before anything else, so any ``import torch``
(direct or indirect) raises ImportError. The script loads the bundle, runs score,
score_all, recommend, write_score_matrix and write_topk, and compares the results with
the arrays the test saved in EXPECTED_DIR. Exit status 0 means everything matched.
"""

from __future__ import annotations

import sys

sys.modules["torch"] = None  # type: ignore[assignment]

import csv  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from recsys_export.runtime import Recommender  # noqa: E402


def main() -> int:
    bundle, expected, out = (Path(a) for a in sys.argv[1:4])
    try:
        import torch  # noqa: F401
    except ImportError:
        pass
    else:  # pragma: no cover - the guard above failed
        raise SystemExit("torch is importable; the test is meaningless")

    def exp(name: str) -> np.ndarray:
        return np.load(expected / f"{name}.npy", allow_pickle=False)

    rec = Recommender.load(bundle)
    users = exp("users")
    items = exp("items")
    np.testing.assert_array_equal(rec.score(users, items, by_index=True), exp("score"))
    np.testing.assert_array_equal(rec.score_all(users, by_index=True), exp("score_all"))
    res = rec.recommend(users, 5, by_index=True)
    np.testing.assert_array_equal(res.scores, exp("rec_scores"))
    np.testing.assert_array_equal(res.items, exp("rec_items"))
    matrix = rec.write_score_matrix(out / "m.npy", memory_budget_mb=0.01, progress=False)
    np.testing.assert_array_equal(np.load(matrix, mmap_mode="r"), exp("matrix"))
    topk = rec.write_topk(out / "t.csv", 3, progress=False)
    with open(topk, newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["user", "rank", "item", "score"], rows[0]
    assert len(rows) == 1 + int(exp("topk_rows")), len(rows)
    assert "torch" not in sys.modules or sys.modules["torch"] is None
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
