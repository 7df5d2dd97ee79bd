"""Forward-mode hypergradient (Franceschi et al., 2017, §3.2): carry the tangents of the state along training.

With ``A_t = ∂Φ_t/∂s_{t-1}``, ``B_t = ∂Φ_t/∂λ`` and ``Z_t = ds_t/dλ`` (one column per hyperparameter)::

    Z_0 = ∂S_0/∂λ
    Z_t = A_t Z_{t-1} + B_t,     t = 1..T
    df/dλ = ∂E/∂s_T Z_T + ∂E/∂λ

Every column of ``Z_t`` is one Jacobian-vector product of the training step; the m columns are pushed together
(``vmap`` of ``jvp``), the primal step computed once. The real-time mode (:mod:`hgkit.hypergrad.realtime`) uses the
same pieces without restarting.
"""

from __future__ import annotations

import dataclasses
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ..problem import BilevelProblem, batch_at, initial_state, objectives, train_step
from ._common import (
    HypergradientResult,
    all_finite,
    check_inputs,
    combine,
    mark_first,
    partition,
    per_objective_grads,
    tree_bytes,
    tree_map,
    tree_size,
    unstack_value,
)

DEFAULT_MAX_DIRECTIONS = 128


def directions(hparams):
    """The standard basis of the hyperparameter space: each leaf gets a leading axis of size m (its dtype kept)."""
    leaves, treedef = jax.tree_util.tree_flatten(hparams)
    m = tree_size(hparams)
    out, offset = [], 0
    for x in leaves:
        n = int(np.size(x))
        out.append(jnp.eye(m, dtype=x.dtype)[:, offset : offset + n].reshape((m, *np.shape(x))))
        offset += n
    return jax.tree_util.tree_unflatten(treedef, out)


def check_directions(hparams, state, max_directions, method: str) -> None:
    """Refuse (or warn about) forward mode over many directions, with what it would cost."""
    m = tree_size(hparams)
    cost = (
        f"{method} carries one tangent of the training state per hyperparameter: m = {m} directions × "
        f"{tree_bytes(partition(state)[0]) / 2**20:.2f} MiB of state = "
        f"{m * tree_bytes(partition(state)[0]) / 2**20:.1f} MiB of tangents, and each step costs about "
        f"(1 + m) = {m + 1}× a training step. Reverse mode costs about 4× training whatever m"
    )
    if max_directions is not None and m > max_directions:
        raise ValueError(
            f"{cost}. To run it anyway, raise the limit: hg.{method}(max_directions={m}) (it is {max_directions})."
        )
    if m > DEFAULT_MAX_DIRECTIONS:
        warnings.warn(cost, ResourceWarning, stacklevel=3)


def init_tangents(problem: BilevelProblem, hparams, key, init_state, basis):
    """``s_0`` and ``Z_0 = ∂S_0/∂λ`` (zeros when the run starts from a given state)."""
    if init_state is not None:
        floats, _ = partition(init_state)
        m = jax.tree_util.tree_leaves(basis)[0].shape[0]
        return init_state, tree_map(lambda x: jnp.zeros((m, *x.shape), x.dtype), floats)

    def s0(hp):
        return partition(initial_state(problem, hp, key))

    def push(direction):
        floats, z, rest = jax.jvp(s0, (hparams,), (direction,), has_aux=True)
        return floats, z, rest

    floats, z0, rest = jax.vmap(push, out_axes=(None, 0, None))(basis)
    return combine(floats, rest), z0


