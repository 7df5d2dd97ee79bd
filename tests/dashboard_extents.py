"""What a widget dashboard's last picture drew, read from its matplotlib figure: each hyperparameter's extent (how
the tests check that no trajectory is drawn flat), the panels' scales and how many records they hold.

The module needs nothing but numpy, so that the browser test can run its source in a notebook's kernel, where
the notebook's dashboard lives (:func:`jupyterlab_browser.kernel_output`).
"""

from __future__ import annotations


def drawn_extents(dashboard) -> dict:
    """``{name: {"low", "high", "pixels", "box", "scale"}}`` for each hyperparameter on the dashboard's picture:
    its values' range, the vertical extent of its lines in the picture's pixels (from matplotlib's transforms: the
    figure's dpi is the PNG's), its axes' box ``(left, top, right, bottom)`` in those pixels and their y scale."""
    import numpy as np

    height = dashboard.figure.bbox.height
    extents = {}
    for key, ax in dashboard.axes.items():
        if not key.startswith("hp:"):
            continue
        lines = [line for line in ax.get_lines() if len(line.get_xdata())]
        if not lines:
            continue
        data = np.concatenate([np.column_stack([line.get_xdata(), line.get_ydata()]) for line in lines])
        data = data[np.all(np.isfinite(data), axis=1)]
        if ax.get_yscale() == "log":
            data = data[data[:, 1] > 0]
        if not len(data):
            continue
        pixels = ax.transData.transform(data)[:, 1]
        x0, y0, x1, y1 = ax.bbox.extents
        extents[key.removeprefix("hp:")] = {
            "low": float(data[:, 1].min()),
            "high": float(data[:, 1].max()),
            "pixels": float(pixels.max() - pixels.min()),
            "box": (round(x0), round(height - y1), round(x1), round(height - y0)),
            "scale": ax.get_yscale(),
        }
    return extents


def drawn_scales(dashboard) -> dict:
    """``{panel: y scale}`` of the dashboard's picture (``"hp:<name>"``, ``"grad"``, ``"loss"``), as last drawn."""
    return {key: ax.get_yscale() for key, ax in dashboard.axes.items()}


def drawn_points(dashboard) -> dict:
    """``{panel: points}``: how many records each panel of the last picture holds (its longest line)."""
    return {
        key: max((len(line.get_xdata()) for line in ax.get_lines()), default=0) for key, ax in dashboard.axes.items()
    }
