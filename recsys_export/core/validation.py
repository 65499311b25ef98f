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


def _number_check(
    name: str,
    value: Any,
    requirement: str,
    ok: Callable[[float], bool],
    none_ok: bool,
    hint: str,
    error: type[RecsysExportError],
) -> float | None:
    """The float checks' common part: ``None`` (when let through), then a finite real
    number for which ``ok(float(value))`` holds."""
    if value is None and none_ok:
        return None
    if not (_real(value) and math.isfinite(float(value)) and ok(float(value))):
        raise _fail(name, requirement + (" or None" if none_ok else ""), value, hint, error)
    return float(value)


def check_positive(
    name: str,
    value: Any,
    *,
    none_ok: bool = False,
    hint: str = "",
    error: type[RecsysExportError] = ConfigError,
) -> Any:
    """Check that ``value`` is a finite real number ``> 0`` (NaN and infinity fail).

    Returns
    -------
    float or None
        ``float(value)`` (``None`` with ``none_ok``).

    Raises
    ------
    RecsysExportError
        ``error``: not a positive number.
    """
    return _number_check(name, value, "positive", lambda v: v > 0, none_ok, hint, error)


def check_nonnegative(
    name: str,
    value: Any,
    *,
    none_ok: bool = False,
    hint: str = "",
    error: type[RecsysExportError] = ConfigError,
) -> Any:
    """Check that ``value`` is a finite real number ``>= 0``; return it as a ``float``.

    Raises
    ------
    RecsysExportError
        ``error``: negative, not finite or not a number.
    """
    return _number_check(name, value, ">= 0", lambda v: v >= 0, none_ok, hint, error)


def check_fraction(
    name: str,
    value: Any,
    *,
    none_ok: bool = False,
    hint: str = "",
    error: type[RecsysExportError] = ConfigError,
) -> Any:
    """Check that ``value`` is a real number in ``[0, 1)``; return it as a ``float``.

    Raises
    ------
    RecsysExportError
        ``error``: outside ``[0, 1)`` or not a number.
    """
    return _number_check(name, value, "in [0, 1)", lambda v: 0 <= v < 1, none_ok, hint, error)


def check_finite(
    name: str,
    value: Any,
    *,
    none_ok: bool = False,
    hint: str = "",
    error: type[RecsysExportError] = ConfigError,
) -> Any:
    """Check that ``value`` is a finite real number; return it as a ``float``.

    Raises
    ------
    RecsysExportError
        ``error``: NaN, infinite or not a number.
    """
    return _number_check(name, value, "a finite number", lambda v: True, none_ok, hint, error)


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
