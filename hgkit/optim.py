"""Inner optimizers written to be differentiated through.

An :class:`Optimizer` is a pair of pure functions, as in optax, except that every hyperparameter is read from the
``hparams`` pytree at each step instead of being closed over, so hypergradients flow to it:

* ``init(params, hparams) -> state``
* ``update(grads, state, params, hparams, step) -> (params, state)``, with ``step`` an int32 counting from 0.

Each hyperparameter argument is a number, a string naming an entry of ``hparams``, or a callable
``(hparams, step) -> value`` (see :mod:`hgkit.hparams`); its value is a scalar or a pytree shaped like the
parameters (per-parameter values).

Example:
    >>> import jax.numpy as jnp, hgkit as hg
    >>> opt = hg.optim.momentum(lr="lr", momentum=0.9)
    >>> hp = {"lr": jnp.asarray(0.1)}
    >>> w = jnp.ones(3)
    >>> state = opt.init(w, hp)
    >>> w, state = opt.update(jnp.ones(3), state, w, hp, 0)
    >>> w.tolist()
    [0.9, 0.9, 0.9]
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from .hparams import Spec, per_parameter, resolve

__all__ = ["Optimizer", "sgd", "momentum", "adam", "from_optax"]


class Optimizer(NamedTuple):
    """``init(params, hparams) -> state`` and ``update(grads, state, params, hparams, step) -> (params, state)``."""

    init: Callable[[Any, Any], Any]
    update: Callable[[Any, Any, Any, Any, Any], tuple[Any, Any]]


def _map(fn, params, *trees):
    """``fn`` leaf by leaf over ``params`` and trees with its structure (or per-leaf lists)."""
    p_leaves, p_def = jax.tree_util.tree_flatten(params)
    others = [t if isinstance(t, list) else p_def.flatten_up_to(t) for t in trees]
    out = [fn(p, *rest) for p, *rest in zip(p_leaves, *others, strict=True)]
    return jax.tree_util.tree_unflatten(p_def, out)


def sgd(lr: Spec) -> Optimizer:
    """Gradient descent: ``w ← w − η g``.

    Args:
        lr: the learning rate η.
    """

    def init(params, hparams):
        return ()

    def update(grads, state, params, hparams, step):
        eta = per_parameter(resolve(lr, hparams, step, name="lr"), params)
        return _map(lambda w, g, e: w - e * g, params, grads, eta), state

    return Optimizer(init, update)


def momentum(lr: Spec, momentum: Spec, nesterov: bool = False) -> Optimizer:
    """Heavy-ball momentum: ``v ← μ v + g``, ``w ← w − η v``.

    With ``nesterov=True`` the step looks ahead: ``v ← μ v + g``, ``w ← w − η (g + μ v)``.
    The state is the velocity ``v`` (zeros at the start).

    Args:
        lr: the learning rate η.
        momentum: the momentum μ.
        nesterov: use the Nesterov form of the update.
    """

    def init(params, hparams):
        return jax.tree_util.tree_map(jnp.zeros_like, params)

    def update(grads, velocity, params, hparams, step):
        eta = per_parameter(resolve(lr, hparams, step, name="lr"), params)
        mu = per_parameter(resolve(momentum, hparams, step, name="momentum"), params)
        v = _map(lambda v, g, m: m * v + g, velocity, grads, mu)
        if nesterov:
            direction = _map(lambda g, v, m: g + m * v, grads, v, mu)
        else:
            direction = v
        return _map(lambda w, d, e: w - e * d, params, direction, eta), v

    return Optimizer(init, update)


class AdamState(NamedTuple):
    mu: Any  # first moment
    nu: Any  # second moment


def adam(lr: Spec, b1: Spec = 0.9, b2: Spec = 0.999, eps: Spec = 1e-8) -> Optimizer:
    """Adam (Kingma and Ba, 2015), safe to differentiate through.

    With ``k = step + 1``::

        m ← β1 m + (1 − β1) g          m̂ = m / (1 − β1^k)
        v ← β2 v + (1 − β2) g²         v̂ = v / (1 − β2^k)
        w ← w − η m̂ / sqrt(v̂ + ε²)

    ε sits inside the square root: ``sqrt(v̂ + ε²)`` differs from the usual ``sqrt(v̂) + ε`` by less than ε, and
    its derivative stays finite where a gradient is exactly zero (``sqrt`` has an infinite slope at 0, which turns
    the hypergradient of the usual form into NaN for a dead unit or an unused class).

    Args:
        lr: the learning rate η.
        b1, b2: the decay rates β1, β2 of the moments.
        eps: ε.
    """

    def init(params, hparams):
        zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
        return AdamState(zeros, zeros)

    def update(grads, state, params, hparams, step):
        k = step + 1
        eta = per_parameter(resolve(lr, hparams, step, name="lr"), params)
        beta1 = per_parameter(resolve(b1, hparams, step, name="b1"), params)
        beta2 = per_parameter(resolve(b2, hparams, step, name="b2"), params)
        epsilon = per_parameter(resolve(eps, hparams, step, name="eps"), params)
        mu = _map(lambda m, g, b: b * m + (1 - b) * g, state.mu, grads, beta1)
        nu = _map(lambda v, g, b: b * v + (1 - b) * g * g, state.nu, grads, beta2)

        def step_leaf(w, m, v, e, bb1, bb2, ep):
            m_hat = m / (1 - bb1**k)
            v_hat = v / (1 - bb2**k)
            return w - e * m_hat / jnp.sqrt(v_hat + ep * ep)

        new = _map(step_leaf, params, mu, nu, eta, beta1, beta2, epsilon)
        return new, AdamState(mu, nu)

    return Optimizer(init, update)


def from_optax(transform: optax.GradientTransformation | Callable, **hyperparams: Spec) -> Optimizer:
    """Any optax transformation as inner dynamics, its hyperparameters taken from ``hparams``.

    Two ways to say which hyperparameters are tuned:

    * a transformation built with ``optax.inject_hyperparams``: each keyword names one of its injected
      hyperparameters and says where its value comes from, and it is overwritten in the optimizer state at
      every step::

        hg.optim.from_optax(optax.inject_hyperparams(optax.sgd)(learning_rate=0.1, momentum=0.9),
                            learning_rate="lr", momentum="mu")

    * a factory ``(**values) -> GradientTransformation``, called inside the traced step with the resolved
      values::

        hg.optim.from_optax(lambda lr: optax.adam(lr, eps_root=1e-16), lr="lr")

    Only the values come from ``hparams``; optax does the rest (``optax.apply_updates``). Adam-like optax
    transformations need ``eps_root > 0`` to be differentiated through (see :func:`adam`).
    """
    if isinstance(transform, optax.GradientTransformation):
        tx = transform

        def inject(state, hparams, step):
            if not hyperparams:
                return state
            current = getattr(state, "hyperparams", None)
            if not isinstance(current, dict):
                raise TypeError(
                    "from_optax: hyperparameters "
                    f"{sorted(hyperparams)} can only be taken from hparams if the transformation was "
                    "built with optax.inject_hyperparams (or pass a factory instead)"
                )
            unknown = sorted(set(hyperparams) - set(current))
            if unknown:
                raise ValueError(
                    f"from_optax: {unknown} are not hyperparameters of this transformation; "
                    f"it injects {sorted(current)}"
                )
            values = {k: resolve(spec, hparams, step, name=k) for k, spec in hyperparams.items()}
            return state._replace(hyperparams={**current, **values})

        def init(params, hparams):
            # Inject once at init so the state has the dtypes it will have at every step (a scan carry must).
            return inject(tx.init(params), hparams, 0)

        def update(grads, state, params, hparams, step):
            state = inject(state, hparams, step)
            updates, state = tx.update(grads, state, params)
            return optax.apply_updates(params, updates), state

        return Optimizer(init, update)

    if not callable(transform):
        raise TypeError(
            "from_optax expects an optax.GradientTransformation or a factory (**hyperparams) -> "
            f"GradientTransformation; got {type(transform).__name__}"
        )

    def build(hparams, step):
        return transform(**{k: resolve(spec, hparams, step, name=k) for k, spec in hyperparams.items()})

    def init(params, hparams):
        return build(hparams, 0).init(params)

    def update(grads, state, params, hparams, step):
        updates, state = build(hparams, step).update(grads, state, params)
        return optax.apply_updates(params, updates), state

    return Optimizer(init, update)
