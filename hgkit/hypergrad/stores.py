"""What reverse mode keeps from its forward sweep for its backward one: one frozen strategy object per choice,
passed as ``hg.Reverse(store=...)``, as diffrax's adjoints are.

Reverse mode needs, going back from step T to step 1, what each step's vector-Jacobian product needs. A store
decides what to keep on the way forward and what to recompute on the way back; every store gives the same
hypergradient (the same operations, some done again). With |s| the training state, r one step's residuals (its
activations, the loss's intermediates), W the working memory of a step, and n the steps reversed:

=========================  ===================  ==================================================================
store                      memory               training steps evaluated
=========================  ===================  ==================================================================
:class:`Residuals`         W + n·r              n: nothing recomputed (as ``jax.grad`` through ``lax.scan``)
:class:`States`            W + n·|s|            2n: each step again inside its VJP
:class:`Segments`          W + (n/S + S)·|s|    3n: each segment's states again, then each step in its VJP
:class:`Binomial`          W + s·|s|            2n + F(n, s) − n + 1: revolve's optimum (32 slots, n = 10⁴: 4.3n)
=========================  ===================  ==================================================================

The family is open: a store is a frozen dataclass subclassing :class:`Store` with one method,
``reverse(steps, s0, first, n) -> Reversal``, built from the :class:`Steps` it is given (one step forward, one
step back, the adjoint at the end); :meth:`Store.cost` (optional) lets :func:`hg.plan <hgkit.plan>` and
:meth:`hg.Reverse.within <hgkit.Reverse.within>` predict its memory.

Example, a store of one's own (every state kept in a Python list: fine for a few steps):
    >>> import dataclasses, jax.numpy as jnp, hgkit as hg
    >>> @dataclasses.dataclass(frozen=True)
    ... class Unrolled(hg.Store):
    ...     def reverse(self, steps, s0, first, n):
    ...         states, losses, state, bad = [], [], s0, steps.diverged_at
    ...         for t in range(first, first + n):
    ...             states.append(state)
    ...             state, loss = steps.forward(state, t)
    ...             losses.append(loss)
    ...             bad = steps.first_nonfinite(bad, state, t)
    ...         adjoint = steps.terminal(state)
    ...         for t in reversed(range(first, first + n)):
    ...             adjoint = steps.backward(states[t - first], t, adjoint)
    ...         return hg.Reversal(state, jnp.stack(losses), bad, adjoint)
    >>> problem = hg.BilevelProblem(lambda hp, k: jnp.zeros(2), lambda w, hp, b: jnp.sum((w - b) ** 2),
    ...                             lambda w, hp, b: jnp.sum((w - 2 * b) ** 2), hg.optim.sgd("lr"))
    >>> hp, b = {"lr": jnp.asarray(0.1)}, jnp.ones(2)
    >>> _, mine = hg.hypergradient(problem, hp, 5, b, b, method=hg.Reverse(store=Unrolled()))
    >>> _, states = hg.hypergradient(problem, hp, 5, b, b, method=hg.Reverse(store=hg.States()))
    >>> bool(jnp.allclose(mine["lr"], states["lr"]))
    True
"""

from __future__ import annotations

import abc
import dataclasses
import math
from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.dtypes import float0

from .._checks import positive_int
from .._tree import PyTree, all_finite, combine, mark_first, partition, tree_map
from ..problem import BilevelProblem, TrainState, Trajectory, batch_at, outer_derivatives, train_step, unroll
from .checkpointing import execute, forward_steps, schedule

__all__ = ["Adjoint", "Binomial", "Cost", "Residuals", "Reversal", "Segments", "States", "Steps", "Store"]


class Adjoint(NamedTuple):
    """What the backward sweep carries, one row per objective (leading axis k) in ``p`` and ``g``."""

    values: jax.Array  # (k,): the objectives at s_T
    p: PyTree  # p_t = dE/ds_t: the float leaves of the training state
    g: PyTree  # the hypergradient accumulated so far, the structure of hparams
    grad_diverged_at: jax.Array  # int32: the first step (met going back) at which p went non-finite, or -1


