"""Real-time hyperparameter optimization (RTHO; Franceschi et al., 2017, §3.3): forward mode without restarting.

One training run is split into chunks of Δ steps. The tangents ``Z_t = ds_t/dλ`` and the weights are carried
across chunks and never reset; after each chunk the hypergradient of the validation objective at the current
weights, ``∂E/∂s_t Z_t + ∂E/∂λ``, is available, and the outer loop may change λ before the next chunk. ``Z`` then
mixes derivatives taken at the successive values of λ: the approximation RTHO makes (exact while λ is fixed, so
with Δ = T it equals :class:`~hgkit.hypergrad.forward.Forward`).

Example:
    >>> import jax.numpy as jnp, hgkit as hg
    >>> problem = hg.BilevelProblem(
    ...     init=lambda hp, key: jnp.zeros(2),
    ...     train_loss=lambda w, hp, b: jnp.sum((w - b) ** 2),
    ...     val_loss=lambda w, hp, b: jnp.sum((w - 2 * b) ** 2),
    ...     optimizer=hg.optim.sgd("lr"))
    >>> hp = {"lr": jnp.asarray(0.1)}
    >>> rt = hg.RealTime(delta=5)
    >>> carry = rt.init(problem, hp)
    >>> carry, result = rt.step(problem, carry, hp, train_data=jnp.ones(2), val_data=jnp.ones(2))
    >>> int(carry.step), result.train_losses.shape
    (5, (5,))
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from ..problem import BilevelProblem, TrainState
from ._common import HypergradientResult, check_inputs, positive_int, unstack_value
from .forward import DEFAULT_MAX_DIRECTIONS, advance, check_directions, directions, init_tangents, read_out


class RealTimeState(NamedTuple):
    """What a real-time run carries from chunk to chunk."""

    state: TrainState  # the training state s_t
    tangents: Any  # Z_t = ds_t/dλ, one leading row per hyperparameter direction (float leaves of s only)
    step: jax.Array  # int32: the inner steps done so far
    diverged_at: jax.Array  # int32: first inner step whose state was non-finite, or -1
    grad_diverged_at: jax.Array  # int32: first inner step whose tangents were non-finite, or -1


@dataclasses.dataclass(frozen=True)
class RealTime:
    """Real-time mode: hypergradients every Δ steps of one single training run.

    Recurrence: forward mode's ``Z_t = A_t Z_{t-1} + B_t``, never reset; after each chunk of Δ steps the
    hypergradient ``∂E/∂s_t Z_t + ∂E/∂λ`` is read out (and λ may be updated).

    Time: about (1 + m)× training per chunk for m scalar hyperparameters, plus one evaluation of E per chunk.

    Memory: ``Z`` is m × |s|, independent of T and of Δ.

    Args:
        delta: Δ, the number of inner steps between hypergradients.
        max_directions: as for :class:`~hgkit.hypergrad.forward.Forward`.
    """

    delta: int
    max_directions: int | None = DEFAULT_MAX_DIRECTIONS

    def __post_init__(self):
        if not positive_int(self.delta):
            raise ValueError(f"RealTime(delta=...) must be a positive int number of inner steps; got {self.delta!r}")

    def init(self, problem: BilevelProblem, hparams, key=None, init_state=None) -> RealTimeState:
        """``s_0`` and ``Z_0 = ∂S_0/∂λ`` (or a given state with ``Z_0 = 0``), at step 0."""
        s0, z0 = init_tangents(problem, hparams, key, init_state, directions(hparams))
        minus_one = jnp.int32(-1)
        return RealTimeState(s0, z0, jnp.int32(0), minus_one, minus_one)

    def step(self, problem: BilevelProblem, carry: RealTimeState, hparams, train_data, val_data):
        """Δ more inner steps under ``hparams``; returns the new carry and the hypergradient at its end."""
        abstract_state = check_inputs(problem, hparams, self.delta, train_data, val_data, None, carry.state)
        check_directions(hparams, abstract_state, self.max_directions, "RealTime")
        state, z, losses, bad, zbad = advance(
            problem,
            carry.state,
            carry.tangents,
            hparams,
            directions(hparams),
            train_data,
            carry.step,
            self.delta,
            carry.diverged_at,
            carry.grad_diverged_at,
        )
        values, grads = read_out(problem, state, z, hparams, val_data)
        carry = RealTimeState(state, z, carry.step + self.delta, bad, zbad)
        return carry, HypergradientResult(unstack_value(problem, values), grads, state, losses, bad, zbad)

    def run(
        self, problem: BilevelProblem, hparams, T: int, train_data, val_data, key=None, init_state=None
    ) -> HypergradientResult:
        """T/Δ chunks under fixed ``hparams``: the same hypergradient as forward mode."""
        abstract_state = check_inputs(problem, hparams, T, train_data, val_data, key, init_state)
        if T % self.delta:
            raise ValueError(f"RealTime(delta={self.delta}) must divide T={T} to run T/Δ whole chunks")
        check_directions(hparams, abstract_state, self.max_directions, "RealTime")
        basis = directions(hparams)
        s0, z0 = init_tangents(problem, hparams, key, init_state, basis)

        def chunk(carry, first_step):
            state, z, bad, zbad = carry
            state, z, losses, bad, zbad = advance(
                problem, state, z, hparams, basis, train_data, first_step, self.delta, bad, zbad
            )
            return (state, z, bad, zbad), losses

        starts = jnp.arange(0, T, self.delta, dtype=jnp.int32)
        minus_one = jnp.int32(-1)
        (s_T, z_T, bad, zbad), losses = lax.scan(chunk, (s0, z0, minus_one, minus_one), starts)
        values, grads = read_out(problem, s_T, z_T, hparams, val_data)
        return HypergradientResult(unstack_value(problem, values), grads, s_T, losses.reshape(T), bad, zbad)
