"""Helper for tests/test_runtime.py: write a score matrix and stall mid-way until killed.

Usage: python runtime_slow_writer.py BUNDLE OUT.npy

Runs ``Recommender.write_score_matrix`` with a tiny memory budget (many chunks). After
the first chunk is written it prints ``WRITING`` (flushed) and blocks reading stdin, so
the test can SIGKILL it while the write is in progress; no sleeping. If stdin is closed
without a kill, it exits with an error before finishing the write.
"""

from __future__ import annotations

import sys

from recsys_export.runtime import Recommender


def main() -> int:
    bundle, out = sys.argv[1], sys.argv[2]
    rec = Recommender.load(bundle)
    original = rec.score_all_into
    calls = {"n": 0}

    def stalling(users, dst):  # type: ignore[no-untyped-def]
        original(users, dst)
        calls["n"] += 1
        if calls["n"] == 1:
            print("WRITING", flush=True)
            sys.stdin.read()  # blocks until the test kills us (or closes stdin)
            raise SystemExit("runtime_slow_writer was not killed")

    rec.score_all_into = stalling  # type: ignore[method-assign]
    rec.write_score_matrix(out, memory_budget_mb=0.001, progress=False)
    return 1


if __name__ == "__main__":
    sys.exit(main())
