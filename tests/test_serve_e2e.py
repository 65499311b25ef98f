"""One real server: ``recsys-export serve`` on uvicorn at 127.0.0.1 on an ephemeral
port, driven over HTTP by httpx and by the Open Inference Protocol's reference client
(``tritonclient.http``, unchanged). Loopback only; every loop is bounded.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from helpers.serving import ARTIFACTS, ROOT, copy_bundle, start_server

from recsys_export.cli import main
from recsys_export.runtime import Recommender
from recsys_export.serve.engine import manifest_version


def test_uvicorn_server_answers_http_and_tritonclient(tmp_path):
    bundle = copy_bundle(ARTIFACTS / "toy-mf", tmp_path / "mf")
    rec = Recommender.load(bundle)
    version = manifest_version(rec.manifest)
    with start_server(str(bundle), "--model-name", "toy") as (proc, url):
        assert url.startswith("http://127.0.0.1:")
        with httpx.Client(base_url=url, timeout=30) as client:
            assert client.get("/healthz").status_code == 200
            assert client.get("/readyz").json()["model_version"] == version
            resp = client.post("/recommend", json={"users": ["1", 2], "k": 2})
            assert resp.status_code == 200 and resp.headers["x-model-version"] == version
            want = rec.recommend([1, 2], k=2)
            got = resp.json()["results"]
            assert [r["items"] for r in got] == [
                [i for i in row if i is not None] for row in want.items.tolist()
            ]
            assert "recsys_requests_total" in client.get("/metrics").text

        triton_client = triton.InferenceServerClient(url=url.removeprefix("http://"))
        try:
            assert triton_client.is_server_live() and triton_client.is_server_ready()
            assert triton_client.is_model_ready("toy")
            meta = triton_client.get_model_metadata("toy")
            assert meta["versions"] == [version]
            assert [o["name"] for o in meta["outputs"]] == ["item_ids", "scores"]
            users = np.array([b"0", b"3", b"4"], dtype=object)
            tensor = triton.InferInput("user_ids", [3], "BYTES")
            tensor.set_data_from_numpy(users)
            result = triton_client.infer("toy", [tensor], parameters={"k": 3})
            want = rec.recommend([0, 3, 4], k=3)
            items = result.as_numpy("item_ids")
            np.testing.assert_array_equal(
                items, np.where(np.equal(want.items, None), -1, want.items).astype(np.int64)
            )
            np.testing.assert_allclose(result.as_numpy("scores"), want.scores, rtol=1e-6)
            assert result.get_response()["model_version"] == version
            with pytest.raises(triton.InferenceServerException, match="unknown user id"):
                bad = triton.InferInput("user_ids", [1], "INT64")
                bad.set_data_from_numpy(np.array([99], dtype=np.int64))
                triton_client.infer("toy", [bad])
        finally:
            triton_client.close()
    assert proc.returncode is not None


def _bash_blocks(page: Path) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", page.read_text(encoding="utf-8"), re.S)


def test_serving_doc_commands_run():
    """docs/serving.md's shell blocks, as written (each starts and stops its server)."""
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    blocks = _bash_blocks(ROOT / "docs" / "serving.md")
    assert len(blocks) == 3
    outputs = []
    for block in blocks:
        done = subprocess.run(
            ["bash", "-e", "-c", block], cwd=ROOT, env=env, capture_output=True, text=True,
            timeout=180,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]
        outputs.append(done.stdout)
    assert '"results":[{"user":1,"items":' in outputs[0] and '"kind":"mf"' in outputs[0]
    assert '{"ready":true}' in outputs[1] and "[[" in outputs[1]
    assert '"results":[{"user":1,"items":' in outputs[2] and "recsys_workers " in outputs[2]


