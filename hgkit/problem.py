"""The bilevel problem and the training dynamics it defines.

Training is a dynamical system on the state ``s = (params, opt_state)``::

    s_0 = S_0(λ)                       = (init(λ, key), optimizer.init(params_0, λ))
    s_t = Φ_t(s_{t-1}, λ), t = 1..T    (one optimizer step on train_loss with the batch of step t-1)
    f(λ) = E(s_T, λ)                   = val_loss(params_T, λ, val_data)

and the hypergradient is ``df/dλ``. The methods in :mod:`hgkit.hypergrad` differ only in how they push
derivatives through these maps; they all call what is defined here: :func:`initial_state` and
:func:`train_step` (the maps), :func:`unroll` (plain training over steps, remembering the first non-finite one)
and :func:`outer_derivatives` (E and its partial derivatives at the trained weights).

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
import optax
from jax import lax

from ._tree import PyTree, all_finite, as_view, mark_first, unview
from .optim import Optimizer

__all__ = [
    "BilevelProblem",
    "TrainState",
    "Trajectory",
    "batch_at",
    "initial_state",
    "objectives",
    "outer_derivatives",
    "train_step",
    "unroll",
]


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
    follows: Any = dataclasses.field(default=None, kw_only=True)

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
        if isinstance(self.optimizer, optax.GradientTransformation):
            raise TypeError(
                "BilevelProblem: optimizer is an optax transformation; hgkit's inner optimizers also take the "
                "hyperparameters at every step, so wrap it: optimizer=hg.optim.from_optax(optax.sgd(0.1)) (and "
                "to tune its learning rate, hg.optim.from_optax(lambda lr: optax.sgd(lr), lr='lr'))"
            )
        if not isinstance(self.optimizer, Optimizer):
            raise TypeError(
                "BilevelProblem: optimizer must be an hgkit.optim.Optimizer (e.g. hg.optim.sgd('lr'), or "
                f"hg.optim.from_optax(...) around an optax transformation); got {type(self.optimizer).__name__}"
            )

    def inner_loss(self, params: PyTree, hparams: PyTree, batch: PyTree) -> jax.Array:
        """``train_loss`` on the parameters as they are trained (``state.params``: the model, or its
        :class:`~hgkit.ArrayView` when it has static leaves): what the training step differentiates."""
        return self.train_loss(unview(params), hparams, batch)

    @property
    def objective_names(self) -> tuple[str, ...]:
        """The outer objectives' names (``("val",)`` for a single ``val_loss``)."""
        return tuple(self.val_loss) if isinstance(self.val_loss, Mapping) else ("val",)


class TrainState(NamedTuple):
    """The state ``s`` of the training dynamics.

    ``params`` is the model as ``init`` returned it when all its leaves are arrays (a dict of arrays, flax linen
    params, an nnx module); a model with static leaves (an Equinox module holds its activation functions) is kept
    as its :class:`~hgkit.ArrayView`, which JAX and the optimizer see as its arrays only, so the state can be
    a ``jit`` output, a ``scan`` carry or a checkpoint. The view passes calls and attribute access on to the
    model (``state.params(x)``); ``state.params.tree`` is the model itself.
    """

    params: PyTree
    opt_state: PyTree


def initial_state(problem: BilevelProblem, hparams: PyTree, key: Any) -> TrainState:
    """``s_0 = S_0(λ)``: the initial weights and the optimizer's initial state."""
    params = as_view(problem.init(hparams, key))
    return TrainState(params, problem.optimizer.init(params, hparams))


def train_step(
    problem: BilevelProblem, state: TrainState, hparams: PyTree, batch: PyTree, step: Any, grad_fn=None
) -> tuple[TrainState, jax.Array]:
    """``s_t = Φ_t(s_{t-1}, λ)``: one optimizer step; returns the new state and the training loss before it.

    ``grad_fn`` replaces ``jax.value_and_grad(problem.inner_loss)`` (reverse mode passes one whose derivative is
    computed forward-over-reverse).
    """
    grad_fn = grad_fn or jax.value_and_grad(problem.inner_loss)
    loss, grads = grad_fn(state.params, hparams, batch)
    params, opt_state = problem.optimizer.update(grads, state.opt_state, state.params, hparams, step)
    return TrainState(params, opt_state), loss


