"""Argument checks with one message shape, in the style of scikit-learn's ``check_*``.

Every check raises the project's exception (:class:`~recsys_export.errors.ConfigError`
unless told otherwise) with the message ``"{name} must be {requirement}, got {value!r}"``
(plus an optional hint), and returns the value normalised (a Python ``int``, ...).
Standard library and numpy only.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from recsys_export.errors import ConfigError, RecsysExportError

__all__ = [
    "NumberCheck",
    "check_choice",
    "check_finite",
    "check_fraction",
    "check_int",
    "check_nonnegative",
    "check_positive",
]


def _fail(
    name: str, requirement: str, value: Any, hint: str, error: type[RecsysExportError]
) -> RecsysExportError:
    return error(f"{name} must be {requirement}, got {value!r}{hint}")


def check_int(
    name: str,
    value: Any,
    *,
    low: int | None = None,
    high: int | None = None,
    none_ok: bool = False,
    hint: str = "",
    error: type[RecsysExportError] = ConfigError,
) -> Any:
    """Check that ``value`` is an integer (not a bool) in ``[low, high]``.

    Parameters
    ----------
    name : str
        The argument's name, as the caller knows it.
    value : Any
        What was given.
    low, high : int, optional
        Inclusive bounds.
    none_ok : bool
        Let ``None`` through (returned as is).
    hint : str
        Appended to the message (e.g. ``" (--workers)"``).
    error : type
        The exception class to raise.

    Returns
    -------
    int or None
        ``int(value)`` (``None`` with ``none_ok``).

    Raises
    ------
    RecsysExportError
        ``error``: not an integer, or out of range.
    """
    if value is None and none_ok:
        return None
    if low == 1 and high is None:
        requirement = "a positive integer (>= 1)"
    elif low is not None and high is not None:
        requirement = f"an integer between {low} and {high}"
    elif low is not None:
        requirement = f"an integer >= {low}"
    elif high is not None:
        requirement = f"an integer <= {high}"
    else:
        requirement = "an integer"
    if none_ok:
        requirement += " or None"
    ok = not isinstance(value, bool) and isinstance(value, (int, np.integer))
    if ok and (low is not None and value < low or high is not None and value > high):
        ok = False
    if not ok:
        shown = int(value) if isinstance(value, np.integer) else value
        raise _fail(name, requirement, shown, hint, error)
    return int(value)


def _real(value: Any) -> bool:
    """A real number (not a bool)."""
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


class NumberCheck:
    """A float check: :data:`check_positive`, :data:`check_nonnegative`,
    :data:`check_fraction`, :data:`check_finite`.

    ``check(name, value, *, none_ok=False, hint="", error=ConfigError)`` wants a finite
    real number (not a bool) for which ``ok(float(value))`` holds; ``none_ok`` lets
    ``None`` through.

    Returns
    -------
    float or None
        ``float(value)`` (``None`` with ``none_ok``).

    Raises
    ------
    RecsysExportError
        ``error``, ``"{name} must be {requirement}, got {value!r}"``: not a number, NaN,
        infinite, or ``ok`` fails.
    """

    def __init__(self, name: str, requirement: str, ok: Callable[[float], bool], doc: str) -> None:
        self.__name__ = name
        self.__doc__ = doc
        self.requirement = requirement
        self.ok = ok

    def __repr__(self) -> str:
        return f"<check {self.__name__}>"

    def __call__(
        self,
        name: str,
        value: Any,
        *,
        none_ok: bool = False,
        hint: str = "",
        error: type[RecsysExportError] = ConfigError,
    ) -> Any:
        if value is None and none_ok:
            return None
        if not (_real(value) and math.isfinite(float(value)) and self.ok(float(value))):
            requirement = self.requirement + (" or None" if none_ok else "")
            raise _fail(name, requirement, value, hint, error)
        return float(value)


check_positive = NumberCheck(
    "check_positive", "positive", lambda v: v > 0, "A finite real number ``> 0``."
)
check_nonnegative = NumberCheck(
    "check_nonnegative", ">= 0", lambda v: v >= 0, "A finite real number ``>= 0``."
)
check_fraction = NumberCheck(
    "check_fraction", "in [0, 1)", lambda v: 0 <= v < 1, "A real number in ``[0, 1)``."
)
check_finite = NumberCheck(
    "check_finite", "a finite number", lambda v: True, "A finite real number (not NaN or infinite)."
)


def check_choice(
    name: str,
    value: Any,
    choices: Iterable[Any],
    *,
    hint: str = "",
    error: type[RecsysExportError] = ConfigError,
) -> Any:
    """Check that ``value`` is one of ``choices`` and return it.

    Raises
    ------
    RecsysExportError
        ``error``: ``value`` is not among ``choices``.
    """
    options = tuple(choices)
    try:
        ok = value in options
    except TypeError:  # unhashable against a dict's keys
        ok = False
    if not ok:
        raise _fail(name, f"one of {', '.join(map(str, options))}", value, hint, error)
    return value
