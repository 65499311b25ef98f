"""Option groups and argument types shared by the sub-commands of ``recsys-export``.

Only argparse and the standard library are imported at module level (torch never is),
so that the runtime-only install can parse every command line.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import NoReturn

DATA_HELP = (
    "ratings file (CSV, TSV, '::'-separated .dat, MovieLens u.data, Parquet); "
    "'movielens-small' (default) is the bundled MovieLens latest-small sample, "
    "'toy' the post's 5x4 matrix"
)


class ArgumentParser(argparse.ArgumentParser):
    """argparse with the CLI's error contract: a usage error is one line on stderr,
    ``PROG: error: MESSAGE (see 'PROG --help')``, and exit status 2 (argparse prints
    the whole usage block first)."""

    def error(self, message: str) -> NoReturn:
        from recsys_export.cli.terminal import safe_text

        line = " ".join(safe_text(message).split())
        self.exit(2, f"{self.prog}: error: {line} (see '{self.prog} --help')\n")


def add_data_args(p: argparse.ArgumentParser, *, optional: bool = True) -> None:
    p.add_argument("data", nargs="?" if optional else None, default=None, help=DATA_HELP)
    g = p.add_argument_group("reading the ratings file")
    g.add_argument(
        "--user-col", help="user id column (name or 0-based position); detected by default"
    )
    g.add_argument("--item-col", help="item id column (name or position)")
    g.add_argument("--rating-col", help="rating column (name or position)")
    g.add_argument("--timestamp-col", help="timestamp column (name or position)")
    g.add_argument("--sep", help="field separator (default: detected; e.g. ',', 'tab', '::')")
    g.add_argument(
        "--duplicates",
        choices=["last", "first", "mean", "error"],
        help="policy for duplicate (user, item) rows (default: last, keep the last)",
    )
    s = p.add_argument_group("held-out rows (test, then validation carved from the rest)")
    s.add_argument(
        "--split",
        choices=["random", "time", "none"],
        help="test rows: random holdout (default), per-user latest ratings (needs "
        "timestamps), or none",
    )
    s.add_argument("--test-fraction", type=float, help="test share of all rows (default 0.2)")
    s.add_argument(
        "--valid-fraction",
        type=float,
        default=0.1,
        help="validation share of the remaining training rows, for early stopping "
        "(default 0.1; 0 = no validation; none is carved when --patience is 0)",
    )
    s.add_argument(
        "--test",
        type=Path,
        help="a separate test file (same columns as the data): mapped onto the training "
        "file's ids, unknown users/items counted and dropped; replaces --split",
    )
    s.add_argument("--seed", type=int, default=0, help="seed of the split, init and shuffling")


def add_items_args(p: argparse.ArgumentParser, where: str) -> None:
    g = p.add_argument_group("item names (shown by 'recommend')")
    g.add_argument(
        "--items",
        type=Path,
        metavar="FILE",
        help="file of item ids and names (e.g. MovieLens movies.csv, MovieTweetings "
        f"movies.dat, or Parquet): {where}",
    )
    g.add_argument(
        "--item-id-col", help="id column of --items (name or 0-based position); detected"
    )
    g.add_argument("--item-name-col", help="name column of --items (name or position); detected")


def budget_pairs(text: str) -> int:
    """``--budget PAIRS``: a positive integer (``16000000``, ``16_000_000`` or ``1.6e7``)."""
    try:
        value = float(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of pairs: {text!r}") from None
    if not value >= 1 or value != int(value):
        raise argparse.ArgumentTypeError(f"must be a positive whole number of pairs: {text!r}")
    return int(value)


def add_plan_args(p: argparse.ArgumentParser, *, quick: bool = False) -> None:
    """``--full`` / ``--budget`` of export and verify (the parity plan), and verify's
    ``--quick`` (no plan), each excluding the others."""
    from recsys_export.plan import DEFAULT_BUDGET

    g = p.add_mutually_exclusive_group()
    if quick:
        g.add_argument("--quick", action="store_true", help="random batches only, no plan")
    g.add_argument(
        "--full",
        action="store_true",
        help="compare every user's whole row, whatever the budget",
    )
    g.add_argument(
        "--budget",
        type=budget_pairs,
        metavar="PAIRS",
        help=f"(user, item) pairs compared per format: the whole matrix while it fits, "
        f"else every item for a seeded, edge-covering sample of users (default {DEFAULT_BUDGET:,})",
    )


def comma_list(text: str) -> list[str]:
    """``"a, b,c"`` -> ``["a", "b", "c"]`` (argparse type of comma-separated options)."""
    return [part.strip() for part in text.split(",") if part.strip()]
