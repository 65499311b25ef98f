"""Thin wrapper: ``python benchmarks/bench.py [--preset full] ...`` = ``recsys-export bench``.

See :mod:`recsys_export.bench` for the rows, options and the JSON schema.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from recsys_export.bench import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
