"""The widget dashboard's picture (matplotlib): each hyperparameter on its own small axes (columns of at most
``MAX_ROWS``, sharing the x axis), the hypergradient norms and the losses, drawn with :mod:`hgkit.plot`.

Nothing is written on the data: each hyperparameter is named by its y label (in its colour, in the margin), and the
legends of the hypergradient norms and the losses sit above their axes, in as many columns as fit (a legend inside
would hide a spike). Log axes carry as many short tick labels as they hold (:func:`hgkit.plot.panels.log_ticks`).

A redraw that shows the same hyperparameters reuses the axes (:func:`empty`), which halves its cost; the margins
are fixed in inches (the top one grows with the legends' rows), since constrained layout would double the cost of
every redraw.

Example:
    >>> from matplotlib.figure import Figure
    >>> axes = arrange(Figure(dpi=72), ["lr", "wd"], (13.0, 3.8))
    >>> list(axes), grid(5)
    (['hp:lr', 'hp:wd', 'grad', 'loss'], (4, 2))
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

MAX_ROWS = 4  # hyperparameter axes per column of the picture
LEGEND_FONT = 8  # points
HEADER = "hgkit-header"  # the gid of the hyperparameter column's title


def grid(n: int) -> tuple[int, int]:
    """The rows and columns of the axes of n hyperparameters."""
    rows = max(min(n, MAX_ROWS), 1)
    return rows, max(-(-n // rows), 1)


def arrange(fig, names: Sequence[str], figsize: tuple[float, float]) -> dict:
    """New axes in ``fig`` (cleared, and resized to hold the rows) for these hyperparameters:
    ``{"hp:<name>": ..., "grad": ..., "loss": ...}``."""
    rows, columns = grid(len(names))
    fig.clear()
    width, height = figsize[0], max(figsize[1], 0.95 * rows + 1.0)
    fig.set_size_inches(width, height)
    # The left margin and each gap leave room for the next panel's tick labels and its y label.
    outer = fig.add_gridspec(
        1, 3, width_ratios=[0.8 + 0.45 * columns, 1, 1], left=0.85 / width, right=1 - 0.15 / width,
        bottom=0.62 / height, top=1 - 0.34 / height, wspace=0.32,
    )  # fmt: skip
    hp_grid = outer[0, 0].subgridspec(rows, columns, hspace=0.12, wspace=0.6)
    axes, first = {}, None
    for k, name in enumerate(names):
        ax = fig.add_subplot(hp_grid[k % rows, k // rows], sharex=first)
        first = first or ax
        axes[f"hp:{name}"] = ax
    box = outer[0, 0].get_position(fig)
    header = fig.text((box.x0 + box.x1) / 2, 1 - 0.12 / height, "hyperparameters", ha="center", va="top", fontsize=12)
    header.set_gid(HEADER)
    axes.update(grad=fig.add_subplot(outer[0, 1]), loss=fig.add_subplot(outer[0, 2]))
    return axes


def empty(fig) -> None:
    """Remove what the axes of ``fig`` drew (lines, bands, texts, legends), keeping the axes and their ticks."""
    for ax in fig.axes:
        for artist in [*ax.lines, *ax.collections, *ax.texts]:
            artist.remove()
        if ax.get_legend() is not None:
            ax.get_legend().remove()
        ax.relim()  # forget the removed artists' data limits


def draw(axes: Mapping, history, info, names: Sequence[str], *, x: str, scales: Mapping[str, str]) -> None:
    """Draw ``history`` into the axes :func:`arrange` made for ``names``; ``info`` is the run's
    :class:`~hgkit.history.RunInfo` and ``scales`` the panels' (``{"hp", "grad", "loss"}``)."""
    from ... import plot

    colors = plot.hyperparameter_colors(info.hyperparameters)
    rows, _ = grid(len(names))
    for k, name in enumerate(names):
        bottom = k % rows == rows - 1 or k == len(names) - 1
        ax = axes[f"hp:{name}"]
        _hyperparameter(plot, ax, history, name, colors[name], x, scales["hp"], bottom, rows)
    hp_axes = [axes[f"hp:{name}"] for name in names]
    if hp_axes:
        hp_axes[0].figure.align_ylabels(hp_axes)
        header = next(t for t in hp_axes[0].figure.texts if t.get_gid() == HEADER)
        vectors = any(name in info.vectors for name in names)
        header.set_text("hyperparameters" + (" (vectors: median, 10–90 %, min–max)" if vectors else ""))
        header.set_fontsize(10 if vectors else 12)
    ax_grad, ax_loss = axes["grad"], axes["loss"]
    plot.grad_norms(ax_grad, history, names, x=x, logy=scales["grad"] == "log")
    train = "train_loss" in history.columns
    plot.losses(ax_loss, history, x=x, train=train, logy=scales["loss"] == "log")
    _fit_top(ax_grad, max(_legend_above(ax) for ax in (ax_grad, ax_loss)))
    if len(history) == 1:  # a line of one point is invisible: mark it
        for ax in axes.values():
            for line in ax.get_lines():
                line.set_marker("o")


def _legend_above(ax) -> int:
    """Put the legend of ``ax`` above it, in as many columns as fit its width; its number of rows."""
    from ...plot.panels import legend_columns, legend_outside

    labels = ax.get_legend_handles_labels()[1]
    if not labels:
        return 0
    ncols = legend_columns(labels, ax.bbox.width * 72 / ax.figure.dpi, LEGEND_FONT)  # its width in points
    legend_outside(ax, "above", ncols=ncols, fontsize=LEGEND_FONT, borderpad=0.2)
    return math.ceil(len(labels) / ncols)


def _fit_top(ax, legend_rows: int) -> None:
    """Lower the panels' top so that ``legend_rows`` rows of legend fit above them (the title's room at least)."""
    fig = ax.figure
    gridspec = ax.get_subplotspec().get_gridspec()
    top = 1 - max(0.34, 0.18 + 0.15 * legend_rows) / fig.get_figheight()
    if math.isclose(gridspec.top, top):
        return
    gridspec.update(top=top)  # which moves the axes of pyplot's figures only: these are moved here
    for other in fig.axes:
        spec = other.get_subplotspec()
        if spec is not None and spec.get_topmost_subplotspec().get_gridspec() is gridspec:
            other.set_position(spec.get_position(fig))


def _hyperparameter(plot, ax, history, name: str, color, x: str, scale: str, bottom: bool, rows: int) -> None:
    """One hyperparameter on its own small axes, named by its y label in its colour (with its scale)."""
    plot.hyperparameters(ax, history, [name], x=x, colors={name: color}, scale=scale)
    if ax.get_legend() is not None:
        ax.get_legend().remove()
    ax.tick_params(labelsize=8)  # log axes: as many labels as fit (plot.panels.log_ticks, set by the panel)
    ax.yaxis.get_offset_text().set_fontsize(7)
    if not bottom:
        ax.tick_params(labelbottom=False)
        ax.set_xlabel("")
    label = name + (" (log)" if ax.get_yscale() == "log" else "")
    # As large as the axes' height holds (0.6 em a character), 6 to 10 points.
    height = ax.get_position().height * ax.figure.get_figheight() * 72
    size = max(6.0, min(10.0 if rows == 1 else 9.0, height / (0.6 * max(len(label), 1))))
    ax.set_ylabel(label, color=color, fontsize=size, labelpad=3)
