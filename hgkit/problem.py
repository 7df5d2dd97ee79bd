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

import contextlib
import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import lax

from ._tree import PyTree, Static, all_finite, join_model, mark_first, split_model
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
        matmul_precision: the precision of float32 matrix products in hgkit's compiled computations (the
            hypergradient, the loop's hyper-step, online steps): ``"highest"`` (default) computes them in full
            float32 on every backend; on GPUs JAX's own default is TF32 (bfloat16 passes on TPUs), which moves a
            hypergradient, a long chain of products, by up to 1e-3 relative. ``None`` leaves JAX's default
            (faster on GPUs); any value ``jax.default_matmul_precision`` takes is accepted.
    """

    init: Callable[[Any, Any], Any]
    train_loss: Callable[[Any, Any, Any], Any]
    val_loss: Callable[[Any, Any, Any], Any] | Mapping[str, Callable[[Any, Any, Any], Any]]
    optimizer: Optimizer
    follows: Any = dataclasses.field(default=None, kw_only=True)
    matmul_precision: str | None = dataclasses.field(default="highest", kw_only=True)

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
        if self.matmul_precision is not None:
            try:
                with jax.default_matmul_precision(self.matmul_precision):
                    pass
            except (TypeError, ValueError):
                raise ValueError(
                    "BilevelProblem: matmul_precision must be None (JAX's default) or a name "
                    "jax.default_matmul_precision takes, such as 'highest', 'high', 'default', 'float32', "
                    f"'tensorfloat32' or 'bfloat16'; got {self.matmul_precision!r}"
                ) from None
        if not isinstance(self.optimizer, Optimizer):
            raise TypeError(
                "BilevelProblem: optimizer must be an hgkit.optim.Optimizer (e.g. hg.optim.sgd('lr'), or "
                f"hg.optim.from_optax(...) around an optax transformation); got {type(self.optimizer).__name__}"
            )

    def inner_loss(self, arrays: PyTree, hparams: PyTree, batch: PyTree, static: Static | None = None) -> jax.Array:
        """``train_loss`` as the training step differentiates it: in the model's arrays (``state.arrays``), the
        static part (``state.static``) put back so that ``train_loss`` receives the model as written."""
        return self.train_loss(join_model(arrays, static), hparams, batch)

    @property
    def objective_names(self) -> tuple[str, ...]:
        """The outer objectives' names (``("val",)`` for a single ``val_loss``)."""
        return tuple(self.val_loss) if isinstance(self.val_loss, Mapping) else ("val",)


def precision(problem: BilevelProblem) -> contextlib.AbstractContextManager:
    """The context hgkit calls its compiled functions of ``problem`` in: ``jax.default_matmul_precision`` of its
    ``matmul_precision`` (nothing for None).

    Entered around the host-side call, not inside the traced function: JAX fixes the precision of a matrix product
    when it lowers the program, from this setting, which is part of jit's cache key (the same value at every call:
    no recompilation).
    """
    value = getattr(problem, "matmul_precision", None)  # not a problem: the method's own checks say so
    return contextlib.nullcontext() if value is None else jax.default_matmul_precision(value)


@jax.tree_util.register_pytree_with_keys_class
class TrainState:
    """The state ``s = (params, opt_state)`` of the training dynamics.

    ``params`` is the model as ``init`` returned it, of its own type (a dict of arrays, an Equinox module, flax
    linen params, an nnx module). A model's leaves that are not arrays (an Equinox MLP's activation functions, an
    nnx module's settings: hashable values) are *static*: the state keeps them apart, in its pytree structure, so
    that JAX sees only the arrays (``state.arrays``: the model's structure with None at the static leaves), which
    is what training, every hypergradient method, ``jit``, ``vmap``, ``scan``, the optimizer and checkpoints see.
    ``state.params`` puts the two back together: the model as written.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> s = TrainState({"w": jnp.ones(2), "act": jnp.tanh}, ())
        >>> [x.shape for x in jax.tree_util.tree_leaves(s)], s.params["act"] is jnp.tanh
        ([(2,)], True)
        >>> doubled = jax.tree_util.tree_map(lambda x: 2 * x, s)
        >>> doubled.params["w"].tolist(), doubled.arrays["act"] is None
        ([2.0, 2.0], True)
    """

    __slots__ = {
        "arrays": "The model's arrays, in its structure with None at the static leaves (what JAX sees).",
        "opt_state": "The inner optimizer's state (a pytree of arrays).",
        "static": "The model's static part, its non-array leaves, kept in the state's pytree structure.",
    }

    def __init__(self, params: PyTree, opt_state: PyTree):
        self.arrays, self.static = split_model(params)
        self.opt_state = opt_state

    @classmethod
    def from_arrays(cls, arrays: PyTree, opt_state: PyTree, static: Static | None) -> TrainState:
        """A state from the model's arrays and its static part (as :attr:`arrays` and :attr:`static` hold them)."""
        state = object.__new__(cls)
        state.arrays, state.opt_state, state.static = arrays, opt_state, static
        return state

    @property
    def params(self) -> PyTree:
        """The model as written, its arrays and its static leaves together."""
        return join_model(self.arrays, self.static)

    def replace(self, *, arrays: PyTree = None, opt_state: PyTree = None) -> TrainState:
        """This state with new arrays and/or optimizer state, the static part kept."""
        return TrainState.from_arrays(
            self.arrays if arrays is None else arrays, self.opt_state if opt_state is None else opt_state, self.static
        )

    def tree_flatten_with_keys(self):
        key = jax.tree_util.GetAttrKey
        return [(key("params"), self.arrays), (key("opt_state"), self.opt_state)], self.static

    @classmethod
    def tree_unflatten(cls, static, children):
        return cls.from_arrays(children[0], children[1], static)

    def __iter__(self):  # params, opt_state = state
        return iter((self.params, self.opt_state))

    def __repr__(self) -> str:
        return f"TrainState(params={self.params!r}, opt_state={self.opt_state!r})"


