"""Reverse-mode hypergradient (Franceschi et al., 2017, §3.1): train forward storing the states, then
propagate the adjoint backwards.

With ``A_t = ∂Φ_t/∂s_{t-1}`` and ``B_t = ∂Φ_t/∂λ``::

    p_T = ∂E/∂s_T,      g = ∂E/∂λ
    for t = T..1:       g += p_t B_t,     p_{t-1} = p_t A_t
    g += p_0 ∂S_0/∂λ                      (initial weights that depend on λ)

Each product ``p_t A_t``, ``p_t B_t`` is one vector-Jacobian product of the training step, recomputed from the
stored state ``s_{t-1}``; nothing else of the step (activations, the loss's intermediates) is kept.

The pieces, each a function of its own: :func:`forward_sweep` trains and stores (every state, or the first state
of each checkpointed segment), :func:`adjoint_step` is one step of the recurrence above, :func:`backward_sweep`
runs it over stored states, recomputing each segment's states (:func:`recompute_segment`) when checkpointed.

Two other ways through the same recurrence: :func:`residual_sweep` (``store="residuals"``) keeps each step's
linearization instead of its state, as ``jax.grad`` through ``lax.scan`` does, so that nothing is recomputed on
the way back; binomial checkpointing (:mod:`~hgkit.hypergrad.checkpointing`) keeps a fixed number of states. The
:mod:`~hgkit.hypergrad.planner` picks among them for a memory budget.
"""

from __future__ import annotations

import dataclasses
import math
import weakref
from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.dtypes import float0

from .._checks import positive_int
from .._tree import PyTree, all_finite, combine, mark_first, partition, tree_bytes, tree_map
from ..problem import BilevelProblem, TrainState, batch_at, initial_state, outer_derivatives, train_step, unroll
from . import planner
from ._inputs import _abstract, check_inputs
from .base import HypergradientMethod, HypergradientResult, result
from .checkpointing import Binomial, execute, schedule
from .planner import Plan


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


def segment_length(checkpoint: Literal["sqrt"] | int | None, n: int) -> int:
    """How many steps one recomputed segment holds, for ``checkpoint`` over a horizon of ``n`` steps."""
    if checkpoint is None:
        return n
    return planner.segment(checkpoint, n)


class Sweep(NamedTuple):
    """What the forward sweep leaves for the backward one."""

    state: TrainState  # s_T
    losses: jax.Array  # (T,) training losses
    diverged_at: jax.Array  # int32: the first non-finite step, or -1
    stored: TrainState  # s_{t-1} for each of the last K steps (S == K), else the first state of each segment
    tail: TrainState | None  # with checkpointing and K % S != 0: the first state of the last, shorter segment


class Adjoint(NamedTuple):
    """What the backward sweep carries: one row per objective (leading axis k) in ``p`` and ``g``."""

    p: PyTree  # p_t = dE/ds_t: the float leaves of the training state
    g: PyTree  # the hypergradient accumulated so far, the structure of hparams
    grad_diverged_at: jax.Array  # int32: the first step (met going back) at which p went non-finite, or -1


def forward_sweep(
    problem: BilevelProblem, s0: TrainState, hparams: PyTree, train_data: Any, head: int, K: int, S: int,
    diverged_at: Any = -1,
) -> Sweep:  # fmt: skip
    """Train the K steps from step ``head`` on, storing every state (S = K) or the first state of each segment of S
    steps (checkpointing; a last segment of K mod S steps may follow)."""
    bad = jnp.asarray(diverged_at, jnp.int32)
    if S == K:
        out = unroll(problem, s0, hparams, train_data, head, K, store=True, diverged_at=bad)
        return Sweep(out.state, out.losses, out.diverged_at, out.states, None)

    def segment(carry, first):
        state, bad = carry
        out = unroll(problem, state, hparams, train_data, first, S, diverged_at=bad)
        return (out.state, out.diverged_at), (state, out.losses)

    n_seg, rest = divmod(K, S)
    firsts = head + S * jnp.arange(n_seg, dtype=jnp.int32)
    (s_end, bad), (starts, seg_losses) = lax.scan(segment, (s0, bad), firsts)
    losses = [seg_losses.reshape(-1)]
    tail = None
    if rest:
        tail = s_end
        out = unroll(problem, s_end, hparams, train_data, head + n_seg * S, rest, diverged_at=bad)
        s_end, bad = out.state, out.diverged_at
        losses.append(out.losses)
    return Sweep(s_end, jnp.concatenate(losses), bad, starts, tail)


