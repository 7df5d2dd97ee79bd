"""Plots of a hyperparameter-optimization run: an ``ax`` and a history in, the artists out.

Every function draws on the matplotlib ``Axes`` it is given and returns the artists it drew (lines, bands,
histograms); none calls ``plt.show()``. The history is the loop's DataFrame (one row per hyper-iteration, columns
``iteration``, ``inner_steps``, ``wall_time``, ``val_loss``, ``train_loss``, ``grad_norm``, ``grad_norm.<hp>``,
``<hp>`` or ``<hp>.mean/.min/.max``, metrics; ``history.attrs`` names the hyperparameters), or a result that has
one as ``.history``. Each hyperparameter keeps one colour in every panel: :func:`hyperparameter_colors` assigns
them by the hyperparameter's position in ``history.attrs["hyperparameters"]``. A population's history (a ``member``
column, ``HyperOptimizer.run(..., population=P)``) gets one line per member, all alike and labelled once.

This module is imported on demand (``import hgkit.plot``); ``import hgkit`` does not load matplotlib.

Example:
    >>> import pandas as pd
    >>> from matplotlib.figure import Figure
    >>> import hgkit.plot
    >>> history = pd.DataFrame({"iteration": [0, 1, 2], "inner_steps": [50, 100, 150],
    ...     "wall_time": [0.1, 0.2, 0.3], "val_loss": [0.9, 0.5, 0.4], "train_loss": [0.8, 0.4, 0.3],
    ...     "grad_norm": [2.0, 1.0, 0.5], "grad_norm.lr": [2.0, 1.0, 0.5], "lr": [0.1, 0.2, 0.25]})
    >>> history.attrs.update(hyperparameters=["lr"], scalars=["lr"], vectors=[], objectives=["val_loss"],
    ...                      metrics=[])
    >>> ax = Figure().subplots()
    >>> [line] = hgkit.plot.hyperparameters(ax, history)
    >>> line.get_ydata().tolist(), ax.get_xlabel()
    ([0.1, 0.2, 0.25], 'hyper-iteration')
    >>> lines = hgkit.plot.grad_norms(Figure().subplots(), history)
    >>> [(l.get_label(), l.axes.get_yscale()) for l in lines]
    [('all hyperparameters', 'log'), ('lr', 'log')]
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from matplotlib import colormaps

__all__ = [
    "COST_COLUMNS",
    "cost_curves",
    "example_weights",
    "grad_norms",
    "history_of",
    "hyperparameter_colors",
    "hyperparameter_names",
    "hyperparameters",
    "losses",
    "metrics",
    "overview",
    "schedule",
]

X_LABELS = {"iteration": "hyper-iteration", "inner_steps": "inner training steps", "wall_time": "wall time (s)"}
# tab10 without its grey, which is kept for the training loss (black is the overall norm and the validation loss).
PALETTE = [c for i, c in enumerate(colormaps["tab10"].colors) if i != 7]
GROUP_COLORS = ["tab:blue", "tab:red", "tab:green", "tab:purple", "tab:orange", "tab:brown"]


# ----- reading the history ------------------------------------------------------------------------------------


def history_of(result_or_history) -> Any:
    """The history DataFrame of a loop result (its ``.history``), or the DataFrame itself."""
    if hasattr(result_or_history, "columns") and hasattr(result_or_history, "attrs"):
        return result_or_history
    history = getattr(result_or_history, "history", None)
    if history is None or not hasattr(history, "columns"):
        raise TypeError(
            "expected a history DataFrame or a result with a .history DataFrame (the optimization loop's); "
            f"got {type(result_or_history).__name__}"
        )
    return history


def hyperparameter_names(history) -> list[str]:
    """The hyperparameters of a history, from ``history.attrs["hyperparameters"]``."""
    names = history.attrs.get("hyperparameters")
    if names is None:
        raise ValueError(
            "history.attrs has no 'hyperparameters' list (a DataFrame rebuilt by hand loses its attrs): "
            "pass names=[...] explicitly"
        )
    return list(names)


def hyperparameter_colors(names: Sequence[str]) -> dict[str, Any]:
    """A colour for each hyperparameter name, by its position in ``names`` (stable across panels and calls).

    Example:
        >>> colors = hyperparameter_colors(["lr", "mu", "ex_w"])
        >>> colors["mu"] == hyperparameter_colors(["lr", "mu"])["mu"]
        True
    """
    return {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(names)}


def _colors(history, names, colors):
    """The history's hyperparameter colours (names it lacks come after them), overridden by those given."""
    known = list(history.attrs.get("hyperparameters") or [])
    return {**hyperparameter_colors(known + [n for n in names if n not in known]), **(colors or {})}


