"""Export with verification at real sizes: wall time, parity time and peak RSS.

Each row is one ``recsys-export export`` (default flags: ONNX and TorchScript, parity
verified) in its own process, so its peak RSS is its own (``os.wait4``). ``.pt2`` is
opt-in (``export --formats all`` adds it, several seconds more per export: see
docs/performance.md); rows measured before it was opt-in included it. The same model
exported with ``--no-verify`` is the row's reference: on a machine whose speed varies 2-4x from
day to day, ``parity s`` / ``no-verify s`` from one run is the number to compare.

Sizes (``--preset issue``, the default): ml-latest-small MF and DenseNet and
MovieTweetings DenseNet (trained here with ``recsys-export train``, a few seconds each),
synthetic 100k x 20k MF (64 factors) and DenseNet (64 factors, 128 hidden, 50 seen
items per user). ``--preset tiny`` is a seconds-long smoke run on synthetic models.
``--verify-full ROW`` adds ``verify --full`` of that row's bundle.

Usage::

    python benchmarks/export_bench.py                      # the issue's sizes
    python benchmarks/export_bench.py --rows syn-mf --verify-full syn-mf
    python benchmarks/export_bench.py --preset tiny --json .bench/export-tiny.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DATASETS = Path(os.environ.get("RECSYS_EXPORT_DATASETS", "/work/shared/datasets"))

#: name -> how to get the checkpoint: ("train", data, model) or ("synthetic", spec)
PRESETS: dict[str, dict[str, tuple[Any, ...]]] = {
    "issue": {
        "ml-mf": ("train", "ml-latest-small/ratings.csv", "mf"),
        "ml-densenet": ("train", "ml-latest-small/ratings.csv", "densenet"),
        "mt-densenet": ("train", "movietweetings-100k/ratings.dat", "densenet"),
        "syn-mf": ("synthetic", {"kind": "mf", "users": 100_000, "items": 20_000, "factors": 64}),
        "syn-densenet": (
            "synthetic",
            {"kind": "densenet", "users": 100_000, "items": 20_000, "factors": 64, "hidden": 128},
        ),
    },
    "tiny": {
        "tiny-mf": ("synthetic", {"kind": "mf", "users": 300, "items": 200, "factors": 8}),
        "tiny-densenet": (
            "synthetic",
            {"kind": "densenet", "users": 150, "items": 120, "factors": 4, "hidden": 8},
        ),
    },
}

_SYNTHETIC = """
import sys, json
import numpy as np
from recsys_export.models.synthetic import synthetic_checkpoint, synthetic_seen
spec = json.loads(sys.argv[1])
n_u, n_i = spec["users"], spec["items"]
users, items = synthetic_seen(n_u, n_i, min(50, n_i - 1))
keep = np.ones(n_u, bool)
keep[n_u // 2] = False  # one user with no seen items
seen = users[keep[users]], items[keep[users]]
ck = synthetic_checkpoint(spec["kind"], n_u, n_i, factors=spec["factors"],
                          hidden=spec.get("hidden", 16), seen=seen)
ck.save(sys.argv[2])
"""


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _run(cmd: list[str]) -> dict[str, Any]:
    """Run ``cmd``; wall seconds, peak RSS (MiB) of that process alone, exit status."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert proc.stdout is not None
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {
        "seconds": time.perf_counter() - t0,
        "peak_rss_mib": usage.ru_maxrss / 1024,
        "rc": proc.returncode,
        "output": out,
    }


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "recsys_export.cli", *args]


def checkpoint(name: str, how: tuple[Any, ...], work: Path) -> Path:
    """Train or build the row's checkpoint (not measured)."""
    path = work / f"{name}.pt"
    if how[0] == "train":
        res = _run(_cli("train", str(DATASETS / how[1]), "--model", how[2], "--out", str(path)))
    else:
        res = _run([sys.executable, "-c", _SYNTHETIC, json.dumps(how[1]), str(path)])
    if res["rc"] != 0:
        raise SystemExit(f"{name}: could not make the checkpoint:\n{res['output'][-2000:]}")
    return path


