"""Panels of a run's history: hyperparameter trajectories, hypergradient norms, losses, metrics, and the overview.

Owns how a history is drawn; which column is what (a scalar's value, a vector's quantiles ``.q10`` / ``.median`` /
``.q90`` and extremes ``.min`` / ``.max``, the objectives, the metrics) is read from the history's
:class:`~hgkit.history.RunInfo` (:meth:`RunInfo.of(history) <hgkit.history.RunInfo.of>`: ``history.attrs`` as the
loop writes them, or the columns of a frame that lost them). Also owns the colours: each hyperparameter keeps one in
every panel (:func:`hyperparameter_colors`, by its position among the run's hyperparameters), and the scales: a
hyperparameter constrained with ``log()``, or positive and spanning more than a decade, is drawn on a log axis
(:func:`hyperparameter_scale`). A population's history (a ``member`` column) gets one line per member, all alike and
labelled once. Hyper-iteration axes get integer ticks; log axes as many short tick labels as their length holds
(:class:`ReadableLogLocator`), also within one decade; legends go outside the axes, to their right, where they hide
no data (a spike of the hypergradient norm included).

Example:
    >>> import pandas as pd
    >>> from matplotlib.figure import Figure
    >>> history = pd.DataFrame({"iteration": [0, 1, 2], "inner_steps": [50, 100, 150],
    ...     "wall_time": [0.1, 0.2, 0.3], "val_loss": [0.9, 0.5, 0.4], "train_loss": [0.8, 0.4, 0.3],
    ...     "grad_norm": [2.0, 1.0, 0.5], "grad_norm.lr": [2.0, 1.0, 0.5], "lr": [0.1, 0.2, 0.25]})
    >>> history.attrs.update(hyperparameters=["lr"], scalars=["lr"], vectors=[], objectives=["val_loss"],
    ...                      metrics=[])
    >>> ax = Figure().subplots()
    >>> [line] = hyperparameters(ax, history)
    >>> line.get_ydata().tolist(), ax.get_xlabel()
    ([0.1, 0.2, 0.25], 'hyper-iteration')
    >>> lines = grad_norms(Figure().subplots(), history)
    >>> [(l.get_label(), l.axes.get_yscale()) for l in lines]
    [('all hyperparameters', 'log'), ('lr', 'log')]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from matplotlib import colormaps
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

from ..history import RunInfo

__all__ = [
    "ReadableLogLocator",
    "grad_norms",
    "history_of",
    "hyperparameter_colors",
    "hyperparameter_names",
    "hyperparameter_scale",
    "hyperparameters",
    "legend_columns",
    "legend_outside",
    "log_ticks",
    "losses",
    "metrics",
    "overview",
]

X_LABELS = {"iteration": "hyper-iteration", "inner_steps": "inner training steps", "wall_time": "wall time (s)"}
# tab10 without its grey, which is kept for the training loss (black is the overall norm and the validation loss).
PALETTE = [c for i, c in enumerate(colormaps["tab10"].colors) if i != 7]
SCALES = ("auto", "linear", "log")
DECADE = 10.0  # a positive hyperparameter whose values span more than this factor is drawn on a log axis
COMPACT = dict(handlelength=1.5, handletextpad=0.5, columnspacing=1.0)  # a legend's spacing, in em: 3 an entry


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
    """The hyperparameters of a history, as its ``attrs`` name them (the default of what the panels draw).

    A frame that lost its ``attrs`` (rebuilt by hand, read from a file) is refused rather than guessed from: pass
    ``names=[...]`` to the panels.
    """
    if "hyperparameters" not in history.attrs:
        raise ValueError(
            "history.attrs has no 'hyperparameters' list (a DataFrame rebuilt by hand loses its attrs): "
            "pass names=[...] explicitly"
        )
    return list(RunInfo.of(history).hyperparameters)


def hyperparameter_colors(names: Sequence[str]) -> dict[str, Any]:
    """A colour for each hyperparameter name, by its position in ``names`` (stable across panels and calls).

    Example:
        >>> colors = hyperparameter_colors(["lr", "mu", "ex_w"])
        >>> colors["mu"] == hyperparameter_colors(["lr", "mu"])["mu"]
        True
    """
    return {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(names)}


def _colors(info: RunInfo, names, colors):
    """The run's hyperparameter colours (names it lacks come after them), overridden by those given."""
    known = list(info.hyperparameters)
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