class Reversal(NamedTuple):
    """What a store returns: the run forward and the adjoint carried back to its first step."""

    state: TrainState  # s_T
    losses: jax.Array  # (n,): the training loss of each step reversed
    diverged_at: jax.Array  # int32: the first step whose new state was non-finite (or the one given), else -1
    adjoint: Adjoint  # at step ``first``: p_first, and g summed over the n steps


class Cost(NamedTuple):
    """A store's predicted cost of reversing n steps (:meth:`Store.cost`)."""

    bytes: float  # the compiled program's memory (working memory included), before the planner's margin
    stored: str  # what it keeps, in words
    evaluated: float  # training steps evaluated over the n steps (n: nothing recomputed)


def per_objective(vjp: Callable, p: PyTree):
    """``vjp`` applied to each row of ``p`` (a leading axis k over objectives).

    The usual single objective skips ``vmap``: its size-1 batch slows XLA's CPU code.
    """
    k = jax.tree_util.tree_leaves(p)[0].shape[0]
    if k > 1:
        return jax.vmap(vjp)(p)
    return tree_map(lambda x: x[None], vjp(tree_map(lambda x: x[0], p)))


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
class Steps:
    """The training run a store reverses, as the functions a store is built from.

    Attributes:
        problem, hparams, train_data, val_data: as :func:`hgkit.hypergradient`.
        hvp: how :meth:`backward` differentiates the gradient inside a step (:class:`~hgkit.Reverse`'s option).
        diverged_at: the first non-finite step before the reversed ones (int32, -1 if none).
    """

    problem: BilevelProblem
    hparams: PyTree
    train_data: Any
    val_data: PyTree
    hvp: Literal["forward-over-reverse", "reverse-over-reverse"] = "reverse-over-reverse"
    diverged_at: Any = -1

    @property
    def value_and_grad(self) -> Callable | None:
        """The gradient transformation the training step takes; None means ``jax.value_and_grad``."""
        return value_and_grad_for_reverse if self.hvp == "forward-over-reverse" else None

    def forward(self, state: TrainState, t) -> tuple[TrainState, jax.Array]:
        """``s_{t+1} = Φ(s_t)`` (t counts from 0): the new state and the training loss."""
        batch = batch_at(self.train_data, t)
        return train_step(self.problem, state, self.hparams, batch, t, self.value_and_grad)

    def first_nonfinite(self, bad: jax.Array, state: TrainState, t) -> jax.Array:
        """``bad``, or ``t`` if it is still -1 and ``state`` (after step t) is non-finite."""
        return mark_first(bad, all_finite(state), t)

    def unroll(self, state: TrainState, first, n: int, *, store: bool = False, diverged_at: Any = None) -> Trajectory:
        """:func:`hgkit.unroll` of n steps from step ``first`` (``store=True`` keeps the state before each)."""
        bad = self.diverged_at if diverged_at is None else diverged_at
        return unroll(self.problem, state, self.hparams, self.train_data, first, n, store=store, diverged_at=bad)

    def terminal(self, state: TrainState) -> Adjoint:
        """The adjoint at the end of the run: the objectives at ``s_T``, ``p_T = ∂E/∂s_T`` (zero on the
        optimizer state) and ``g = ∂E/∂λ``, one row per objective."""
        values, dE_dw, g = outer_derivatives(self.problem, state, self.hparams, self.val_data)
        floats, _ = partition(state)
        k = values.shape[0]
        zeros = tree_map(lambda x: jnp.zeros((k, *x.shape), x.dtype), floats.opt_state)
        return Adjoint(values, floats.replace(arrays=dE_dw, opt_state=zeros), g, jnp.int32(-1))

    def backward(self, state: TrainState, t, adjoint: Adjoint) -> Adjoint:
        """One step back from the stored ``s_t`` (the state before step t): ``p_t = p_{t+1} A``, ``g += p_{t+1}
        B`` (one VJP of the training step per objective), and the first non-finite ``p`` remembered."""
        floats, rest = partition(state)

        def step(x, hp):
            new, _ = train_step(self.problem, combine(x, rest), hp, batch_at(self.train_data, t), t,
                                self.value_and_grad)  # fmt: skip
            return partition(new)[0]

        _, step_vjp = jax.vjp(step, floats, self.hparams)
        p, g_t = per_objective(step_vjp, adjoint.p)
        bad = mark_first(adjoint.grad_diverged_at, all_finite(p), t)
        return adjoint._replace(p=p, g=tree_map(jnp.add, adjoint.g, g_t), grad_diverged_at=bad)

    def back_through(self, adjoint: Adjoint, states: TrainState, first, n: int) -> Adjoint:
        """:meth:`backward` through the n steps from ``first``, given their stored states (leading axis n)."""

        def body(adjoint, inputs):
            state, t = inputs
            return self.backward(state, t, adjoint), None

        steps = jnp.asarray(first, jnp.int32) + jnp.arange(n, dtype=jnp.int32)
        return lax.scan(body, adjoint, (states, steps), reverse=True)[0]


