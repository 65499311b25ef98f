"""Same-run A/B of two checkouts: ``train`` or ``export`` wall time, alternately.

On a machine whose speed varies 2-4x with its load, only times taken side by side are
comparable. Each round runs every case through the ``--old`` checkout and the ``--new``
one (default: this checkout), each in its own process through the command line (the one
interface both checkouts share), and the table shows the best of the rounds and the
new/old ratio.

Tasks:

* ``export CKPT...``: ``recsys-export export CKPT --out TMP -q`` (default flags, parity
  verified). ``OLD.pt:NEW.pt`` gives each checkout its own checkpoint (one the old code
  trained and can read).
* ``fit``: ``recsys-export train DATA --model KIND --json`` for each of ``--models``;
  the time is the training loop's (``metrics.train_seconds`` of the JSON) where the
  checkout reports it, else the command's wall time.

``--recorded`` takes the old checkout's times as they were recorded when a target was set
(one per case, seconds): the table then adds the machine's slowdown against that record
(old now / old recorded) and the new time at the recorded speed (new / slowdown), the
number to hold against the target.

Usage::

    git worktree add --detach ../old <commit>   # any checkout of the reference commit
    python benchmarks/ab.py export --old ../old mf.pt densenet.pt --rounds 3
    python benchmarks/ab.py export --old ../old old-mf.pt:mf.pt --recorded 17
    python benchmarks/ab.py fit --old ../old --models mf,densenet --recorded 6.6,4.5
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


def _cli(checkout: Path, args: list[str], cwd: str) -> tuple[float, str]:
    """Run ``python -m recsys_export.cli ARGS`` with ``checkout`` first on the path:
    ``(wall seconds, stdout)``."""
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    cmd = [sys.executable, "-m", "recsys_export.cli", *args]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, check=True, cwd=cwd, capture_output=True, text=True)
    return time.perf_counter() - t0, done.stdout


def _export_seconds(checkout: Path, ckpt: str, tmp: Path) -> float:
    out = tmp / "bundle"
    shutil.rmtree(out, ignore_errors=True)
    seconds, _ = _cli(
        checkout, ["export", str(Path(ckpt).resolve()), "--out", str(out), "-q"], str(tmp)
    )
    return seconds


def _fit_seconds(checkout: Path, data: str, kind: str, tmp: Path) -> float:
    out = tmp / f"{kind}.pt"
    args = ["train", *([data] if data else []), "--model", kind, "--out", str(out)]
    wall, stdout = _cli(checkout, [*args, "--force", "-q", "--json"], str(tmp))
    try:
        return float(json.loads(stdout)["metrics"]["train_seconds"])
    except (ValueError, KeyError, TypeError):  # an older checkout's output: the wall time
        return wall


def _cases(args: argparse.Namespace) -> list[tuple[str, str, str]]:
    """``(name, old's argument, new's argument)`` per case."""
    if args.task == "export":
        if not args.checkpoints:
            raise SystemExit("ab.py export: name at least one checkpoint (CKPT or OLD:NEW)")
        pairs = [(c.split(":")[0], c.split(":")[-1]) for c in args.checkpoints]
        return [(Path(new).name, old, new) for old, new in pairs]
    if args.checkpoints:
        raise SystemExit("ab.py fit: takes no checkpoints (--data and --models say what to train)")
    return [(kind, kind, kind) for kind in args.models.split(",") if kind]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("task", choices=("export", "fit"))
    ap.add_argument("checkpoints", nargs="*", help="export: CKPT, or OLD_CKPT:NEW_CKPT")
    ap.add_argument("--old", type=Path, required=True, help="the reference checkout")
    ap.add_argument("--new", type=Path, default=ROOT, help="default: this checkout")
    ap.add_argument("--data", default="", help="fit: ratings file (default: the CLI's)")
    ap.add_argument("--models", default="mf,densenet", help="fit: model kinds")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", type=Path, help="also write the times here")
    ap.add_argument("--recorded", help="comma list: the old checkout's recorded seconds")
    args = ap.parse_args(argv)
    cases = _cases(args)
    recorded = [float(x) for x in args.recorded.split(",")] if args.recorded else None
    if recorded is not None and len(recorded) != len(cases):
        ap.error(f"--recorded needs {len(cases)} values, one per case")
    times: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for name, old_arg, new_arg in cases:
                for label, checkout, arg in (
                    ("old", args.old, old_arg),
                    ("new", args.new, new_arg),
                ):
                    if args.task == "export":
                        dt = _export_seconds(checkout.resolve(), arg, Path(tmp))
                    else:
                        dt = _fit_seconds(checkout.resolve(), args.data, arg, Path(tmp))
                    times.setdefault(name, {}).setdefault(label, []).append(dt)
                    print(f"round {r + 1} {name:<20} {label} {dt:7.2f} s", flush=True)
    head = f"\n{'case':<20} {'old best s':>10} {'new best s':>10} {'new/old':>8}"
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
        args.json.parent.mkdir(parents=True, exist_ok=True)
        doc = {"task": args.task, "load": os.getloadavg(), "times": times, "summary": summary}
        args.json.write_text(json.dumps(doc, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
