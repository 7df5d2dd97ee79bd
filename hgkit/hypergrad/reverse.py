"""Reverse-mode hypergradient (Franceschi et al., 2017, §3.1): train forward storing the states, then
propagate the adjoint backwards.

With ``A_t = ∂Φ_t/∂s_{t-1}`` and ``B_t = ∂Φ_t/∂λ``::

    p_T = ∂E/∂s_T,      g = ∂E/∂λ
    for t = T..1:       g += p_t B_t,     p_{t-1} = p_t A_t
    g += p_0 ∂S_0/∂λ                      (initial weights that depend on λ)

Each product ``p_t A_t``, ``p_t B_t`` is one vector-Jacobian product of the training step, recomputed from the
stored state ``s_{t-1}``; nothing else of the step (activations, the loss's intermediates) is kept.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.dtypes import float0

from ..problem import BilevelProblem, batch_at, initial_state, objectives, train_step
from ._common import (
    HypergradientResult,
    all_finite,
    check_inputs,
    combine,
    mark_first,
    partition,
    per_objective_grads,
    tree_map,
    unstack_value,
)


def value_and_grad_for_reverse(loss):
    """``jax.value_and_grad(loss)`` (in params) whose own VJP is computed forward-over-reverse.

    Reverse mode needs ``u ↦ uᵀ ∂∇_w L/∂(w, λ)``. Second derivatives are symmetric, so this equals
    ``d/dε ∇_(w,λ) L(w + εu, λ)`` at ε = 0: a JVP of the gradient. The forward rule linearizes the gradient
    (computing it once, keeping the linearization's residuals) and the backward rule only applies the linear
    map: no second reverse pass and no recomputation of the gradient.
    """
    both = jax.value_and_grad(loss, argnums=(0, 1))

    @jax.custom_vjp
    def value_and_grad(params, hparams, batch):
        return jax.value_and_grad(loss)(params, hparams, batch)

    def fwd(params, hparams, batch):
        (value, (g_w, g_h)), tangent_map = jax.linearize(lambda w: both(w, hparams, batch), params)
        return (value, g_w), (tangent_map, g_w, g_h, batch)

    def bwd(residuals, cotangent):
        tangent_map, g_w, g_h, batch = residuals
        ct_loss, ct_grad = cotangent
        _, (h_w, h_h) = tangent_map(ct_grad)
        ct_params = tree_map(lambda h, g: h + ct_loss * g, h_w, g_w)
        ct_hparams = tree_map(lambda h, g: h + (ct_loss * g).astype(h.dtype), h_h, g_h)
        ct_batch = tree_map(
            lambda x: jnp.zeros_like(x) if jnp.issubdtype(x.dtype, jnp.inexact) else np.zeros(x.shape, float0),
            batch,
        )
        return ct_params, ct_hparams, ct_batch

    value_and_grad.defvjp(fwd, bwd)
    return value_and_grad


@dataclasses.dataclass(frozen=True)
class Reverse:
    """Reverse mode: exact hypergradient for any number of hyperparameters.

    Recurrence (``A_t = ∂Φ_t/∂s_{t-1}``, ``B_t = ∂Φ_t/∂λ``): ``p_T = ∂E/∂s_T``, then for t = T..1,
    ``g += p_t B_t`` and ``p_{t-1} = p_t A_t``; finally ``g += p_0 ∂S_0/∂λ``.

    Time: one training run forward plus one backward sweep whose steps each recompute the training step and
    take its vector-Jacobian product: about 4× training in all, independent of the number of hyperparameters.

    Memory: the T states ``s_0..s_{T-1}``, O(T·|s|) (the optimizer state included, no per-step intermediates).

    Args:
        hvp: how the backward sweep differentiates the gradient inside each step. ``"reverse-over-reverse"``
            (default): plain ``jax.vjp`` of the step, as ``jax.grad`` with ``jax.checkpoint`` would do it.
            ``"forward-over-reverse"``: linearizes the gradient and uses the symmetry of the Hessian. Which is
            faster depends on the model: measured on 2 CPU cores, forward-over-reverse was about 10% faster on
            an MLP 64-256-10 and about 35% slower on a softmax regression over 5,000 MNIST images, where reading
            the data dominates (``benchmarks/core_cost.py`` prints both).
    """

    hvp: Literal["forward-over-reverse", "reverse-over-reverse"] = "reverse-over-reverse"

    def __post_init__(self):
        if self.hvp not in ("forward-over-reverse", "reverse-over-reverse"):
            raise ValueError(
                f"Reverse(hvp=...) must be 'forward-over-reverse' or 'reverse-over-reverse'; got {self.hvp!r}"
            )

    def run(
        self, problem: BilevelProblem, hparams, T: int, train_data, val_data, key=None, init_state=None
    ) -> HypergradientResult:
        """The hypergradient and what came with it; pure, so it can be jitted and vmapped."""
        check_inputs(problem, hparams, T, train_data, val_data, key, init_state)
        steps = jnp.arange(T, dtype=jnp.int32)

        def step_fn(state, hp, t, grad_fn=None):
            return train_step(problem, state, hp, batch_at(train_data, t), t, grad_fn)

        # Forward: train, storing s_{t-1} for every step t.
        if init_state is None:
            floats_0, s0_vjp, rest_0 = jax.vjp(
                lambda hp: partition(initial_state(problem, hp, key)), hparams, has_aux=True
            )
            s0 = combine(floats_0, rest_0)
        else:
            s0, s0_vjp = init_state, None

        def forward(carry, t):
            state, bad = carry
            new, loss = step_fn(state, hparams, t)
            return (new, mark_first(bad, all_finite(new), t)), (state, loss)

        (s_T, diverged_at), (states, losses) = lax.scan(forward, (s0, jnp.int32(-1)), steps)

        # The outer objective(s) E_k and their gradients (a leading axis k over objectives).
        values, e_vjp = jax.vjp(lambda w, hp: objectives(problem, w, hp, val_data), s_T.params, hparams)
        k = values.shape[0]
        dE_dw, g = jax.vmap(e_vjp)(jnp.eye(k, dtype=values.dtype))
        floats_T, _ = partition(s_T)
        p_T = floats_T._replace(
            params=dE_dw, opt_state=tree_map(lambda x: jnp.zeros((k, *x.shape), x.dtype), floats_T.opt_state)
        )

        grad_fn = value_and_grad_for_reverse(problem.train_loss) if self.hvp == "forward-over-reverse" else None

        def batched(vjp, p):
            # One VJP per objective; the usual single objective skips vmap (its size-1 batch slows XLA's CPU code).
            if k > 1:
                return jax.vmap(vjp)(p)
            return tree_map(lambda x: x[None], vjp(tree_map(lambda x: x[0], p)))

        # Backward: p_{t-1} = p_t A_t and g += p_t B_t, from the stored s_{t-1}.
        def backward(carry, inputs):
            p, g, bad = carry
            state, t = inputs
            floats, rest = partition(state)
            _, step_vjp = jax.vjp(
                lambda x, hp: partition(step_fn(combine(x, rest), hp, t, grad_fn)[0])[0], floats, hparams
            )
            p, g_t = batched(step_vjp, p)
            return (p, tree_map(jnp.add, g, g_t), mark_first(bad, all_finite(p), t)), None

        (p_0, g, grad_diverged_at), _ = lax.scan(backward, (p_T, g, jnp.int32(-1)), (states, steps), reverse=True)
        if s0_vjp is not None:
            (g_0,) = batched(s0_vjp, p_0)
            g = tree_map(jnp.add, g, g_0)
        return HypergradientResult(
            value=unstack_value(problem, values),
            grads=per_objective_grads(problem, hparams, g),
            state=s_T,
            train_losses=losses,
            diverged_at=diverged_at,
            grad_diverged_at=grad_diverged_at,
        )