def adjoint_step(
    problem: BilevelProblem, state: TrainState, hparams: PyTree, batch: PyTree, t: jax.Array, p: PyTree, grad_fn=None
) -> tuple[PyTree, PyTree]:
    """One step back: ``(p_t A_t, p_t B_t)`` from the stored ``s_{t-1}`` (one VJP of the training step per
    objective: ``p`` has a leading axis k)."""
    floats, rest = partition(state)
    _, step_vjp = jax.vjp(
        lambda x, hp: partition(train_step(problem, combine(x, rest), hp, batch, t, grad_fn)[0])[0], floats, hparams
    )
    return _per_objective(step_vjp, p)


def _per_objective(vjp: Callable, p: PyTree):
    """``vjp`` applied to each row of ``p`` (a leading axis k over objectives).

    The usual single objective skips ``vmap``: its size-1 batch slows XLA's CPU code.
    """
    k = jax.tree_util.tree_leaves(p)[0].shape[0]
    if k > 1:
        return jax.vmap(vjp)(p)
    return tree_map(lambda x: x[None], vjp(tree_map(lambda x: x[0], p)))


def back_through(
    problem: BilevelProblem, hparams: PyTree, train_data: Any, carry: Adjoint, states: TrainState, first, n: int,
    grad_fn,
) -> Adjoint:  # fmt: skip
    """The adjoint through ``n`` steps from ``first``, given their stored states."""

    def body(carry: Adjoint, inputs):
        state, t = inputs
        p, g_t = adjoint_step(problem, state, hparams, batch_at(train_data, t), t, carry.p, grad_fn)
        bad = mark_first(carry.grad_diverged_at, all_finite(p), t)
        return Adjoint(p, tree_map(jnp.add, carry.g, g_t), bad), None

    steps = jnp.asarray(first, jnp.int32) + jnp.arange(n, dtype=jnp.int32)
    return lax.scan(body, carry, (states, steps), reverse=True)[0]


def recompute_segment(
    problem: BilevelProblem, start: TrainState, hparams: PyTree, train_data: Any, first, n: int
) -> TrainState:
    """The ``n`` states ``s_{first}..s_{first+n-1}`` of a checkpointed segment, recomputed from its first."""
    return unroll(problem, start, hparams, train_data, first, n, store=True).states


def backward_sweep(
    problem: BilevelProblem, hparams: PyTree, train_data: Any, sweep: Sweep, carry: Adjoint, head: int, K: int,
    S: int, grad_fn,
) -> Adjoint:  # fmt: skip
    """``p_{t-1} = p_t A_t`` and ``g += p_t B_t`` for t = T..head+1, from ``p_T``; returns the adjoint at ``head``."""
    if S == K:
        return back_through(problem, hparams, train_data, carry, sweep.stored, head, K, grad_fn)

    def segment(carry, start, first, n):
        states = recompute_segment(problem, start, hparams, train_data, first, n)
        return back_through(problem, hparams, train_data, carry, states, first, n, grad_fn)

    n_seg, rest = divmod(K, S)
    if rest:
        carry = segment(carry, sweep.tail, head + n_seg * S, rest)
    firsts = head + S * jnp.arange(n_seg, dtype=jnp.int32)
    return lax.scan(lambda c, xs: (segment(c, xs[0], xs[1], S), None), carry, (sweep.stored, firsts), reverse=True)[0]


