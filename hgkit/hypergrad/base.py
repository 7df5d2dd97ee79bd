"""The contract of a hypergradient method, and the result every method returns.

A method is a small frozen (hashable) strategy object passed to one entry point (``hg.hypergradient(...,
method=...)``, ``hg.HyperOptimizer(..., method=...)``), as diffrax's adjoints are. Two contracts:

* :class:`HypergradientMethod`: ``run(problem, hparams, T, train_data, val_data, *, key, init_state)`` computes
  ``f(λ)`` and ``df/dλ`` for one training run of T steps, as a pure function (jit and vmap it).
* :class:`OnlineMethod`: a method that can also go on: ``init`` starts one training run, ``step`` runs ``delta``
  more inner steps and gives the hypergradient at their end, and λ may change between steps (real-time
  hyperparameter optimization). The loop dispatches on this contract: an online method makes one training run
  of T steps with T/Δ updates of λ, any other method restarts training at each hyper-iteration.

A method of your own subclasses one of them (frozen dataclass, hashable: it is a static argument of ``jit``) and
returns a :class:`HypergradientResult`. Everything it needs is public: :func:`hg.initial_state
<hgkit.initial_state>`, :func:`hg.train_step <hgkit.train_step>` and :func:`hg.unroll <hgkit.unroll>` (the
dynamics), :func:`hg.batch_at <hgkit.batch_at>` (the batch of a step), :func:`hg.objectives <hgkit.objectives>`
and :func:`hg.outer_derivatives <hgkit.outer_derivatives>` (the read-out), and :func:`hg.result <hgkit.result>`,
which builds the result and classifies how the computation failed if it did (:mod:`hgkit.hypergrad.failures`).

Example, forward differences through the public names:
    >>> import dataclasses, jax, jax.numpy as jnp, hgkit as hg
    >>> @dataclasses.dataclass(frozen=True)
    ... class FiniteDifference(hg.HypergradientMethod):
    ...     '''Forward differences: a slow, approximate method, as a demonstration of the contract.'''
    ...     h: float = 1e-6
    ...     def run(self, problem, hparams, T, train_data, val_data, *, key=None, init_state=None):
    ...         def f(hp):
    ...             s0 = hg.initial_state(problem, hp, key) if init_state is None else init_state
    ...             out = hg.unroll(problem, s0, hp, train_data, 0, T)
    ...             return out, hg.objectives(problem, out.state.params, hp, val_data)
    ...         run0, value = f(hparams)
    ...         flat, unflatten = jax.flatten_util.ravel_pytree(hparams)
    ...         grads = jnp.stack([(f(unflatten(flat.at[i].add(self.h)))[1] - value) / self.h
    ...                            for i in range(flat.size)], axis=-1)   # (objectives, m)
    ...         grads = jax.vmap(unflatten)(grads)
    ...         return hg.result(problem, hparams, value, grads, run0.state, run0.losses, run0.diverged_at)
    >>> problem = hg.BilevelProblem(lambda hp, k: jnp.zeros(1), lambda w, hp, b: jnp.sum((w - b) ** 2),
    ...                             lambda w, hp, b: jnp.sum(w**2), hg.optim.sgd("lr"))
    >>> hp = {"lr": jnp.asarray(0.1)}
    >>> _, approx = hg.hypergradient(problem, hp, 5, jnp.ones(1), None, method=FiniteDifference(1e-3))
    >>> _, exact = hg.hypergradient(problem, hp, 5, jnp.ones(1), None)
    >>> bool(abs(approx["lr"] - exact["lr"]) < 1e-2 * abs(exact["lr"]))
    True
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from typing import Any, ClassVar, NamedTuple

import jax

from .._checks import require_positive_int
from .._tree import PyTree
from ..problem import BilevelProblem, TrainState, objective_index
from .failures import classify

__all__ = ["HypergradientMethod", "HypergradientResult", "OnlineMethod", "result"]


class HypergradientResult(NamedTuple):
    """Everything one hypergradient computation produces (all arrays, so it can be jitted and vmapped).

    Attributes:
        value: the outer objective at the trained weights: a scalar, or a dict of scalars for several objectives.
        grads: the hypergradient, a pytree with the structure and dtypes of ``hparams``.
        state: the final training state ``s_T`` (weights and optimizer state).
        train_losses: the training loss at each step, shape ``(T,)``.
        failure: an int32 :class:`~hgkit.hypergrad.failures.Failure` code, ``0`` (``Failure.NONE``) when all went
            through; ``hg.Failure(int(result.failure))`` names it.
        failed_at: the inner step (0-based) at which the training run or the derivative carried through it first
            went non-finite, or -1 (for the other failures, and when none happened).
        solve_residual: :class:`~hgkit.hypergrad.Implicit` only: the relative residual of its linear solve,
            ``‖H v − ∂E/∂w‖ / ‖∂E/∂w‖`` (the largest over objectives); ``None`` for the other methods.
    """

    value: Any
    grads: PyTree
    state: TrainState
    train_losses: jax.Array
    failure: jax.Array
    failed_at: jax.Array
    solve_residual: Any = None


class HypergradientMethod(abc.ABC):
    """How ``df/dλ`` of a training run is computed: the contract of :class:`~hgkit.Reverse`,
    :class:`~hgkit.Forward`, :class:`~hgkit.Implicit` and :class:`~hgkit.RealTime`.

    Subclasses are frozen dataclasses (hashable: the method is a static argument of the compiled call; two equal
    methods share a compilation) and implement :meth:`run`.
    """

    @abc.abstractmethod
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
        """The hypergradient of T training steps and what came with it; pure, so it can be jitted and vmapped.

        Args:
            problem, hparams, T, train_data, val_data, key: as :func:`hgkit.hypergradient`.
            init_state: start from this training state (a warm restart) instead of ``problem.init``; the
                initial weights then do not depend on ``hparams``.

        Failures are reported in the result (``failure``, ``failed_at``), never raised from traced code.
        """

    @property
    def label(self) -> str:
        """A short name for status lines and plots (``"reverse mode"``); the class name by default."""
        return type(self).__name__


class OnlineMethod(HypergradientMethod):
    """A method that goes on within one training run: ``init``, then ``step`` after ``step`` (λ may change
    between them). :class:`~hgkit.RealTime` is one.

    Subclasses have an int attribute ``delta`` (the inner steps of one ``step``) and implement :meth:`init`
    and :meth:`step`; :meth:`run` (T/Δ steps under fixed λ) is provided.
    """

    delta: ClassVar[int]  # the inner steps one `step` runs (a dataclass field in subclasses)

    @abc.abstractmethod
    def init(
        self, problem: BilevelProblem, hparams: PyTree, *, key: Any = None, init_state: TrainState | None = None
    ) -> PyTree:
        """The carry at step 0: what goes on from one ``step`` to the next (a pytree of arrays)."""

    @abc.abstractmethod
    def step(
        self, problem: BilevelProblem, carry: PyTree, hparams: PyTree, train_data: Any, val_data: PyTree
    ) -> tuple[PyTree, HypergradientResult]:
        """``delta`` more inner steps under ``hparams``: the new carry and the hypergradient at their end.

        The result's ``train_losses`` are those of these ``delta`` steps and ``failed_at`` counts steps from the
        start of the training run.
        """

    def restart(self, carry: PyTree) -> PyTree:
        """The carry with the past of its derivative forgotten and the training run kept (optional): what the
        loop does to an online run whose hypergradient blew up (``HyperOptimizer(..., restart_above=...)``).
        :class:`~hgkit.RealTime` sets its tangents back to zero."""
        raise NotImplementedError(f"{type(self).__name__} cannot restart its derivative (OnlineMethod.restart)")

    def run(self, problem, hparams, T, train_data, val_data, *, key=None, init_state=None) -> HypergradientResult:
        """T/Δ steps under fixed ``hparams``; the result of the last, with every step's training losses."""
        require_positive_int("T", T, "the number of training steps")
        if T % self.delta:
            raise ValueError(f"{type(self).__name__}(delta={self.delta}) must divide T={T} to run T/Δ whole steps")

        def body(carry, _):
            return self.step(problem, carry, hparams, train_data, val_data)

        carry = self.init(problem, hparams, key=key, init_state=init_state)
        _, results = jax.lax.scan(body, carry, None, length=T // self.delta)
        last = jax.tree_util.tree_map(lambda x: x[-1], results)
        return last._replace(train_losses=results.train_losses.reshape(-1))


def result(
    problem: BilevelProblem,
    hparams: PyTree,
    values: jax.Array,
    grads: PyTree,
    state: TrainState,
    train_losses: jax.Array,
    diverged_at: jax.Array,
    grad_diverged_at: jax.Array | int = -1,
    solve_failed: jax.Array | bool = False,
    solve_residual: jax.Array | None = None,
) -> HypergradientResult:
    """The :class:`HypergradientResult` of a method's computation, its failure classified.

    Args:
        values: the objectives, shape ``(k,)`` (:func:`hgkit.problem.objectives`).
        grads: the hypergradient of every objective: the structure of ``hparams``, each leaf with a leading
            axis k; each hyperparameter keeps the row of the objective it follows (``problem.follows``).
        diverged_at: the first inner step whose new training state was non-finite, or -1.
        grad_diverged_at: the first inner step at which the derivative carried through training was non-finite
            while the state was finite, or -1.
        solve_failed: whether a linear solve stopped above its tolerance (:class:`~hgkit.Implicit`).
    """
    rows = objective_index(problem, hparams)
    leaves, treedef = jax.tree_util.tree_flatten(hparams)
    picked = [g[r].astype(h.dtype) for g, r, h in zip(treedef.flatten_up_to(grads), rows, leaves, strict=True)]
    grads = jax.tree_util.tree_unflatten(treedef, picked)
    if isinstance(problem.val_loss, Mapping):
        value = {k: values[i] for i, k in enumerate(problem.val_loss)}
    else:
        value = values[0]
    failure, failed_at = classify(diverged_at, grad_diverged_at, solve_failed, value, grads)
    return HypergradientResult(value, grads, state, train_losses, failure, failed_at, solve_residual)