def _require(history, columns, what: str) -> None:
    missing = [c for c in columns if c not in history.columns]
    if missing:
        raise ValueError(f"{what}: the history has no column {missing[0]!r}; its columns are {list(history.columns)}")


def _x(history, x: str):
    if x not in X_LABELS:
        raise ValueError(f"x must be one of {list(X_LABELS)}; got {x!r}")
    _require(history, [x], f"x={x!r}")
    return np.asarray(history[x], dtype=float)


def _members(history) -> list:
    """The history's rows per population member (one group for a single run's history)."""
    if "member" not in history.columns:
        return [history]
    return [rows for _, rows in history.groupby("member", sort=True)]


def _plot(ax, history, x: str, column: str, **style) -> list:
    """``column`` against ``x``: one line, or in a population's history one per member, alike and labelled once."""
    lines = []
    for k, rows in enumerate(_members(history)):
        lines += ax.plot(_x(rows, x), rows[column], **(style if k == 0 else {**style, "label": "_nolegend_"}))
        style.setdefault("color", lines[0].get_color())  # the next members in the first one's colour
    return lines


def _is_vector(history, name: str) -> bool:
    if name in history.columns:
        return False
    if f"{name}.mean" in history.columns:
        return True
    known = history.attrs.get("hyperparameters")
    raise ValueError(
        f"no hyperparameter {name!r} in the history (neither a column {name!r} nor {name + '.mean'!r}); "
        f"its hyperparameters are {known if known is not None else list(history.columns)}"
    )


def _objective_columns(history) -> list[str]:
    """``["val_loss"]``, or one ``val_loss.<name>`` column per objective."""
    if "val_loss" in history.columns:
        return ["val_loss"]
    columns = [c for c in history.columns if c.startswith("val_loss.")]
    if not columns:
        raise ValueError(f"the history has no val_loss column; its columns are {list(history.columns)}")
    return columns


def _metric_columns(history) -> list[str]:
    return [c for c in history.attrs.get("metrics", []) if c in history.columns]


# ----- history panels ----------------------------------------------------------------------------------------


def hyperparameters(
    ax, history, names: Sequence[str] | None = None, x: str = "iteration", colors=None, band: bool = True
) -> list:
    """Hyperparameter trajectories: each scalar as a line; each vector as its mean with a min–max band.

    Args:
        ax: the matplotlib Axes to draw on.
        history: the loop's history DataFrame, or a result with ``.history``.
        names: the hyperparameters to draw (default: all of ``history.attrs["hyperparameters"]``). Put ones of
            similar size together, or give each its own Axes (as :func:`overview` does).
        x: ``"iteration"``, ``"inner_steps"`` or ``"wall_time"``.
        colors: ``{name: colour}``; default :func:`hyperparameter_colors` of the history's hyperparameters.
        band: shade a vector's min–max range.

    Returns:
        The artists: per hyperparameter its line, then its band (a ``PolyCollection``) for a vector.
    """
    history = history_of(history)
    names = list(names) if names is not None else hyperparameter_names(history)
    colors = _colors(history, names, colors)
    _x(history, x)  # refuse a bad x before drawing anything
    artists = []
    for name in names:
        if _is_vector(history, name):
            _require(history, [f"{name}.min", f"{name}.max"], f"hyperparameter {name!r}")
            artists += _plot(ax, history, x, f"{name}.mean", color=colors[name], label=f"{name} (mean)")
            for k, rows in enumerate(_members(history) if band else []):
                label = f"{name} (min–max)" if k == 0 else "_nolegend_"
                low, high = rows[f"{name}.min"], rows[f"{name}.max"]
                artists.append(
                    ax.fill_between(_x(rows, x), low, high, color=colors[name], alpha=0.2, linewidth=0, label=label)
                )
        else:
            artists += _plot(ax, history, x, name, color=colors[name], label=name)
    ax.set_xlabel(X_LABELS[x])
    ax.set_ylabel("hyperparameter value")
    if len(artists) > 1:
        ax.legend()
    return artists