def initial(
    problem: BilevelProblem, hparams: PyTree, key: Any, init_state: TrainState | None, differentiate: bool
) -> tuple[TrainState, Callable | None]:
    """``s_0``, and the VJP of ``λ ↦ s_0`` when the initial weights depend on λ and that is differentiated."""
    if init_state is not None:
        return init_state, None
    if not differentiate:
        return initial_state(problem, hparams, key), None
    floats, s0_vjp, rest = jax.vjp(lambda hp: partition(initial_state(problem, hp, key)), hparams, has_aux=True)
    return combine(floats, rest), s0_vjp


@jax.custom_vjp
def _watch(floats: PyTree, probe: jax.Array) -> PyTree:
    """The identity on ``floats``; going back, the cotangent of ``probe`` (a float32 scalar) is 1 where the
    cotangent of ``floats`` (the adjoint p_t) is non-finite, else 0: how :func:`residual_sweep` finds where the
    derivative went non-finite without a backward loop of its own."""
    return floats


def _watch_fwd(floats, probe):
    return floats, None


def _watch_bwd(_, cotangent):
    return cotangent, jnp.where(all_finite(cotangent), 0.0, 1.0).astype(jnp.float32)


_watch.defvjp(_watch_fwd, _watch_bwd)


class ResidualSweep(NamedTuple):
    """What :func:`residual_sweep` leaves for the way back."""

    state: TrainState  # s_T
    losses: jax.Array  # (K,) training losses
    diverged_at: jax.Array  # int32: the first non-finite step, or -1
    step_vjp: Callable  # p_T ↦ (p_first, Σ_t p_t B_t, (K,) non-finite flags): the stored linearization, applied


def residual_sweep(
    problem: BilevelProblem, s0: TrainState, hparams: PyTree, train_data: Any, first: int, K: int, grad_fn=None,
    diverged_at: Any = -1,
) -> ResidualSweep:  # fmt: skip
    """Train K steps from step ``first`` keeping each step's linearization (``store="residuals"``).

    This is ``jax.vjp`` of the whole ``lax.scan`` of training steps, so JAX's scan rule keeps, for each step, the
    residuals its vector-Jacobian product needs (and hoists those that do not change from step to step, such as
    the data, out of the loop): the same memory and time as ``jax.grad`` through ``lax.scan``. Applying the
    returned ``step_vjp`` to ``p_T`` runs the backward sweep with no recomputation.
    """
    floats0, rest0 = partition(s0)
    steps = jnp.asarray(first, jnp.int32) + jnp.arange(K, dtype=jnp.int32)

    def run(floats0, hparams, probes):
        def body(carry, inputs):
            floats, rest, bad = carry
            t, probe = inputs
            state = combine(_watch(floats, probe), rest)
            new, loss = train_step(problem, state, hparams, batch_at(train_data, t), t, grad_fn)
            new_floats, new_rest = partition(new)
            return (new_floats, new_rest, mark_first(bad, all_finite(new), t)), loss

        init = (floats0, rest0, jnp.asarray(diverged_at, jnp.int32))
        (floats, rest, bad), losses = lax.scan(body, init, (steps, probes))
        return floats, (rest, bad, losses)

    floats, step_vjp, (rest, bad, losses) = jax.vjp(run, floats0, hparams, jnp.zeros(K, jnp.float32), has_aux=True)
    return ResidualSweep(combine(floats, rest), losses, bad, step_vjp)


def terminal(
    problem: BilevelProblem, state: TrainState, hparams: PyTree, val_data: PyTree
) -> tuple[jax.Array, Adjoint]:
    """The objectives at ``s_T`` and the adjoint there: ``p_T = ∂E/∂s_T`` (zero on the optimizer state) and
    ``g = ∂E/∂λ``, one row per objective."""
    values, dE_dw, g = outer_derivatives(problem, state.params, hparams, val_data)
    floats, _ = partition(state)
    k = values.shape[0]
    p = floats._replace(params=dE_dw, opt_state=tree_map(lambda x: jnp.zeros((k, *x.shape), x.dtype), floats.opt_state))
    return values, Adjoint(p, g, jnp.int32(-1))


