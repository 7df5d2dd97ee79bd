"""Plots of a hyperparameter-optimization run: an ``ax`` and a history in, the artists out.

Every function draws on the matplotlib ``Axes`` it is given and returns the artists it drew (lines, bands,
histograms); none calls ``plt.show()``. By topic:

* :mod:`hgkit.plot.panels`: the history's panels (:func:`hyperparameters`, :func:`grad_norms`, :func:`losses`,
  :func:`metrics`) and :func:`overview`, one figure of a whole run. The history is the loop's DataFrame, or a
  result that has one as ``.history``; which column is what is read from its :class:`~hgkit.history.RunInfo`
  (``history.attrs``). Each hyperparameter keeps one colour in every panel (:func:`hyperparameter_colors`).
* :mod:`hgkit.plot.snapshots`: a schedule's snapshots over the hyper-iterations (:func:`schedule`) and
  per-example weights by group (:func:`example_weights`).
* :mod:`hgkit.plot.cost`: forward versus reverse time and memory (:func:`cost_curves`, :data:`COST_COLUMNS`).

This package is imported on demand (``import hgkit.plot``, or ``hg.plot``); ``import hgkit`` does not load
matplotlib.

Example:
    >>> import pandas as pd
    >>> from matplotlib.figure import Figure
    >>> import hgkit.plot
    >>> history = pd.DataFrame({"iteration": [0, 1], "inner_steps": [50, 100], "wall_time": [0.1, 0.2],
    ...     "val_loss": [0.9, 0.5], "train_loss": [0.8, 0.4], "grad_norm": [2.0, 1.0], "grad_norm.lr": [2.0, 1.0],
    ...     "lr": [0.1, 0.2]})
    >>> history.attrs.update(hyperparameters=["lr"], scalars=["lr"], vectors=[], method="reverse mode")
    >>> fig, axes = hgkit.plot.overview(history, fig=Figure(layout="constrained"))
    >>> sorted(axes), fig.get_suptitle()
    (['grad_norm', 'hp:lr', 'loss'], 'reverse mode: 2 hyper-iterations')
"""

from __future__ import annotations

from .cost import COST_COLUMNS, cost_curves
from .panels import (
    grad_norms,
    history_of,
    hyperparameter_colors,
    hyperparameter_names,
    hyperparameter_scale,
    hyperparameters,
    losses,
    metrics,
    overview,
)
from .snapshots import example_weights, schedule

__all__ = [
    "COST_COLUMNS",
    "cost_curves",
    "example_weights",
    "grad_norms",
    "history_of",
    "hyperparameter_colors",
    "hyperparameter_names",
    "hyperparameter_scale",
    "hyperparameters",
    "losses",
    "metrics",
    "overview",
    "schedule",
]