class Store(abc.ABC):
    """What reverse mode keeps for its way back: the contract of :class:`Residuals`, :class:`States`,
    :class:`Segments` and :class:`Binomial` (see the module's table of their costs).

    Subclasses are frozen dataclasses (hashable: the store is part of the method, a static argument of the
    compiled call) and implement :meth:`reverse`; :meth:`cost` is optional.
    """

    @abc.abstractmethod
    def reverse(self, steps: Steps, s0: TrainState, first: int, n: int) -> Reversal:
        """Train n steps from ``s0`` (steps ``first``..``first + n − 1``), take :meth:`Steps.terminal` at the end,
        and carry the adjoint back through the n steps with :meth:`Steps.backward` (or an equivalent)."""

    def cost(self, sizes: Sizes, n: int) -> Cost:
        """The predicted memory and recomputation of reversing n steps, from the problem's measured ``sizes``
        (:class:`~hgkit.hypergrad.planner.Sizes`). Stores without a cost model cannot be planned."""
        raise NotImplementedError(f"{self!r} states no cost model (Store.cost), so it cannot be planned")


class Sizes(NamedTuple):
    """What a store's cost model reads, in bytes (measured by :mod:`~hgkit.hypergrad.planner`)."""

    state: int  # |s|: one training state
    loss: int  # one training loss (the (T,) losses buffer)
    work_states: int  # W of the stores that keep states: compiled memory beside the stored states and losses
    per_step_states: int  # bytes per reversed step when states are kept (|s| and the step's loss)
    work_residuals: int  # W of Residuals
    per_step_residuals: int  # bytes per reversed step with Residuals (its residuals and its loss)


def _kept_states(sizes: Sizes, n: int, n_states: float, extra: float = 0.0) -> float:
    """The bytes of a store that keeps ``n_states`` training states while reversing n steps."""
    return sizes.work_states + n * max(sizes.per_step_states - sizes.state, sizes.loss) + n_states * sizes.state + extra


def _kib(b: float) -> str:
    return f"{b / 2**10:.1f} KiB"


@dataclasses.dataclass(frozen=True)
class Residuals(Store):
    """Keep each step's linearization (``jax.vjp``'s residuals of the training scan, as ``jax.grad`` through
    ``lax.scan`` keeps them, the data shared by all steps kept once): the way back recomputes nothing.

    Memory: W + n·r (r: one step's residuals). Time: as ``jax.grad`` through ``lax.scan``. The fastest store where
    a step's residuals are small (a linear model: r ≈ |s|); where they are large (an MLP's activations) writing and
    reading them costs more than recomputing the step.
    """

    def reverse(self, steps: Steps, s0: TrainState, first: int, n: int) -> Reversal:
        sweep = residual_sweep(steps, s0, first, n)
        adjoint = steps.terminal(sweep.state)
        p, g_steps, flags = per_objective(sweep.step_vjp, adjoint.p)
        t = first + jnp.arange(n, dtype=jnp.int32)
        grad_bad = jnp.max(jnp.where(jnp.any(flags != 0, axis=0), t, -1))  # the first met going back
        adjoint = adjoint._replace(p=p, g=tree_map(jnp.add, adjoint.g, g_steps), grad_diverged_at=grad_bad)
        return Reversal(sweep.state, sweep.losses, sweep.diverged_at, adjoint)

    def cost(self, sizes: Sizes, n: int) -> Cost:
        residual = sizes.per_step_residuals - sizes.loss
        return Cost(sizes.work_residuals + n * sizes.per_step_residuals, f"{n} steps' residuals ({_kib(residual)} "
                    "each)", float(n))  # fmt: skip