def reverse_mode(
    problem: BilevelProblem, hparams: PyTree, T: int, train_data: Any, val_data: PyTree, key: Any,
    init_state: TrainState | None, *, store: str, checkpoint: Any, K: int, hvp: str,
) -> HypergradientResult:  # fmt: skip
    """Reverse mode over the last K of T steps, storing ``store`` with ``checkpoint``: the three sweeps wired."""
    head = T - K  # steps trained without storing (truncation)
    s0, s0_vjp = initial(problem, hparams, key, init_state, differentiate=head == 0)
    bad, head_losses = jnp.int32(-1), []
    if head:
        out = unroll(problem, s0, hparams, train_data, 0, head)
        s0, bad, head_losses = out.state, out.diverged_at, [out.losses]
    grad_fn = value_and_grad_for_reverse(problem.inner_loss) if hvp == "forward-over-reverse" else None

    if store == "residuals":
        sweep = residual_sweep(problem, s0, hparams, train_data, head, K, grad_fn, bad)
        values, adjoint = terminal(problem, sweep.state, hparams, val_data)
        p, g_steps, flags = _per_objective(sweep.step_vjp, adjoint.p)
        steps = head + jnp.arange(K, dtype=jnp.int32)
        grad_bad = jnp.max(jnp.where(jnp.any(flags != 0, axis=0), steps, -1))  # the first met going back
        adjoint = Adjoint(p, tree_map(jnp.add, adjoint.g, g_steps), grad_bad)
        state, losses, bad = sweep.state, sweep.losses, sweep.diverged_at
    elif isinstance(checkpoint, Binomial):

        def step(state, t):
            return train_step(problem, state, hparams, batch_at(train_data, t), t)

        def back(state, t, carry):
            values, adj = carry
            p, g_t = adjoint_step(problem, state, hparams, batch_at(train_data, t), t, adj.p, grad_fn)
            bad_p = mark_first(adj.grad_diverged_at, all_finite(p), t)
            return values, Adjoint(p, tree_map(jnp.add, adj.g, g_t), bad_p)

        def start(state):
            return terminal(problem, state, hparams, val_data)

        state, losses, bad, (values, adjoint) = execute(schedule(K, checkpoint.slots), s0, head, step, start, back, bad)
    else:
        S = segment_length(checkpoint, K)
        sweep = forward_sweep(problem, s0, hparams, train_data, head, K, S, bad)
        values, adjoint = terminal(problem, sweep.state, hparams, val_data)
        adjoint = backward_sweep(problem, hparams, train_data, sweep, adjoint, head, K, S, grad_fn)
        state, losses, bad = sweep.state, sweep.losses, sweep.diverged_at

    g = adjoint.g
    if s0_vjp is not None:
        (g_0,) = _per_objective(s0_vjp, adjoint.p)
        g = tree_map(jnp.add, g, g_0)
    losses = jnp.concatenate([*head_losses, losses]) if head_losses else losses
    return result(problem, hparams, values, g, state, losses, bad, adjoint.grad_diverged_at)


# ----- the planner's measurements, cached per problem and shapes -------------------------------------------------

# problem -> {(what, hvp, input shapes): a measurement}: traced or compiled once per problem and shapes, and
# forgotten with the problem (which may hold its data).
_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _signature(tree) -> tuple:
    leaves, treedef = jax.tree_util.tree_flatten(_abstract(tree))
    return treedef, tuple((tuple(x.shape), str(x.dtype)) if hasattr(x, "shape") else x for x in leaves)


def _cached(what: str, method: Reverse, problem, hparams, train_data, val_data, key, init_state, compute):
    data = train_data if callable(train_data) else _signature(train_data)
    shapes = tuple(_signature(x) for x in (hparams, val_data, key, init_state))
    cache_key = (what, method.hvp, data, shapes)
    known = _CACHE.setdefault(problem, {})
    if cache_key not in known:
        if len(known) >= 64:
            known.pop(next(iter(known)))
        args = _abstract((hparams, None if callable(train_data) else train_data, val_data, key, init_state))
        known[cache_key] = compute(args)
    return known[cache_key]


