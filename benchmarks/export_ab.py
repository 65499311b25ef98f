"""Same-run A/B of ``recsys-export export`` wall time: two checkouts, alternately.

On a machine whose speed varies 2-4x with its load, only times taken side by side are
comparable: each round runs every checkpoint through the ``--old`` checkout and this one
(default flags, parity verified, each export in its own process), and the table shows
the best of the rounds and the new/old ratio. The default formats are the checkout's own:
ONNX and TorchScript since ``.pt2`` became opt-in (``--formats all``), all three before,
so an A/B across that change measures it too.

A checkpoint argument ``OLD.pt:NEW.pt`` gives each checkout its own checkpoint (one the
old code trained and can read). ``--recorded`` takes the old checkout's times as they were
recorded when a target was set (one per checkpoint, seconds): the table then shows the
machine's slowdown against that record (old now / old recorded) and the new time at the
recorded machine speed (new / slowdown), the number to hold against the target.

Usage::

    git worktree add --detach /tmp/base 101bde5
    python benchmarks/export_ab.py --old /tmp/base mf.pt densenet.pt --rounds 3
    # issue 15's targets (MF 5 s, DenseNet 10 s) were set on the checkout before it,
    # where these exports took 17 s and 54 s:
    python benchmarks/export_ab.py --old /tmp/issue15 old-mf.pt:mf.pt old-dn.pt:dn.pt \
        --recorded 17,54
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
    ap.add_argument("checkpoints", nargs="+", help="CKPT, or OLD_CKPT:NEW_CKPT")
    ap.add_argument("--old", type=Path, required=True, help="the reference checkout")
    ap.add_argument("--new", type=Path, default=ROOT, help="default: this checkout")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", type=Path, help="also write the times here")
    ap.add_argument("--recorded", help="comma list: the old checkout's recorded seconds")
    args = ap.parse_args(argv)
    pairs = [
        (Path(c.split(":")[0]), Path(c.split(":")[-1])) for c in args.checkpoints
    ]  # (old's checkpoint, new's checkpoint)
    recorded = [float(x) for x in args.recorded.split(",")] if args.recorded else None
    if recorded is not None and len(recorded) != len(pairs):
        ap.error(f"--recorded needs {len(pairs)} values, one per checkpoint")
    times: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for pair in pairs:
                name = pair[1].name
                runs = (("old", args.old, pair[0]), ("new", args.new, pair[1]))
                for label, checkout, ckpt in runs:
                    dt = _export(checkout, ckpt, Path(tmp) / "bundle")
                    times.setdefault(name, {}).setdefault(label, []).append(dt)
                    print(f"round {r + 1} {name:<20} {label} {dt:7.2f} s", flush=True)
    head = f"\n{'checkpoint':<20} {'old best s':>10} {'new best s':>10} {'new/old':>8}"
    if recorded:
        head += f" {'recorded':>9} {'slowdown':>9} {'new at rec.':>11}"
    print(head)
    summary = {}
    for j, (name, t) in enumerate(times.items()):
        old, new = min(t["old"]), min(t["new"])
        line = f"{name:<20} {old:>10.2f} {new:>10.2f} {new / old:>8.2f}"
        summary[name] = {"old_best": old, "new_best": new, "ratio": new / old}
        if recorded:
            slow = old / recorded[j]
            line += f" {recorded[j]:>9.2f} {slow:>9.2f} {new / slow:>11.2f}"
            summary[name].update(recorded=recorded[j], slowdown=slow, new_at_recorded=new / slow)
        print(line)
    if args.json:
        args.json.write_text(json.dumps({"times": times, "summary": summary}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