def initial_state(problem: BilevelProblem, hparams: PyTree, key: Any) -> TrainState:
    """``s_0 = S_0(λ)``: the initial weights and the optimizer's initial state."""
    arrays, static = split_model(problem.init(hparams, key))
    return TrainState.from_arrays(arrays, problem.optimizer.init(arrays, hparams), static)


def train_step(
    problem: BilevelProblem, state: TrainState, hparams: PyTree, batch: PyTree, step: Any, value_and_grad=None
) -> tuple[TrainState, jax.Array]:
    """``s_t = Φ_t(s_{t-1}, λ)``: one optimizer step; returns the new state and the training loss before it.

    ``value_and_grad`` (``loss -> (arrays, hparams, batch) -> (value, gradient)``) replaces
    ``jax.value_and_grad`` (reverse mode passes one whose derivative is computed forward-over-reverse).
    """
    loss_fn = functools.partial(problem.inner_loss, static=state.static)
    loss, grads = (value_and_grad or jax.value_and_grad)(loss_fn)(state.arrays, hparams, batch)
    arrays, opt_state = problem.optimizer.update(grads, state.opt_state, state.arrays, hparams, step)
    return TrainState.from_arrays(arrays, opt_state, state.static), loss


def objectives(problem: BilevelProblem, params: PyTree, hparams: PyTree, val_data: PyTree) -> jax.Array:
    """The outer objective(s) at the trained model ``params`` (``state.params``), stacked into a vector (one
    entry per objective)."""
    if isinstance(problem.val_loss, Mapping):
        return jnp.stack([problem.val_loss[k](params, hparams, val_data[k]) for k in problem.val_loss])
    return jnp.reshape(problem.val_loss(params, hparams, val_data), (1,))


def outer_derivatives(problem: BilevelProblem, state: TrainState, hparams: PyTree, val_data: PyTree):
    """``E_k`` and its partial derivatives ``∂E_k/∂w``, ``∂E_k/∂λ`` at the trained ``state``, for every
    objective k: what a hypergradient method reads out at the end of training.

    Returns ``(values, dE_dw, dE_dλ)``: values of shape ``(k,)``; the derivatives have the structures of
    ``state.arrays`` and ``hparams`` with a leading axis k (one reverse pass per objective, ``vmap``-ed).

    Example:
        >>> import jax.numpy as jnp, hgkit as hg
        >>> problem = hg.BilevelProblem(lambda hp, k: jnp.ones(2), lambda w, hp, b: jnp.sum(w**2),
        ...                             lambda w, hp, b: hp["c"] * jnp.sum(w**2), hg.optim.sgd(0.1))
        >>> hp = {"c": jnp.asarray(3.0)}
        >>> values, dE_dw, dE_dh = hg.outer_derivatives(problem, hg.initial_state(problem, hp, None), hp, None)
        >>> values.tolist(), dE_dw.tolist(), float(dE_dh["c"][0])
        ([6.0], [[6.0, 6.0]], 2.0)
    """

    def objective(arrays, hp):
        return objectives(problem, state.replace(arrays=arrays).params, hp, val_data)

    values, e_vjp = jax.vjp(objective, state.arrays, hparams)
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