def _sizes(method: Reverse, problem, hparams, train_data, val_data, key, init_state) -> tuple[int, int, int]:
    """``(|s|, one step's residuals, one loss)`` in bytes, from abstract evaluation only (cached).

    The residuals are what ``jax.vjp`` of the training scan keeps (:func:`residual_sweep`): their growth from 4 to 8
    steps, so that what does not change from step to step (the data) does not count.
    """

    def compute(args):
        hp, tr, _, k, s0 = args
        grad_fn = value_and_grad_for_reverse(problem.inner_loss) if method.hvp == "forward-over-reverse" else None

        def residuals(n):
            def f(hp, tr, k, s0):
                tr = train_data if callable(train_data) else tr
                s0 = initial_state(problem, hp, k) if s0 is None else s0
                return jax.tree_util.tree_leaves(residual_sweep(problem, s0, hp, tr, 0, n, grad_fn).step_vjp)

            return tree_bytes(jax.eval_shape(f, hp, tr, k, s0))

        state = s0 if s0 is not None else jax.eval_shape(lambda hp, k: initial_state(problem, hp, k), hp, k)
        batch = jax.eval_shape(train_data, jax.ShapeDtypeStruct((), jnp.int32)) if callable(train_data) else tr
        loss = jax.eval_shape(problem.inner_loss, state.params, hp, batch)
        per_step = max(math.ceil((residuals(8) - residuals(4)) / 4), 0)
        return tree_bytes(state), per_step, tree_bytes(loss)

    return _cached("sizes", method, problem, hparams, train_data, val_data, key, init_state, compute)


def _calibration(method: Reverse, problem, hparams, train_data, val_data, key, init_state) -> planner.Calibration:
    """What the planner needs (cached per problem, input shapes and ``hvp``): the compiled memory of the
    hypergradient over 8 steps storing states, and the sizes of :func:`_sizes`."""
    sizes = _sizes(method, problem, hparams, train_data, val_data, key, init_state)

    def compute(args):
        def f(hp, tr, va, k, s0):
            tr = train_data if callable(train_data) else tr
            return reverse_mode(problem, hp, 8, tr, va, k, s0, store="states", checkpoint=None, K=8, hvp=method.hvp)

        analysis = jax.jit(f).lower(*args).compile().memory_analysis()
        if analysis is None:
            raise NotImplementedError(
                f"Reverse(memory=...) needs XLA's memory analysis of a compiled program, which the "
                f"{jax.default_backend()!r} backend does not give; choose store= and checkpoint= yourself"
            )
        return planner.calibrate(int(analysis.temp_size_in_bytes), 8, *sizes)

    return _cached("calibration", method, problem, hparams, train_data, val_data, key, init_state, compute)


def _memory_text(b: int) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if b >= size:
            return f"{b / size:.4g} {unit}"
    return f"{b} B"