def grad_norms(
    ax, history, names: Sequence[str] | None = None, x: str = "iteration", total: bool = True, colors=None
) -> list:
    """Hypergradient norms on a log scale: ``grad_norm`` (black) and ``grad_norm.<hp>`` per hyperparameter.

    Args:
        ax, history, x, colors: as in :func:`hyperparameters`.
        names: the hyperparameters whose own norm is drawn (default: all; ``[]`` for the overall norm only).
        total: draw the norm over all hyperparameters.

    Returns:
        The lines, the overall one first.
    """
    history = history_of(history)
    names = list(names) if names is not None else hyperparameter_names(history)
    colors = _colors(history, names, colors)
    _x(history, x)  # refuse a bad x before drawing anything
    _require(history, (["grad_norm"] if total else []) + [f"grad_norm.{n}" for n in names], "grad_norms")
    lines = []
    if total:
        lines += _plot(ax, history, x, "grad_norm", color="black", linewidth=2, label="all hyperparameters")
    for name in names:
        lines += _plot(ax, history, x, f"grad_norm.{name}", color=colors[name], label=name)
    ax.set_yscale("log")
    ax.set_xlabel(X_LABELS[x])
    ax.set_ylabel("hypergradient norm ‖∇f‖")
    ax.legend()
    return lines


def losses(ax, history, x: str = "iteration", train: bool = True, logy: bool = False) -> list:
    """Validation (outer objective) and training curves.

    The validation loss of row k is f(λ_k) after that iteration's training; the training loss is the one of its
    last inner step. With several objectives, one line per ``val_loss.<name>`` column.

    Args:
        ax, history, x: as in :func:`hyperparameters`.
        train: also draw the training loss (grey, dashed).
        logy: log scale for the losses.

    Returns:
        The lines: the objective(s), then the training loss.
    """
    history = history_of(history)
    _x(history, x)  # refuse a bad x before drawing anything
    lines = []
    for column, style in zip(_objective_columns(history), ["-", "-.", ":", (0, (5, 1))] * 4, strict=False):
        label = "validation loss" if column == "val_loss" else f"objective {column.split('.', 1)[1]}"
        lines += _plot(ax, history, x, column, color="black", linestyle=style, label=label)
    if train:
        _require(history, ["train_loss"], "losses")
        lines += _plot(ax, history, x, "train_loss", color="0.5", linestyle="--", label="training loss (last step)")
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(X_LABELS[x])
    ax.set_ylabel("loss")
    ax.legend()
    return lines


def metrics(ax, history, names: Sequence[str] | None = None, x: str = "iteration") -> list:
    """The user metrics (``history.attrs["metrics"]``, e.g. ``test_accuracy``), one line each."""
    history = history_of(history)
    names = list(names) if names is not None else _metric_columns(history)
    _require(history, names, "metrics")
    _x(history, x)  # refuse a bad x before drawing anything
    lines = []
    for name in names:
        lines += _plot(ax, history, x, name, label=name)
    ax.set_xlabel(X_LABELS[x])
    ax.set_ylabel(names[0] if len(names) == 1 else "metric")
    if len(names) > 1:
        ax.legend()
    return lines


# ----- snapshots ---------------------------------------------------------------------------------------------


def _snapshots(snapshots_or_result) -> Mapping:
    snapshots = getattr(snapshots_or_result, "snapshots", snapshots_or_result)
    if not isinstance(snapshots, Mapping):
        raise TypeError(
            "expected snapshots {iteration: {name: array}} or a result with .snapshots; "
            f"got {type(snapshots_or_result).__name__}"
        )
    return snapshots


