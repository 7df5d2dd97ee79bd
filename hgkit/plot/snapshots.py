"""Plots of what a run learned beyond its history: a schedule's snapshots, and per-example weights by group.

Owns :func:`schedule` (a vector hyperparameter indexed by inner step, drawn from ``result.snapshots`` as it evolves
over the hyper-iterations) and :func:`example_weights` (weights split by a label, e.g. clean versus corrupted
examples in hyper-cleaning).

Example:
    >>> from matplotlib.figure import Figure
    >>> snapshots = {0: {"eta": [0.1, 0.1, 0.1]}, 5: {"eta": [0.3, 0.2, 0.1]}}
    >>> lines = schedule(Figure().subplots(), snapshots, "eta")
    >>> [(line.get_label(), line.get_ydata().tolist()) for line in lines]
    [('iteration 0', [0.1, 0.1, 0.1]), ('iteration 5', [0.3, 0.2, 0.1])]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib import colormaps

__all__ = ["example_weights", "schedule"]

GROUP_COLORS = ["tab:blue", "tab:red", "tab:green", "tab:purple", "tab:orange", "tab:brown"]


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
