"""Hyper-optimizers for online learning-rate schedules: MARTHE's adaptive hyper-learning rate, as optax.

With :class:`~hgkit.RealTime` the outer loop updates λ (say the learning rate η) after every chunk by an optax
transformation of the hypergradient δ. MARTHE (Donini et al., IJCAI 2020) makes that step itself adaptive, by
hypergradient descent on the hyper-learning rate β::

    η_{t+1} = η_t − β_t δ_t                      (the update this transformation returns: −β_t δ_t)
    β_{t+1} = max(β_t + α δ_t δ_{t−1}, 0)        (δ_{−1} = 0, so β_1 = β_0)

β_t δ_t is the step taken with the current β, then β moves (the order of the authors' code): up while successive
hypergradients agree in sign, down when they disagree. ``α = 0`` is plain SGD with step β.

**Per hyperparameter**: β and the remembered δ_{t−1} have the structure of the updates, one β per scalar
hyperparameter (elementwise products, not a global inner product): a learning rate and a weight decay have
hypergradients of unrelated scales, so one shared β could not suit both. For a single scalar hyperparameter (the
learning rate of the MARTHE paper) the two readings coincide.

The rest of MARTHE's update is the loop's own pieces: the authors clip the hypergradient at 100, which is
``optax.clip(100.0)`` chained before (so the clipped δ also drives β), and keep η ≥ 0, which is the projection
``hg.constraints.positive(0.0)`` (``η ← max(η, 0)``) or a box.

Example:
    >>> import jax.numpy as jnp, optax
    >>> tx = adaptive_sgd(beta=0.1, alpha=0.5)
    >>> state = tx.init({"lr": jnp.asarray(1.0)})
    >>> for delta in (2.0, 1.0, -1.0):
    ...     step, state = tx.update({"lr": jnp.asarray(delta)}, state)
    ...     print(round(float(step["lr"]), 6), round(float(state.beta["lr"]), 6))
    -0.2 0.1
    -0.1 1.1
    1.1 0.6
    >>> tx = optax.chain(optax.clip(100.0), adaptive_sgd(beta=1e-3, alpha=1e-4))   # MARTHE's clipping
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from ._checks import require_number
from ._tree import PyTree

__all__ = ["AdaptiveSGDState", "adaptive_sgd"]


class AdaptiveSGDState(NamedTuple):
    """:func:`adaptive_sgd`'s state: β and the previous hypergradient, each with the structure of the updates."""

    beta: PyTree  # β, the hyper-learning rate of each leaf (the structure of the updates)
    previous: PyTree  # the previous hypergradient (the structure of the updates)


def adaptive_sgd(beta: float, alpha: float) -> optax.GradientTransformation:
    """SGD on λ whose step β is tuned by hypergradient descent: MARTHE's adaptive hyper-learning rate.

    The update is ``−β_t δ_t``; then ``β_{t+1} = max(β_t + α δ_t δ_{t−1}, 0)``, elementwise (one β per scalar
    hyperparameter). See the module docstring.

    Args:
        beta: β_0, the starting hyper-learning rate (finite, ≥ 0).
        alpha: α, the step of β's own hypergradient descent (finite, ≥ 0; 0 keeps β constant).

    Each is any real scalar: a Python or NumPy number, or a 0-d array.
    """
    beta = require_number("adaptive_sgd(beta=...)", beta, low=0.0)
    alpha = require_number("adaptive_sgd(alpha=...)", alpha, low=0.0)

    def init(params):
        return AdaptiveSGDState(
            beta=jax.tree_util.tree_map(lambda p: jnp.full(jnp.shape(p), beta, jnp.result_type(p)), params),
            previous=jax.tree_util.tree_map(jnp.zeros_like, params),
        )

    def update(updates, state, params=None):
        del params
        steps = jax.tree_util.tree_map(lambda g, b: -b * g, updates, state.beta)
        new_beta = jax.tree_util.tree_map(
            lambda b, g, prev: jnp.maximum(b + jnp.asarray(alpha, b.dtype) * g * prev, 0),
            state.beta,
            updates,
            state.previous,
        )
        return steps, AdaptiveSGDState(new_beta, updates)

    return optax.GradientTransformation(init, update)