@dataclasses.dataclass(frozen=True)
class Reverse(HypergradientMethod):
    """Reverse mode: exact hypergradient for any number of hyperparameters.

    Recurrence (``A_t = ∂Φ_t/∂s_{t-1}``, ``B_t = ∂Φ_t/∂λ``): ``p_T = ∂E/∂s_T``, then for t = T..1,
    ``g += p_t B_t`` and ``p_{t-1} = p_t A_t``; finally ``g += p_0 ∂S_0/∂λ``.

    What it keeps from the forward sweep for the backward one is the trade between memory and time; every choice
    gives the same hypergradient (to rounding). With |s| the training state, r one step's residuals (what its
    vector-Jacobian product needs: activations, the loss's intermediates), W the working memory of a step and
    F(T, s) revolve's count of recomputed steps (:mod:`~hgkit.hypergrad.checkpointing`):

    ================================  ============  ============================================================
    options                           memory        time
    ================================  ============  ============================================================
    ``store="residuals"``             W + T·r       as ``jax.grad`` through ``lax.scan``: nothing recomputed
    ``store="states"``                W + T·|s|     each step again inside its VJP (one more training run)
    ``checkpoint="sqrt"``             W + 2√T·|s|   two more training runs
    ``checkpoint=hg.Binomial(s)``     W + s·|s|     one more run and F(T, s) steps (32 slots, T = 10⁴: 3.3 runs)
    ``memory=B``                      ≤ B           the fastest of these whose predicted memory fits B
    ================================  ============  ============================================================

    ``Reverse()`` keeps residuals when one step's take at most 1.5 training states (r ≤ 1.5|s|), states
    otherwise (:meth:`default_store`). Measured in CPU time on 2 shared CPU cores, back to back against
    ``jax.grad`` through ``lax.scan`` (``benchmarks/peers.py --interleaved``, T = 1,000; BENCHMARKS.md): on a
    softmax regression 784→10 over 500 images (r = 1.2|s|) storing states took 1.64× its time for 0.83× its
    memory, residuals 1.05× for 1.00×; on an MLP 784-64-10 (r = 3.2|s|) states took 1.15× its time for
    0.31× its memory, residuals 0.97× for 1.00× (and on an H200, states were faster than ``jax.grad`` there:
    0.86-0.88×).

    Args:
        hvp: how the backward sweep differentiates the gradient inside each step. ``"reverse-over-reverse"``
            (default): plain ``jax.vjp`` of the step, as ``jax.grad`` with ``jax.checkpoint`` would do it.
            ``"forward-over-reverse"``: linearizes the gradient and uses the symmetry of the Hessian. Which is
            faster depends on the model: measured on 2 CPU cores, forward-over-reverse was about 10% faster on
            an MLP 64-256-10 and about 35% slower on a softmax regression over 5,000 MNIST images, where reading
            the data dominates (``benchmarks/core_cost.py`` prints both).
        store: what the forward sweep keeps for each step. ``"states"``: the state ``s_{t-1}``, from which the
            backward sweep recomputes the step inside its vector-Jacobian product; memory T·|s|. ``"residuals"``:
            the step's linearization (``jax.vjp``'s residuals, as ``jax.grad`` through ``lax.scan`` keeps them,
            the data shared by all steps kept once), so the backward sweep recomputes nothing; memory T·r.
            ``None`` (default): residuals if r ≤ 1.5|s|, else states (see above). Not with ``checkpoint``.
        checkpoint: ``None`` (default) stores every step. ``"sqrt"`` stores only every S-th state, S = ⌈√T⌉,
            and the backward sweep recomputes each segment of S states from its stored start before
            propagating through it; an int sets S. Memory: (T/S + S)·|s|, 2√T·|s| for ``"sqrt"`` instead of
            T·|s|; time: one more training run (the recomputation), about 5× training instead of 4×.
            ``hg.Binomial(slots=s)``: at most s stored states (the initial one included), recomputed by
            Griewank's optimal schedule (:mod:`~hgkit.hypergrad.checkpointing`): memory s·|s| plus the working
            memory; ``F(T, s)`` plain steps (r·T − C(s + r, r − 1), r the smallest with C(s + r, s) ≥ T) beside
            the T reversed ones. The hypergradient is the same to rounding (the same operations, done again).
        truncate: ``K``, back-propagate through the last K steps only (Shaban et al., "Truncated
            Back-propagation for Bilevel Optimization", AISTATS 2019): the first T − K steps run as plain
            training, storing nothing, and reverse mode runs over the last K, memory O(K·|s|) whatever T. The
            result is the derivative with the state ``s_{T-K}`` held constant: it ignores how λ acts through
            the first T − K steps (and through the initial weights); ``truncate=T`` is the full hypergradient.
            Combines with ``store`` and ``checkpoint`` (which then apply to the last K steps). Must satisfy
            1 ≤ K ≤ T.
        memory: a budget in bytes of XLA temporary memory for the hypergradient computation (per member of a
            vmapped population). The method then chooses ``store`` and ``checkpoint`` itself, fastest first:
            residuals (where ``Reverse()`` would keep them), states, √T, binomial with as many slots as fit,
            so that a budget that fits everything runs what ``Reverse()`` runs; from the compiled memory of the
            hypergradient over a few steps (:mod:`~hgkit.hypergrad.planner`); :meth:`plan` shows the choice.
            A budget below every plan's need is refused with the least it needs. Not with ``store`` or
            ``checkpoint``.

    Example:
        >>> import jax.numpy as jnp, hgkit as hg
        >>> problem = hg.BilevelProblem(
        ...     init=lambda hp, key: jnp.zeros(2),
        ...     train_loss=lambda w, hp, b: jnp.sum((w - b) ** 2) + hp["wd"] * jnp.sum(w**2),
        ...     val_loss=lambda w, hp, b: jnp.sum((w - 2 * b) ** 2),
        ...     optimizer=hg.optim.sgd(0.1))
        >>> hp, b = {"wd": jnp.asarray(0.1)}, jnp.ones(2)
        >>> _, full = hg.hypergradient(problem, hp, T=50, train_data=b, val_data=b)
        >>> hg.Reverse().default_store(problem, hp, 50, b, b)   # a linear step: its residuals are small
        'residuals'
        >>> _, states = hg.hypergradient(problem, hp, 50, b, b, method=hg.Reverse(store="states"))
        >>> _, ckpt = hg.hypergradient(problem, hp, 50, b, b, method=hg.Reverse(checkpoint="sqrt"))
        >>> bool(jnp.allclose(full["wd"], states["wd"])) and bool(jnp.allclose(full["wd"], ckpt["wd"]))
        True
        >>> _, last = hg.hypergradient(problem, hp, 50, b, b, method=hg.Reverse(truncate=5))
        >>> bool(abs(last["wd"]) < abs(full["wd"]))  # the last 5 steps see only part of λ's effect
        True
        >>> plan = hg.Reverse(memory=2**20).plan(problem, hp, 50, b, b)
        >>> plan.store, plan.checkpoint   # a megabyte holds every step's residuals here
        ('residuals', None)
    """

    hvp: Literal["forward-over-reverse", "reverse-over-reverse"] = "reverse-over-reverse"
    checkpoint: Literal["sqrt"] | int | Binomial | None = None
    truncate: int | None = None
    store: Literal["states", "residuals"] | None = None
    memory: int | None = None

    def __post_init__(self):
        if self.hvp not in ("forward-over-reverse", "reverse-over-reverse"):
            raise ValueError(
                f"Reverse(hvp=...) must be 'forward-over-reverse' or 'reverse-over-reverse'; got {self.hvp!r}"
            )
        ok = self.checkpoint is None or self.checkpoint == "sqrt" or isinstance(self.checkpoint, Binomial)
        if not (ok or positive_int(self.checkpoint)):
            raise ValueError(
                "Reverse(checkpoint=...) must be None (store every state), 'sqrt', a positive int (the segment "
                f"length) or hg.Binomial(slots=...); got {self.checkpoint!r}"
            )
        if not (self.truncate is None or positive_int(self.truncate)):
            raise ValueError(
                "Reverse(truncate=...) must be None or a positive int K (back-propagate through the last K "
                f"steps); got {self.truncate!r}"
            )
        if self.store not in (None, "states", "residuals"):
            raise ValueError(f"Reverse(store=...) must be 'states' or 'residuals'; got {self.store!r}")
        if self.store == "residuals" and self.checkpoint is not None:
            raise ValueError(
                "Reverse(store=...) 'residuals' keeps every step's linearization; it does not combine with "
                f"checkpoint={self.checkpoint!r} (which stores states): drop one"
            )
        if not (self.memory is None or positive_int(self.memory)):
            raise ValueError(f"Reverse(memory=...) must be None or a positive int of bytes; got {self.memory!r}")
        if self.memory is not None and (self.store is not None or self.checkpoint is not None):
            raise ValueError(
                "Reverse(memory=...) chooses store and checkpoint itself; give either memory= or them, not both"
            )

    @property
    def label(self) -> str:
        parts = [f"memory={_memory_text(self.memory)}"] if self.memory is not None else []
        parts += [f"store={self.store!r}"] if self.store is not None else []
        parts += [f"checkpoint={self.checkpoint!r}"] if self.checkpoint is not None else []
        parts += [f"truncate={self.truncate}"] if self.truncate is not None else []
        return "reverse mode" + (f" ({', '.join(parts)})" if parts else "")

    def _horizon(self, T: int) -> int:
        K = T if self.truncate is None else self.truncate
        if K > T:
            raise ValueError(
                f"Reverse(truncate=K) needs 1 ≤ K ≤ T (it back-propagates through the last K of the T training "
                f"steps); got truncate={K} with T={T}"
            )
        return K

    def default_store(
        self, problem, hparams, T, train_data, val_data, *, key=None, init_state=None
    ) -> Literal["states", "residuals"]:
        """The store :meth:`run` uses: ``store`` if given, ``"states"`` with ``checkpoint``; else ``"residuals"``
        when one step's residuals take at most ``planner.RESIDUALS_UP_TO`` (1.5) training states, ``"states"``
        otherwise (from abstract evaluation of the training step, cached per problem and input shapes)."""
        if self.store is not None:
            return self.store
        if self.checkpoint is not None:
            return "states"
        state, residual, _ = _sizes(self, problem, hparams, train_data, val_data, key, init_state)
        return "residuals" if planner.residuals_pay(state, residual) else "states"

    def plan(
        self,
        problem: BilevelProblem,
        hparams: PyTree,
        T: int,
        train_data: Any,
        val_data: PyTree,
        *,
        key: Any = None,
        init_state: TrainState | None = None,
    ) -> Plan:
        """What :meth:`run` will store, the temporary memory it is predicted to take and its recomputation
        (a :class:`~hgkit.hypergrad.planner.Plan`): the planner's choice for ``memory=``, else the options given.

        The first time for a problem and input shapes, compiles the hypergradient over 8 steps (for its working
        memory) and traces the residual mode (for one step's residuals), from abstract shapes only: it may be
        called while tracing. ``ValueError`` if ``memory`` is below what any plan needs, naming that minimum.
        """
        check_inputs(problem, hparams, T, train_data, val_data, key, init_state)
        K = self._horizon(T)
        cal = _calibration(self, problem, hparams, train_data, val_data, key, init_state)
        if self.memory is None:
            store = self.default_store(problem, hparams, T, train_data, val_data, key=key, init_state=init_state)
            return planner.predict(cal, store, self.checkpoint, T, K, self.truncate)
        return planner.choose(cal, self.memory, T, K, self.truncate)

    def describe(self, problem, hparams, T, train_data, val_data, *, key=None, init_state=None) -> str:
        """:attr:`label`, with the plan when a budget chooses it (``memory=``): for a run's records.

        ``Reverse()``'s own choice of store is not added (it is cheap to ask :meth:`default_store`, and status
        lines stay short); a budget's plan is, since which checkpointing ran is then not in the arguments.
        """
        if self.memory is None:
            return self.label
        chosen = self.plan(problem, hparams, T, train_data, val_data, key=key, init_state=init_state)
        return f"{self.label}: {chosen}"

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
        check_inputs(problem, hparams, T, train_data, val_data, key, init_state)
        K = self._horizon(T)
        checkpoint = self.checkpoint
        if self.memory is None:
            store = self.default_store(problem, hparams, T, train_data, val_data, key=key, init_state=init_state)
        else:
            chosen = self.plan(problem, hparams, T, train_data, val_data, key=key, init_state=init_state)
            store, checkpoint = chosen.store, chosen.checkpoint
        return reverse_mode(
            problem, hparams, T, train_data, val_data, key, init_state, store=store, checkpoint=checkpoint, K=K,
            hvp=self.hvp,
        )  # fmt: skip
