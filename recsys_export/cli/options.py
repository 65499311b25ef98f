"""Option groups and argument types shared by the sub-commands of ``recsys-export``.

A command is a :class:`Command` row (name, help, description, epilog, the function
adding its options, the function running it); :mod:`recsys_export.cli.parser` turns
the table of rows into the parser. Options are data too: :func:`opt` rows added by
:func:`add_options`. Only argparse and the standard library are imported at module level
(torch never is), so that the runtime-only install can parse every command line.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, NoReturn, Protocol, TypeVar

from recsys_export.core.defaults import (
    DEFAULT_DUPLICATES,
    DUPLICATE_POLICIES,
    PARITY_BUDGET,
    PRECISIONS,
)

DATA_HELP = (
    "ratings file (CSV, TSV, '::'-separated .dat, MovieLens u.data, Parquet); "
    "'movielens-small' (default) is the bundled MovieLens latest-small sample, "
    "'toy' the post's 5x4 matrix"
)
PROVIDERS_HELP = (
    "comma list of onnxruntime execution providers in priority order (default "
    "CPUExecutionProvider; e.g. CUDAExecutionProvider,CPUExecutionProvider with "
    "onnxruntime-gpu)"
)
THREADS_HELP = "onnxruntime intra-op threads (default: cores)"
DUPLICATES_HELP = (
    f"policy for duplicate (user, item) rows (default: {DEFAULT_DUPLICATES}, keep the "
    f"{DEFAULT_DUPLICATES})"
)


T = TypeVar("T")


class ArgumentParser(argparse.ArgumentParser):
    """argparse with the CLI's error contract: a usage error is one line on stderr,
    ``PROG: error: MESSAGE (see 'PROG --help')``, and exit status 2 (argparse prints
    the whole usage block first)."""

    def error(self, message: str) -> NoReturn:
        from recsys_export.cli.terminal import safe_text

        line = " ".join(safe_text(message).split())
        self.exit(2, f"{self.prog}: error: {line} (see '{self.prog} --help')\n")


class _Adds(Protocol):
    def add_argument(self, *args: Any, **kwargs: Any) -> Any: ...


#: One option: its flags and the keywords of ``add_argument``.
Option = tuple[tuple[str, ...], dict[str, Any]]


def opt(*flags: str, **kwargs: Any) -> Option:
    """A row of an option table: ``opt("--factors", type=int, help="embedding size")``."""
    return flags, kwargs


def add_options(target: _Adds, options: Iterable[Option]) -> None:
    """Add the rows of an option table to a parser or an argument group."""
    for flags, kwargs in options:
        target.add_argument(*flags, **kwargs)


def add_group(
    p: argparse.ArgumentParser,
    title: str,
    options: Iterable[Option],
    description: str | None = None,
) -> None:
    """An argument group holding the rows of an option table."""
    add_options(p.add_argument_group(title, description), options)


@dataclass(frozen=True)
class Command:
    """A sub-command: a row of :data:`recsys_export.cli.parser.COMMAND_TABLE`.

    ``add_options(parser)`` adds its options; ``run(args)`` builds the library's request
    from the parsed options, makes one library call and prints (exit status returned).
    ``epilog`` may be a function, for text built from a library table when the parser is.
    """

    name: str
    help: str
    description: str
    epilog: str | Callable[[], str]
    add_options: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]

    def add_to(self, sub: Any) -> None:
        """Add the command's parser to the sub-parsers action ``sub``."""
        p = sub.add_parser(
            self.name,
            help=self.help,
            formatter_class=argparse.RawDescriptionHelpFormatter,
            description=self.description,
            epilog=self.epilog() if callable(self.epilog) else self.epilog,
        )
        self.add_options(p)


#: The column flags of a ratings file (the fields of ``ReadOptions`` but --duplicates).
_COLUMN_FLAGS = ("--user-col", "--item-col", "--rating-col", "--timestamp-col", "--sep")


def _column_options(*helps: str) -> tuple[Option, ...]:
    """How a ratings file is read: :data:`_COLUMN_FLAGS` with their ``helps``, then
    --duplicates."""
    return (
        *(opt(flag, help=text) for flag, text in zip(_COLUMN_FLAGS, helps, strict=True)),
        opt("--duplicates", choices=DUPLICATE_POLICIES, help=DUPLICATES_HELP),
    )


