"""The widget dashboard's picture (matplotlib): each hyperparameter on its own small axes (columns of at most
``MAX_ROWS``, sharing the x axis), the hypergradient norms and the losses, drawn with :mod:`hgkit.plot`.

A redraw that shows the same hyperparameters reuses the axes (:func:`empty`), which halves its cost; the margins
are fixed in inches, since constrained layout would double the cost of every redraw.

Example:
    >>> from matplotlib.figure import Figure
    >>> axes = arrange(Figure(dpi=72), ["lr", "wd"], (13.0, 3.8))
    >>> list(axes), grid(5)
    (['hp:lr', 'hp:wd', 'grad', 'loss'], (4, 2))
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

MAX_ROWS = 4  # hyperparameter axes per column of the picture


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
    # Each gap leaves room for the next panel's tick labels and its y label.
    outer = fig.add_gridspec(
        1, 3, width_ratios=[0.8 + 0.45 * columns, 1, 1], left=0.6 / width, right=1 - 0.15 / width,
        bottom=0.62 / height, top=1 - 0.34 / height, wspace=0.32,
    )  # fmt: skip
    hp_grid = outer[0, 0].subgridspec(rows, columns, hspace=0.12, wspace=0.45)
    axes, first = {}, None
    for k, name in enumerate(names):
        ax = fig.add_subplot(hp_grid[k % rows, k // rows], sharex=first)
        first = first or ax
        axes[f"hp:{name}"] = ax
    box = outer[0, 0].get_position(fig)
    fig.text((box.x0 + box.x1) / 2, 1 - 0.12 / height, "hyperparameters", ha="center", va="top", fontsize=12)
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
        _hyperparameter(plot, ax, history, name, colors[name], x, scales["hp"], bottom, name in info.vectors)
    ax_grad, ax_loss = axes["grad"], axes["loss"]
    plot.grad_norms(ax_grad, history, names, x=x, logy=scales["grad"] == "log")
    ax_grad.set_title("hypergradient norm")
    train = "train_loss" in history.columns
    plot.losses(ax_loss, history, x=x, train=train, logy=scales["loss"] == "log")
    ax_loss.set_title("validation and training loss")
    if len(history) == 1:  # a line of one point is invisible: mark it
        for ax in axes.values():
            for line in ax.get_lines():
                line.set_marker("o")


def _hyperparameter(plot, ax, history, name: str, color, x: str, scale: str, bottom: bool, vector: bool) -> None:
    """One hyperparameter on its own small axes, named inside them (with its scale, and a vector's bands)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter, NullLocator

    plot.hyperparameters(ax, history, [name], x=x, colors={name: color}, scale=scale)
    if ax.get_legend() is not None:
        ax.get_legend().remove()
    ax.set_ylabel("")
    ax.tick_params(labelsize=8)
    if ax.get_yscale() == "log":  # a few short labels: small axes have room for three or four
        low, high = ax.get_ylim()
        if high < 10 * low:  # within a decade matplotlib labels every minor tick: a few plain ones instead
            ax.yaxis.set_major_locator(MaxNLocator(nbins=3))
            ax.yaxis.set_minor_locator(NullLocator())
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: plot.panels._short(v)))
        else:
            ax.yaxis.set_major_locator(LogLocator(numticks=4))
            ax.yaxis.set_minor_locator(LogLocator(subs="auto", numticks=4))
            ax.yaxis.set_minor_formatter(NullFormatter())
    ax.yaxis.get_offset_text().set_fontsize(7)
    if not bottom:
        ax.tick_params(labelbottom=False)
        ax.set_xlabel("")
    label = name + (" (log)" if ax.get_yscale() == "log" else "")
    if vector:
        label += ": median, 10–90 %, min–max"
    ax.text(
        0.01, 0.96, label, transform=ax.transAxes, ha="left", va="top", fontsize=8, color=color,
        bbox=dict(facecolor="white", alpha=0.75, edgecolor="none", pad=1.0),
    )  # fmt: skip
