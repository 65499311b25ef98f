"""What ``recsys-export bench`` measures: :class:`BenchConfig` (torch-free).

The command line (``recsys-export bench``, ``python -m recsys_export.bench``) builds a
:class:`BenchConfig` from its options (:func:`add_arguments`, :func:`config_from_args`:
options left out are None and take the config's defaults);
:func:`recsys_export.bench.run` takes it. :meth:`BenchConfig.resolved` checks it and
gives the sizes of the preset with the overrides, raising
:class:`~recsys_export.errors.ConfigError` on a bad value.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from recsys_export.core.defaults import DEFAULT_K, MODEL_KINDS
from recsys_export.core.validation import check_choice, check_int
from recsys_export.errors import ConfigError

__all__ = ["PRESETS", "ROW_GROUPS", "BenchConfig", "add_arguments", "config_from_args"]

PRESETS = {
    "tiny": {"users": 300, "items": 400, "factors": 16, "hidden": 32},
    "full": {"users": 100_000, "items": 20_000, "factors": 64, "hidden": 128},
}
ROW_GROUPS = ("torch", "torchscript", "pt2", "numpy", "fallback", "gpu", "precision", "implicit")
#: Users of the slow rows with ``--preset full`` when ``slow_users`` is not given (the
#: tiny preset measures them on every user).
FULL_SLOW_USERS = 2000


@dataclass(frozen=True)
class BenchConfig:
    """The benchmark's sizes, models, rows and outputs (``recsys-export bench --help``).

    ``users``, ``items``, ``factors``, ``hidden`` override the preset's; ``slow_users``
    None: every user for ``tiny``, :data:`FULL_SLOW_USERS` for ``full``; ``threads``
    None: every core; ``json`` None: ``.bench/bench-<preset>.json``; ``train``: a
    ratings file (or dataset name) to time training on too.
    """

    preset: str = "tiny"
    users: int | None = None
    items: int | None = None
    factors: int | None = None
    hidden: int | None = None
    models: tuple[str, ...] = MODEL_KINDS
    seen: int = 50
    k: int = DEFAULT_K
    repeat: int = 3
    calls: int = 2000
    slow_users: int | None = None
    skip: tuple[str, ...] = ()
    threads: int | None = None
    train: str | None = None
    epochs: int = 5
    json: Path | None = None
    plot: Path | None = None

    def sizes(self) -> dict[str, int]:
        """The preset's sizes with the overrides, checked.

        Raises
        ------
        ConfigError
            An unknown preset, model or row group, no model, a size below 1, or ``k``
            outside ``1..items``.
        """
        check_choice("preset", self.preset, PRESETS)
        sizes = dict(PRESETS[self.preset])
        for key in sizes:
            value = getattr(self, key)
            if value is not None:
                sizes[key] = check_int(key, value, low=1)
        if not self.models:
            raise ConfigError(f"models is empty; name some of {', '.join(MODEL_KINDS)}")
        for model in self.models:
            check_choice("models", model, MODEL_KINDS)
        for group in self.skip:
            check_choice("skip", group, ROW_GROUPS)
        check_int("k", self.k, low=1, high=sizes["items"])
        for name in ("seen", "slow_users", "threads"):
            check_int(name, getattr(self, name), low=0, none_ok=True)
        for name in ("repeat", "calls", "epochs"):
            check_int(name, getattr(self, name), low=1)
        return sizes

    @property
    def slow(self) -> int:
        """Users of the slow rows (0: every user)."""
        if self.slow_users is not None:
            return self.slow_users
        return FULL_SLOW_USERS if self.preset == "full" else 0

    @property
    def json_path(self) -> Path:
        """Where the JSON report is written."""
        return self.json or Path(".bench") / f"bench-{self.preset}.json"


_D = BenchConfig()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``recsys-export bench`` (every default None: :class:`BenchConfig`'s)."""
    a = parser.add_argument
    a(
        "--preset",
        choices=sorted(PRESETS),
        help="sizes: tiny (seconds, the default) or full (100k x 20k, 64 factors, 128 hidden)",
    )
    a("--users", type=int, help="override the preset")
    a("--items", type=int, help="override the preset")
    a("--factors", type=int, help="override the preset")
    a("--hidden", type=int, help="DenseNet hidden units")
    a("--models", help=f"comma list (default {','.join(_D.models)})")
    a("--seen", type=int, help=f"excluded items per user (default {_D.seen})")
    a("--k", type=int, help=f"top-k size (default {_D.k})")
    a("--repeat", type=int, help=f"runs per row (median; default {_D.repeat})")
    a("--calls", type=int, help=f"single-user calls (default {_D.calls})")
    a(
        "--slow-users",
        type=int,
        help="measure torch/numpy/fallback DenseNet rows on this many users (default: "
        f"all for tiny, {FULL_SLOW_USERS} for full)",
    )
    a("--skip", help=f"comma list of row groups to skip: {','.join(ROW_GROUPS)}")
    a("--threads", type=int, help="threads (default: nproc)")
    a("--train", metavar="DATA", help="also train on DATA")
    a("--epochs", type=int, help=f"epochs with --train (default {_D.epochs})")
    a("--json", type=Path, help="JSON report (default .bench/bench-<preset>.json)")
    a("--plot", type=Path, help="PNG chart (needs matplotlib)")


def _names(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    """The :class:`BenchConfig` of parsed :func:`add_arguments` options (None: default)."""
    given: dict[str, Any] = {}
    for f in fields(BenchConfig):
        value = getattr(args, f.name, None)
        if value is None:
            continue
        given[f.name] = _names(value) if f.name in ("models", "skip") else value
    return BenchConfig(**given)
