"""Same-run A/B of ``recsys-export export`` wall time: two checkouts, alternately.

On a machine whose speed varies 2-4x with its load, only times taken side by side are
comparable: each round runs every checkpoint through the ``--old`` checkout and this one
(default flags, parity verified, each export in its own process), and the table shows
the best of the rounds and the new/old ratio. The default formats are the checkout's own:
ONNX and TorchScript since ``.pt2`` became opt-in (``--formats all``), all three before,
so an A/B across that change measures it too.

Usage::

    git worktree add --detach /tmp/base 101bde5
    python benchmarks/export_ab.py --old /tmp/base mf.pt densenet.pt --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _export(checkout: Path, ckpt: Path, out: Path) -> float:
    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    cmd = [sys.executable, "-m", "recsys_export.cli", "export", str(ckpt), "--out", str(out), "-q"]
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, cwd=tempfile.gettempdir(), capture_output=True)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoints", nargs="+", type=Path)
    ap.add_argument("--old", type=Path, required=True, help="the reference checkout")
    ap.add_argument("--new", type=Path, default=ROOT, help="default: this checkout")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", type=Path, help="also write the times here")
    args = ap.parse_args(argv)
    times: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for ckpt in args.checkpoints:
                for label, checkout in (("old", args.old), ("new", args.new)):
                    dt = _export(checkout, ckpt, Path(tmp) / "bundle")
                    times.setdefault(ckpt.name, {}).setdefault(label, []).append(dt)
                    print(f"round {r + 1} {ckpt.name:<20} {label} {dt:7.2f} s", flush=True)
    print(f"\n{'checkpoint':<20} {'old best s':>10} {'new best s':>10} {'new/old':>8}")
    for name, t in times.items():
        old, new = min(t["old"]), min(t["new"])
        print(f"{name:<20} {old:>10.2f} {new:>10.2f} {new / old:>8.2f}")
    if args.json:
        args.json.write_text(json.dumps(times, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
