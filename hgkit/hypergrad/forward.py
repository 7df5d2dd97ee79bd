"""Forward-mode hypergradient (Franceschi et al., 2017, §3.2): carry the tangents of the state along training.

With ``A_t = ∂Φ_t/∂s_{t-1}``, ``B_t = ∂Φ_t/∂λ`` and ``Z_t = ds_t/dλ`` (one column per hyperparameter)::

    Z_0 = ∂S_0/∂λ
    Z_t = A_t Z_{t-1} + B_t,     t = 1..T
    df/dλ = ∂E/∂s_T Z_T + ∂E/∂λ

Every column of ``Z_t`` is one Jacobian-vector product of the training step; the m columns are pushed together
(``vmap`` of ``jvp``), the primal step computed once. The real-time mode (:mod:`hgkit.hypergrad.realtime`) uses the
same pieces without restarting, and its variants discount the tangent, ``Z_t = μ A_t Z_{t-1} + B_t``
(:func:`tangent_step`'s ``discount``); :class:`Forward` is always the exact recurrence, μ = 1.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from .._checks import require_positive_int
from .._tree import PyTree, all_finite, combine, mark_first, partition, tree_bytes, tree_map, tree_size
from ..problem import BilevelProblem, TrainState, batch_at, initial_state, outer_derivatives, train_step
from ._inputs import check_inputs
from .base import HypergradientMethod, HypergradientResult, result

DEFAULT_MAX_DIRECTIONS = 128


class TangentState(NamedTuple):
    """What forward mode carries from step to step (and real-time mode from chunk to chunk)."""

    state: TrainState  # the training state s_t
    tangents: PyTree  # Z_t = ds_t/dλ: the float leaves of s, each with a leading axis of m directions
    step: jax.Array  # int32: the inner steps done so far
    diverged_at: jax.Array  # int32: the first inner step whose state was non-finite, or -1
    grad_diverged_at: jax.Array  # int32: the first inner step whose tangents were non-finite, or -1


def directions(hparams: PyTree) -> PyTree:
    """The standard basis of the hyperparameter space: each leaf gets a leading axis of size m (its dtype kept)."""
    leaves, treedef = jax.tree_util.tree_flatten(hparams)
    m = tree_size(hparams)
    out, offset = [], 0
    for x in leaves:
        n = int(np.size(x))
        out.append(jnp.eye(m, dtype=x.dtype)[:, offset : offset + n].reshape((m, *np.shape(x))))
        offset += n
    return jax.tree_util.tree_unflatten(treedef, out)


def check_directions(hparams: PyTree, state: TrainState, max_directions: int | None, method: str) -> None:
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


def init_tangents(problem: BilevelProblem, hparams: PyTree, key, init_state, basis: PyTree) -> TangentState:
    """Step 0: ``s_0`` and ``Z_0 = ∂S_0/∂λ`` (zeros when the run starts from a given state)."""
    minus_one = jnp.int32(-1)
    if init_state is not None:
        floats, _ = partition(init_state)
        m = jax.tree_util.tree_leaves(basis)[0].shape[0]
        z0 = tree_map(lambda x: jnp.zeros((m, *x.shape), x.dtype), floats)
        return TangentState(init_state, z0, jnp.int32(0), minus_one, minus_one)

    def s0(hp):
        return partition(initial_state(problem, hp, key))

    def push(direction):
        return jax.jvp(s0, (hparams,), (direction,), has_aux=True)

    floats, z0, rest = jax.vmap(push, out_axes=(None, 0, None))(basis)
    return TangentState(combine(floats, rest), z0, jnp.int32(0), minus_one, minus_one)


def tangent_step(
    problem: BilevelProblem,
    carry: TangentState,
    hparams: PyTree,
    basis: PyTree,
    batch,
    discount: float | jax.Array = 1.0,
    keep_b: bool = False,
):
    """One step of ``s_t = Φ_t(s_{t-1})`` and ``Z_t = μ A_t Z_{t-1} + B_t``: the new carry and the training loss.

    Every column of ``Z`` is one JVP of the training step; the m columns go together (``vmap``), the primal step
    computed once. The JVP is linear in the state's tangent, so pushing ``μ Z_{t-1}`` gives ``μ A_t Z_{t-1} + B_t``.

    Args:
        discount: μ. The Python float 1.0 (forward mode; the default) is the exact recurrence, nothing scaled; the
            Python float 0.0 keeps only ``B_t`` (one JVP in λ alone, no Hessian-vector product through the state);
            another number, or an array of shape (m,) (one μ per direction), scales the columns.
        keep_b: also return ``B_t = ∂Φ_t/∂λ`` (the columns pushed with a zero state tangent, by a JVP in λ alone).

    Returns:
        ``(carry, loss)``, or ``(carry, (loss, B_t))`` with ``keep_b``; ``carry`` keeps its type (``_replace``).
    """
    t = carry.step
    floats, rest = partition(carry.state)

    def step(x, hp):
        new, loss = train_step(problem, combine(x, rest), hp, batch, t)
        new_floats, new_rest = partition(new)
        return new_floats, (new_rest, loss)

    def push(z_col, direction):
        return jax.jvp(step, (floats, hparams), (z_col, direction), has_aux=True)

    def push_b(direction):
        return jax.jvp(lambda hp: step(floats, hp), (hparams,), (direction,), has_aux=True)

    only_b = isinstance(discount, float) and discount == 0.0
    if only_b:
        new_floats, z, (new_rest, loss) = jax.vmap(push_b, out_axes=(None, 0, None))(basis)
    else:
        tangents = carry.tangents
        if not (isinstance(discount, float) and discount == 1.0):
            tangents = tree_map(lambda x: x * _per_direction(discount, x), tangents)
        new_floats, z, (new_rest, loss) = jax.vmap(push, out_axes=(None, 0, None))(tangents, basis)
    new = combine(new_floats, new_rest)
    bad = mark_first(carry.diverged_at, all_finite(new), t)
    zbad = mark_first(carry.grad_diverged_at, all_finite(z) | (bad >= 0), t)
    carry = carry._replace(state=new, tangents=z, step=t + 1, diverged_at=bad, grad_diverged_at=zbad)
    if not keep_b:
        return carry, loss
    b = z if only_b else jax.vmap(push_b, out_axes=(None, 0, None))(basis)[1]
    return carry, (loss, b)


def _per_direction(discount, x):
    """``discount`` (a number, or one per direction) shaped to scale ``x`` (leading axis: the direction)."""
    mu = jnp.asarray(discount, x.dtype)
    return mu.reshape(mu.shape + (1,) * (x.ndim - mu.ndim))


def advance(
    problem: BilevelProblem,
    carry: TangentState,
    hparams: PyTree,
    basis: PyTree,
    train_data: Any,
    n: int,
    discount: float | jax.Array = 1.0,
) -> tuple[TangentState, jax.Array]:
    """``n`` steps of :func:`tangent_step` from ``carry.step``, in one ``lax.scan``: the carry and the losses."""

    def body(carry, _):
        return tangent_step(problem, carry, hparams, basis, batch_at(train_data, carry.step), discount)

    return lax.scan(body, carry, None, length=n)


def through_weights(dE_dw: PyTree, tangents: PyTree) -> jax.Array:
    """``∂E/∂w · Z`` for every objective and direction, summed over the parameter leaves: shape (k, m).

    ``dE_dw`` has the parameters' structure with a leading axis k, ``tangents`` (``Z.arrays``) with a leading axis m.
    """
    pairs = zip(jax.tree_util.tree_leaves(dE_dw), jax.tree_util.tree_leaves(tangents), strict=True)
    return sum(g.reshape(g.shape[0], -1) @ z.reshape(z.shape[0], -1).T for g, z in pairs)


def assemble(through_w: jax.Array, dE_dh: PyTree, hparams: PyTree) -> PyTree:
    """``∂E/∂w Z + ∂E/∂λ`` in the structure of ``hparams`` (each leaf with a leading axis k), from ``through_w``
    of shape (k, m) and the direct term ``dE_dh``."""
    k = through_w.shape[0]
    leaves, treedef = jax.tree_util.tree_flatten(hparams)
    out, offset = [], 0
    for x, d in zip(leaves, treedef.flatten_up_to(dE_dh), strict=True):
        n = int(np.size(x))
        out.append(through_w[:, offset : offset + n].reshape((k, *np.shape(x))) + d)
        offset += n
    return jax.tree_util.tree_unflatten(treedef, out)


def read_out(problem: BilevelProblem, carry: TangentState, hparams: PyTree, val_data: PyTree):
    """``∂E/∂s_t Z_t + ∂E/∂λ`` for every objective: the objective vector (k,), the hypergradient of every
    objective (the structure of ``hparams``, each leaf with a leading axis k) and ``∂E/∂w`` (for reading out
    other tangents through the weights, as MARTHE's ``∇E·B_t``)."""
    values, dE_dw, dE_dh = outer_derivatives(problem, carry.state, hparams, val_data)
    return values, assemble(through_weights(dE_dw, carry.tangents.arrays), dE_dh, hparams), dE_dw


def finish(problem: BilevelProblem, carry: TangentState, hparams: PyTree, val_data: PyTree, losses):
    """The :class:`~hgkit.HypergradientResult` at the carry's step."""
    values, grads, _ = read_out(problem, carry, hparams, val_data)
    return result(problem, hparams, values, grads, carry.state, losses, carry.diverged_at, carry.grad_diverged_at)


@dataclasses.dataclass(frozen=True)
class Forward(HypergradientMethod):
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

    def __post_init__(self):
        require_positive_int("Forward(max_directions=...)", self.max_directions, "a limit", optional=True)

    def run(
        self,
        problem: BilevelProblem,
        hparams: PyTree,
        T: int,
        train_data: Any,
        val_data: PyTree,
        *,
        key: Any = None,
        init_state: TrainState | None = None,
    ) -> HypergradientResult:
        """The hypergradient and what came with it; pure, so it can be jitted and vmapped."""
        abstract_state = check_inputs(problem, hparams, T, train_data, val_data, key, init_state)
        check_directions(hparams, abstract_state, self.max_directions, "Forward")
        basis = directions(hparams)
        carry, losses = advance(problem, init_tangents(problem, hparams, key, init_state, basis), hparams, basis,
                                train_data, T)  # fmt: skip
        return finish(problem, carry, hparams, val_data, losses)

    @property
    def label(self) -> str:
        return "forward mode"
