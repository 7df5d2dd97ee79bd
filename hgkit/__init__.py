"""hgkit: exact hypergradients of training runs in JAX, in reverse, forward and real-time mode.

Franceschi, Donini, Frasconi, Pontil, "Forward and Reverse Gradient-Based Hyperparameter Optimization", ICML 2017.
"""

from . import optim
from .hparams import MissingHyperparameterError
from .hypergrad import (
    DivergenceError,
    Forward,
    HypergradientResult,
    RealTime,
    RealTimeState,
    Reverse,
    hypergradient,
    hypergradient_result,
    raise_if_diverged,
)
from .problem import BilevelProblem, TrainState, initial_state, train_step

__version__ = "0.1.0"

__all__ = [
    "BilevelProblem",
    "DivergenceError",
    "Forward",
    "HypergradientResult",
    "MissingHyperparameterError",
    "RealTime",
    "RealTimeState",
    "Reverse",
    "TrainState",
    "hypergradient",
    "hypergradient_result",
    "initial_state",
    "optim",
    "raise_if_diverged",
    "train_step",
]
