"""Forward versus reverse cost: time and memory of each method against T or the number of hyperparameters m.

Owns the cost table's schema (:data:`COST_COLUMNS`, as :mod:`hgkit.experiments.cost` and the classroom's cost
explorer write it), the theory of how each method's cost grows, and :func:`cost_curves`.

Example:
    >>> import pandas as pd
    >>> from matplotlib.figure import Figure
    >>> costs = pd.DataFrame({"method": ["reverse", "reverse"], "T": [10, 100], "m": [2, 2],
    ...                       "seconds": [1e-3, 1e-2], "peak_bytes": [2**20, 10 * 2**20]})
    >>> [line] = cost_curves(Figure().subplots(), costs, y="seconds")
    >>> line.get_label(), line.get_ydata().tolist(), line.axes.get_ylabel()
    ('reverse', [1.0, 10.0], 'time per hypergradient (ms)')
"""

from __future__ import annotations

import numpy as np

from .panels import PALETTE

__all__ = ["COST_COLUMNS", "cost_curves"]

COST_COLUMNS = ("method", "T", "m", "seconds", "peak_bytes")
"""The cost table :func:`cost_curves` reads, one row per measurement:

* ``method`` (str): ``"reverse"``, ``"forward"`` (theory lines are drawn for these two) or any other name;
* ``T`` (int): the number of inner training steps;
* ``m`` (int): the number of scalar hyperparameters (the size of the hyperparameter vector);
* ``seconds`` (float): the time of one hypergradient (e.g. a median of several calls, compilation excluded);
* ``peak_bytes`` (int): its peak memory (e.g. the compiled program's ``memory_analysis()``, or a process's
  peak resident memory).
"""

# How each method's cost grows (the exponent of T and of m) and what the theory line is called.
THEORY = {
    ("reverse", "peak_bytes"): ({"T": 1, "m": 0}, "O(T·|s|)"),
    ("forward", "peak_bytes"): ({"T": 0, "m": 1}, "O(m·|s|)"),
    ("reverse", "seconds"): ({"T": 1, "m": 0}, "O(T)"),
    ("forward", "seconds"): ({"T": 1, "m": 1}, "O(m·T)"),
}
METHOD_COLORS = {"reverse": "tab:blue", "forward": "tab:orange"}
UNITS = {
    "peak_bytes": [(2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB"), (1, "bytes")],
    "seconds": [(1.0, "s"), (1e-3, "ms"), (1e-6, "µs")],
}
Y_LABELS = {"peak_bytes": "peak memory", "seconds": "time per hypergradient"}


def _method_key(method) -> str:
    """``"Reverse()"`` and ``"reverse"`` alike."""
    return str(method).lower().removesuffix("()")


def _unit(values, y: str) -> tuple[float, str]:
    """The largest unit in which the largest value is at least 1."""
    top = float(np.nanmax(values)) if len(values) else 0.0
    for scale, unit in UNITS[y]:
        if top >= scale:
            return scale, unit
    return UNITS[y][-1]


def cost_curves(ax, costs, x: str = "T", y: str = "seconds", theory: bool = False, log: bool = True) -> list:
    """Time or memory of each method against T or against the number of hyperparameters m.

    ``costs`` is a DataFrame with the columns of :data:`COST_COLUMNS`. One line per method and value of the other
    variable (``m`` when ``x="T"``), coloured by method. With ``theory=True`` each reverse and forward line gets a
    dashed line of the growth the theory predicts (reverse stores T states: memory O(T·|s|), time O(T); forward
    carries m tangents: memory O(m·|s|), time O(m·T)), drawn through the line's point of largest ``x``, where
    the asymptote is nearest.

    Args:
        ax: the Axes.
        costs: the cost DataFrame.
        x: ``"T"`` or ``"m"``.
        y: ``"seconds"`` or ``"peak_bytes"`` (shown in the unit that suits the largest value).
        theory: draw the theory lines.
        log: log scales on both axes.

    Returns:
        The lines: each measured line followed by its theory line.

    Example:
        >>> import pandas as pd
        >>> from matplotlib.figure import Figure
        >>> costs = pd.DataFrame({"method": ["reverse"] * 3 + ["forward"] * 3, "T": [10, 100, 1000] * 2,
        ...     "m": [2] * 6, "seconds": [1e-3, 1e-2, 1e-1, 2e-3, 2e-2, 2e-1],
        ...     "peak_bytes": [2**20, 10 * 2**20, 100 * 2**20, 2**20, 2**20, 2**20]})
        >>> ax = Figure().subplots()
        >>> lines = cost_curves(ax, costs, x="T", y="peak_bytes", theory=True)
        >>> [l.get_label() for l in lines], ax.get_ylabel()
        (['forward', 'forward: O(m·|s|)', 'reverse', 'reverse: O(T·|s|)'], 'peak memory (MiB)')
        >>> lines[1].get_ydata().tolist()  # forward memory does not grow with T
        [1.0, 1.0]
    """
    missing = [c for c in COST_COLUMNS if c not in costs.columns]
    if missing:
        raise ValueError(f"costs needs the columns {list(COST_COLUMNS)}; missing {missing}")
    if x not in ("T", "m"):
        raise ValueError(f"x must be 'T' or 'm'; got {x!r}")
    if y not in UNITS:
        raise ValueError(f"y must be 'seconds' or 'peak_bytes'; got {y!r}")
    other = "m" if x == "T" else "T"
    scale, unit = _unit(np.asarray(costs[y], dtype=float), y)
    several = costs[other].nunique() > 1
    others = [m for m in sorted(costs["method"].unique()) if _method_key(m) not in METHOD_COLORS]
    colors = {m: PALETTE[(i + 2) % len(PALETTE)] for i, m in enumerate(others)}  # PALETTE[0:2] are blue, orange
    lines = []
    for (method, fixed), rows in costs.groupby(["method", other], sort=True):
        rows = rows.sort_values(x)
        xs, ys = np.asarray(rows[x], dtype=float), np.asarray(rows[y], dtype=float) / scale
        key = _method_key(method)
        color = METHOD_COLORS.get(key) or colors[method]
        label = f"{method}, {other}={fixed}" if several else str(method)
        lines += ax.plot(xs, ys, marker="o", color=color, label=label)
        if theory and (key, y) in THEORY and len(xs):
            exponents, name = THEORY[(key, y)]
            span = np.array([xs.min(), xs.max()])
            lines += ax.plot(
                span,
                ys[-1] * (span / xs[-1]) ** exponents[x],
                linestyle="--",
                color=color,
                alpha=0.7,
                label=f"{label}: {name}",
            )
    if log:
        ax.set_xscale("log")
        ax.set_yscale("log")
    ax.set_xlabel("inner steps T" if x == "T" else "number of hyperparameters m")
    ax.set_ylabel(f"{Y_LABELS[y]} ({unit})")
    ax.legend()
    return lines
