"""What the experiments share: a one-hidden-layer MLP, its initialization, classification losses, and plain
(compiled, undifferentiated) training of a bilevel problem.

Example:
    >>> import jax, jax.numpy as jnp
    >>> params = mlp_init(jax.random.PRNGKey(0), 4, 3, 2)
    >>> logits = mlp(params, jnp.ones((5, 4)))
    >>> logits.shape, round(float(cross_entropy(jnp.zeros((5, 2)), jnp.zeros(5, jnp.int32))), 6)  # log 2
    ((5, 2), 0.693147)
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from ..problem import train_step


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


def cross_entropy(logits, labels):
    """The mean softmax cross-entropy of integer labels."""
    picked = jnp.take_along_axis(logits, labels[:, None], axis=-1)[:, 0]
    return jnp.mean(jax.nn.logsumexp(logits, axis=-1) - picked)


def error_rate(logits, labels):
    """The fraction of rows whose largest logit is not the label's."""
    return jnp.mean(jnp.argmax(logits, axis=-1) != labels)


def weight_norm2(params) -> jax.Array:
    """``Σ ‖W‖²`` over the weight matrices (biases are not decayed)."""
    return sum(jnp.sum(w**2) for k, w in params.items() if k.startswith("w"))


@functools.partial(jax.jit, static_argnames=("problem", "steps", "train_fn"))
def train_steps(problem, state, hparams, start, steps: int, train_fn=None, train_batch=None):
    """``steps`` plain training steps of ``problem`` from inner step ``start`` (no derivatives carried): the new
    state and the training losses. Minibatches come from ``train_fn(step)``, or ``train_batch`` is used at every
    step. Compiled once per problem, ``steps`` and ``train_fn``."""

    def body(state, t):
        return train_step(problem, state, hparams, train_fn(t) if train_fn is not None else train_batch, t)

    return lax.scan(body, state, start + jnp.arange(steps, dtype=jnp.int32))
