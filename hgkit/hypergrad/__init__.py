"""Hypergradients of a training run: one entry point, the method a small frozen strategy object.

What each module owns: :mod:`~hgkit.hypergrad.base` the method contracts and the result type,
:mod:`~hgkit.hypergrad.failures` the failure vocabulary and its messages, :mod:`~hgkit.hypergrad.entry` the entry
points, and one module per method (:mod:`~hgkit.hypergrad.reverse`, :mod:`~hgkit.hypergrad.forward`,
:mod:`~hgkit.hypergrad.realtime`, :mod:`~hgkit.hypergrad.implicit`).
"""

from .base import HypergradientMethod, HypergradientResult, OnlineMethod
from .checkpointing import Binomial
from .entry import hypergradient, hypergradient_result
from .failures import DivergenceError, Failure, raise_if_diverged
from .forward import Forward
from .implicit import Implicit
from .realtime import RealTime, RealTimeState
from .reverse import Reverse

__all__ = [
    "Binomial",
    "DivergenceError",
    "Failure",
    "Forward",
    "HypergradientMethod",
    "HypergradientResult",
    "Implicit",
    "OnlineMethod",
    "RealTime",
    "RealTimeState",
    "Reverse",
    "hypergradient",
    "hypergradient_result",
    "raise_if_diverged",
]
