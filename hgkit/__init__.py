"""hgkit: exact hypergradients of training runs in JAX, in reverse, forward and real-time mode.

Franceschi, Donini, Frasconi, Pontil, "Forward and Reverse Gradient-Based Hyperparameter Optimization", ICML 2017.
"""

from . import constraints, optim
from .hparams import MissingHyperparameterError
from .hypergrad import (
    DivergenceError,
    Forward,
    HypergradientResult,
    Implicit,
    RealTime,
    RealTimeState,
    Reverse,
    hypergradient,
    hypergradient_result,
    raise_if_diverged,
)
from .outer import HyperDivergenceError, HyperOptimizationResult, HyperOptimizer
from .problem import BilevelProblem, TrainState, initial_state, train_step

__version__ = "0.1.0"

__all__ = [
    "BilevelProblem",
    "DivergenceError",
    "Forward",
    "HyperDivergenceError",
    "HyperOptimizationResult",
    "HyperOptimizer",
    "HypergradientResult",
    "Implicit",
    "MissingHyperparameterError",
    "RealTime",
    "RealTimeState",
    "Reverse",
    "TrainState",
    "constraints",
    "hypergradient",
    "hypergradient_result",
    "initial_state",
    "optim",
    "raise_if_diverged",
    "train_step",
]


def __getattr__(name):
    # hg.plot and hg.widgets load matplotlib / ipywidgets, so they are imported on first use, not with hgkit.
    if name in ("plot", "widgets"):
        import importlib

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'hgkit' has no attribute {name!r}")