def _check_hyperparameter(info: RunInfo, name: str) -> None:
    if name not in info.hyperparameters:
        raise ValueError(
            f"no hyperparameter {name!r} in the history; its hyperparameters are {list(info.hyperparameters)}"
        )


def _metric_columns(info: RunInfo, history) -> list[str]:
    return [c for c in info.metrics if c in history.columns]


def _value_columns(info: RunInfo, history, name: str) -> list[str]:
    """The columns that hold hyperparameter ``name``'s values (a vector's extremes and quantiles)."""
    if name not in info.vectors:
        return [name]
    return [c for c in (f"{name}.{s}" for s in ("min", "q10", "median", "q90", "max")) if c in history]


def hyperparameter_scale(history, name: str) -> str:
    """``"log"`` or ``"linear"``: the y scale that shows hyperparameter ``name``'s trajectory.

    Log for a hyperparameter constrained with :func:`hgkit.constraints.log` (``history.attrs["log_scale"]``), and
    for one whose drawn values are all positive and span more than a decade (a factor of 10); linear otherwise.

    Example:
        >>> import pandas as pd
        >>> h = pd.DataFrame({"wd": [1e-3, 5e-3, 2e-2], "mu": [0.5, 0.7, 0.9]})
        >>> h.attrs.update(hyperparameters=["wd", "mu"], scalars=["wd", "mu"], vectors=[])
        >>> hyperparameter_scale(h, "wd"), hyperparameter_scale(h, "mu")
        ('log', 'linear')
    """
    history = history_of(history)
    info = RunInfo.of(history)
    if name in info.log_scale:
        return "log"
    values = np.asarray(history[_value_columns(info, history, name)], dtype=float)
    values = values[np.isfinite(values)]
    if values.size and values.min() > 0 and values.max() > DECADE * values.min():
        return "log"
    return "linear"


def _short(value: float) -> str:
    """A short tick label: ``0.02``, ``350``, ``2e-5``, ``1.5e6``."""
    if value == 0 or 1e-3 <= abs(value) < 1e4:
        return f"{value:.3g}"
    mantissa, exponent = f"{value:.1e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