def bench_row(name: str, ckpt: Path, work: Path, verify_full: bool) -> dict[str, Any]:
    """Export with and without verification (and optionally ``verify --full``)."""
    out = work / name
    row: dict[str, Any] = {"name": name}
    ref = _run(_cli("export", str(ckpt), "--out", str(out), "--force", "--no-verify", "-q"))
    res = _run(_cli("export", str(ckpt), "--out", str(out), "--force", "-q"))
    if res["rc"] != 0:
        row["error"] = res["output"][-2000:]
        return row
    parity = json.loads((out / "parity.json").read_text())
    manifest = json.loads((out / "manifest.json").read_text())
    plan = parity.get("plan") or {}
    row.update(
        {
            "users": manifest["model"]["n_users"],
            "items": manifest["model"]["n_items"],
            "export_s": res["seconds"],
            "parity_s": parity["seconds"],
            "peak_rss_mib": res["peak_rss_mib"],
            "no_verify_s": ref["seconds"],
            "no_verify_rss_mib": ref["peak_rss_mib"],
            "passed": parity["passed"],
            "plan": plan,
            "timings": parity.get("timings"),
        }
    )
    if verify_full:
        full = _run(_cli("verify", str(out), "--full", "--no-record", "-q"))
        row["verify_full_s"] = full["seconds"]
        row["verify_full_rss_mib"] = full["peak_rss_mib"]
        row["verify_full_rc"] = full["rc"]
    return row


def format_table(rows: list[dict[str, Any]]) -> str:
    """The table printed by the script."""
    head = (
        f"{'model':<14} {'users x items':>17} {'export s':>9} {'parity s':>9} "
        f"{'peak RSS':>9} {'no-verify s':>11} {'(RSS)':>8}  plan"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['name']:<14} FAILED: {r['error'].splitlines()[-1][:80]}")
            continue
        plan = r["plan"]
        cover = (
            "full matrix"
            if plan.get("mode") == "full"
            else f"{plan.get('users', 0):,} users ({plan.get('fraction', 0):.2%})"
        )
        size = f"{r['users']:,} x {r['items']:,}"
        lines.append(
            f"{r['name']:<14} {size:>17} {r['export_s']:>9.1f} {r['parity_s']:>9.1f} "
            f"{r['peak_rss_mib'] / 1024:>7.2f}Gi {r['no_verify_s']:>11.1f} "
            f"{r['no_verify_rss_mib'] / 1024:>6.2f}Gi  {cover}"
            + ("" if r["passed"] else "  PARITY FAILED")
        )
        if "verify_full_s" in r:
            lines.append(
                f"{'  verify --full':<14} {'':>17} {r['verify_full_s']:>9.1f} {'':>9} "
                f"{r['verify_full_rss_mib'] / 1024:>7.2f}Gi  (exit {r['verify_full_rc']})"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="issue")
    parser.add_argument("--rows", help="comma list of row names (default: all of the preset)")
    parser.add_argument("--verify-full", default="", help="comma list of rows to verify --full")
    parser.add_argument("--work", type=Path, help="keep checkpoints and bundles here")
    parser.add_argument("--json", type=Path, help="write the rows as JSON here")
    args = parser.parse_args(argv)
    preset = PRESETS[args.preset]
    names = [n for n in (args.rows or ",".join(preset)).split(",") if n]
    unknown = [n for n in names if n not in preset]
    if unknown:
        parser.error(f"unknown rows {unknown}; choose from {', '.join(preset)}")
    full = {n for n in args.verify_full.split(",") if n}
    with tempfile.TemporaryDirectory(prefix="export-bench-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        rows = []
        for name in names:
            ckpt = checkpoint(name, preset[name], work)
            rows.append(bench_row(name, ckpt, work, name in full))
            print(format_table(rows[-1:]).splitlines()[-1], file=sys.stderr, flush=True)
    report = {
        "preset": args.preset,
        "cpus": os.cpu_count(),
        "loadavg": list(os.getloadavg()),
        "rows": rows,
    }
    print(format_table(rows))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
    return 0 if all(r.get("passed") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
