"""Checks of plain arguments (counts, positive numbers), shared by every module that takes them.

Example:
    >>> positive_int(3), positive_int(True), positive_int(0)
    (True, False, False)
    >>> require_positive_int("T", 2.5, "the number of training steps")
    Traceback (most recent call last):
    ...
    ValueError: T (the number of training steps) must be a positive int; got 2.5
    >>> require_number("beta", np.float32(0.5), low=0.0), real_number(np.asarray(2)), real_number(float("nan"))
    (0.5, 2.0, None)
"""

from __future__ import annotations

import math
import numbers

import jax
import numpy as np


def positive_int(x) -> bool:
    """Whether ``x`` is an int (Python or NumPy, never a bool) of at least 1: the check of every count argument."""
    return isinstance(x, int | np.integer) and not isinstance(x, bool) and x >= 1


def positive_number(x) -> bool:
    """Whether ``x`` is a real number (not a bool) greater than 0."""
    return isinstance(x, int | float | np.integer | np.floating) and not isinstance(x, bool) and x > 0


def real_number(x) -> float | None:
    """``x`` as a Python float if it is one finite real number, else None: a Python or NumPy int or float (never a
    bool), or a 0-d NumPy or concrete JAX array of such a dtype."""
    if isinstance(x, bool | np.bool_):
        return None
    if isinstance(x, np.ndarray | jax.Array) and not isinstance(x, jax.core.Tracer) and np.ndim(x) == 0:
        if not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
            return None
        x = x.item()
    if not isinstance(x, numbers.Real) or not math.isfinite(x):
        return None
    return float(x)


def require_number(name: str, value, low: float = -math.inf, high: float = math.inf, allowed: str = "") -> float:
    """``value`` as a float; ``ValueError`` naming ``name`` unless it is a finite real number (:func:`real_number`)
    in ``[low, high]``. ``allowed`` says what is accepted, when more than that (``'a number in [0, 1] or "adapt"'``)."""
    x = real_number(value)
    if x is None or not low <= x <= high:
        if not allowed:
            allowed = "a finite number"
            if math.isfinite(low) and math.isfinite(high):
                allowed += f" in [{low:g}, {high:g}]"
            elif math.isfinite(low) or math.isfinite(high):
                allowed += f" >= {low:g}" if math.isfinite(low) else f" <= {high:g}"
        raise ValueError(f"{name} must be {allowed}; got {value!r}")
    return x


def require_positive_int(name: str, value, what: str = "", optional: bool = False) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``value`` is a positive int (or None when ``optional``).

    A traced value (``name`` an argument of a function under ``jax.jit``) is told to be made static: a count sets
    the shapes and loop lengths of the computation, so it must be a Python int while tracing."""
    if optional and value is None:
        return
    if not positive_int(value):
        desc = f" ({what})" if what else ""
        allowed = "None or a positive int" if optional else "a positive int"
        if isinstance(value, jax.core.Tracer):
            static = f'static_argnames=("{name}",)' if name.isidentifier() else "static_argnames=(...)"
            raise ValueError(
                f"{name}{desc} must be {allowed}, a Python int while tracing, not a traced value; got {value!r}. "
                f"Under jax.jit make it static: jax.jit(f, {static}), or static_argnums=(i,) with its position i."
            )
        raise ValueError(f"{name}{desc} must be {allowed}; got {value!r}")
