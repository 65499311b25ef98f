"""Serve benchmark: ``recsys-export serve`` under load, beside the in-process ceiling.

    python benchmarks/serve_bench.py                    # full: ~4 minutes, 2 cores
    python benchmarks/serve_bench.py --preset smoke     # seconds (the test runs it)

Scenarios (single-user top-10 requests, raw ids, seen items excluded):

1. ``ml``: MF trained on MovieLens latest-small (610 x 9,724): closed loop with 64
   connections (Python asyncio generator, and ``wrk`` when installed); open loop at
   1,000 requests/s (the C generator ``openloop.c`` when a compiler is installed, else
   asyncio); beside them, as references, ``GET /healthz`` (no engine, no
   batching: the HTTP path alone) through the same generators in the same minute.
2. ``mf100k``: a synthetic MF of 100k users x 20k items: closed loop, default dynamic
   batching against ``--max-batch 1`` and against ``--workers 2 --concurrency 0``
   (interleaved rounds, the median run); beside them the in-process ceiling of the
   same requests through ``Recommender.recommend``, one call per request and batched.
3. ``overload``: open loop at 2x the batched closed-loop rate, deadline 500 ms, 2,048
   connections: every request must be answered (200 or 503) within it, measured from its
   send by the generator and by the server's own histogram, and the generator must have
   offered the rate (sent at least 95% of it); the server's RSS sampled. The same for
   ``--workers 2 --concurrency 0`` at 2x its own closed-loop rate.
4. ``hotswap``: the two ML models alternately committed to the served path (the
   exporter's atomic exchange) 20 times during a 60 s closed loop; every response
   is checked: status, header version = body version, rows = that version's answer.

Server and generator share the machine's cores: compare ratios within one run. Each
load row says how many cores the server used (every thread and worker process) and how
many the machine left idle meanwhile: one process idling a core while its requests wait
is bound by the GIL, not by the cores. Prints a progress line per load on stderr, then
a table, then every target of the issue beside its same-run reference, and writes JSON
(``--json``, default ``runs/serve_bench/serve_bench.json``). ``--server-root DIR`` runs
the server from another checkout (e.g. the previous commit's, for a before/after with
the same harness; rows its server has no options for are left out). Loopback only;
every loop is bounded in time and count.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from serve_load import (  # noqa: E402
    build_openloop,
    c_open_loop,
    closed_loop,
    open_loop,
    wrk_closed_loop,
)
from serve_report import median_of, median_run, ratios, sweep_table, table  # noqa: E402

from recsys_export.runtime import Recommender  # noqa: E402
from recsys_export.serve.engine import manifest_version  # noqa: E402

PRESETS = {
    "full": {"seconds": 10.0, "swap_seconds": 60.0, "swaps": 20, "big": (100_000, 20_000)},
    "smoke": {"seconds": 1.0, "swap_seconds": 4.0, "swaps": 3, "big": (2_000, 1_000)},
}
HOST = "127.0.0.1"
#: Where ``python -m recsys_export.cli serve`` runs (``--server-root``).
SERVER_ROOT = ROOT
#: The options of the 2-worker rows: each worker runs its engine calls on its own loop.
WORKERS_2 = ("--workers", "2", "--concurrency", "0")
#: The C open-loop generator (benchmarks/openloop.c), built in main; None: asyncio's.
OPENLOOP: Path | None = None
#: The kernel's clock ticks per second (``/proc`` CPU times are in ticks).
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
#: Connections of the overload runs: at 2x the rate, up to this many requests in flight.
OVERLOAD_CONNECTIONS = 2048


#: When this run started (progress lines say seconds since).
_T0 = time.perf_counter()


def progress(message: str) -> None:
    """One progress line on stderr (the table goes to stdout at the end)."""
    print(f"serve_bench {time.perf_counter() - _T0:6.0f} s: {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------- bundles
def _run(cmd: list[str]) -> None:
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)


def ml_bundle(out: Path, seed: int, smoke: bool) -> Path:
    """MF trained on the bundled MovieLens latest-small, exported (cached in ``out``)."""
    name = f"ml-mf-{seed}" + ("-smoke" if smoke else "")
    bundle = out / name
    if not (bundle / "manifest.json").exists():
        ckpt = out / f"{name}.pt"
        cli = [sys.executable, "-m", "recsys_export.cli"]
        train = [*cli, "train", "movielens-small", "--model", "mf", "--seed", str(seed)]
        _run([*train, "--out", str(ckpt), *(["--epochs", "2"] if smoke else [])])
        _run([*cli, "export", str(ckpt), "--out", str(bundle), "--force", "-q"])
    return bundle


def big_bundle(out: Path, n_users: int, n_items: int) -> Path:
    """A synthetic MF bundle (64 factors, 20 seen items per user), cached."""
    bundle = out / f"mf-{n_users}x{n_items}"
    if not (bundle / "manifest.json").exists():
        code = (
            "import sys; from recsys_export.models.synthetic import synthetic_checkpoint as s; "
            "from recsys_export.export import export_bundle as e; "
            f"e(s('mf', {n_users}, {n_items}, factors=64, seen_per_user=20), sys.argv[1], "
            "formats='onnx', verify=False)"
        )
        _run([sys.executable, "-c", code, str(bundle)])
    return bundle


def commit_copy(src: Path, dest: Path) -> str:
    """Commit ``src``'s files to ``dest`` as ``export --force`` does; the new version."""
    from recsys_export.bundle import Bundle, BundleWriter

    bundle = Bundle.load(src, verify=False)
    manifest = bundle.manifest.without_generic_keys()
    manifest["id_maps"] = dict(bundle.id_maps)
    with BundleWriter(dest, overwrite=True) as writer:
        for rel, entry in bundle.files.items():
            os.link(bundle.file(rel), writer.add(rel, entry.role))
        writer.commit(manifest)
    return manifest_version(Bundle.load(dest, verify=False).manifest)


