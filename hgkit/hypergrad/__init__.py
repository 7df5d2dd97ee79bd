"""Hypergradients of a training run: one entry point, the method a small frozen strategy object.

What each module owns: :mod:`~hgkit.hypergrad.base` the method contracts and the result type,
:mod:`~hgkit.hypergrad.failures` the failure vocabulary and its messages, :mod:`~hgkit.hypergrad.entry` the entry
points, and one module per method (:mod:`~hgkit.hypergrad.reverse`, :mod:`~hgkit.hypergrad.forward`,
:mod:`~hgkit.hypergrad.realtime`, :mod:`~hgkit.hypergrad.implicit`); reverse mode's stores are
:mod:`~hgkit.hypergrad.stores` (revolve's schedule: :mod:`~hgkit.hypergrad.checkpointing`) and its memory
:mod:`~hgkit.hypergrad.planner`.
"""

from .base import HypergradientMethod, HypergradientResult, OnlineMethod, result
from .entry import hypergradient, hypergradient_result
from .failures import DivergenceError, Failure, raise_if_diverged
from .forward import Forward
from .implicit import Implicit
from .meta import MetaHypergradientResult, linear_head, meta_hypergradient, meta_hypergradient_result
from .planner import Plan, plan
from .realtime import RealTime, RealTimeState
from .reverse import Reverse
from .stores import Binomial, Residuals, Reversal, Segments, States, Steps, Store

__all__ = [
    "Binomial",
    "DivergenceError",
    "Failure",
    "Forward",
    "HypergradientMethod",
    "HypergradientResult",
    "Implicit",
    "MetaHypergradientResult",
    "OnlineMethod",
    "Plan",
    "RealTime",
    "RealTimeState",
    "Residuals",
    "Reversal",
    "Reverse",
    "Segments",
    "States",
    "Steps",
    "Store",
    "hypergradient",
    "hypergradient_result",
    "linear_head",
    "meta_hypergradient",
    "meta_hypergradient_result",
    "plan",
    "raise_if_diverged",
    "result",
]
