"""The bilevel problem and the training dynamics it defines.

Training is a dynamical system on the state ``s = (params, opt_state)``::

    s_0 = S_0(λ)                       = (init(λ, key), optimizer.init(params_0, λ))
    s_t = Φ_t(s_{t-1}, λ), t = 1..T    (one optimizer step on train_loss with the batch of step t-1)
    f(λ) = E(s_T, λ)                   = val_loss(params_T, λ, val_data)

and the hypergradient is ``df/dλ``. The methods in :mod:`hgkit.hypergrad` differ only in how they push
derivatives through these maps; they all call :func:`initial_state`, :func:`train_step` and
:func:`objectives` defined here.

Example:
    >>> import jax, jax.numpy as jnp, hgkit as hg
    >>> problem = hg.BilevelProblem(
    ...     init=lambda hp, key: jnp.zeros(2),
    ...     train_loss=lambda w, hp, b: jnp.sum((w - b) ** 2),
    ...     val_loss=lambda w, hp, b: jnp.sum((w - b) ** 2),
    ...     optimizer=hg.optim.sgd("lr"))
    >>> s = hg.initial_state(problem, {"lr": jnp.asarray(0.25)}, None)
    >>> s, loss = hg.train_step(problem, s, {"lr": jnp.asarray(0.25)}, jnp.ones(2), 0)
    >>> s.params.tolist(), float(loss)
    ([0.5, 0.5], 2.0)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from .optim import Optimizer

__all__ = ["BilevelProblem", "TrainState", "initial_state", "train_step", "objectives", "batch_at"]


@dataclasses.dataclass(frozen=True, eq=False)  # eq=False: hashed by identity, so usable as a jit static argument
class BilevelProblem:
    """What is trained, and what the hyperparameters are judged by.

    Args:
        init: ``(hparams, key) -> params``, the initial weights (they may depend on ``hparams``).
        train_loss: ``(params, hparams, batch) -> scalar``, the inner objective the optimizer descends.
        val_loss: ``(params, hparams, batch) -> scalar``, the outer objective E evaluated after training;
            or a mapping ``{name: fn}`` of several outer objectives (then ``val_data`` is a mapping with the
            same names, and ``follows`` says which objective each group of hyperparameters descends).
        optimizer: an :class:`hgkit.optim.Optimizer` whose hyperparameters come from ``hparams``.
        follows: only with several objectives: a pytree prefix of ``hparams`` whose leaves are objective names.
            As RFHO's ``hyper_dict``: ``follows={"lr": "train", "mu": "train", "wd": "val"}`` makes the learning
            rate and momentum descend the objective named ``"train"`` and the weight decay the one named ``"val"``.
            Each hyperparameter's hypergradient is then the derivative of its own objective.
    """

    init: Callable[[Any, Any], Any]
    train_loss: Callable[[Any, Any, Any], Any]
    val_loss: Callable[[Any, Any, Any], Any] | Mapping[str, Callable[[Any, Any, Any], Any]]
    optimizer: Optimizer
    follows: Any = None

    def __post_init__(self):
        for name in ("init", "train_loss"):
            if not callable(getattr(self, name)):
                raise TypeError(f"BilevelProblem: {name} must be callable, got {type(getattr(self, name))}")
        if isinstance(self.val_loss, Mapping):
            if not self.val_loss:
                raise ValueError("BilevelProblem: val_loss is an empty mapping")
            bad = [k for k, f in self.val_loss.items() if not callable(f)]
            if bad:
                raise TypeError(f"BilevelProblem: val_loss entries {bad} are not callable")
            if self.follows is None:
                raise ValueError(
                    "BilevelProblem: with several outer objectives "
                    f"{sorted(self.val_loss)}, say which each hyperparameter follows, e.g. "
                    f"follows={{'lr': {next(iter(self.val_loss))!r}, ...}}"
                )
        elif not callable(self.val_loss):
            raise TypeError(f"BilevelProblem: val_loss must be callable, got {type(self.val_loss)}")
        elif self.follows is not None:
            raise ValueError("BilevelProblem: follows only makes sense with a mapping of several val_loss objectives")
        if not (isinstance(self.optimizer, tuple) and hasattr(self.optimizer, "update")):
            raise TypeError(
                "BilevelProblem: optimizer must be an hgkit.optim.Optimizer (e.g. hg.optim.sgd('lr')), "
                f"got {type(self.optimizer).__name__}"
            )

    @property
    def objective_names(self) -> tuple[str, ...]:
        """The outer objectives' names (``("val",)`` for a single ``val_loss``)."""
        return tuple(self.val_loss) if isinstance(self.val_loss, Mapping) else ("val",)


class TrainState(NamedTuple):
    """The state ``s`` of the training dynamics."""

    params: Any
    opt_state: Any


def initial_state(problem: BilevelProblem, hparams: Any, key: Any) -> TrainState:
    """``s_0 = S_0(λ)``: the initial weights and the optimizer's initial state."""
    params = problem.init(hparams, key)
    return TrainState(params, problem.optimizer.init(params, hparams))


def train_step(
    problem: BilevelProblem, state: TrainState, hparams: Any, batch: Any, step: Any, grad_fn=None
) -> tuple[TrainState, Any]:
    """``s_t = Φ_t(s_{t-1}, λ)``: one optimizer step; returns the new state and the training loss before it.

    ``grad_fn`` replaces ``jax.value_and_grad(train_loss)`` (reverse mode passes one whose derivative is
    computed forward-over-reverse).
    """
    grad_fn = grad_fn or jax.value_and_grad(problem.train_loss)
    loss, grads = grad_fn(state.params, hparams, batch)
    params, opt_state = problem.optimizer.update(grads, state.opt_state, state.params, hparams, step)
    return TrainState(params, opt_state), loss


def objectives(problem: BilevelProblem, params: Any, hparams: Any, val_data: Any) -> Any:
    """The outer objective(s) at the trained weights, stacked into a vector (one entry per objective)."""
    if isinstance(problem.val_loss, Mapping):
        return jnp.stack([problem.val_loss[k](params, hparams, val_data[k]) for k in problem.val_loss])
    return jnp.reshape(problem.val_loss(params, hparams, val_data), (1,))


def objective_index(problem: BilevelProblem, hparams: Any) -> list[int]:
    """For each leaf of ``hparams``, the index of the objective it follows."""
    names = problem.objective_names
    if problem.follows is None:
        return [0] * len(jax.tree_util.tree_leaves(hparams))
    try:
        full = jax.tree_util.tree_map(
            lambda name, sub: jax.tree_util.tree_map(lambda _: name, sub), problem.follows, hparams
        )
    except ValueError as e:
        raise ValueError(
            f"BilevelProblem.follows must be a pytree prefix of hparams: got {problem.follows!r} for "
            f"hparams of structure {jax.tree_util.tree_structure(hparams)}"
        ) from e
    out = []
    for name in jax.tree_util.tree_leaves(full):
        if name not in names:
            raise ValueError(f"BilevelProblem.follows names objective {name!r}; val_loss has {list(names)}")
        out.append(names.index(name))
    return out


def batch_at(train_data: Any, step: Any) -> Any:
    """The training batch of a step: ``train_data(step)`` for a callable, else the one fixed batch."""
    return train_data(step) if callable(train_data) else train_data
