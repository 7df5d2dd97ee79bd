"""Checks of plain arguments (counts, positive numbers), shared by every module that takes them.

Example:
    >>> positive_int(3), positive_int(True), positive_int(0)
    (True, False, False)
    >>> require_positive_int("T", 2.5, "the number of training steps")
    Traceback (most recent call last):
    ...
    ValueError: T (the number of training steps) must be a positive int; got 2.5
"""

from __future__ import annotations

import numpy as np


def positive_int(x) -> bool:
    """Whether ``x`` is an int (Python or NumPy, never a bool) of at least 1: the check of every count argument."""
    return isinstance(x, int | np.integer) and not isinstance(x, bool) and x >= 1


def positive_number(x) -> bool:
    """Whether ``x`` is a real number (not a bool) greater than 0."""
    return isinstance(x, int | float | np.integer | np.floating) and not isinstance(x, bool) and x > 0


def require_positive_int(name: str, value, what: str = "", optional: bool = False) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``value`` is a positive int (or None when ``optional``)."""
    if optional and value is None:
        return
    if not positive_int(value):
        desc = f" ({what})" if what else ""
        allowed = "None or a positive int" if optional else "a positive int"
        raise ValueError(f"{name}{desc} must be {allowed}; got {value!r}")
