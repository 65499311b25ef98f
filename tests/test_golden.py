"""Golden tests: the committed bundles in artifacts/ still load and reproduce their outputs.

The bundles and expected outputs were written by ``scripts/make_artifacts.py`` from the
post's toy matrix. If a change to the bundle format, the loader or the runtime breaks
old bundles, these tests fail: fix the change, do not regenerate the artifacts.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from recsys_export.bundle import Bundle
from recsys_export.runtime import Recommender

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
EXPECTED = sorted((ARTIFACTS / "expected").glob("*.json"))


def test_reference_bundles_are_committed():
    names = {p.stem for p in EXPECTED}
    assert {"toy-mf", "toy-densenet"} <= names


@pytest.mark.parametrize("expected_file", EXPECTED, ids=[p.stem for p in EXPECTED])
def test_committed_bundle_reproduces_expected_outputs(expected_file):
    from recsys_export.parity import load_backends  # torch: not in the runtime-only tests

    expected = json.loads(expected_file.read_text())
    root = ARTIFACTS / expected["bundle"]
    bundle = Bundle.load(root)  # format version and checksums
    assert bundle.manifest.to_dict()["parity"]["passed"]
    inp, out = expected["inputs"], expected["outputs"]
    arr = {k: {n: np.asarray(v, dtype=np.int64) for n, v in d.items()} for k, d in inp.items()}
    backends = load_backends(bundle)
    assert set(backends) == {"onnx", "torchscript", "pt2"}
    for name, be in backends.items():
        np.testing.assert_allclose(
            be.score(arr["score"]["users"], arr["score"]["items"]),
            out["score"]["scores"],
            atol=1e-5,
            rtol=1e-5,
            err_msg=name,
        )
        np.testing.assert_allclose(
            be.score_all(arr["score_all"]["users"]),
            out["score_all"]["scores"],
            atol=1e-5,
            rtol=1e-5,
            err_msg=name,
        )
        r = arr["recommend"]
        s, i = be.recommend(
            r["users"], inp["recommend"]["k"], r["exclude_rows"], r["exclude_items"]
        )
        np.testing.assert_allclose(
            s, out["recommend"]["scores"], atol=1e-5, rtol=1e-5, err_msg=name
        )
        np.testing.assert_array_equal(i, out["recommend"]["items"], err_msg=name)


@pytest.mark.runtime_only
@pytest.mark.parametrize("expected_file", EXPECTED, ids=[p.stem for p in EXPECTED])
def test_committed_bundle_runtime(expected_file):
    """The torch-free runtime (by index) reproduces every entry point's expected outputs."""
    expected = json.loads(expected_file.read_text())
    inp, out = expected["inputs"], expected["outputs"]
    for fast_paths in (True, False):
        rec = Recommender.load(ARTIFACTS / expected["bundle"], fast_paths=fast_paths)
        np.testing.assert_allclose(
            rec.score(inp["score"]["users"], inp["score"]["items"], by_index=True),
            out["score"]["scores"],
            atol=1e-5,
            rtol=1e-5,
        )
        np.testing.assert_allclose(
            rec.score_all(inp["score_all"]["users"], by_index=True),
            out["score_all"]["scores"],
            atol=1e-5,
            rtol=1e-5,
        )
        r = inp["recommend"]
        exclude = {u: [] for u in r["users"]}
        for row, item in zip(r["exclude_rows"], r["exclude_items"]):
            exclude[r["users"][row]].append(item)
        res = rec.recommend(r["users"], r["k"], exclude_seen=False, exclude=exclude, by_index=True)
        np.testing.assert_allclose(res.scores, out["recommend"]["scores"], atol=1e-5, rtol=1e-5)
        np.testing.assert_array_equal(res.items, out["recommend"]["items"])