#: How train reads DATA.
DATA_COLUMNS = _column_options(
    "user id column (name or 0-based position); detected by default",
    "item id column (name or position)",
    "rating column (name or position)",
    "timestamp column (name or position)",
    "field separator (default: detected; e.g. ',', 'tab', '::')",
)
#: How evaluate reads its --test FILE.
TEST_FILE_COLUMNS = _column_options(
    "user id column (name or 0-based position)",
    "item id column (name or 0-based position)",
    "rating column (name or 0-based position)",
    "timestamp column (name or position)",
    "field separator (default: detected)",
)
SPLIT_OPTIONS = (
    opt(
        "--split",
        choices=["random", "time", "none"],
        help="test rows: random holdout (default), per-user latest ratings (needs "
        "timestamps), or none",
    ),
    opt("--test-fraction", type=float, help="test share of all rows (default 0.2)"),
    opt(
        "--valid-fraction",
        type=float,
        help="validation share of the remaining training rows, for early stopping "
        "(default 0.1; 0 = no validation; none is carved when --patience is 0)",
    ),
    opt(
        "--test",
        type=Path,
        help="a separate test file (same columns as the data): mapped onto the training "
        "file's ids, unknown users/items counted and dropped; replaces --split",
    ),
    opt("--seed", type=int, help="seed of the split, init and shuffling (default 0)"),
)


def add_data_options(p: argparse.ArgumentParser) -> None:
    """``DATA``, how it is read and which rows are held out (train)."""
    p.add_argument("data", nargs="?", default=None, help=DATA_HELP)
    add_group(p, "reading the ratings file", DATA_COLUMNS)
    add_group(p, "held-out rows (test, then validation carved from the rest)", SPLIT_OPTIONS)


def add_items_options(p: argparse.ArgumentParser, where: str) -> None:
    """``--items FILE`` and its columns (train, export); ``where`` ends --items' help."""
    add_group(
        p,
        "item names (shown by 'recommend')",
        (
            opt(
                "--items",
                type=Path,
                metavar="FILE",
                help="file of item ids and names (e.g. MovieLens movies.csv, MovieTweetings "
                f"movies.dat, or Parquet): {where}",
            ),
            opt("--item-id-col", help="id column of --items (name or 0-based position); detected"),
            opt("--item-name-col", help="name column of --items (name or position); detected"),
        ),
    )


def budget_pairs(text: str) -> int:
    """``--budget PAIRS``: a positive integer (``16000000``, ``16_000_000`` or ``1.6e7``)."""
    try:
        value = float(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of pairs: {text!r}") from None
    if not value >= 1 or value != int(value):
        raise argparse.ArgumentTypeError(f"must be a positive whole number of pairs: {text!r}")
    return int(value)


def add_plan_options(p: argparse.ArgumentParser, *, quick: bool = False) -> None:
    """``--full`` / ``--budget`` of export and verify (the parity plan), and verify's
    ``--quick`` (no plan), each excluding the others."""
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
        f"else every item for a seeded, edge-covering sample of users (default {PARITY_BUDGET:,})",
    )


def parity_options(args: argparse.Namespace) -> dict[str, Any]:
    """The keywords of ``export_bundle`` and ``verify_bundle`` that
    :func:`add_tolerance_options` and :func:`add_plan_options` set: ``atol``, ``rtol``,
    ``budget``, ``full``."""
    return {name: getattr(args, name) for name in ("atol", "rtol", "budget", "full")}


def from_args(cls: Callable[..., T], args: argparse.Namespace, **given: Any) -> T:
    """The dataclass ``cls`` (a library request) of the options of its fields' names;
    ``given`` supplies the fields that have no option of their name."""
    names = [f.name for f in fields(cls) if f.name not in given]  # type: ignore[arg-type]
    return cls(**{name: getattr(args, name) for name in names}, **given)


def add_tolerance_options(p: argparse.ArgumentParser, prefix: str = "") -> None:
    """``--atol`` / ``--rtol`` (export, verify): None lets the parity check use the
    float32 error bound."""
    for flag, what in (("--atol", "abs"), ("--rtol", "rel")):
        p.add_argument(
            flag,
            type=float,
            help=f"{prefix}{what} tolerance (default: float32 bound)",
        )


def add_precision_option(p: argparse.ArgumentParser, *, export: bool = False) -> None:
    """--precision of export (write variants) and recommend/score (use one)."""
    if export:
        p.add_argument(
            "--precision",
            metavar="fp16,int8",
            help="also write approximate variants beside the exact graphs: fp16 weights, "
            "int8 per-row factors (MF), or both; each is judged on recall of the exact top-k "
            "lists (default fp32: none)",
        )
        return
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        help="run the bundle's approximate variant (export --precision; default fp32: the "
        "exact graphs)",
    )


def add_runtime_options(p: argparse.ArgumentParser, providers_help: str = PROVIDERS_HELP) -> None:
    """``--threads`` and ``--providers`` of the onnxruntime sessions (recommend, score)."""
    p.add_argument("--threads", type=int, help=THREADS_HELP)
    p.add_argument("--providers", type=comma_list, help=providers_help)


def comma_list(text: str) -> list[str]:
    """``"a, b,c"`` -> ``["a", "b", "c"]`` (argparse type of comma-separated options)."""
    return [part.strip() for part in text.split(",") if part.strip()]
