"""``python -m recsys_export.bench``: the benchmark without the CLI."""

import sys

from recsys_export.bench.suite import main

sys.exit(main())
