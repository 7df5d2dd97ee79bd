"""What the experiments share as models: a one-hidden-layer MLP and a linear model (softmax regression, one-vs-rest
scorers), their initializations, classification losses and accuracy, and plain (compiled, undifferentiated)
training of a bilevel problem, which is :func:`hgkit.problem.unroll` compiled once per problem and length.

Example:
    >>> import jax, jax.numpy as jnp
    >>> params = mlp_init(jax.random.PRNGKey(0), 4, 3, 2)
    >>> logits = mlp(params, jnp.ones((5, 4)))
    >>> logits.shape, round(float(cross_entropy(jnp.zeros((5, 2)), jnp.zeros(5, jnp.int32))), 6)  # log 2
    ((5, 2), 0.693147)
    >>> linear(linear_init(4, 3), jnp.ones((5, 4))).shape, cross_entropies(jnp.zeros((2, 4)), jnp.zeros(2, int)).shape
    ((5, 3), (2,))

    Plain training: ten steps of gradient descent on ``(w − 1)²`` from 0, with a learning rate of 1/4.

    >>> import hgkit as hg
    >>> problem = hg.BilevelProblem(lambda hp, key: jnp.zeros(1), lambda w, hp, b: jnp.sum((w - b) ** 2),
    ...                             lambda w, hp, b: jnp.sum(w**2), hg.optim.sgd(0.25))
    >>> run = plain_training(problem, {}, jnp.ones(1), 10)
    >>> round(float(run.state.params[0]), 6), run.losses.shape  # 1 − 2⁻¹⁰
    (0.999023, (10,))
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from ..problem import Trajectory, initial_state, unroll


def mlp_init(key, inputs: int, width: int, outputs: int, dtype="float32") -> dict:
    """``{"w1", "b1", "w2", "b2"}``: weights ~ N(0, 1/fan_in) (unit-scale tanh activations), zero biases."""
    k1, k2 = jax.random.split(key)
    return {
        "w1": jax.random.normal(k1, (inputs, width), dtype) * inputs**-0.5,
        "b1": jnp.zeros((width,), dtype),
        "w2": jax.random.normal(k2, (width, outputs), dtype) * width**-0.5,
        "b2": jnp.zeros((outputs,), dtype),
    }


def mlp(params, x):
    """``tanh(x W1 + b1) W2 + b2``: the logits (tanh: smooth, so second derivatives through training are too)."""
    return jnp.tanh(x @ params["w1"] + params["b1"]) @ params["w2"] + params["b2"]


def linear_init(inputs: int, outputs: int, dtype="float32") -> dict:
    """``{"W", "b"}``, all zeros: a linear model trained from the origin."""
    return {"W": jnp.zeros((inputs, outputs), dtype), "b": jnp.zeros((outputs,), dtype)}


def linear(params, x):
    """``x W + b``: one column of scores (or logits) per class or task."""
    return x @ params["W"] + params["b"]


def cross_entropy(logits, labels):
    """The mean softmax cross-entropy of integer labels."""
    picked = jnp.take_along_axis(logits, labels[:, None], axis=-1)[:, 0]
    return jnp.mean(jax.nn.logsumexp(logits, axis=-1) - picked)


def cross_entropies(logits, labels):
    """Each row's softmax cross-entropy ``−log softmax(logits)[label]``: a vector, for per-example weights to scale.

    The same quantity as :func:`cross_entropy` before the mean, computed through ``log_softmax``; the two agree to
    rounding, and each experiment keeps the one its published figures were made with.
    """
    return -jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], axis=1)[:, 0]


def error_rate(logits, labels):
    """The fraction of rows whose largest logit is not the label's."""
    return jnp.mean(jnp.argmax(logits, axis=-1) != labels)


def accuracy(logits, labels):
    """The fraction of rows whose largest logit is the label's."""
    return jnp.mean(jnp.argmax(logits, axis=-1) == labels)


def weight_norm2(params) -> jax.Array:
    """``Σ ‖W‖²`` over the weight matrices (biases are not decayed)."""
    return sum(jnp.sum(w**2) for k, w in params.items() if k.startswith("w"))


@functools.partial(jax.jit, static_argnames=("problem", "steps", "batch_fn"))
def _unroll(problem, state, hparams, batch, first, steps: int, batch_fn):
    return unroll(problem, state, hparams, batch if batch_fn is None else batch_fn, first, steps)


def plain_training(problem, hparams, train_data, steps: int, *, state=None, first: int = 0, key=None) -> Trajectory:
    """``steps`` plain training steps of ``problem`` from inner step ``first`` (no derivatives carried): the
    :class:`~hgkit.problem.Trajectory` of :func:`hgkit.problem.unroll` (new state, training losses, divergence).

    Starts from ``state``, or from ``initial_state(problem, hparams, key)``. ``train_data`` is a batch or a function
    ``step -> batch``. Compiled once per problem, ``steps`` and batch function; ``first`` and the arrays are traced,
    so a run cut into chunks compiles once.
    """
    if state is None:
        state = initial_state(problem, hparams, key)
    batch_fn = train_data if callable(train_data) else None
    batch = None if batch_fn is not None else train_data
    return _unroll(problem, state, hparams, batch, jnp.int32(first), steps, batch_fn)
