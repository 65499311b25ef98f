"""Load test of the torch-free runtime: many threads, one shared ``Recommender``.

Usage::

    python benchmarks/load_test.py [--seconds 60] [--threads 8] [--users 5000]
        [--items 2000] [--factors 32] [--seen 20] [--pool 3000] [--seed 0]
        [--bundle DIR] [--intra-op-threads N] [--json OUT]

A synthetic biased MF model (``--users`` x ``--items``, ``--seen`` random rated items
per user) is exported to an ONNX bundle in a child process (torch never enters this
process, so the RSS below is the runtime's). Then:

1. A pool of ``--pool`` calls is drawn from a seeded rng: ``score`` (1-64 pairs, raw
   ids), ``score_all`` (1-16 users, indices), ``recommend`` (1-32 users, k in 1..50,
   with/without seen items, raw ids or indices) and a few requests with an unknown
   user that must raise ``UnknownIdError`` (the error path under load).
2. Every call of the pool runs once, sequentially: the reference. Each result is kept
   as a sha256 of its exact bytes (shape, dtype and values; for an expected error its
   type and message), so memory does not grow with the pool. A second sequential pass
   (timed: the single-thread calls/s) must give the same digests.
3. ``--threads`` threads share one ``Recommender`` for ``--seconds``; each picks calls
   from the pool with its own seeded rng and compares the digest of every result with
   the reference (exact equality). Mismatches and unexpected exceptions are counted.
   Latencies go to fixed log-spaced histograms (constant memory).
4. A sampler thread reads this process's RSS (``/proc/self/statm``) every second.

Prints a table (calls, calls/s, p50/p99 latency per kind; mismatches; errors; RSS at
start/end/max) and writes everything as JSON with ``--json``. Exit status 1 if any
result differed from the sequential one or an unexpected error occurred.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

KINDS = ("score", "score_all", "recommend", "unknown_user")
# share of each kind in the pool
WEIGHTS = (0.35, 0.25, 0.38, 0.02)
# latency histogram: 1 us .. 100 s, log-spaced
BINS = np.logspace(-6, 2, 401)


# ---------------------------------------------------------------------- bundle
def build_bundle(args: argparse.Namespace, dest: Path) -> None:
    """Export a synthetic biased MF model to ``dest`` (imports torch: child process only)."""
    from recsys_export.export import export_bundle
    from recsys_export.models.synthetic import synthetic_checkpoint

    ckpt = synthetic_checkpoint(
        "mf",
        args.users,
        args.items,
        factors=args.factors,
        seed=args.seed,
        seen_per_user=args.seen,
        user_ids=np.arange(1_000_000, 1_000_000 + args.users),  # raw ids != indices
    )
    export_bundle(ckpt, dest, formats="onnx", verify=False)


def ensure_bundle(args: argparse.Namespace, tmp: Path) -> Path:
    if args.bundle is not None and (args.bundle / "manifest.json").is_file():
        return args.bundle
    dest = args.bundle if args.bundle is not None else tmp / "bundle"
    cmd = [sys.executable, __file__, "--build", str(dest)]
    cmd += ["--users", str(args.users), "--items", str(args.items)]
    cmd += ["--factors", str(args.factors), "--seen", str(args.seen), "--seed", str(args.seed)]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    print(f"exported {args.users} x {args.items} MF bundle in {time.perf_counter() - t0:.1f}s")
    return dest


# ---------------------------------------------------------------------- calls
@dataclass(frozen=True)
class Call:
    kind: str
    users: Any
    items: Any = None
    k: int = 0
    exclude_seen: bool = True
    by_index: bool = False


def make_pool(n: int, n_users: int, n_items: int, user_ids: np.ndarray, seed: int) -> list[Call]:
    rng = np.random.default_rng(seed)
    kinds = rng.choice(len(KINDS), size=n, p=WEIGHTS)
    pool = []
    for kind in kinds:
        name = KINDS[int(kind)]
        if name == "score":
            b = int(rng.integers(1, 65))
            users = user_ids[rng.integers(0, n_users, b)].tolist()
            pool.append(Call(name, users, rng.integers(0, n_items, b).tolist()))
        elif name == "score_all":
            b = int(rng.integers(1, 17))
            pool.append(Call(name, rng.integers(0, n_users, b), by_index=True))
        elif name == "recommend":
            b = int(rng.integers(1, 33))
            by_index = bool(rng.random() < 0.5)
            idx = rng.integers(0, n_users, b)
            users = idx if by_index else user_ids[idx].tolist()
            pool.append(
                Call(
                    name,
                    users,
                    k=int(rng.integers(1, 51)),
                    exclude_seen=bool(rng.random() < 0.8),
                    by_index=by_index,
                )
            )
        else:  # a known user and one that is not: UnknownIdError, same message every time
            users = [int(user_ids[int(rng.integers(0, n_users))]), -int(rng.integers(1, 10**6))]
            pool.append(Call(name, users, k=int(rng.integers(1, 11))))
    return pool


def _digest(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape};".encode())
        if a.dtype == object:
            h.update(repr(a.tolist()).encode())
        else:
            h.update(a.tobytes())
    return h.hexdigest()


def run_call(rec: Any, call: Call) -> str:
    """Run one call; the digest of its exact result (or of the error it raised)."""
    from recsys_export.errors import RecsysExportError

    try:
        if call.kind == "score":
            return _digest(rec.score(call.users, call.items))
        if call.kind == "score_all":
            return _digest(rec.score_all(call.users, by_index=True))
        res = rec.recommend(
            call.users, call.k, exclude_seen=call.exclude_seen, by_index=call.by_index
        )
        return _digest(np.asarray(res.users), res.items, res.scores)
    except RecsysExportError as exc:
        if call.kind != "unknown_user":
            raise
        return "error:" + hashlib.sha256(f"{type(exc).__name__}: {exc}".encode()).hexdigest()


# ---------------------------------------------------------------------- measuring
def rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class RssSampler(threading.Thread):
    def __init__(self, every: float = 1.0) -> None:
        super().__init__(daemon=True)
        self.every = every
        self.samples: list[tuple[float, int]] = []
        self._done = threading.Event()
        self.t0 = time.perf_counter()

    def run(self) -> None:
        while True:
            self.samples.append((time.perf_counter() - self.t0, rss_bytes()))
            if self._done.wait(self.every):
                break

    def stop(self) -> None:
        self._done.set()
        self.join()
        self.samples.append((time.perf_counter() - self.t0, rss_bytes()))


def percentile(hist: np.ndarray, q: float) -> float:
    total = int(hist.sum())
    if total == 0:
        return float("nan")
    idx = int(np.searchsorted(np.cumsum(hist), q * total))
    return float(BINS[min(idx + 1, len(BINS) - 1)])  # upper edge of the bin


def worker(
    rec: Any,
    pool: list[Call],
    reference: list[str],
    seed: int,
    deadline: float,
    stats: dict[str, Any],
) -> None:
    rng = np.random.default_rng(seed)
    hist = {k: np.zeros(len(BINS) - 1, dtype=np.int64) for k in KINDS}
    calls = dict.fromkeys(KINDS, 0)
    mismatches = dict.fromkeys(KINDS, 0)
    errors = dict.fromkeys(KINDS, 0)
    first_error = None
    picks = rng.integers(0, len(pool), 4096)
    j = 0
    while time.perf_counter() < deadline:
        if j == len(picks):
            picks, j = rng.integers(0, len(pool), 4096), 0
        i = int(picks[j])
        j += 1
        call = pool[i]
        t0 = time.perf_counter()
        try:
            got = run_call(rec, call)
        except Exception as exc:  # noqa: BLE001 - counted and reported
            errors[call.kind] += 1
            first_error = first_error or f"{call.kind}: {type(exc).__name__}: {exc}"
            got = None
        dt = time.perf_counter() - t0
        calls[call.kind] += 1
        b = int(np.searchsorted(BINS, dt, side="right")) - 1
        hist[call.kind][min(max(b, 0), len(BINS) - 2)] += 1
        if got is not None and got != reference[i]:
            mismatches[call.kind] += 1
    stats.update(
        hist=hist, calls=calls, mismatches=mismatches, errors=errors, first_error=first_error
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=60.0, help="duration (default 60)")
    p.add_argument("--threads", type=int, default=8, help="concurrent threads (default 8)")
    p.add_argument("--users", type=int, default=5000)
    p.add_argument("--items", type=int, default=2000)
    p.add_argument("--factors", type=int, default=32)
    p.add_argument("--seen", type=int, default=20, help="rated items per user (default 20)")
    p.add_argument("--pool", type=int, default=3000, help="distinct calls (default 3000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bundle", type=Path, help="reuse/keep the bundle at this directory")
    p.add_argument("--intra-op-threads", type=int, help="onnxruntime threads per call")
    p.add_argument("--json", type=Path, help="write the results as JSON here")
    p.add_argument("--build", type=Path, help=argparse.SUPPRESS)  # child: export and exit
    args = p.parse_args(argv)
    if args.build is not None:
        build_bundle(args, args.build)
        return 0

    with tempfile.TemporaryDirectory(prefix="load_test_") as tmp:
        bundle = ensure_bundle(args, Path(tmp))
        from recsys_export.runtime import Recommender

        assert "torch" not in sys.modules, "the load test process must stay torch-free"
        rec = Recommender.load(bundle, intra_op_threads=args.intra_op_threads)
        user_ids = np.asarray(rec.user_map.raw_ids)
        pool = make_pool(args.pool, rec.n_users, rec.n_items, user_ids, args.seed)

        reference = [run_call(rec, call) for call in pool]  # also warms the sessions up
        t0 = time.perf_counter()
        repeat = [run_call(rec, call) for call in pool]  # timed; must match exactly too
        seq_seconds = time.perf_counter() - t0
        seq_mismatches = sum(a != b for a, b in zip(reference, repeat, strict=True))

        sampler = RssSampler(1.0)
        sampler.start()
        deadline = time.perf_counter() + args.seconds
        stats: list[dict[str, Any]] = [{} for _ in range(args.threads)]
        threads = [
            threading.Thread(
                target=worker, args=(rec, pool, reference, args.seed + 1 + t, deadline, stats[t])
            )
            for t in range(args.threads)
        ]
        t_start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - t_start
        sampler.stop()

    per_kind = {}
    for kind in KINDS:
        hist = sum(s["hist"][kind] for s in stats)
        calls = sum(s["calls"][kind] for s in stats)
        per_kind[kind] = {
            "calls": calls,
            "calls_per_s": calls / elapsed,
            "p50_ms": percentile(hist, 0.5) * 1e3,
            "p99_ms": percentile(hist, 0.99) * 1e3,
            "mismatches": sum(s["mismatches"][kind] for s in stats),
            "errors": sum(s["errors"][kind] for s in stats),
        }
    total = sum(v["calls"] for v in per_kind.values())
    mismatches = sum(v["mismatches"] for v in per_kind.values())
    errors = sum(v["errors"] for v in per_kind.values())
    rss = [b for _, b in sampler.samples]
    mb = 1 / 2**20
    result = {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "cpu_count": os.cpu_count(),
        "seconds": elapsed,
        "calls": total,
        "calls_per_s": total / elapsed,
        "sequential_calls_per_s": len(pool) / seq_seconds,
        "mismatches": mismatches,
        "sequential_repeat_mismatches": seq_mismatches,
        "errors": errors,
        "first_error": next((s["first_error"] for s in stats if s["first_error"]), None),
        "per_kind": per_kind,
        "rss_mb": {
            "start": rss[0] * mb,
            "end": rss[-1] * mb,
            "max": max(rss) * mb,
            "min": min(rss) * mb,
            "samples": [[round(t, 2), round(b * mb, 2)] for t, b in sampler.samples],
        },
    }

    print(
        f"\n{args.threads} threads x {elapsed:.1f}s on a {rec.n_users} x {rec.n_items} MF "
        f"bundle ({os.cpu_count()} cores), pool of {len(pool)} seeded calls"
    )
    print(
        f"{'kind':<14}{'calls':>10}{'calls/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'diff':>6}{'err':>5}"
    )
    for kind, v in per_kind.items():
        print(
            f"{kind:<14}{v['calls']:>10,}{v['calls_per_s']:>10,.0f}{v['p50_ms']:>9.2f}"
            f"{v['p99_ms']:>9.2f}{v['mismatches']:>6}{v['errors']:>5}"
        )
    print(f"{'total':<14}{total:>10,}{total / elapsed:>10,.0f}{'':>18}{mismatches:>6}{errors:>5}")
    print(
        f"sequential (1 thread, second pass over the pool): "
        f"{result['sequential_calls_per_s']:,.0f} calls/s, {seq_mismatches} differences"
    )
    r = result["rss_mb"]
    print(
        f"RSS MB: start {r['start']:.1f}, end {r['end']:.1f}, max {r['max']:.1f} "
        f"({len(rss)} samples, every 1 s)"
    )
    if result["first_error"]:
        print(f"first error: {result['first_error']}")
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 1 if mismatches or errors or seq_mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