# ---------------------------------------------------------------------- server
class Server:
    """``recsys-export serve`` in a subprocess on an ephemeral loopback port."""

    def __init__(self, bundle: Path, *options: str) -> None:
        bundle = bundle.resolve()
        self.label = f"{bundle.name} {' '.join(options)}".strip()
        cmd = [sys.executable, "-m", "recsys_export.cli", "serve", str(bundle), "--port", "0"]
        self.proc = subprocess.Popen(
            [*cmd, "--log-level", "warning", *options],
            cwd=SERVER_ROOT,  # python -m imports the package from the working directory
            stdout=subprocess.PIPE,
            text=True,
        )
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        m = re.search(r"http://127\.0\.0\.1:(\d+)", line)
        if m is None:
            self.proc.kill()
            raise SystemExit(f"the server did not start: {line!r}")
        self.port = int(m.group(1))

    def pids(self) -> list[int]:
        """The server process and its worker processes."""
        pids = [self.proc.pid]
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        if children.exists():
            pids += [int(p) for p in children.read_text().split()]
        return pids

    def cpu_seconds(self) -> float:
        """CPU seconds (user + system, every thread) the server and its workers used."""
        total = 0
        for pid in self.pids():
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
            except (FileNotFoundError, ProcessLookupError):
                continue
            fields = stat[stat.rindex(")") + 2 :].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        return total / CLOCK_TICKS

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://{HOST}:{self.port}/metrics", timeout=30) as resp:
            return resp.read().decode()

    def rss_mb(self) -> float:
        """Resident memory of the server and its worker processes."""
        total = 0.0
        for pid in self.pids():
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except FileNotFoundError:
                continue
            total += int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) / 1024
        return total

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def idle_seconds() -> float:
    """The machine's idle CPU seconds so far (all cores; ``/proc/stat``)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    return (int(fields[4]) + int(fields[5])) / CLOCK_TICKS  # idle, iowait


def batch_histogram(before: str, after: str) -> dict[str, int]:
    """Engine calls per batch-size bucket between two /metrics texts (non-cumulative)."""

    def buckets(text: str) -> list[tuple[float, float]]:
        pat = r'recsys_batch_size_bucket\{le="([^"]+)"\} (\S+)'
        return [(float(le), float(v)) for le, v in re.findall(pat, text)]

    b0, b1 = dict(buckets(before)), buckets(after)
    out, prev = {}, 0.0
    for le, total in b1:
        count = total - b0.get(le, 0.0)
        if count - prev > 0:
            out["<=" + (f"{le:g}" if le != float("inf") else "inf")] = int(count - prev)
        prev = count
    return out


def bodies_for(bundle: Path, n: int = 1000, seed: int = 0) -> tuple[list[bytes], list[Any]]:
    rec = Recommender.load(bundle, verify=False)
    users = np.random.default_rng(seed).choice(rec.user_map.raw_ids, n).tolist()
    return [json.dumps({"users": [str(u)], "k": 10}).encode() for u in users], users


async def served(
    server: Server,
    bodies,
    *,
    seconds: float,
    rate: float | None = None,
    connections: int = 256,
    generator: str = "wrk",
    path: str = "/recommend",
) -> dict:
    """One load run; ``generator`` ``wrk`` (closed loop, when installed) or ``python``;
    an open loop (``rate``) runs the C generator when it was built (:data:`OPENLOOP`).

    ``path`` other than ``/recommend``: GET requests (``bodies`` ignored).
    """
    get = path != "/recommend"
    if rate is None:
        by = "wrk" if generator == "wrk" and shutil.which("wrk") else "python"
        load = f"closed loop, 64 connections ({by})"
    else:
        load = f"open loop at {rate:,.0f}/s ({'C' if OPENLOOP else 'python'})"
    progress(f"{load}, {'GET ' if get else 'POST '}{path}, {seconds:.0f} s on {server.label}")
    before = server.metrics()
    cpu0, idle0, t0 = server.cpu_seconds(), idle_seconds(), time.perf_counter()
    out = None
    if rate is None and generator == "wrk":
        out = wrk_closed_loop(
            HOST, server.port, [] if get else bodies, connections=64, seconds=seconds, path=path
        )
        if out is not None:
            out["generator"] = "wrk"
    if out is None and rate is None:
        res = await closed_loop(HOST, server.port, bodies, connections=64, seconds=seconds)
        out = {**res.summary(), "generator": "python"}
    elif out is None and OPENLOOP is not None:
        out = c_open_loop(
            OPENLOOP, HOST, server.port, [] if get else bodies, rate=rate, seconds=seconds,
            connections=connections, path=path,
        )  # fmt: skip
        out["generator"] = "c"
    elif out is None:
        res = await open_loop(
            HOST, server.port, [None] if get else bodies, rate=rate, seconds=seconds,
            connections=connections, path=path,
        )  # fmt: skip
        out = {**res.summary(), "generator": "python"}
    wall = time.perf_counter() - t0
    out["server_cores"] = (server.cpu_seconds() - cpu0) / wall
    out["idle_cores"] = (idle_seconds() - idle0) / wall
    text = server.metrics()
    out["batch_sizes"] = batch_histogram(before, text)
    out["server_over_500ms"] = slow_requests(before, text, 0.5)
    out["server_over_1s"] = slow_requests(before, text, 1.0)
    out["rejected"] = rejected(before, text)
    return out


def rejected(before: str, after: str) -> dict[str, int]:
    """503s by reason between two /metrics texts."""

    def counts(text: str) -> dict[str, float]:
        pat = r'recsys_rejected_total\{reason="([^"]+)"\} (\S+)'
        return {reason: float(v) for reason, v in re.findall(pat, text)}

    c0, c1 = counts(before), counts(after)
    return {
        reason: int(v - c0.get(reason, 0.0)) for reason, v in c1.items() if v > c0.get(reason, 0)
    }


def slow_requests(before: str, after: str, seconds: float) -> int:
    """Requests the server itself took longer than ``seconds`` to answer (its histogram)."""

    def counts(text: str) -> tuple[float, float]:
        pat = r'recsys_request_duration_seconds_bucket\{le="([^"]+)",route="/recommend"\} (\S+)'
        found = {le: float(v) for le, v in re.findall(pat, text)}
        return found.get(f"{seconds}", 0.0), found.get("+Inf", 0.0)

    (w0, t0), (w1, t1) = counts(before), counts(after)
    return int((t1 - t0) - (w1 - w0))


# ---------------------------------------------------------------------- ceilings
def ceiling(bundle: Path, users: list[Any], batch: int, seconds: float) -> dict:
    """The same requests through Recommender.recommend in this process."""
    progress(f"in-process ceiling, {batch} per call, {seconds:.0f} s on {bundle.name}")
    rec = Recommender.load(bundle, verify=False)
    for u in users[:50]:
        rec.recommend([u], k=10)
    done, t0, i = 0, time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        chunk = [users[(i + j) % len(users)] for j in range(batch)]
        rec.recommend(chunk, k=10)
        i += batch
        done += batch
    elapsed = time.perf_counter() - t0
    return {"requests": done, "req_per_s": done / elapsed, "batch": batch}


# ---------------------------------------------------------------------- scenarios
async def scenario_ml(bundle: Path, seconds: float) -> dict:
    """Closed and open loop on /recommend, each beside GET /healthz the same way."""
    bodies, _ = bodies_for(bundle)
    server = Server(bundle)
    out: dict[str, Any] = {}
    try:
        health = await served(server, bodies, seconds=seconds, path="/healthz")
        if health["generator"] == "wrk":
            out["healthz_wrk"] = health
        out["closed_64"] = await served(server, bodies, seconds=seconds, generator="python")
        wrk = await served(server, bodies, seconds=seconds)
        if wrk["generator"] == "wrk":
            out["closed_64_wrk"] = wrk
        out["healthz_open_1000"] = await served(
            server, bodies, seconds=seconds, rate=1000.0, path="/healthz"
        )
        out["open_1000"] = await served(server, bodies, seconds=seconds, rate=1000.0)
    finally:
        server.stop()
    return out


def has_workers() -> bool:
    """Whether the server at SERVER_ROOT has ``--workers`` (the previous main has not)."""
    cmd = [sys.executable, "-m", "recsys_export.cli", "serve", "--help"]
    done = subprocess.run(cmd, cwd=SERVER_ROOT, capture_output=True, text=True, timeout=120)
    return "--workers" in done.stdout


async def scenario_big(bundle: Path, seconds: float, rounds: int) -> dict:
    """Batched against --max-batch 1 and 2 workers in ``rounds`` interleaved rounds (each
    row: the run with the median req/s; every round's req/s beside it), then overload,
    then ceilings."""
    bodies, users = bodies_for(bundle)
    configs: list[tuple[str, tuple[str, ...]]] = [
        ("batched", ()),
        ("batch_1", ("--max-batch", "1")),
    ]
    if has_workers():
        configs.append(("workers_2", WORKERS_2))
    runs: dict[str, list[dict]] = {name: [] for name, _ in configs}
    for _ in range(rounds):
        for name, options in configs:
            server = Server(bundle, *options)
            try:
                runs[name].append(await served(server, bodies, seconds=seconds))
            finally:
                server.stop()
    out: dict[str, Any] = {name: median_run(r) for name, r in runs.items()}
    out["overload"] = await overload(bundle, bodies, 2 * out["batched"]["req_per_s"], seconds)
    if "workers_2" in out:
        rate = 2 * out["workers_2"]["req_per_s"]
        out["overload_workers_2"] = await overload(bundle, bodies, rate, seconds, *WORKERS_2)
    out["ceiling_1"] = ceiling(bundle, users, 1, seconds)
    out["ceiling_64"] = ceiling(bundle, users, 64, seconds)
    return out


async def overload(bundle: Path, bodies, rate: float, seconds: float, *options: str) -> dict:
    server = Server(bundle, "--deadline-ms", "500", *options)
    # RSS every 0.25 s; "start" is the sample 1 s in, once every worker process is up and
    # the generator's connections are open (the first samples may miss the workers)
    rss, stop = [server.rss_mb()], threading.Event()

    def sample() -> None:
        while not stop.wait(0.25):
            rss.append(server.rss_mb())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        out = await served(
            server, bodies, seconds=seconds, rate=rate, connections=OVERLOAD_CONNECTIONS
        )
    finally:
        stop.set()
        sampler.join()
        server.stop()
    out.update(
        offered_per_s=rate, deadline_ms=500, rss_start_mb=rss[min(4, len(rss) - 1)],
        rss_peak_mb=max(rss),
        rss_end_mb=rss[-1], rss_mb_every_second=[round(v, 1) for v in rss[::4]],
        server_over_deadline=out["server_over_500ms"],
    )  # fmt: skip
    return out


async def scenario_hotswap(a: Path, b: Path, out_dir: Path, seconds: float, swaps: int) -> dict:
    bodies, users = bodies_for(a, n=200)
    expected = {}
    for src in (a, b):
        rec = Recommender.load(src, verify=False)
        res = rec.recommend(users, k=10)
        expected[src] = [[str(i) for i in row] for row in res.items.tolist()]
    progress(f"hot swap: {swaps} swaps during a {seconds:.0f} s closed loop")
    served_path = out_dir / "hotswap-served"
    versions = {commit_copy(a, served_path): a}
    server = Server(served_path, "--watch-interval", "0.05")

    def check(version: str, i: int, doc: dict) -> bool:
        src = versions.get(version)
        return src is not None and [str(x) for x in doc["results"][0]["items"]] == expected[src][i]

    async def swapper() -> None:
        start = time.perf_counter()
        for s in range(swaps):  # at fixed times, all within the load (the last at 95%)
            await asyncio.sleep(
                max(0.0, start + seconds * (s + 1) / (swaps + 1.05) - time.perf_counter())
            )
            src = b if s % 2 == 0 else a
            version = await asyncio.to_thread(commit_copy, src, served_path)
            versions[version] = src

    try:
        load = closed_loop(HOST, server.port, bodies, connections=16, seconds=seconds, check=check)
        res, _ = await asyncio.gather(load, swapper())
        text = server.metrics()
    finally:
        server.stop()
    out = res.summary()
    swapped = re.search(r'recsys_bundle_swaps_total\{outcome="swapped"\} (\S+)', text)
    out.update(
        swaps=swaps, swaps_seen_by_server=int(float(swapped.group(1))) if swapped else 0,
        versions_served=len(res.versions), mixed=res.mixed, wrong=res.wrong,
    )  # fmt: skip
    return out


#: ``--sweep``: the batching knobs one at a time around the defaults (big MF, closed loop).
SWEEP = [
    ("defaults", ()),
    ("max-batch 16", ("--max-batch", "16")),
    ("max-batch 256", ("--max-batch", "256")),
    ("max-delay-us 300", ("--max-delay-us", "300")),
    ("max-delay-us 2000", ("--max-delay-us", "2000")),
    ("concurrency 1", ("--concurrency", "1")),
    ("concurrency 1, delay 300", ("--concurrency", "1", "--max-delay-us", "300")),
    ("concurrency 2 (the defaults again)", ("--concurrency", "2")),
    ("threads 2", ("--threads", "2")),
]


async def sweep(bundle: Path, seconds: float, rounds: int) -> dict:
    """Closed loop (64 connections) per setting of :data:`SWEEP`, and open loop at 1,000/s;
    ``rounds`` interleaved rounds, the median of each number (the machine is shared)."""
    bodies, _ = bodies_for(bundle)
    runs: dict[str, list[dict]] = {name: [] for name, _ in SWEEP}
    for _ in range(rounds):
        for name, options in SWEEP:
            server = Server(bundle, *options)
            try:
                closed = await served(server, bodies, seconds=seconds)
                opened = await served(server, bodies, seconds=seconds, rate=1000.0)
                runs[name].append({"closed": closed, "open_1000": opened})
            finally:
                server.stop()
    return {name: {"rounds": r, **median_of(r)} for name, r in runs.items()}


async def main_async(args: argparse.Namespace) -> dict:
    preset = PRESETS[args.preset]
    out_dir = args.out
    out_dir.mkdir(parents=True, exist_ok=True)
    smoke = args.preset == "smoke"
    progress("the bundles (trained and exported once, then reused from --out)")
    a, b = ml_bundle(out_dir, 0, smoke), ml_bundle(out_dir, 1, smoke)
    big = big_bundle(out_dir, *preset["big"])
    secs = preset["seconds"]
    results: dict[str, Any] = {
        "preset": args.preset,
        "open_loop_generator": "c" if OPENLOOP else "python",
        "cpus": os.cpu_count(),
        "server_root": str(SERVER_ROOT),
        "loadavg_start": os.getloadavg(),
    }
    results["ml"] = await scenario_ml(a, secs)
    results["mf100k"] = await scenario_big(big, secs, args.rounds)
    results["hotswap"] = await scenario_hotswap(
        a, b, out_dir, preset["swap_seconds"], preset["swaps"]
    )
    results["ratios"] = ratios(results)
    results["loadavg_end"] = os.getloadavg()
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", choices=sorted(PRESETS), default="full")
    p.add_argument("--json", type=Path, help="where to write the results")
    out_help = "bundles (cached) and results (default runs/serve_bench)"
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "serve_bench", help=out_help)
    p.add_argument(
        "--sweep", action="store_true", help="only sweep the batching knobs on the big MF bundle"
    )
    p.add_argument(
        "--rounds", type=int, help="interleaved rounds of the compared settings (default 3)"
    )
    p.add_argument(
        "--server-root", type=Path, default=ROOT, help="checkout whose server runs (default: this)"
    )
    args = p.parse_args(argv)
    global SERVER_ROOT, OPENLOOP
    SERVER_ROOT = args.server_root.resolve()
    OPENLOOP = build_openloop(args.out)
    if args.rounds is None:
        args.rounds = 1 if args.preset == "smoke" else 3
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    if args.sweep:
        preset = PRESETS[args.preset]
        out_dir = args.out
        out_dir.mkdir(parents=True, exist_ok=True)
        big = big_bundle(out_dir, *preset["big"])
        results = runner(sweep(big, preset["seconds"], args.rounds))
        print(sweep_table(results))
    else:
        results = runner(main_async(args))
        print(table(results))
    name = "sweep.json" if args.sweep else "serve_bench.json"
    path = args.json or args.out / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
