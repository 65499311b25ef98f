"""The main job, end to end: ``python -m recsys_export.demo`` (``make demo``).

Trains MF and DenseNet on the bundled MovieLens latest-small sample, exports each to a
verified bundle (ONNX and TorchScript, the default formats; ``.pt2`` is opt-in with
``--formats all``; export runs the parity check and prints its table), and shows a
few recommendations computed by the torch-free onnxruntime runtime, with the movie titles
that ``train`` stores for the bundled sample (its ``movies.csv``). Each step is the
CLI command printed before it runs, so the demo doubles as a tutorial.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from recsys_export.cli import main as cli
from recsys_export.core.defaults import MODEL_KINDS

OUT = Path("runs") / "demo"


def step(*argv: str) -> None:
    """Print and run one ``recsys-export`` command; stop the demo if it fails."""
    print(f"\n$ recsys-export {shlex.join(argv)}", flush=True)
    code = cli(list(argv))
    if code != 0:
        sys.exit(code)


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    for kind in MODEL_KINDS:
        ckpt = str(OUT / f"{kind}.pt")
        bundle = str(OUT / f"{kind}-bundle")
        step("train", "movielens-small", "--model", kind, "--out", ckpt, "--force")
        step("export", ckpt, "--out", bundle, "--force")
        step("inspect", bundle)
        step("recommend", bundle, "--user", "1", "--user", "414", "-k", "5")
    print(f"\nDone: checkpoints and bundles are in {OUT}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
