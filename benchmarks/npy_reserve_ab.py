"""Same-run A/B: ``write_score_matrix`` with and without reserving the file's blocks.

The ``.npy`` writer reserves the matrix's blocks (``posix_fallocate``) before it writes
the memory map, so that a full disk is an error instead of a ``SIGBUS``. This measures
what the reservation costs: the same synthetic MF bundle written alternately with the
reservation (``reserve``) and with it switched off (``sparse``, the writer before issue
28), best and median of the rounds, in a temporary directory beside ``--dir``.

Usage::

    python benchmarks/npy_reserve_ab.py --users 5000 --items 20000 --rounds 5 \
        --json .bench/npy_reserve.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    from recsys_export.export import export_bundle
    from recsys_export.models.synthetic import synthetic_checkpoint
    from recsys_export.runtime import Recommender, writers

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=5000)
    ap.add_argument("--items", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--dir", type=Path, default=Path("."), help="where the files are written")
    ap.add_argument("--json", type=Path, help="also write the times here")
    args = ap.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="npy-reserve-", dir=args.dir))
    try:
        ckpt = synthetic_checkpoint("mf", args.users, args.items, factors=64)
        export_bundle(ckpt, work / "bundle", formats="onnx", verify=False)
        rec = Recommender.load(work / "bundle")
        reserve = writers.reserve_space
        times: dict[str, list[float]] = {"reserve": [], "sparse": []}
        for i in range(args.rounds):
            for name in times:
                writers.reserve_space = reserve if name == "reserve" else (lambda p, n: None)
                out = work / f"{name}-{i}.npy"
                t0 = time.perf_counter()
                rec.write_score_matrix(out, progress=False)
                times[name].append(time.perf_counter() - t0)
                out.unlink()
        writers.reserve_space = reserve
    finally:
        shutil.rmtree(work, ignore_errors=True)

    mb = args.users * args.items * 4 / 1e6
    print(f"write_score_matrix, MF {args.users} x {args.items} ({mb:.0f} MB), {args.rounds} rounds")
    print("| variant | best s | median s |\n|---|---:|---:|")
    for name, ts in times.items():
        print(f"| {name} | {min(ts):.3f} | {statistics.median(ts):.3f} |")
    ratio = statistics.median(times["reserve"]) / statistics.median(times["sparse"])
    print(f"reserve / sparse (medians): {ratio:.2f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {
                    "args": vars(args) | {"dir": str(args.dir), "json": str(args.json)},
                    "seconds": times,
                    "ratio": ratio,
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