class ReadableLogLocator(LogLocator):
    """Labelled ticks of a log axis, as many as its length holds, so that a value can be read off.

    matplotlib labels a log axis at whole decades only, so an axis within one or two decades carries two labels or
    fewer. Here an axis that spans less than a decade gets evenly spaced round values (0.05, 0.06, … 0.09; at least
    three), and a wider one the densest of the mantissa sets 1–9, (1, 2, 3, 5, 7), (1, 2, 5), (1, 3), (1) whose
    ticks in view fit it, or every k-th decade where even (1) is too dense. An axis holds one label per ``spacing``
    label heights, ``most`` at most (or ``room``, given). :func:`log_ticks` puts it on an axis with short labels.

    Example:
        >>> locator = ReadableLogLocator(room=4)
        >>> def shown(low, high):
        ...     ticks = locator.tick_values(low, high)
        ...     return [float(f"{t:.3g}") for t in ticks if low * (1 - 1e-9) <= t <= high * (1 + 1e-9)]
        >>> shown(0.05, 0.094), shown(6e-4, 1e-3)
        ([0.05, 0.06, 0.07, 0.08, 0.09], [0.0006, 0.0008, 0.001])
        >>> shown(0.02, 0.3), shown(1e-4, 1e-2)
        ([0.02, 0.05, 0.1, 0.2], [0.0001, 0.001, 0.01])
    """

    MANTISSAS = ((1, 2, 3, 4, 5, 6, 7, 8, 9), (1, 2, 3, 5, 7), (1, 2, 5), (1, 3), (1,))

    def __init__(self, most: int = 8, spacing: float = 1.5, room: int | None = None):
        super().__init__(base=10.0)
        self.most, self.spacing, self.room = most, spacing, room

    def _room(self) -> int:
        """How many labels the axis holds: its length over ``spacing`` label heights, 3 to ``most``."""
        if self.room is not None:
            return self.room
        axis = self.axis
        if axis is None or axis.axes is None:
            return self.most
        ax = axis.axes
        length = ax.bbox.height if axis is ax.yaxis else ax.bbox.width  # pixels
        size = axis.get_major_ticks(1)[0].label1.get_fontsize() * ax.figure.dpi / 72  # pixels
        return max(3, min(self.most, int(length / (self.spacing * size))))

    def tick_values(self, vmin, vmax):
        vmin, vmax = sorted((vmin, vmax))
        if not (np.isfinite(vmin) and np.isfinite(vmax)) or vmax <= 0:
            return super().tick_values(vmin, vmax)
        vmin = vmin if vmin > 0 else vmax * 1e-3
        room = self._room()
        if vmax < 10 * vmin:  # within a decade: round values, as on a linear axis
            ticks = MaxNLocator(nbins=room - 1, steps=[1, 2, 2.5, 5, 10], min_n_ticks=3).tick_values(vmin, vmax)
            return ticks[ticks > 0]
        low, high = math.floor(math.log10(vmin)), math.ceil(math.log10(vmax))
        tolerance = 1e-9 * vmax
        for mantissas in self.MANTISSAS:
            ticks = [m * 10.0**e for e in range(low - 1, high + 1) for m in mantissas]
            if sum(vmin - tolerance <= t <= vmax + tolerance for t in ticks) <= room:
                return np.asarray(ticks)
        step = math.ceil((high - low) / room)  # every step-th decade
        return np.asarray([10.0**e for e in range(low - low % step - step, high + step + 1, step)])


def log_ticks(axis, most: int = 8) -> None:
    """Give a log ``axis`` (``ax.yaxis``) readable ticks: :class:`ReadableLogLocator`, labelled by short numbers
    (``0.05``, ``7.5e-4``), and unlabelled minor ticks at the other mantissas."""
    axis.set_major_locator(ReadableLogLocator(most=most))
    axis.set_major_formatter(FuncFormatter(lambda value, _: _short(value)))
    axis.set_minor_locator(LogLocator(base=10.0, subs=np.arange(2, 10)))
    axis.set_minor_formatter(NullFormatter())


def legend_outside(ax, where: str = "right", **style):
    """The legend of ``ax`` outside the axes, where it hides no data (a spike, a curve's end): at their right
    (``"right"``, the entries in a column) or above them (``"above"``: in place of a title, in as many columns as
    fit the axes' width unless ``ncols`` is given). Layouts that make room (``layout="constrained"``,
    ``bbox_inches="tight"``) include it; None without labels.

    Example:
        >>> from matplotlib.figure import Figure
        >>> fig = Figure(figsize=(4, 3))
        >>> ax = fig.subplots()
        >>> _ = ax.plot([1, 2], label="validation loss"), ax.plot([2, 1], label="training loss (last step)")
        >>> legend = legend_outside(ax, "above")
        >>> fig.draw_without_rendering()
        >>> bool(legend.get_window_extent().y0 >= ax.get_window_extent().y1)  # above the axes, off the data
        True
    """
    labels = ax.get_legend_handles_labels()[1]
    if not labels:
        return None
    if where == "above":
        style = {"fontsize": "small", **COMPACT, **style}
        if "ncols" not in style:
            width = ax.bbox.width * 72 / ax.figure.dpi  # points
            style["ncols"] = legend_columns(labels, width, style["fontsize"])
        style = dict(loc="lower left", bbox_to_anchor=(0.0, 1.0), borderaxespad=0.3, **style)
    elif where == "right":
        style = dict(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, **style)
    else:
        raise ValueError(f"where must be 'right' or 'above'; got {where!r}")
    return ax.legend(frameon=False, **style)


