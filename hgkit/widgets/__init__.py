"""Notebook widgets (ipywidgets + matplotlib), loaded on first use so that ``import hgkit`` needs neither.

* :mod:`hgkit.widgets.classroom`: :class:`~hgkit.widgets.classroom.Explorer` (a hypergradient you can see: the
  tangent to the validation curve) and :class:`~hgkit.widgets.classroom.CostExplorer` (what reverse and forward
  mode store and cost as T and the number of hyperparameters grow).
"""

from __future__ import annotations

import importlib

_LAZY = {
    "Explorer": "classroom",
    "CostExplorer": "classroom",
    "classroom": None,
    "Dashboard": "dashboard",
    "TextDashboard": "dashboard",
    "WidgetDashboard": "dashboard",
    "dashboard": None,
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'hgkit.widgets' has no attribute {name!r}")
    module = importlib.import_module(f".{_LAZY[name] or name}", __name__)
    return module if _LAZY[name] is None else getattr(module, name)