def objectives(problem: BilevelProblem, params: PyTree, hparams: PyTree, val_data: PyTree) -> jax.Array:
    """The outer objective(s) at the trained weights, stacked into a vector (one entry per objective)."""
    model = unview(params)
    if isinstance(problem.val_loss, Mapping):
        return jnp.stack([problem.val_loss[k](model, hparams, val_data[k]) for k in problem.val_loss])
    return jnp.reshape(problem.val_loss(model, hparams, val_data), (1,))


def outer_derivatives(problem: BilevelProblem, params: PyTree, hparams: PyTree, val_data: PyTree):
    """``E_k`` and its partial derivatives ``∂E_k/∂w``, ``∂E_k/∂λ`` at ``params``, for every objective k.

    Returns ``(values, dE_dw, dE_dλ)``: values of shape ``(k,)``; the derivatives have the structures of
    ``params`` and ``hparams`` with a leading axis k (one reverse pass per objective, ``vmap``-ed).
    """
    values, e_vjp = jax.vjp(lambda w, hp: objectives(problem, w, hp, val_data), params, hparams)
    dE_dw, dE_dh = jax.vmap(e_vjp)(jnp.eye(values.shape[0], dtype=values.dtype))
    return values, dE_dw, dE_dh


def objective_index(problem: BilevelProblem, hparams: PyTree) -> list[int]:
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


def batch_at(train_data: Any, step: Any) -> PyTree:
    """The training batch of a step: ``train_data(step)`` for a callable, else the one fixed batch."""
    return train_data(step) if callable(train_data) else train_data


class Trajectory(NamedTuple):
    """What :func:`unroll` returns."""

    state: TrainState  # the state after the last step
    losses: jax.Array  # (n,): the training loss of each step (before its update)
    diverged_at: jax.Array  # int32: the first step whose new state was non-finite, or -1
    states: TrainState | None  # with store=True: s_{t-1} for each step t, stacked (leading axis n); else None


def unroll(
    problem: BilevelProblem,
    state: TrainState,
    hparams: PyTree,
    train_data: Any,
    first: Any,
    n: int,
    *,
    store: bool = False,
    diverged_at: Any = -1,
) -> Trajectory:
    """``n`` plain training steps ``s_t = Φ_t(s_{t-1}, λ)`` from step ``first``, in one ``lax.scan``.

    No derivative is carried. The first step whose new state is non-finite is remembered (``diverged_at``, which
    may come in from earlier steps); with ``store=True`` the state *before* each step is kept, which is what reverse
    mode needs to go back through the steps.

    Example:
        >>> import jax.numpy as jnp, hgkit as hg
        >>> problem = hg.BilevelProblem(lambda hp, k: jnp.zeros(1), lambda w, hp, b: jnp.sum((w - b) ** 2),
        ...                             lambda w, hp, b: jnp.sum(w**2), hg.optim.sgd(0.25))
        >>> s0 = hg.initial_state(problem, {}, None)
        >>> out = unroll(problem, s0, {}, jnp.ones(1), 0, 3, store=True)
        >>> out.state.params.tolist(), out.states.params[:, 0].tolist(), int(out.diverged_at)
        ([0.875], [0.0, 0.5, 0.75], -1)
    """

    def body(carry, t):
        state, bad = carry
        new, loss = train_step(problem, state, hparams, batch_at(train_data, t), t)
        return (new, mark_first(bad, all_finite(new), t)), (state if store else None, loss)

    steps = jnp.asarray(first, jnp.int32) + jnp.arange(n, dtype=jnp.int32)
    (state, bad), (states, losses) = lax.scan(body, (state, jnp.asarray(diverged_at, jnp.int32)), steps)
    return Trajectory(state, losses, bad, states)