def legend_columns(labels: Sequence[str], width: float, fontsize=None) -> int:
    """How many columns of a legend with these labels fit ``width`` points (matplotlib fills the columns first;
    each entry is its label's width, measured in the legend's font, and 3 em of handle and gaps: :data:`COMPACT`).

    Example:
        >>> legend_columns(["all hyperparameters", "lr", "mu", "wd"], 220, 8), legend_columns(["a" * 40] * 3, 220, 8)
        (4, 1)
    """
    from matplotlib import rcParams
    from matplotlib.font_manager import FontProperties
    from matplotlib.textpath import TextToPath

    font = FontProperties(size=fontsize if fontsize is not None else rcParams["legend.fontsize"])
    em, measure = font.get_size_in_points(), TextToPath()
    widths = [3.0 * em + measure.get_text_width_height_descent(t, font, ismath=False)[0] for t in labels]
    for ncols in range(len(labels), 1, -1):
        rows = math.ceil(len(labels) / ncols)
        if sum(max(widths[j : j + rows]) for j in range(0, len(widths), rows)) <= width:
            return ncols
    return 1


def _tidy(ax, x: str) -> None:
    """Integer ticks on hyper-iteration and inner-step axes; readable ticks and short labels on a log y axis."""
    if x in ("iteration", "inner_steps"):
        # min_n_ticks=1: whole numbers also when the axis spans less than two (one hyper-iteration drawn)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    if ax.get_yscale() == "log":
        log_ticks(ax.yaxis)


# ----- the panels ----------------------------------------------------------------------------------------------


def hyperparameters(
    ax,
    history,
    names: Sequence[str] | None = None,
    x: str = "iteration",
    colors=None,
    band: bool = True,
    scale: str = "auto",
) -> list:
    """Hyperparameter trajectories: each scalar as a line; each vector as its distribution, the median line
    within its 10–90 % quantile band and its lighter min–max band.

    A vector's distribution shows what its mean may hide: per-example weights under a budget (Σλ = R) keep their
    mean fixed while they spread towards 0 and 1.

    Args:
        ax: the matplotlib Axes to draw on.
        history: the loop's history DataFrame, or a result with ``.history``.
        names: the hyperparameters to draw (default: all of ``history.attrs["hyperparameters"]``). Put ones of
            similar size together, or give each its own Axes (as :func:`overview` and the dashboard do).
        x: ``"iteration"``, ``"inner_steps"`` or ``"wall_time"``.
        colors: ``{name: colour}``; default :func:`hyperparameter_colors` of the history's hyperparameters.
        band: shade a vector's quantile and min–max bands.
        scale: the y scale: ``"linear"``, ``"log"``, or ``"auto"`` (log if every hyperparameter drawn is log by
            :func:`hyperparameter_scale`, else linear).

    Returns:
        The artists: per hyperparameter its line, then for a vector its bands (``PolyCollection``: 10–90 %, then
        min–max).
    """
    history = history_of(history)
    info = RunInfo.of(history)
    names = list(names) if names is not None else hyperparameter_names(history)
    colors = _colors(info, names, colors)
    _x(history, x)  # refuse a bad x before drawing anything
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {list(SCALES)}; got {scale!r}")
    for name in names:
        _check_hyperparameter(info, name)
    artists = []
    for name in names:
        if name in info.vectors:
            artists += _vector(ax, history, x, name, colors[name], band)
        else:
            _require(history, [name], f"hyperparameter {name!r}")
            artists += _plot(ax, history, x, name, color=colors[name], label=name)
    if scale == "auto":
        scale = "log" if names and all(hyperparameter_scale(history, n) == "log" for n in names) else "linear"
    ax.set_yscale(scale)
    ax.set_xlabel(X_LABELS[x])
    ax.set_ylabel("hyperparameter value")
    _tidy(ax, x)
    if len(artists) > 1:
        legend_outside(ax)
    return artists


def _vector(ax, history, x: str, name: str, color, band: bool) -> list:
    """A vector hyperparameter: its median in its 10–90 % and min–max bands."""
    _require(history, [f"{name}.{s}" for s in ("median", "q10", "q90", "min", "max")], f"hyperparameter {name!r}")
    artists = _plot(ax, history, x, f"{name}.median", color=color, label=f"{name} (median)")
    bands = [("q10", "q90", 0.3, f"{name} (10–90 %)"), ("min", "max", 0.12, f"{name} (min–max)")]
    for low, high, alpha, what in bands if band else []:
        for k, rows in enumerate(_members(history)):
            artists.append(
                ax.fill_between(
                    _x(rows, x),
                    rows[f"{name}.{low}"],
                    rows[f"{name}.{high}"],
                    color=color,
                    alpha=alpha,
                    linewidth=0,
                    label=what if k == 0 else "_nolegend_",
                )
            )
    return artists


