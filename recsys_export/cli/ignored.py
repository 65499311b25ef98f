"""Options that a command line gives but its command would not use: refused.

``score --all --user 42`` scores every user, not user 42; ``train toy --user-col x``
has no column to pick; ``--include-seen`` without ``--top-k`` changes nothing. Ignoring
such an option silently would let a user believe it took effect, so each is a
:class:`~recsys_export.errors.ConfigError` (one line on stderr, exit 2) saying which
option does not apply and why.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from recsys_export.errors import ConfigError

_COLUMN_FLAGS = ("user_col", "item_col", "rating_col", "timestamp_col", "sep", "duplicates")

#: command -> (option attributes, when they are ignored, why) rows
_Rule = tuple[tuple[str, ...], Callable[[argparse.Namespace], bool], str]
_RULES: dict[str, list[_Rule]] = {
    "train": [
        (
            _COLUMN_FLAGS,
            lambda a: a.data == "toy",
            "'toy' is the post's built-in 5x4 matrix, not a file: there are no columns to "
            "pick; drop the option or train on a ratings file",
        ),
        (
            ("split", "test_fraction"),
            lambda a: a.test is not None,
            "--test FILE gives the test rows, so nothing is split off the data; drop the "
            "option or --test",
        ),
        (
            ("item_id_col", "item_name_col"),
            lambda a: a.items is None and a.data not in (None, "movielens-small"),
            "it picks a column of --items FILE; give --items",
        ),
    ],
    "evaluate": [
        (
            _COLUMN_FLAGS,
            lambda a: a.test is None,
            "it reads the --test FILE, and none is given (without it the checkpoint's "
            "recorded test rows are used)",
        ),
    ],
    "score": [
        (
            ("user", "item"),
            lambda a: a.all,
            "--all scores every user x item; drop --user/--item, or --all to score pairs",
        ),
        (
            ("top_k", "out", "force", "engine", "address", "workers", "device"),
            lambda a: not a.all,
            "it applies to --all (every user); add --all, or drop the option to score "
            "--user/--item pairs",
        ),
        (
            ("include_seen",),
            lambda a: a.top_k is None,
            "it keeps rated items in --top-k lists; the --all .npy matrix and pair scores "
            "hold every score anyway",
        ),
        (
            ("address", "workers"),
            lambda a: a.engine != "ray",
            "it configures --engine ray",
        ),
    ],
    "export": [
        (
            ("item_id_col", "item_name_col"),
            lambda a: a.items is None,
            "it picks a column of --items FILE; give --items",
        ),
        (
            ("keep_partial",),
            lambda a: not a.model,
            "it applies to a state dict exported with --model",
        ),
    ],
}


def _given(args: argparse.Namespace, attr: str) -> bool:
    return getattr(args, attr, None) not in (None, False)


def _flag(attr: str) -> str:
    return "--" + attr.replace("_", "-")


def refuse_ignored(args: argparse.Namespace) -> None:
    """Raise when an option of ``args`` would be ignored by its command.

    Raises
    ------
    ConfigError
        Naming the first such option and why it does not apply.
    """
    for attrs, ignored, why in _RULES.get(args.command, []):
        given = [a for a in attrs if _given(args, a)]
        if given and ignored(args):
            raise ConfigError(f"{_flag(given[0])} would be ignored: {why}")
