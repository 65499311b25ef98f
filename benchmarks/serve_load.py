"""Bounded HTTP load generators for serve_bench.py (loopback only).

* :func:`closed_loop`: N keep-alive connections, each sending its next request when the
  previous answer arrived, for a fixed time.
* :func:`open_loop`: requests scheduled at a fixed rate (arrival i at ``t0 + i/rate``),
  latency measured from the *scheduled* time, so a slow server cannot hide its queue
  (no coordinated omission); a pool of connections carries them.
* :func:`wrk_closed_loop`: the same closed loop with ``wrk`` when it is installed (a C
  generator leaves more of the 2 cores to the server).
* :func:`c_open_loop`: the open loop in C (``openloop.c`` beside this file, built with the
  system's C compiler when there is one): a few microseconds of the shared cores per
  request where the asyncio generator costs tens, so it can offer twice the server's
  rate, which the asyncio one cannot on 2 cores.

The Python generators speak HTTP/1.1 over asyncio streams directly (uvloop when there):
an HTTP client library's per-request overhead would cap the generator before the server.
Every loop stops by itself (time and count bounds).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

_ALLOWED_HOSTS = ("127.0.0.1", "localhost", "::1")


@dataclass
class LoadResult:
    """Latencies (seconds) and outcomes of one load run."""

    seconds: float
    latencies: list[float] = field(default_factory=list)
    service: list[float] = field(default_factory=list)  # from the send, not the schedule
    statuses: Counter = field(default_factory=Counter)
    errors: int = 0  # connection errors and non-200/503 statuses
    versions: Counter = field(default_factory=Counter)
    mixed: int = 0  # header version != body version
    wrong: int = 0  # body differs from what that version must answer
    sends: list[float] = field(default_factory=list)  # when each request was sent
    lag: list[float] = field(default_factory=list)  # how late the generator's own loop ran

    def summary(self) -> dict[str, Any]:
        lat = np.asarray(self.latencies) * 1e3
        n = len(lat)
        pct = (lambda q: float(np.percentile(lat, q))) if n else (lambda q: float("nan"))
        span = max(self.sends) - min(self.sends) if len(self.sends) > 1 else 0.0
        extra: dict[str, float] = {"sent_per_s": (len(self.sends) - 1) / span} if span else {}
        if self.lag:
            extra["generator_lag_p99_ms"] = float(np.percentile(self.lag, 99)) * 1e3
            extra["generator_lag_max_ms"] = max(self.lag) * 1e3
        return {
            "requests": n,
            "req_per_s": n / self.seconds if self.seconds else 0.0,
            "p50_ms": pct(50),
            "p99_ms": pct(99),
            "p999_ms": pct(99.9),
            "max_ms": float(lat.max()) if n else float("nan"),
            "max_service_ms": max(self.service) * 1e3 if self.service else float("nan"),
            "status": {str(k): v for k, v in sorted(self.statuses.items())},
            "errors": self.errors,
            **extra,
        }


def _request(path: str, body: bytes | None) -> bytes:
    """A POST of ``body``, or a GET when it is None."""
    if body is None:
        return f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def _exchange(reader, writer, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    writer.write(raw)
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return status, headers, body


def _check_host(host: str) -> None:
    if host not in _ALLOWED_HOSTS:
        raise SystemExit(f"load generators only target loopback, not {host}")


async def closed_loop(
    host: str,
    port: int,
    bodies: list[bytes],
    *,
    connections: int,
    seconds: float,
    path: str = "/recommend",
    check: Any = None,
) -> LoadResult:
    """``connections`` clients, each back to back, for ``seconds``."""
    _check_host(host)
    raws = [_request(path, b) for b in bodies]
    result = LoadResult(seconds)
    stop_at = time.perf_counter() + seconds

    async def client(offset: int) -> None:
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError:
            result.errors += 1
            return
        i = offset
        while time.perf_counter() < stop_at:
            raw = raws[i % len(raws)]
            t0 = time.perf_counter()
            try:
                status, headers, body = await _exchange(reader, writer, raw)
            except (OSError, asyncio.IncompleteReadError):
                result.errors += 1
                break
            result.latencies.append(time.perf_counter() - t0)
            _account(result, status, headers, body, i % len(raws), check)
            i += connections
        writer.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(client(j) for j in range(connections)))
    result.seconds = time.perf_counter() - t0
    return result


async def open_loop(
    host: str,
    port: int,
    bodies: list[bytes | None],
    *,
    rate: float,
    seconds: float,
    connections: int = 256,
    path: str = "/recommend",
) -> LoadResult:
    """Requests at ``rate`` per second for ``seconds`` (latency from the scheduled time).

    Every connection is open before the first request is due; ``sent_per_s`` in the
    summary is the rate the requests actually left at (below ``rate`` when the
    generator itself cannot keep up), and ``generator_lag_*_ms`` how late the
    generator's own event loop ran (a busy generator notices answers late: that much
    of a measured latency may be its own).
    """
    _check_host(host)
    raws = [_request(path, b) for b in bodies]
    total = int(rate * seconds)
    result = LoadResult(seconds)
    clock = time.perf_counter  # not loop.time(): uvloop's clock ticks in milliseconds
    counter = iter(range(total))
    conns = []
    for _ in range(connections):  # every connection open before the first send
        try:
            conns.append(await asyncio.open_connection(host, port))
        except OSError:
            result.errors += 1
    t0 = clock() + 0.05

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for i in counter:
            when = t0 + i / rate
            delay = when - clock()
            if delay > 0:
                await asyncio.sleep(delay)
            sent = clock()
            result.sends.append(sent)
            try:
                status, headers, body = await _exchange(reader, writer, raws[i % len(raws)])
            except (OSError, asyncio.IncompleteReadError):
                result.errors += 1
                break
            done = clock()
            result.latencies.append(done - when)
            result.service.append(done - sent)
            _account(result, status, headers, body, i, None)
        writer.close()

    async def ticker() -> None:  # the generator's own lateness: it inflates its latencies
        due = clock()
        while not done.is_set():
            due += 0.01
            await asyncio.sleep(max(0.0, due - clock()))
            result.lag.append(max(0.0, clock() - due))

    done = asyncio.Event()
    tick = asyncio.ensure_future(ticker())
    await asyncio.gather(*(client(r, w) for r, w in conns))
    done.set()
    await tick
    result.seconds = seconds
    return result


def _account(result: LoadResult, status: int, headers: dict, body: bytes, i: int, check) -> None:
    result.statuses[status] += 1
    if status not in (200, 503):
        result.errors += 1
    version = headers.get("x-model-version")
    if version is not None:
        result.versions[version] += 1
    if check is not None and status == 200:
        doc = json.loads(body)
        if doc.get("model_version") != version:
            result.mixed += 1
        elif not check(version, i, doc):
            result.wrong += 1


_WRK_LUA = """
local bodies = {}
for line in io.lines("%s") do bodies[#bodies + 1] = line end
local i = 0
request = function()
  i = i + 1
  if #bodies == 0 then return wrk.format("GET", "%s") end
  return wrk.format("POST", "%s", {["Content-Type"] = "application/json"},
                    bodies[(i %% #bodies) + 1])
end
done = function(summary, latency, requests)
  io.write(string.format("RESULT %%d %%d %%d %%d %%f %%f %%f %%f\\n", summary.requests,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    summary.errors.status, summary.duration, latency:percentile(50), latency:percentile(99),
    latency:percentile(99.9), latency.max))
end
"""


def wrk_closed_loop(
    host: str,
    port: int,
    bodies: list[bytes],
    *,
    connections: int,
    seconds: float,
    path: str = "/recommend",
) -> dict[str, Any] | None:
    """The closed loop with ``wrk`` (None when wrk is not installed); GETs without bodies."""
    _check_host(host)
    wrk = shutil.which("wrk")
    if wrk is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        lines = Path(tmp) / "bodies.txt"
        lines.write_bytes(b"".join(body + b"\n" for body in bodies))
        script = Path(tmp) / "post.lua"
        script.write_text(_WRK_LUA % (lines, path, path))
        cmd = [wrk, "-t2", f"-c{connections}", f"-d{int(seconds)}s", "-s", str(script)]
        out = subprocess.run(
            [*cmd, f"http://{host}:{port}"], capture_output=True, text=True, timeout=seconds + 60
        ).stdout
    m = re.search(r"RESULT (\d+) (\d+) (\d+) (\d+) (\S+) (\S+) (\S+) (\S+)", out)
    if m is None:
        return None
    n, errors, bad_status, micros = (int(m.group(i)) for i in range(1, 5))
    p50, p99, p999, worst = (float(m.group(i)) / 1e3 for i in range(5, 9))
    return {
        "requests": n,
        "req_per_s": n / (micros / 1e6),
        "p50_ms": p50,
        "p99_ms": p99,
        "p999_ms": p999,
        "max_ms": worst,
        "status": {"non-2xx/3xx": bad_status},
        "errors": errors + bad_status,
    }


_OPENLOOP_C = Path(__file__).resolve().with_name("openloop.c")


def build_openloop(out_dir: Path) -> Path | None:
    """``openloop.c`` compiled into ``out_dir`` (rebuilt when the source is newer); None
    without a C compiler."""
    cc = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if cc is None:
        return None
    binary = out_dir / "openloop"
    if not binary.exists() or binary.stat().st_mtime < _OPENLOOP_C.stat().st_mtime:
        out_dir.mkdir(parents=True, exist_ok=True)
        tmp = out_dir / f"openloop.{os.getpid()}.tmp"
        subprocess.run([cc, "-O2", "-o", str(tmp), str(_OPENLOOP_C)], check=True, timeout=120)
        os.replace(tmp, binary)
    return binary


def c_open_loop(
    binary: Path,
    host: str,
    port: int,
    bodies: list[bytes],
    *,
    rate: float,
    seconds: float,
    connections: int,
    path: str = "/recommend",
    warm_path: str = "/healthz",
) -> dict[str, Any]:
    """:func:`open_loop` in C: the same summary (latency from the scheduled time).

    Every connection is opened, and answers one GET of ``warm_path``, before the first
    request is due. A request never answered (connection error, or no answer 10 s after
    the last was due) counts among ``errors``; ``unanswered`` says how many.
    """
    _check_host(host)
    with tempfile.TemporaryDirectory() as tmp:
        lines = Path(tmp) / "bodies.txt"
        lines.write_bytes(b"".join(body + b"\n" for body in bodies))
        out = Path(tmp) / "requests.txt"
        cmd = [str(binary), host, str(port), f"{rate:.3f}", f"{seconds:.3f}", str(connections),
               str(lines), path, str(out), warm_path]  # fmt: skip
        subprocess.run(cmd, check=True, timeout=seconds + 120, capture_output=True)
        rows = np.loadtxt(out, dtype=np.int64, ndmin=2)
    due, sent, done, status = rows.T
    answered = done > 0
    result = LoadResult(seconds)
    result.latencies = ((done[answered] - due[answered]) / 1e6).tolist()
    result.service = ((done[answered] - sent[answered]) / 1e6).tolist()
    result.sends = (sent[sent >= 0] / 1e6).tolist()
    result.statuses = Counter(status[answered].tolist())
    unanswered = int(len(rows) - answered.sum())
    result.errors = unanswered + sum(v for k, v in result.statuses.items() if k not in (200, 503))
    return {**result.summary(), "unanswered": unanswered, "connections": connections}
