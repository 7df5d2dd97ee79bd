"""hgkit: exact hypergradients of training runs in JAX, in reverse, forward and real-time mode.

Franceschi, Donini, Frasconi, Pontil, "Forward and Reverse Gradient-Based Hyperparameter Optimization", ICML 2017.
"""

from . import constraints, history, optim, schedules
from ._checkpoint import CheckpointError
from ._tree import PyTree
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
    MetaHypergradientResult,
    OnlineMethod,
    Plan,
    RealTime,
    RealTimeState,
    Residuals,
    Reversal,
    Reverse,
    Segments,
    States,
    Steps,
    Store,
    hypergradient,
    hypergradient_result,
    linear_head,
    meta_hypergradient,
    meta_hypergradient_result,
    plan,
    raise_if_diverged,
    result,
)
from .outer import HyperDivergenceError, HyperOptimizationResult, HyperOptimizer
from .problem import (
    BilevelProblem,
    TrainState,
    Trajectory,
    batch_at,
    initial_state,
    objectives,
    outer_derivatives,
    train_step,
    unroll,
)

__version__ = "0.4.1"

__all__ = [
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
    "MetaHypergradientResult",
    "MissingHyperparameterError",
    "OnlineMethod",
    "Plan",
    "PyTree",
    "RealTime",
    "RealTimeState",
    "Residuals",
    "Reversal",
    "Reverse",
    "RunInfo",
    "Segments",
    "States",
    "Steps",
    "Store",
    "TrainState",
    "Trajectory",
    "batch_at",
    "constraints",
    "history",
    "hypergradient",
    "hypergradient_result",
    "initial_state",
    "linear_head",
    "meta_hypergradient",
    "meta_hypergradient_result",
    "objectives",
    "optim",
    "outer_derivatives",
    "plan",
    "raise_if_diverged",
    "result",
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