@dataclasses.dataclass(frozen=True)
class States(Store):
    """Keep the state before each step; the way back recomputes each step inside its vector-Jacobian product.

    Memory: W + n·|s|. Time: one more training run (2n steps evaluated).
    """

    def reverse(self, steps: Steps, s0: TrainState, first: int, n: int) -> Reversal:
        out = steps.unroll(s0, first, n, store=True)
        adjoint = steps.back_through(steps.terminal(out.state), out.states, first, n)
        return Reversal(out.state, out.losses, out.diverged_at, adjoint)

    def cost(self, sizes: Sizes, n: int) -> Cost:
        return Cost(_kept_states(sizes, n, n), f"{n} states ({_kib(sizes.state)} each)", 2.0 * n)


@dataclasses.dataclass(frozen=True)
class Segments(Store):
    """Keep the first state of each segment of ``length`` steps; the way back recomputes a segment's states from
    its first before reversing it.

    Memory: W + (⌈n/S⌉ + S)·|s| with S the length: ≈ 2√n·|s| for ``"sqrt"`` (S = ⌈√n⌉). Time: two more
    training runs (3n steps evaluated).

    Args:
        length: the steps of one segment, S: ``"sqrt"`` (default, ⌈√n⌉) or a positive int.
    """

    length: Literal["sqrt"] | int = "sqrt"

    def __post_init__(self):
        if not (self.length == "sqrt" or positive_int(self.length)):
            raise ValueError(f"Segments(length=...) must be 'sqrt' or a positive int; got {self.length!r}")

    def steps_per_segment(self, n: int) -> int:
        """S for a run of n steps."""
        return max(1, math.ceil(math.sqrt(n))) if self.length == "sqrt" else min(int(self.length), n)

    def reverse(self, steps: Steps, s0: TrainState, first: int, n: int) -> Reversal:
        S = self.steps_per_segment(n)
        n_seg, rest = divmod(n, S)

        def forward_segment(carry, start):
            state, bad = carry
            out = steps.unroll(state, start, S, diverged_at=bad)
            return (out.state, out.diverged_at), (state, out.losses)

        firsts = first + S * jnp.arange(n_seg, dtype=jnp.int32)
        (state, bad), (starts, seg_losses) = lax.scan(
            forward_segment, (s0, jnp.asarray(steps.diverged_at, jnp.int32)), firsts
        )
        losses, tail = [seg_losses.reshape(-1)], state
        if rest:
            out = steps.unroll(tail, first + n_seg * S, rest, diverged_at=bad)
            state, bad = out.state, out.diverged_at
            losses.append(out.losses)

        def back_segment(adjoint, start, at, length):
            states = steps.unroll(start, at, length, store=True).states
            return steps.back_through(adjoint, states, at, length)

        adjoint = steps.terminal(state)
        if rest:
            adjoint = back_segment(adjoint, tail, first + n_seg * S, rest)
        adjoint = lax.scan(lambda a, xs: (back_segment(a, xs[0], xs[1], S), None), adjoint, (starts, firsts),
                           reverse=True)[0]  # fmt: skip
        return Reversal(state, jnp.concatenate(losses), bad, adjoint)

    def cost(self, sizes: Sizes, n: int) -> Cost:
        S = self.steps_per_segment(n)
        kept = n // S + (1 if n % S else 0) + S
        return Cost(_kept_states(sizes, n, kept), f"{kept} states ({n // S} segment starts, one segment of {S} "
                    "recomputed)", 3.0 * n)  # fmt: skip


# What binomial checkpointing holds beside its slots and the working memory of the stores that keep states: the
# state it recomputes (restored from a slot, advanced, then differentiated) and some bookkeeping. Measured: 1.26
# states on an MLP (|s| = 22 KB), about 1 KB where states are a few hundred bytes.
BINOMIAL_EXTRA, BINOMIAL_EXTRA_BYTES = 1.5, 1024


