"""Helper for tests/test_catalogue.py: the CLI as a runtime-only install runs it.

Usage: python cli_without_train_extra.py COMMAND ARGS...

The modules of the ``train`` extra are made unimportable (``sys.modules[name] = None``)
before the CLI is imported, as if only ``pip install recsys-export`` had run.
"""

from __future__ import annotations

import sys

for _name in ("torch", "onnx", "onnxscript", "pandas"):
    sys.modules[_name] = None  # type: ignore[assignment]

from recsys_export.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