def _spread(items: list, n: int) -> list:
    """At most n items, evenly spaced, the first and last included."""
    if len(items) <= n:
        return items
    return [items[i] for i in np.unique(np.round(np.linspace(0, len(items) - 1, n)).astype(int))]


def schedule(
    ax,
    snapshots_or_result,
    name: str,
    iterations: Sequence[int] | None = None,
    max_lines: int = 6,
    cmap: str = "viridis",
    ylabel: str | None = None,
) -> list:
    """A schedule (a vector hyperparameter indexed by inner step, e.g. the learning rate η_t) as it evolves.

    One line per snapshot, coloured from early (dark) to late (light) hyper-iterations.

    Args:
        ax: the Axes.
        snapshots_or_result: ``result.snapshots`` (``{iteration: {name: array}}``) or the result itself.
        name: the hyperparameter (a 1-D vector: its entry t is used at inner step t).
        iterations: the snapshots to draw (default: at most ``max_lines`` of them, evenly spread).
        max_lines: the most lines drawn when ``iterations`` is not given.
        cmap: the colormap from first to last iteration drawn.
        ylabel: the y label (default: ``name``).

    Returns:
        The lines, in order of iteration.
    """
    snapshots = _snapshots(snapshots_or_result)
    having = sorted(k for k, v in snapshots.items() if name in v)
    if not having:
        raise ValueError(
            f"no snapshot holds {name!r}; snapshots hold {sorted({n for v in snapshots.values() for n in v})}"
        )
    if iterations is None:
        iterations = _spread(having, max_lines)
    missing = [k for k in iterations if k not in having]
    if missing:
        raise ValueError(f"no snapshot of {name!r} at iterations {missing}; there are snapshots at {having}")
    colormap = colormaps[cmap]
    lines = []
    for i, k in enumerate(iterations):
        values = np.asarray(snapshots[k][name])
        if values.ndim != 1:
            raise ValueError(f"schedule: {name!r} must be a 1-D vector (one value per inner step); got {values.shape}")
        color = colormap(0.85 * i / max(len(iterations) - 1, 1))  # stop before the palest yellow
        lines += ax.plot(np.arange(values.size), values, color=color, label=f"iteration {k}")
    ax.set_xlabel("inner step t")
    ax.set_ylabel(ylabel or name)
    ax.legend()
    return lines


def example_weights(
    ax,
    weights,
    groups,
    names: Mapping[Any, str] | None = None,
    kind: str = "hist",
    bins: int = 30,
) -> list:
    """Per-example weights split by a label, e.g. clean versus corrupted examples in hyper-cleaning.

    Args:
        ax: the Axes.
        weights: one weight per example (e.g. ``result.snapshots[k]["ex_w"]``).
        groups: one label per example (bools or ints), e.g. the corruption mask.
        names: ``{label: display name}``, e.g. ``{False: "clean", True: "corrupted"}``.
        kind: ``"hist"`` (one histogram per group, shared bins) or ``"sorted"`` (every weight against its rank
            from largest to smallest, coloured by group: a good separation puts one group left, the other right).
        bins: the number of histogram bins.

    Returns:
        Per group (in sorted label order): the histogram's patches (``"hist"``) or its scatter (``"sorted"``).

    Example:
        >>> from matplotlib.figure import Figure
        >>> ax = Figure().subplots()
        >>> _ = example_weights(ax, [0.9, 0.1, 0.8, 0.2], [False, True, False, True],
        ...                     names={False: "clean", True: "corrupted"}, kind="sorted")
        >>> [t.get_text() for t in ax.get_legend().get_texts()]
        ['clean (2)', 'corrupted (2)']
    """
    weights = np.asarray(weights).reshape(-1) if np.ndim(weights) <= 1 else None
    if weights is None:
        raise ValueError("weights must be a 1-D array (one weight per example)")
    groups = np.asarray(groups)
    if groups.shape != weights.shape:
        raise ValueError(f"groups must have one label per weight: weights {weights.shape}, groups {groups.shape}")
    if kind not in ("hist", "sorted"):
        raise ValueError(f"kind must be 'hist' or 'sorted'; got {kind!r}")
    names = dict(names or {})
    labels = np.unique(groups)
    artists = []
    if kind == "hist":
        edges = np.histogram_bin_edges(weights, bins=bins)
        for i, g in enumerate(labels):
            w = weights[groups == g]
            _, _, patches = ax.hist(
                w,
                bins=edges,
                histtype="stepfilled",
                alpha=0.5,
                color=GROUP_COLORS[i % len(GROUP_COLORS)],
                label=f"{names.get(g, str(g))} ({w.size})",
            )
            artists.append(patches)
        ax.set_xlabel("example weight")
        ax.set_ylabel("number of examples")
    else:
        order = np.argsort(-weights, kind="stable")
        rank = np.empty_like(order)
        rank[order] = np.arange(weights.size)
        for i, g in enumerate(labels):
            mask = groups == g
            artists.append(
                ax.scatter(
                    rank[mask],
                    weights[mask],
                    s=6,
                    color=GROUP_COLORS[i % len(GROUP_COLORS)],
                    label=f"{names.get(g, str(g))} ({int(mask.sum())})",
                )
            )
        ax.set_xlabel("rank (largest weight first)")
        ax.set_ylabel("example weight")
    ax.legend()
    return artists