def advance(
    problem: BilevelProblem,
    state,
    tangents,
    hparams,
    basis,
    train_data,
    first_step,
    num_steps,
    diverged_at,
    grad_diverged_at,
):
    """``num_steps`` steps of ``s_t = Φ_t(s_{t-1})`` and ``Z_t = A_t Z_{t-1} + B_t`` from step ``first_step``."""

    def body(carry, t):
        state, z, bad, zbad = carry
        floats, rest = partition(state)
        batch = batch_at(train_data, t)

        def step(x, hp):
            new, loss = train_step(problem, combine(x, rest), hp, batch, t)
            new_floats, new_rest = partition(new)
            return new_floats, (new_rest, loss)

        def push(z_col, direction):
            return jax.jvp(step, (floats, hparams), (z_col, direction), has_aux=True)

        new_floats, z, (new_rest, loss) = jax.vmap(push, out_axes=(None, 0, None))(z, basis)
        new = combine(new_floats, new_rest)
        bad = mark_first(bad, all_finite(new), t)
        zbad = mark_first(zbad, all_finite(z) | (bad >= 0), t)
        return (new, z, bad, zbad), loss

    steps = first_step + jnp.arange(num_steps, dtype=jnp.int32)
    (state, tangents, bad, zbad), losses = lax.scan(body, (state, tangents, diverged_at, grad_diverged_at), steps)
    return state, tangents, losses, bad, zbad


def read_out(problem: BilevelProblem, state, tangents, hparams, val_data):
    """``∂E/∂s_T Z_T + ∂E/∂λ`` for every objective; returns (objective vector, hypergradient pytree)."""
    values, e_vjp = jax.vjp(lambda w, hp: objectives(problem, w, hp, val_data), state.params, hparams)
    k = values.shape[0]
    dE_dw, dE_dh = jax.vmap(e_vjp)(jnp.eye(k, dtype=values.dtype))
    # ∂E/∂w · Z, summed over the parameter leaves: shape (k, m).
    through_w = sum(
        g.reshape(k, -1) @ z.reshape(z.shape[0], -1).T
        for g, z in zip(jax.tree_util.tree_leaves(dE_dw), jax.tree_util.tree_leaves(tangents.params), strict=True)
    )
    leaves, treedef = jax.tree_util.tree_flatten(hparams)
    direct = treedef.flatten_up_to(dE_dh)
    out, offset = [], 0
    for x, d in zip(leaves, direct, strict=True):
        n = int(np.size(x))
        out.append(through_w[:, offset : offset + n].reshape((k, *np.shape(x))) + d)
        offset += n
    return values, per_objective_grads(problem, hparams, jax.tree_util.tree_unflatten(treedef, out))


@dataclasses.dataclass(frozen=True)
class Forward:
    """Forward mode: exact hypergradient, memory independent of T; the choice for few hyperparameters.

    Recurrence: ``Z_0 = ∂S_0/∂λ``, ``Z_t = A_t Z_{t-1} + B_t`` for t = 1..T, then
    ``df/dλ = ∂E/∂s_T Z_T + ∂E/∂λ``.

    Time: about (1 + m)× training for m scalar hyperparameters (one JVP per direction per step).

    Memory: ``Z`` is m × |s|, whatever T.

    Args:
        max_directions: refuse more than this many hyperparameter directions (each costs one more training
            run's worth of compute and one more copy of the state); ``None`` lifts the limit.
    """

    max_directions: int | None = DEFAULT_MAX_DIRECTIONS

    def run(
        self, problem: BilevelProblem, hparams, T: int, train_data, val_data, key=None, init_state=None
    ) -> HypergradientResult:
        """The hypergradient and what came with it; pure, so it can be jitted and vmapped."""
        abstract_state = check_inputs(problem, hparams, T, train_data, val_data, key, init_state)
        check_directions(hparams, abstract_state, self.max_directions, "Forward")
        basis = directions(hparams)
        s0, z0 = init_tangents(problem, hparams, key, init_state, basis)
        s_T, z_T, losses, bad, zbad = advance(
            problem, s0, z0, hparams, basis, train_data, jnp.int32(0), T, jnp.int32(-1), jnp.int32(-1)
        )
        values, grads = read_out(problem, s_T, z_T, hparams, val_data)
        return HypergradientResult(unstack_value(problem, values), grads, s_T, losses, bad, zbad)