def grad_norms(
    ax,
    history,
    names: Sequence[str] | None = None,
    x: str = "iteration",
    total: bool = True,
    colors=None,
    logy: bool = True,
) -> list:
    """Hypergradient norms, on a log scale: ``grad_norm`` (black) and ``grad_norm.<hp>`` per hyperparameter.

    Args:
        ax, history, x, colors: as in :func:`hyperparameters`.
        names: the hyperparameters whose own norm is drawn (default: all; ``[]`` for the overall norm only).
        total: draw the norm over all hyperparameters.
        logy: log scale (False: linear).

    Returns:
        The lines, the overall one first.
    """
    history = history_of(history)
    names = list(names) if names is not None else hyperparameter_names(history)
    colors = _colors(RunInfo.of(history), names, colors)
    _x(history, x)  # refuse a bad x before drawing anything
    _require(history, (["grad_norm"] if total else []) + [f"grad_norm.{n}" for n in names], "grad_norms")
    lines = []
    if total:
        lines += _plot(ax, history, x, "grad_norm", color="black", linewidth=2, label="all hyperparameters")
    for name in names:
        lines += _plot(ax, history, x, f"grad_norm.{name}", color=colors[name], label=name)
    ax.set_yscale("log" if logy else "linear")
    ax.set_xlabel(X_LABELS[x])
    ax.set_ylabel("hypergradient norm ‖∇f‖")
    _tidy(ax, x)
    legend_outside(ax)
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
    objectives = RunInfo.of(history).objectives
    if not objectives:
        raise ValueError(f"the history has no val_loss column; its columns are {list(history.columns)}")
    _require(history, objectives, "losses")
    lines = []
    for column, style in zip(objectives, ["-", "-.", ":", (0, (5, 1))] * 4, strict=False):
        label = "validation loss" if column == "val_loss" else f"objective {column.split('.', 1)[1]}"
        lines += _plot(ax, history, x, column, color="black", linestyle=style, label=label)
    if train:
        _require(history, ["train_loss"], "losses")
        lines += _plot(ax, history, x, "train_loss", color="0.5", linestyle="--", label="training loss (last step)")
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(X_LABELS[x])
    ax.set_ylabel("loss")
    _tidy(ax, x)
    legend_outside(ax)
    return lines


def metrics(ax, history, names: Sequence[str] | None = None, x: str = "iteration") -> list:
    """The user metrics (the run's ``metrics``, e.g. ``test_accuracy``), one line each."""
    history = history_of(history)
    names = list(names) if names is not None else _metric_columns(RunInfo.of(history), history)
    _require(history, names, "metrics")
    _x(history, x)  # refuse a bad x before drawing anything
    lines = []
    for name in names:
        lines += _plot(ax, history, x, name, label=name)
    ax.set_xlabel(X_LABELS[x])
    ax.set_ylabel(names[0] if len(names) == 1 else "metric")
    _tidy(ax, x)
    if len(names) > 1:
        legend_outside(ax)
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
    info = RunInfo.of(history)
    names = list(names) if names is not None else hyperparameter_names(history)
    colors = _colors(info, names, None)
    bottom = ["grad_norm", "loss"] + (["metrics"] if _metric_columns(info, history) else [])
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
    losses(axes["loss"], history, x=x)
    if "metrics" in axes:
        metrics(axes["metrics"], history, x=x)
    for panel in bottom:  # the legends above the panels, in place of titles (their y labels say what they are)
        if axes[panel].get_legend() is not None:
            legend_outside(axes[panel], "above")
    method = info.method
    fig.suptitle(f"{method + ': ' if method else ''}{len(history)} hyper-iterations")
    return fig, axes