# ----- forward versus reverse cost ---------------------------------------------------------------------------

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


# ----- the overview ------------------------------------------------------------------------------------------


def overview(result_or_history, x: str = "iteration", names: Sequence[str] | None = None, columns: int = 4, fig=None):
    """One figure of a whole run: each hyperparameter's trajectory in its own panel, the hypergradient norms,
    the losses and (if any) the metrics, every hyperparameter in the same colour throughout.

    Args:
        result_or_history: the loop's result or its history DataFrame.
        x: ``"iteration"``, ``"inner_steps"`` or ``"wall_time"``.
        names: the hyperparameters shown (default: all).
        columns: hyperparameter panels per row.
        fig: a matplotlib Figure to draw into (default: a new pyplot figure, so that notebooks show it).

    Returns:
        ``(fig, axes)`` with ``axes`` a dict: ``"hp:<name>"`` per hyperparameter, ``"grad_norm"``, ``"loss"``,
        and ``"metrics"`` when the history has metrics.
    """
    history = history_of(result_or_history)
    names = list(names) if names is not None else hyperparameter_names(history)
    colors = _colors(history, names, None)
    bottom = ["grad_norm", "loss"] + (["metrics"] if _metric_columns(history) else [])
    width = max(min(len(names), columns), len(bottom))
    rows = max(math.ceil(len(names) / width), 1)
    if fig is None:
        fig = plt.figure(figsize=(3.6 * width, 2.8 * (rows + 1)), layout="constrained")
    top, low = fig.subfigures(2, 1, height_ratios=[rows, 1.15])
    axes = {}
    grid = np.atleast_1d(top.subplots(rows, width, squeeze=False)).reshape(-1)
    for ax, name in zip(grid, names, strict=False):
        hyperparameters(ax, history, [name], x=x, colors=colors)
        ax.set_title(name, color=colors[name])
        axes[f"hp:{name}"] = ax
    for ax in grid[len(names) :]:
        ax.remove()
    for ax, panel in zip(np.atleast_1d(low.subplots(1, len(bottom))), bottom, strict=True):
        axes[panel] = ax
    grad_norms(axes["grad_norm"], history, names, x=x, colors=colors)
    axes["grad_norm"].set_title("hypergradient norm")
    losses(axes["loss"], history, x=x)
    axes["loss"].set_title("outer objective and training loss")
    if "metrics" in axes:
        metrics(axes["metrics"], history, x=x)
        axes["metrics"].set_title("metrics")
    method = history.attrs.get("method")
    fig.suptitle(f"{method + ': ' if method else ''}{len(history)} hyper-iterations")
    return fig, axes
