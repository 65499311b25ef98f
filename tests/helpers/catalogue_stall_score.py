"""Helper for tests/test_interrupt.py: run ``recsys-export score --all`` and stall mid-write.

Usage: python catalogue_stall_score.py BUNDLE OUT.npy

``--force`` is passed, so an existing OUT.npy is replaced only by a finished run.

Runs the real CLI (``recsys_export.cli.main``) with two patches on the runtime: every
chunk is one user (so a tiny bundle has several chunks), and the second chunk blocks
reading stdin. The first chunk is written and its progress line printed on stderr
(``RECSYS_EXPORT_PROGRESS_INTERVAL=0`` prints every update) before the stall, so the
test synchronises on that line and SIGKILLs the process mid-write; no sleeping. If
stdin is closed without a kill, it exits with an error before finishing the write.
"""

from __future__ import annotations

import sys

from recsys_export import cli
from recsys_export.runtime import Recommender


def main() -> int:
    bundle, out = sys.argv[1], sys.argv[2]
    original = Recommender.score_all_into
    calls = {"n": 0}

    def stalling(self, users, dst):  # type: ignore[no-untyped-def]
        original(self, users, dst)
        calls["n"] += 1
        if calls["n"] == 2:
            sys.stdin.read()  # blocks until the test kills us (or closes stdin)
            raise SystemExit("catalogue_stall_score was not killed")

    Recommender.score_all_into = stalling  # type: ignore[method-assign]
    Recommender.chunk_users = lambda self, budget=None: 1  # type: ignore[method-assign]
    return cli.main(["score", bundle, "--all", "--out", out, "--force"])


if __name__ == "__main__":
    sys.exit(main())
