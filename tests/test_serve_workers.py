"""Real servers on loopback: ``serve --workers N`` (several processes on one socket, one
``/metrics`` for all, hot swap in each), and uvicorn's responses written in one piece
(HEAD, ``Expect: 100-continue``, keep-alive). Waiting is bounded polling, never sleeps.
"""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import time
from urllib.parse import urlsplit

import pytest
from helpers.serving import ARTIFACTS, copy_bundle, metric, start_server, swap_in

from recsys_export.cli import main
from recsys_export.runtime import Recommender
from recsys_export.serve.engine import manifest_version


def _get(url: str, path: str, body: bytes | None = None) -> tuple[int, dict, bytes]:
    """One request on a new connection (the workers share the accepting socket)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        conn.request("POST" if body is not None else "GET", path, body=body)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def _poll(check, what: str, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _metrics(url: str) -> str:
    return _get(url, "/metrics")[2].decode()


def test_workers_serve_one_port_aggregate_metrics_and_swap_each(tmp_path):
    served = copy_bundle(ARTIFACTS / "toy-mf", tmp_path / "served")
    old = manifest_version(Recommender.load(served).manifest)
    new_src = ARTIFACTS / "toy-densenet"
    new = manifest_version(Recommender.load(new_src).manifest)
    args = (str(served), "--workers", "2", "--watch-interval", "0.05")
    with start_server(*args) as (proc, url):
        _poll(lambda: metric(_metrics(url), "recsys_workers") == 2, "two workers serving")
        workers = subprocess.run(
            ["pgrep", "-P", str(proc.pid), "-f", "multiprocessing"], capture_output=True, text=True
        ).stdout.split()
        assert len(workers) >= 2  # the two workers (and the spawn resource tracker)
        body = json.dumps({"users": [1], "k": 2}).encode()
        n = 24
        for _ in range(n):
            status, headers, _ = _get(url, "/recommend", body)
            assert status == 200 and headers["x-model-version"] == old
        # any worker's /metrics counts every worker's requests
        text = _metrics(url)
        assert metric(text, "recsys_requests_total", route="/recommend", status="200") == n
        assert metric(text, "recsys_bundle_info", version=old, kind="mf") == 1
        assert "process_cpu_seconds_total" not in text  # one worker's would read as the server's

        swap_in(new_src, served)  # as export --force does
        _poll(
            lambda: (lambda t: metric(t, "recsys_bundle_info", version=new) == 1
                     and metric(t, "recsys_bundle_info", version=old) == 0)(_metrics(url)),
            "both workers on the new bundle",
        )  # fmt: skip
        for _ in range(8):
            status, headers, raw = _get(url, "/recommend", body)
            assert status == 200 and headers["x-model-version"] == new
            assert json.loads(raw)["model_version"] == new
        assert metric(_metrics(url), "recsys_bundle_swaps_total", outcome="swapped") == 2
    assert proc.returncode == 0  # SIGTERM: every worker stopped gracefully


def test_responses_are_complete_for_head_expect_continue_and_keep_alive(tmp_path):
    bundle = copy_bundle(ARTIFACTS / "toy-mf", tmp_path / "mf")
    with start_server(str(bundle)) as (_, url):
        parts = urlsplit(url)
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
        conn.request("HEAD", "/healthz")  # a head without a body: written at once
        head = conn.getresponse()
        assert head.status == 200 and head.read() == b""
        for _ in range(3):  # the same connection, kept alive
            conn.request("POST", "/recommend", body=b'{"users": [1], "k": 2}')
            resp = conn.getresponse()
            assert resp.status == 200 and json.loads(resp.read())["results"][0]["user"] == 1
        conn.close()

        body = b'{"users": [2], "k": 1}'
        with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
            sock.sendall(
                b"POST /recommend HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\n"
                b"Content-Length: %d\r\n\r\n" % len(body)
            )
            interim = sock.recv(4096)  # the interim answer comes before the body is sent
            assert interim.startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
            sock.sendall(body)
            answer = b""
            while b'"results"' not in answer or not answer.endswith(b"}"):
                chunk = sock.recv(65536)
                assert chunk, answer
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 200 OK\r\n")


def test_workers_is_for_the_embedded_server(tmp_path, capsys):
    bundle = str(ARTIFACTS / "toy-mf")
    assert main(["serve", bundle, "--workers", "2", "--ray"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--replicas" in err
    assert main(["serve", bundle, "--workers", "0"]) == 2
    assert "--workers" in capsys.readouterr().err


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_bundle_that_cannot_be_served_fails_before_binding(tmp_path, capsys, workers):
    bad = copy_bundle(ARTIFACTS / "toy-mf", tmp_path / "bad")
    users = bad / "ids" / "users.json"
    users.write_bytes(users.read_bytes().replace(b"0", b"9", 1))
    assert main(["serve", str(bad), "--port", "0", "--workers", workers]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "checksum mismatch" in err
