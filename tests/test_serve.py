"""``recsys-export serve``, in process: the JSON API and the Open Inference Protocol equal
the runtime's outputs (MF, DenseNet, a generic own model); auth off loopback; every
malformed request gets a one-line 4xx JSON error; metrics. Batching and overload:
tests/test_serve_batching.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as triton
from helpers.serving import (
    ARTIFACTS,
    copy_bundle,
    expected_rows,
    generic_bundle,
    metric,
    name_items,
    run,
    running,
    same_rows,
)

from recsys_export.cli import main
from recsys_export.errors import ConfigError
from recsys_export.runtime import Recommender
from recsys_export.serve.app import create_app
from recsys_export.serve.config import ServeConfig
from recsys_export.serve.engine import manifest_version


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("serve")
    out = {
        "mf": copy_bundle(ARTIFACTS / "toy-mf", root / "mf"),
        "densenet": copy_bundle(ARTIFACTS / "toy-densenet", root / "densenet"),
        "generic": generic_bundle(root / "generic"),
    }
    name_items(out["mf"], ["Alpha", None, "Gamma", "Delta"])
    return out


def _app(bundle: Path, **options):
    return create_app(ServeConfig(bundle=bundle, **options), watch=False)


def _cases(rec: Recommender) -> list[tuple[dict, dict]]:
    """(request body, Recommender.recommend kwargs) pairs covering the options."""
    users = rec.user_map.raw_ids.tolist()
    items = rec.item_map.raw_ids.tolist()
    one, two = users[0], users[: min(3, len(users))]
    k = min(3, rec.n_items)
    return [
        ({"users": [one]}, {"user_ids": [one], "k": min(10, rec.n_items)}),
        ({"users": [str(one)], "k": k}, {"user_ids": [one], "k": k}),
        ({"users": two, "k": k}, {"user_ids": two, "k": k}),
        (
            {"users": two, "k": k, "exclude_seen": False},
            {"user_ids": two, "k": k, "exclude_seen": False},
        ),
        (
            {"users": two, "k": k, "exclude": items[:1]},
            {"user_ids": two, "k": k, "exclude": items[:1]},
        ),
        (
            {"users": two, "k": 2, "include": items[-3:]},
            {"user_ids": two, "k": 2, "include": items[-3:]},
        ),
        (
            {"users": [one, "nobody"], "k": k, "unknown": "popular"},
            {"user_ids": [one, "nobody"], "k": k, "unknown": "popular"},
        ),
    ]


@pytest.mark.parametrize("kind", ["mf", "densenet", "generic"])
def test_recommend_and_score_equal_the_runtime(bundles, kind):
    rec = Recommender.load(bundles[kind])
    version = manifest_version(rec.manifest)
    app = _app(bundles[kind])

    async def body():
        async with running(app) as client:
            for request, kwargs in _cases(rec):
                resp = await client.post("/recommend", json=request)
                assert resp.status_code == 200, resp.text
                assert resp.headers["x-model-version"] == version
                assert resp.json()["model_version"] == version
                same_rows(resp.json()["results"], expected_rows(rec, **kwargs))
            resp = await client.post(
                "/recommend", json={"users": [rec.user_map.raw_ids[0].item(), "nobody"],
                                    "unknown": "skip", "k": 1}
            )  # fmt: skip
            assert resp.json()["skipped"] == ["nobody"] and len(resp.json()["results"]) == 1
            users = rec.user_map.raw_ids[[0, -1, 0]].tolist()
            items = rec.item_map.raw_ids[[1, 0, -1]].tolist()
            resp = await client.post("/score", json={"pairs": [list(p) for p in zip(users, items)]})
            assert resp.status_code == 200 and resp.headers["x-model-version"] == version
            np.testing.assert_allclose(resp.json()["scores"], rec.score(users, items), rtol=1e-6)
            model = (await client.get("/model")).json()
            assert model["version"] == version and model["kind"] == rec.kind
            assert (model["n_users"], model["n_items"]) == (rec.n_users, rec.n_items)
            assert model["parity"]["passed"] is True and "onnx" in model["formats"]

    run(body())


@pytest.mark.parametrize("kind", ["mf", "generic"])
def test_oip_infer_equals_the_runtime_json_and_binary(bundles, kind):
    rec = Recommender.load(bundles[kind])
    users = rec.user_map.raw_ids[[0, 2, 1]].tolist()
    want = rec.recommend(users, k=3)
    app = _app(bundles[kind], model_name="m")
    int_items = rec.item_map.kind == "int"

    async def body():
        async with running(app) as client:
            meta = (await client.get("/v2/models/m")).json()
            assert meta["name"] == "m" and meta["versions"] == [manifest_version(rec.manifest)]
            assert meta["outputs"][0]["datatype"] == ("INT64" if int_items else "BYTES")
            for binary in (False, True):
                for dtype in ("BYTES", "INT64"):
                    tensor = triton.InferInput("user_ids", [len(users)], dtype)
                    arr = np.array(users, dtype=np.int64)
                    arr = arr if dtype == "INT64" else np.array([str(u).encode() for u in users])
                    tensor.set_data_from_numpy(arr, binary_data=binary)
                    outs = [triton.InferRequestedOutput(n, binary_data=binary)
                            for n in ("item_ids", "scores")]  # fmt: skip
                    payload, json_size = triton.InferenceServerClient.generate_request_body(
                        [tensor], outputs=outs, parameters={"k": 3}
                    )
                    headers = {}
                    if json_size is not None:
                        headers["Inference-Header-Content-Length"] = str(json_size)
                    resp = await client.post("/v2/models/m/infer", content=payload, headers=headers)
                    assert resp.status_code == 200, resp.text
                    length = resp.headers.get("inference-header-content-length")
                    result = triton.InferenceServerClient.parse_response_body(
                        resp.content, header_length=None if length is None else int(length)
                    )
                    items = result.as_numpy("item_ids")
                    if not int_items:
                        decode = np.vectorize(
                            lambda v: v.decode() if isinstance(v, bytes) else v, otypes=[object]
                        )
                        items = decode(items)
                    empty = -1 if int_items else ""  # the OIP's empty slot
                    want_items = np.where(np.equal(want.items, None), empty, want.items)
                    np.testing.assert_array_equal(items.astype(object), want_items)
                    # JSON data has no -inf: empty slots' scores are null there (NaN)
                    scores = (
                        want.scores
                        if binary
                        else np.where(np.isfinite(want.scores), want.scores, np.nan)
                    )
                    np.testing.assert_allclose(result.as_numpy("scores"), scores, rtol=1e-6)

    run(body())


def test_names_and_empty_slots_are_rendered_like_the_cli(bundles):
    rec = Recommender.load(bundles["mf"])
    app = _app(bundles["mf"])

    async def body():
        async with running(app) as client:
            # k = n_items: users who rated items have empty slots, left out
            resp = await client.post("/recommend", json={"users": [0, 1, 2], "k": rec.n_items})
            rows = resp.json()["results"]
            same_rows(rows, expected_rows(rec, [0, 1, 2], k=rec.n_items))
            assert any(len(r["items"]) < rec.n_items for r in rows)
            assert all(set(r["names"]) <= {"Alpha", None, "Gamma", "Delta"} for r in rows)

    run(body())


MALFORMED = [
    ("POST", "/recommend", b"", 400, "no body"),
    ("POST", "/recommend", b"{not json", 400, "not valid JSON"),
    ("POST", "/recommend", b"[1, 2]", 400, "JSON object"),
    ("POST", "/recommend", b'{"user": [1]}', 400, "unknown field(s) 'user'"),
    ("POST", "/recommend", b'{"k": 3}', 400, "missing field(s) 'users'"),
    ("POST", "/recommend", b'{"users": []}', 400, "users is empty"),
    ("POST", "/recommend", b'{"users": [[1]]}', 400, "list of ids"),
    ("POST", "/recommend", b'{"users": [true]}', 400, "list of ids"),
    ("POST", "/recommend", b'{"users": [1], "k": 0}', 400, "k must be a positive integer"),
    ("POST", "/recommend", b'{"users": [1], "k": 99}', 400, "k=99 is out of range"),
    ("POST", "/recommend", b'{"users": [1], "k": "3"}', 400, "k must be"),
    ("POST", "/recommend", b'{"users": [1], "unknown": "x"}', 400, "unknown must be one of"),
    ("POST", "/recommend", b'{"users": [1], "exclude_seen": 1}', 400, "true or false"),
    ("POST", "/recommend", b'{"users": [77]}', 404, "unknown user id(s): 77"),
    ("POST", "/recommend", b'{"users": [1], "exclude": [99]}', 404, "unknown item id(s): 99"),
    ("POST", "/recommend", b'{"users": [1, 2, 3, 4, 5, 6]}', 413, "at most 5 per request"),
    ("POST", "/score", b'{"pairs": [[1]]}', 400, "[user, item] pairs"),
    ("POST", "/score", b'{"pairs": [[1, 99]]}', 404, "unknown item id(s): 99"),
    ("GET", "/recommend", None, 405, "GET is not allowed"),
    ("GET", "/nothing/here", None, 404, "no route GET /nothing/here"),
    ("POST", "/v2/models/other/infer", b"{}", 404, "unknown model 'other'"),
    ("POST", "/v2/models/mf/infer", b"{}", 400, "'inputs' list"),
    ("POST", "/v2/models/mf/infer", b'{"inputs": [{"name": "x"}]}', 400, "inputs are"),
    (
        "POST",
        "/v2/models/mf/infer",
        b'{"inputs": [{"name": "user_ids", "datatype": "FP32", "shape": [1], "data": [1.0]}]}',
        400,
        "datatype must be BYTES, INT64 or INT32",
    ),
    (
        "POST",
        "/v2/models/mf/infer",
        b'{"inputs": [{"name": "user_ids", "datatype": "INT64", "shape": [2], "data": [1]}]}',
        400,
        "holds 2 values, 1 were sent",
    ),
    (
        "POST",
        "/v2/models/mf/infer",
        b'{"inputs": [{"name": "user_ids", "datatype": "INT64", "shape": [1], "data": [1]}],'
        b' "parameters": {"K": 3}}',
        400,
        "unknown parameter(s) ['K']",
    ),
    ("GET", "/v2/models/mf/versions/nope", None, 404, "has no version 'nope'"),
]


def test_malformed_requests_get_one_line_json_errors(bundles):
    app = _app(bundles["mf"], max_users=5, model_name="mf")

    async def body():
        async with running(app) as client:
            return [
                await client.request(method, path, content=data)
                for method, path, data, _, _ in MALFORMED
            ]

    for resp, (method, path, _, status, fragment) in zip(run(body()), MALFORMED):
        assert resp.status_code == status, (method, path, resp.text)
        error = resp.json()["error"]
        assert fragment in error, (path, error)
        assert "\n" not in error and "Traceback" not in resp.text
        assert str(bundles["mf"]) not in resp.text and "/tmp" not in resp.text


def test_body_size_limit(bundles):
    app = _app(bundles["mf"], max_body_bytes=1024)

    async def body():
        async with running(app) as client:
            big = json.dumps({"users": [1] * 600}).encode()

            async def chunks():  # no Content-Length: the limit holds while streaming
                yield big[:1000]
                yield big[1000:]

            return (
                await client.post("/recommend", content=big),
                await client.post("/recommend", content=chunks()),
            )

    for resp in run(body()):
        assert resp.status_code == 413 and "larger than 1024 bytes" in resp.json()["error"]


def test_token_required_off_loopback(bundles, tmp_path, capsys):
    with pytest.raises(ConfigError, match="not a loopback address.*--token-file"):
        ServeConfig(bundle=bundles["mf"], host="0.0.0.0").check()
    ServeConfig(bundle=bundles["mf"], host="0.0.0.0", insecure=True).check()
    ServeConfig(bundle=bundles["mf"], host="::1").check()
    assert main(["serve", str(bundles["mf"]), "--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--insecure" in err
    (tmp_path / "empty").write_text("\n")
    assert main(["serve", str(bundles["mf"]), "--token-file", str(tmp_path / "empty")]) == 2
    assert "must hold one token" in capsys.readouterr().err

    app = _app(bundles["mf"], host="0.0.0.0", token="s3cret-token")

    async def body():
        async with running(app) as client:
            anonymous = await client.post("/recommend", json={"users": [1]})
            wrong = await client.get("/model", headers={"Authorization": "Bearer nope"})
            good = await client.post(
                "/recommend", json={"users": [1]}, headers={"Authorization": "Bearer s3cret-token"}
            )
            probes = [await client.get(p) for p in ("/healthz", "/readyz", "/v2/health/ready")]
            metrics = await client.get("/metrics")
            return anonymous, wrong, good, probes, metrics

    anonymous, wrong, good, probes, metrics = run(body())
    assert anonymous.status_code == 401 and wrong.status_code == 401
    assert anonymous.headers["www-authenticate"] == "Bearer"
    assert "bearer token" in anonymous.json()["error"]
    assert good.status_code == 200
    assert [p.status_code for p in probes] == [200, 200, 200]
    assert metrics.status_code == 401


def test_metrics_name_routes_statuses_and_the_bundle(bundles):
    app = _app(bundles["mf"])
    version = app.state.server.model.version

    async def body():
        async with running(app) as client:
            await client.post("/recommend", json={"users": [1]})
            await client.post("/recommend", json={"users": [77]})
            await client.get("/v2/health/live")
            return (await client.get("/metrics")).text

    text = run(body())
    assert metric(text, "recsys_requests_total", route="/recommend", status="200") == 1
    assert metric(text, "recsys_requests_total", route="/recommend", status="404") == 1
    assert metric(text, "recsys_request_duration_seconds_count", route="/recommend") == 2
    assert metric(text, "recsys_bundle_info", version=version, kind="mf") == 1
    assert metric(text, "recsys_batch_size_count") == 2
    assert "recsys_queue_depth" in text and metric(text, "recsys_bundle_swaps_total") == 0
    if Path("/proc/self/stat").exists():  # prometheus-client reads them from /proc
        assert metric(text, "process_cpu_seconds_total") > 0  # one process: CPU, memory
        assert metric(text, "process_resident_memory_bytes") > 0


def test_a_bundle_that_cannot_be_served_fails_before_binding(bundles, tmp_path, capsys):
    bad = copy_bundle(bundles["mf"], tmp_path / "bad")
    users = bad / "ids" / "users.json"
    users.write_bytes(users.read_bytes().replace(b"0", b"9", 1))
    assert main(["serve", str(bad), "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "checksum mismatch" in err
