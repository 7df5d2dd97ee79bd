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
import math
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
    positive_int,
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


def segment_length(checkpoint, n: int) -> int:
    """How many steps one recomputed segment holds, for ``checkpoint`` over a horizon of ``n`` steps."""
    if checkpoint is None:
        return n
    if checkpoint == "sqrt":
        return max(1, math.ceil(math.sqrt(n)))
    return min(int(checkpoint), n)


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
        checkpoint: ``None`` (default) stores every state. ``"sqrt"`` stores only every S-th state, S = ⌈√T⌉,
            and the backward sweep recomputes each segment of S states from its stored start before
            propagating through it; an int sets S. Memory: (T/S + S)·|s|, 2√T·|s| for ``"sqrt"`` instead of
            T·|s|; time: one more training run (the recomputation), about 5× training instead of 4×. The
            hypergradient is the same to rounding (the same operations, done twice).
        truncate: ``K``, back-propagate through the last K steps only (Shaban et al., "Truncated
            Back-propagation for Bilevel Optimization", AISTATS 2019): the first T − K steps run as plain
            training, storing nothing, and reverse mode runs over the last K, memory O(K·|s|) whatever T. The
            result is the derivative with the state ``s_{T-K}`` held constant: it ignores how λ acts through
            the first T − K steps (and through the initial weights); ``truncate=T`` is the full hypergradient.
            Combines with ``checkpoint`` (which then segments the last K steps). Must satisfy 1 ≤ K ≤ T.

    Example:
        >>> import jax.numpy as jnp, hgkit as hg
        >>> problem = hg.BilevelProblem(
        ...     init=lambda hp, key: jnp.zeros(2),
        ...     train_loss=lambda w, hp, b: jnp.sum((w - b) ** 2) + hp["wd"] * jnp.sum(w**2),
        ...     val_loss=lambda w, hp, b: jnp.sum((w - 2 * b) ** 2),
        ...     optimizer=hg.optim.sgd(0.1))
        >>> hp, b = {"wd": jnp.asarray(0.1)}, jnp.ones(2)
        >>> _, full = hg.hypergradient(problem, hp, T=50, train_data=b, val_data=b)
        >>> _, ckpt = hg.hypergradient(problem, hp, 50, b, b, method=hg.Reverse(checkpoint="sqrt"))
        >>> bool(jnp.allclose(full["wd"], ckpt["wd"]))
        True
        >>> _, last = hg.hypergradient(problem, hp, 50, b, b, method=hg.Reverse(truncate=5))
        >>> bool(abs(last["wd"]) < abs(full["wd"]))  # the last 5 steps see only part of λ's effect
        True
    """

    hvp: Literal["forward-over-reverse", "reverse-over-reverse"] = "reverse-over-reverse"
    checkpoint: Literal["sqrt"] | int | None = None
    truncate: int | None = None

    def __post_init__(self):
        if self.hvp not in ("forward-over-reverse", "reverse-over-reverse"):
            raise ValueError(
                f"Reverse(hvp=...) must be 'forward-over-reverse' or 'reverse-over-reverse'; got {self.hvp!r}"
            )
        if not (self.checkpoint is None or self.checkpoint == "sqrt" or positive_int(self.checkpoint)):
            raise ValueError(
                "Reverse(checkpoint=...) must be None (store every state), 'sqrt' or a positive int (the segment "
                f"length); got {self.checkpoint!r}"
            )
        if not (self.truncate is None or positive_int(self.truncate)):
            raise ValueError(
                "Reverse(truncate=...) must be None or a positive int K (back-propagate through the last K "
                f"steps); got {self.truncate!r}"
            )

    def run(
        self, problem: BilevelProblem, hparams, T: int, train_data, val_data, key=None, init_state=None
    ) -> HypergradientResult:
        """The hypergradient and what came with it; pure, so it can be jitted and vmapped."""
        check_inputs(problem, hparams, T, train_data, val_data, key, init_state)
        K = T if self.truncate is None else self.truncate
        if K > T:
            raise ValueError(
                f"Reverse(truncate=K) needs 1 ≤ K ≤ T (it back-propagates through the last K of the T training "
                f"steps); got truncate={K} with T={T}"
            )
        head = T - K  # steps trained without storing or differentiating

        def step_fn(state, hp, t, grad_fn=None):
            return train_step(problem, state, hp, batch_at(train_data, t), t, grad_fn)

        def forward(carry, t):
            state, bad = carry
            new, loss = step_fn(state, hparams, t)
            return (new, mark_first(bad, all_finite(new), t)), (state, loss)

        def forward_unstored(carry, t):
            carry, (_, loss) = forward(carry, t)
            return carry, (None, loss)

        def train(state, bad, first, n, store):
            """``n`` steps from step ``first``; returns (state, bad), (stored states or None, losses)."""
            body = forward if store else forward_unstored
            return lax.scan(body, (state, bad), first + jnp.arange(n, dtype=jnp.int32))

        # s_0, and its VJP when the initial weights depend on λ and the dependence is not truncated away.
        if init_state is None and head == 0:
            floats_0, s0_vjp, rest_0 = jax.vjp(
                lambda hp: partition(initial_state(problem, hp, key)), hparams, has_aux=True
            )
            s0 = combine(floats_0, rest_0)
        else:
            s0 = initial_state(problem, hparams, key) if init_state is None else init_state
            s0_vjp = None

        # Forward: the first T − K steps store nothing; the last K store s_{t-1} for every step t (or, with
        # checkpointing, only the state at the start of each segment of S steps).
        bad = jnp.int32(-1)
        loss_parts = []
        if head:
            (s0, bad), (_, losses) = train(s0, bad, jnp.int32(0), head, store=False)
            loss_parts.append(losses)
        S = segment_length(self.checkpoint, K)
        n_seg, rest_len = divmod(K, S)
        if S == K:  # no checkpointing: one segment, stored as it is trained
            (s_T, bad), (states, losses) = train(s0, bad, jnp.int32(head), K, store=True)
            loss_parts.append(losses)
        else:

            def segment(carry, first):
                state, bad = carry
                (state, bad), (_, losses) = train(state, bad, first, S, store=False)
                return (state, bad), (carry[0], losses)

            firsts = head + S * jnp.arange(n_seg, dtype=jnp.int32)
            (s_rest, bad), (starts, losses) = lax.scan(segment, (s0, bad), firsts)
            loss_parts.append(losses.reshape(-1))
            s_T = s_rest
            if rest_len:
                (s_T, bad), (_, losses) = train(s_rest, bad, jnp.int32(head + n_seg * S), rest_len, store=False)
                loss_parts.append(losses)
        diverged_at = bad
        losses = jnp.concatenate(loss_parts) if len(loss_parts) > 1 else loss_parts[0]

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

        def back_through(carry, states, first, n):
            return lax.scan(backward, carry, (states, first + jnp.arange(n, dtype=jnp.int32)), reverse=True)[0]

        def recompute_and_back(carry, start, first, n):
            """Recompute the n states of a segment from its start, then propagate the adjoint back through it."""
            _, (states, _) = train(start, jnp.int32(-1), first, n, store=True)
            return back_through(carry, states, first, n)

        carry = (p_T, g, jnp.int32(-1))
        if S == K:
            carry = back_through(carry, states, jnp.int32(head), K)
        else:
            if rest_len:
                carry = recompute_and_back(carry, s_rest, jnp.int32(head + n_seg * S), rest_len)
            carry, _ = lax.scan(
                lambda c, inputs: (recompute_and_back(c, inputs[0], inputs[1], S), None),
                carry,
                (starts, firsts),
                reverse=True,
            )
        p_0, g, grad_diverged_at = carry
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