@dataclasses.dataclass(frozen=True)
class Binomial(Store):
    """Keep at most ``slots`` training states (the initial state's included, as revolve's "snaps") and recompute
    the others by Griewank's schedule with the fewest steps (:mod:`~hgkit.hypergrad.checkpointing`).

    Memory: W + slots·|s|. Time: ``F(n, slots)`` plain training steps (revolve's optimum,
    :func:`~hgkit.hypergrad.checkpointing.forward_steps`) besides the n reversed ones, against n − 1 for
    :class:`States`: with 32 slots at n = 10,000, 32,860 (3.3 passes instead of 1).

    Example (40 steps of momentum reversed with 3 states kept):
        >>> import jax.numpy as jnp, hgkit as hg
        >>> problem = hg.BilevelProblem(lambda hp, k: jnp.ones(3),
        ...                             lambda w, hp, b: hp["c"] * jnp.sum(jnp.sin(w - b) ** 2),
        ...                             lambda w, hp, b: jnp.sum(w**2), hg.optim.momentum(0.1, 0.5))
        >>> hp, b = {"c": jnp.asarray(1.5)}, jnp.zeros(3)
        >>> _, every = hg.hypergradient(problem, hp, 40, b, b, method=hg.Reverse(store=hg.States()))
        >>> _, three = hg.hypergradient(problem, hp, 40, b, b, method=hg.Reverse(store=hg.Binomial(slots=3)))
        >>> bool(jnp.allclose(every["c"], three["c"], rtol=1e-5))
        True
    """

    slots: int

    def __post_init__(self):
        if not positive_int(self.slots):
            raise ValueError(f"Binomial(slots=...) must be a positive int (states kept); got {self.slots!r}")

    def reverse(self, steps: Steps, s0: TrainState, first: int, n: int) -> Reversal:
        out = execute(schedule(n, self.slots), s0, first, steps.forward, steps.terminal, steps.backward,
                      steps.diverged_at)  # fmt: skip
        return Reversal(out.state, out.losses, out.diverged_at, out.adjoint)

    def cost(self, sizes: Sizes, n: int) -> Cost:
        slots = min(self.slots, n)
        evaluated = n + forward_steps(n, slots) + 1.0
        return Cost(_kept_states(sizes, n, slots + BINOMIAL_EXTRA, BINOMIAL_EXTRA_BYTES),
                    f"{slots} states (binomial checkpointing)", evaluated)  # fmt: skip


# ----- the residual sweep ----------------------------------------------------------------------------------------


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
    losses: jax.Array  # (n,) training losses
    diverged_at: jax.Array  # int32: the first non-finite step, or -1
    step_vjp: Callable  # p_T ↦ (p_first, Σ_t p_t B_t, (n,) non-finite flags): the stored linearization, applied


def residual_sweep(steps: Steps, s0: TrainState, first, n: int) -> ResidualSweep:
    """Train n steps from step ``first`` keeping each step's linearization.

    This is ``jax.vjp`` of the whole ``lax.scan`` of training steps, so JAX's scan rule keeps, for each step, the
    residuals its vector-Jacobian product needs (and hoists those that do not change from step to step, such as
    the data, out of the loop): the same memory and time as ``jax.grad`` through ``lax.scan``. Applying the
    returned ``step_vjp`` to ``p_T`` runs the backward sweep with no recomputation.
    """
    floats0, rest0 = partition(s0)
    t = jnp.asarray(first, jnp.int32) + jnp.arange(n, dtype=jnp.int32)

    def run(floats0, hparams, probes):
        def body(carry, inputs):
            floats, rest, bad = carry
            t, probe = inputs
            state = combine(_watch(floats, probe), rest)
            new, loss = dataclasses.replace(steps, hparams=hparams).forward(state, t)
            new_floats, new_rest = partition(new)
            return (new_floats, new_rest, mark_first(bad, all_finite(new), t)), loss

        init = (floats0, rest0, jnp.asarray(steps.diverged_at, jnp.int32))
        (floats, rest, bad), losses = lax.scan(body, init, (t, probes))
        return floats, (rest, bad, losses)

    floats, step_vjp, (rest, bad, losses) = jax.vjp(run, floats0, steps.hparams, jnp.zeros(n, jnp.float32),
                                                    has_aux=True)  # fmt: skip
    return ResidualSweep(combine(floats, rest), losses, bad, step_vjp)
