"""The rule of docs/architecture.md: the torch-free layer never imports torch.

The layer is ``recsys_export._layers.TORCH_FREE`` (packages and modules; what ``make
lint`` type-checks). Each name is imported in a fresh interpreter, with every submodule
when it is a package.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from recsys_export._layers import LAYERS, TORCH_FREE

ROOT = Path(__file__).resolve().parents[1]


def torch_free_layer() -> list[str]:
    return list(TORCH_FREE)


_CHECK = """
import importlib, pkgutil, sys
name = sys.argv[1]
mod = importlib.import_module(name)
for info in pkgutil.walk_packages(getattr(mod, "__path__", []), name + "."):
    if not info.name.endswith(".__main__"):  # running it is the CLI, not an import
        importlib.import_module(info.name)
bad = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))
assert not bad, f"{name} imports torch: {bad[:5]}"
"""


def test_layer_lists_the_runtime():
    assert {"runtime", "bundle", "core", "errors", "serve", "engines"} <= set(torch_free_layer())
    # each entry is a package or module placed in the layer table
    tops = {name for layer in LAYERS for name in layer}
    assert {name.split(".")[0] for name in TORCH_FREE} <= tops
    for name in TORCH_FREE:
        rel = ROOT / "recsys_export" / name.replace(".", "/")
        assert rel.is_dir() or rel.with_suffix(".py").is_file(), name


@pytest.mark.parametrize("name", torch_free_layer())
def test_module_does_not_import_torch(name: str) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run(
        [sys.executable, "-c", _CHECK, f"recsys_export.{name}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
