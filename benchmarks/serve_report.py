"""The tables of serve_bench.py: every scenario's row, and every target of issue 30
beside its reference measured in the same run (the machine may be shared: the
references say how much of a miss is the machine's)."""

from __future__ import annotations

from typing import Any

import numpy as np

#: The issue's targets.
CLOSED_MIN = 2000.0  # ml MF closed loop, 64 connections, requests/s
OPEN_P99_MAX = 20.0  # ml MF open loop at 1,000/s, p99 ms
BATCHING_MIN = 3.0  # big MF: dynamic batching / --max-batch 1, requests/s
CEILING_MIN = 0.5  # big MF: served / in-process batched ceiling


def median_run(runs: list[dict]) -> dict:
    """The run with the median req/s, with every run's req/s."""
    ordered = sorted(runs, key=lambda r: r["req_per_s"])
    return {**ordered[len(ordered) // 2], "rounds_req_per_s": [r["req_per_s"] for r in runs]}


def median_of(runs: list[dict]) -> dict:
    """Per load kind, the median of each number over rounds."""
    out = {}
    for kind in runs[0]:
        keys = ("req_per_s", "p50_ms", "p99_ms", "p999_ms")
        out[kind] = {k: float(np.median([r[kind][k] for r in runs])) for k in keys}
    return out


def sweep_table(results: dict) -> str:
    lines = [f"{'setting':<36} closed req/s  p99 ms   open 1,000/s p50 ms  p99 ms"]
    for name, r in results.items():
        c, o = r["closed"], r["open_1000"]
        lines.append(
            f"{name:<36} {c['req_per_s']:>12,.0f}  {c['p99_ms']:>6.1f}   "
            f"{o['p50_ms']:>19.2f}  {o['p99_ms']:>6.2f}"
        )
    return "\n".join(lines)


def ratios(results: dict) -> dict[str, float]:
    """The ratios the targets are about (big MF scenario)."""
    big = results["mf100k"]
    b, b1, c64 = big["batched"], big["batch_1"], big["ceiling_64"]
    out = {
        "batching_speedup": b["req_per_s"] / b1["req_per_s"],
        "p99_batched_over_b1": b["p99_ms"] / b1["p99_ms"],
        "served_over_batched_ceiling": b["req_per_s"] / c64["req_per_s"],
        "served_over_single_ceiling": b["req_per_s"] / big["ceiling_1"]["req_per_s"],
    }
    if "workers_2" in big:
        w2 = big["workers_2"]["req_per_s"]
        out["workers_2_over_1"] = w2 / b["req_per_s"]
        out["workers_2_over_batched_ceiling"] = w2 / c64["req_per_s"]
    return out


def failed(run: dict) -> int:
    """Requests not answered 200: the generator's errors and the 503s (outside overload a
    503 is a failed request; wrk already counts it among its errors)."""
    return int(run["errors"]) + int(run["status"].get("503", 0))


#: The share of the asked rate the generator must have sent for an overload run to count.
OFFERED_MIN = 0.95


def overload_row(name: str, over: dict) -> tuple[str, str, str, bool]:
    """The overload target: every request answered 200 or 503 within the deadline (by the
    generator, from its send, and by the server's own histogram), at the rate asked."""
    deadline = over["deadline_ms"]
    sent = over.get("sent_per_s", 0.0)
    ok = (
        set(over["status"]) <= {"200", "503"}
        and over["errors"] == 0
        and over["max_service_ms"] <= deadline
        and over["server_over_deadline"] == 0
        and sent >= OFFERED_MIN * over["offered_per_s"]
    )
    status = over["status"]
    return (
        f"{name}: every answer 200/503 within {deadline} ms",
        f"slowest {over['max_service_ms']:.0f} ms from send, "
        f"{over['server_over_deadline']} over it server-side; 200: {status.get('200', 0):,}, "
        f"503: {status.get('503', 0):,}, errors {over['errors']}",
        f"{over.get('generator', '?')} generator sent {sent:,.0f}/s of "
        f"{over['offered_per_s']:,.0f}/s; RSS {over['rss_start_mb']:.0f} -> "
        f"{over['rss_peak_mb']:.0f} MB",
        ok,
    )


def targets(results: dict) -> list[tuple[str, str, str, bool]]:
    """(target, measured, same-run reference, met) for every target of the issue."""
    ml, big, swap, r = results["ml"], results["mf100k"], results["hotswap"], results["ratios"]
    closed = ml.get("closed_64_wrk", ml["closed_64"])
    health = ml.get("healthz_wrk")
    opened, health_open = ml["open_1000"], ml["healthz_open_1000"]
    rows = [
        (
            f"ml closed 64 conns >= {CLOSED_MIN:,.0f} req/s",
            f"{closed['req_per_s']:,.0f} req/s, {failed(closed)} failed",
            f"GET /healthz {health['req_per_s']:,.0f} req/s" if health else "",
            closed["req_per_s"] >= CLOSED_MIN and failed(closed) == 0,
        ),
        (
            f"ml open 1,000/s p99 <= {OPEN_P99_MAX:.0f} ms, 0 errors",
            f"p99 {opened['p99_ms']:.1f} ms, {failed(opened)} failed",
            f"GET /healthz at 1,000/s: p99 {health_open['p99_ms']:.1f} ms",
            opened["p99_ms"] <= OPEN_P99_MAX and failed(opened) == 0,
        ),
        (
            f"big batching >= {BATCHING_MIN:.0f}x max-batch 1, p99 no worse",
            f"{r['batching_speedup']:.2f}x, p99 {r['p99_batched_over_b1']:.2f}x",
            f"max-batch 1: {big['batch_1']['req_per_s']:,.0f} req/s",
            r["batching_speedup"] >= BATCHING_MIN and r["p99_batched_over_b1"] <= 1.0,
        ),
        (
            f"big served >= {CEILING_MIN} x in-process batched ceiling",
            f"{r['served_over_batched_ceiling']:.2f}"
            + (
                f" ({r['workers_2_over_batched_ceiling']:.2f} with 2 workers)"
                if "workers_2_over_batched_ceiling" in r
                else ""
            ),
            f"ceiling {big['ceiling_64']['req_per_s']:,.0f} req/s",
            max(r["served_over_batched_ceiling"], r.get("workers_2_over_batched_ceiling", 0))
            >= CEILING_MIN,
        ),
        overload_row("overload 2x", big["overload"]),
        *(
            [overload_row("overload 2x, --workers 2", big["overload_workers_2"])]
            if "overload_workers_2" in big
            else []
        ),
        (
            "hot swap: 0 failed or mixed over the swaps",
            f"{failed(swap)} failed, {swap['mixed']} mixed, {swap['wrong']} wrong",
            f"{swap['swaps_seen_by_server']} of {swap['swaps']} swaps seen, "
            f"{swap['requests']:,} responses",
            failed(swap) == swap["mixed"] == swap["wrong"] == 0
            and swap["swaps_seen_by_server"] == swap["swaps"],
        ),
    ]
    return rows


def _grid(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines


def table(results: dict) -> str:
    """The scenario rows, the ratios, and the targets."""
    rows: list[tuple[str, ...]] = [
        ("scenario", "req/s", "p50 ms", "p99 ms", "p999 ms", "errors", "server/idle cores",
         "batch sizes")
    ]  # fmt: skip

    def add(name: str, r: dict[str, Any]) -> None:
        rows.append(
            (
                name, f"{r['req_per_s']:,.0f}", f"{r.get('p50_ms', float('nan')):.2f}",
                f"{r.get('p99_ms', float('nan')):.2f}", f"{r.get('p999_ms', float('nan')):.2f}",
                str(r.get("errors", "")),
                f"{r['server_cores']:.2f} / {r['idle_cores']:.2f}" if "server_cores" in r else "",
                " ".join(f"{k}:{v}" for k, v in r.get("batch_sizes", {}).items()),
            )
        )  # fmt: skip

    ml, big = results["ml"], results["mf100k"]
    named = [
        ("GET /healthz closed 64 (wrk)", ml.get("healthz_wrk")),
        ("ml MF closed 64 conns (python)", ml["closed_64"]),
        ("ml MF closed 64 conns (wrk)", ml.get("closed_64_wrk")),
        ("GET /healthz open 1,000/s", ml["healthz_open_1000"]),
        ("ml MF open 1,000/s", ml["open_1000"]),
        ("big MF closed 64, batched", big["batched"]),
        ("big MF closed 64, max-batch 1", big["batch_1"]),
        ("big MF closed 64, 2 workers", big.get("workers_2")),
        ("big MF in-process, 1 per call", big["ceiling_1"]),
        ("big MF in-process, 64 per call", big["ceiling_64"]),
        (f"big MF open {big['overload']['offered_per_s']:,.0f}/s (2x)", big["overload"]),
        (
            f"big MF open {big['overload_workers_2']['offered_per_s']:,.0f}/s (2x), 2 workers"
            if "overload_workers_2" in big
            else "",
            big.get("overload_workers_2"),
        ),
        ("hot swap closed 16", results["hotswap"]),
    ]
    for name, row in named:
        if row is not None:
            add(name, row)
    lines = [f"server code: {results.get('server_root', '.')}", *_grid(rows), ""]
    lines.append("ratios: " + ", ".join(f"{k} {v:.2f}" for k, v in results["ratios"].items()))
    lines.append("")
    target_rows = [("target", "measured", "same-run reference", "met")]
    target_rows += [(t, m, ref, "yes" if ok else "NO") for t, m, ref, ok in targets(results)]
    lines.extend(_grid(target_rows))
    return "\n".join(lines)