def test_serve_without_the_serve_extra_names_it(tmp_path):
    """A runtime-only install (starlette, uvicorn, prometheus_client unimportable)."""
    code = (
        "import sys\n"
        "for name in ('starlette', 'uvicorn', 'prometheus_client'):\n"
        "    sys.modules[name] = None\n"
        "from recsys_export.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, "serve", str(ARTIFACTS / "toy-mf")],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "needs the 'serve' extra" in lines[0], done.stderr
    assert "pip install 'recsys-export[serve]'" in lines[0]


@pytest.mark.slow
def test_export_force_onto_the_served_path_is_picked_up_under_load(ml_checkpoints, tmp_path):
    """The real thing: ``recsys-export export --force`` over the bundle a server serves."""
    served = tmp_path / "served"
    assert main(["export", str(ml_checkpoints["mf"]), "--out", str(served), "-q"]) == 0
    old = manifest_version(Recommender.load(served).manifest)
    user = Recommender.load(served).user_map.raw_ids[0].item()
    with start_server(str(served), "--watch-interval", "0.1") as (_, url):
        stop, log = threading.Event(), []

        def load() -> None:
            with httpx.Client(base_url=url, timeout=30) as client:
                while not stop.is_set() and len(log) < 200_000:
                    resp = client.post("/recommend", json={"users": [user], "k": 5})
                    log.append((resp.status_code, resp.headers.get("x-model-version"), resp))

        worker = threading.Thread(target=load)
        worker.start()
        try:
            argv = ["export", str(ml_checkpoints["densenet"]), "--out", str(served)]
            assert main([*argv, "--force", "-q"]) == 0
            new = manifest_version(Recommender.load(served).manifest)
            deadline = time.monotonic() + 60
            with httpx.Client(base_url=url, timeout=30) as client:
                while client.get("/model").json()["version"] != new:
                    assert time.monotonic() < deadline, "the server never swapped"
                    time.sleep(0.05)
            seen_new = len(log)
            while len(log) < seen_new + 20:  # more answers from the new bundle
                assert time.monotonic() < deadline and worker.is_alive()
                time.sleep(0.01)
        finally:
            stop.set()
            worker.join(60)
    assert {status for status, _, _ in log} == {200}
    assert {version for _, version, _ in log} == {old, new}
    assert all(resp.json()["model_version"] == version for _, version, resp in log)


@pytest.mark.slow
def test_serve_bench_smoke(tmp_path):
    """benchmarks/serve_bench.py runs end to end (tiny sizes) and writes complete JSON."""
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, "benchmarks/serve_bench.py", "--preset", "smoke", "--out", str(tmp_path),
         "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "in-process, 64 per call" in done.stdout and "ratios:" in done.stdout
    progress = [line for line in done.stderr.splitlines() if line.startswith("serve_bench ")]
    assert len(progress) >= 10 and "hot swap" in progress[-1]  # a line per load, on stderr

    results = json.loads(out.read_text())
    for row in (results["ml"]["closed_64"], results["ml"]["open_1000"], results["hotswap"]):
        assert row["errors"] == 0 and row["requests"] > 0
    assert results["hotswap"]["mixed"] == results["hotswap"]["wrong"] == 0
    assert results["hotswap"]["versions_served"] >= 2
    assert set(results["ratios"]) >= {"batching_speedup", "served_over_batched_ceiling"}
    overload = results["mf100k"]["overload"]
    assert sum(overload["status"].values()) == overload["requests"]
    assert set(overload["status"]) <= {"200", "503"}
    assert overload["sent_per_s"] > 0 and overload["offered_per_s"] > 0
    if shutil.which("cc") or shutil.which("gcc"):  # the open loop ran in C (openloop.c)
        assert results["open_loop_generator"] == "c"
        assert overload["generator"] == results["ml"]["open_1000"]["generator"] == "c"
        assert overload["unanswered"] == 0 and overload["connections"] == 2048


def test_serve_inprocess_bench_runs(tmp_path):
    """benchmarks/serve_inprocess.py: the app's own CPU per request, without HTTP."""
    out = tmp_path / "inprocess.json"
    done = subprocess.run(
        [sys.executable, "benchmarks/serve_inprocess.py", str(ARTIFACTS / "toy-mf"),
         "--requests", "300", "--callers", "8", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["requests"] == 300 and result["callers"] == 8
    assert result["k"] == 4  # toy-mf has 4 items: k=10 is capped, every answer a 200
    assert result["cpu_us_per_request"] >= result["loop_thread_us_per_request"] > 0


def test_serve_bench_counts_a_503_outside_overload_as_a_failed_request():
    """The targets' 'failed': a 503 in the closed, open or hot-swap load fails the target
    (the Python generator reports 503s apart from its errors; wrk among them)."""
    spec = importlib.util.spec_from_file_location(
        "serve_report", ROOT / "benchmarks" / "serve_report.py"
    )
    report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(report)
    assert report.failed({"errors": 1, "status": {"200": 40, "503": 2}}) == 3
    assert report.failed({"errors": 0, "status": {"200": 40}}) == 0
    assert report.failed({"errors": 3, "status": {"non-2xx/3xx": 3}}) == 3  # wrk
