"""hgkit: exact hypergradients of training runs in JAX, in reverse, forward and real-time mode.

Franceschi, Donini, Frasconi, Pontil, "Forward and Reverse Gradient-Based Hyperparameter Optimization", ICML 2017.
"""

from . import constraints, history, optim, schedules
from ._checkpoint import CheckpointError
from ._tree import ArrayView, PyTree
from .history import RunInfo
from .hparams import MissingHyperparameterError
from .hypergrad import (
    Binomial,
    DivergenceError,
    Failure,
    Forward,
    HypergradientMethod,
    HypergradientResult,
    Implicit,
    OnlineMethod,
    RealTime,
    RealTimeState,
    Reverse,
    hypergradient,
    hypergradient_result,
    raise_if_diverged,
)
from .outer import HyperDivergenceError, HyperOptimizationResult, HyperOptimizer
from .problem import BilevelProblem, TrainState, Trajectory, initial_state, objectives, train_step, unroll

__version__ = "0.2.0"

__all__ = [
    "ArrayView",
    "BilevelProblem",
    "Binomial",
    "CheckpointError",
    "DivergenceError",
    "Failure",
    "Forward",
    "HyperDivergenceError",
    "HyperOptimizationResult",
    "HyperOptimizer",
    "HypergradientMethod",
    "HypergradientResult",
    "Implicit",
    "MissingHyperparameterError",
    "OnlineMethod",
    "PyTree",
    "RealTime",
    "RealTimeState",
    "Reverse",
    "RunInfo",
    "TrainState",
    "Trajectory",
    "constraints",
    "history",
    "hypergradient",
    "hypergradient_result",
    "initial_state",
    "objectives",
    "optim",
    "raise_if_diverged",
    "schedules",
    "train_step",
    "unroll",
]


def __getattr__(name):
    # hg.plot and hg.widgets load matplotlib / ipywidgets, so they are imported on first use, not with hgkit.
    if name in ("plot", "widgets"):
        import importlib

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'hgkit' has no attribute {name!r}")
