"""``python -m recsys_export.cli``: the ``recsys-export`` console script."""

import sys

from recsys_export.cli import main

sys.exit(main())
