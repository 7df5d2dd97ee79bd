"""Hypergradients of a training run: one entry point, the method a small frozen strategy object.

Example:
    >>> import jax, jax.numpy as jnp, hgkit as hg
    >>> problem = hg.BilevelProblem(
    ...     init=lambda hp, key: jnp.zeros(2),
    ...     train_loss=lambda w, hp, b: jnp.sum((w - b) ** 2),
    ...     val_loss=lambda w, hp, b: jnp.sum((w - 2 * b) ** 2),
    ...     optimizer=hg.optim.sgd("lr"))
    >>> hp = {"lr": jnp.asarray(0.1)}
    >>> value, grads = hg.hypergradient(problem, hp, T=10, train_data=jnp.ones(2), val_data=jnp.ones(2))
    >>> _, grads_fwd = hg.hypergradient(problem, hp, T=10, train_data=jnp.ones(2), val_data=jnp.ones(2),
    ...                                 method=hg.Forward())
    >>> bool(jnp.allclose(grads["lr"], grads_fwd["lr"]))
    True
"""

from __future__ import annotations

import functools

import jax
import numpy as np

from ..hparams import check_hparams
from ..problem import BilevelProblem
from ._common import HypergradientResult, scalar_summary
from .forward import Forward
from .implicit import Implicit
from .realtime import RealTime, RealTimeState
from .reverse import Reverse

__all__ = [
    "DivergenceError",
    "Forward",
    "HypergradientResult",
    "Implicit",
    "RealTime",
    "RealTimeState",
    "Reverse",
    "hypergradient",
    "hypergradient_result",
    "raise_if_diverged",
]


class DivergenceError(FloatingPointError):
    """The training run (or its derivative) went non-finite; ``step`` says at which inner step (0-based)."""

    def __init__(self, message: str, step: int | None = None):
        super().__init__(message)
        self.step = step


def hypergradient_result(
    problem: BilevelProblem, hparams, T: int, train_data, val_data, method=None, key=None, init_state=None
) -> HypergradientResult:
    """The hypergradient with everything that came with it, as a pure function (jit, vmap and shard it).

    Same arguments as :func:`hypergradient`, plus ``init_state``: start from this training state (warm restart)
    instead of ``init``; the initial weights then do not depend on ``hparams``. Divergence is reported in the
    result's ``diverged_at`` fields, not raised (see :func:`raise_if_diverged`).
    """
    method = Reverse() if method is None else method
    if not callable(getattr(method, "run", None)):
        raise TypeError(
            f"method must be hg.Reverse(), hg.Forward(), hg.RealTime(delta=...) or hg.Implicit(); got {method!r}"
        )
    return method.run(problem, hparams, T, train_data, val_data, key, init_state)


@functools.partial(jax.jit, static_argnames=("problem", "T", "method", "train_fn"))
def _compiled(problem, hparams, T, train_fn, train_batch, val_data, method, key):
    train_data = train_fn if train_fn is not None else train_batch
    return hypergradient_result(problem, hparams, T, train_data, val_data, method, key)


def hypergradient(problem: BilevelProblem, hparams, T: int, train_data, val_data, method=None, key=None):
    """``(f(λ), df/dλ)`` for ``f(λ) = val_loss`` after T steps of training under hyperparameters λ.

    Args:
        problem: the :class:`~hgkit.problem.BilevelProblem`.
        hparams: λ, any pytree of float arrays; the hypergradient has its structure and dtypes.
        T: the number of training steps.
        train_data: one batch (any pytree) used at every step, or a callable ``step -> batch`` (``step`` an
            int32 counting from 0) for minibatches.
        val_data: the batch of the outer objective (a mapping of batches for several objectives).
        method: ``hg.Reverse()`` (default; ``checkpoint=`` and ``truncate=`` for long runs), ``hg.Forward()``,
            ``hg.RealTime(delta)`` or ``hg.Implicit()``.
        key: passed to ``problem.init``.

    Compiled once per problem, method, T, ``train_data`` callable and input shapes: new hyperparameter values do
    not recompile. Raises :class:`DivergenceError`, naming the inner step, if training goes non-finite.
    """
    check_hparams(hparams)
    train_fn, train_batch = (train_data, None) if callable(train_data) else (None, train_data)
    result = _compiled(problem, hparams, T, train_fn, train_batch, val_data, method, key)
    raise_if_diverged(result, T, hparams)
    return result.value, result.grads


def raise_if_diverged(result: HypergradientResult, T: int, hparams, where: str = "") -> None:
    """Raise :class:`DivergenceError` if the run or its hypergradient is non-finite (on the host).

    Works on a vmapped result too (a population): the first failing member is named.
    """
    bad = np.asarray(result.diverged_at).reshape(-1)
    grad_bad = np.asarray(result.grad_diverged_at).reshape(-1)
    values = np.stack([np.asarray(v).reshape(-1) for v in jax.tree_util.tree_leaves(result.value)], axis=-1)
    grads_ok = np.stack(
        [
            np.isfinite(np.asarray(g)).reshape(bad.size, -1).all(axis=-1)
            for g in jax.tree_util.tree_leaves(result.grads)
        ],
        axis=-1,
    ).all(axis=-1)
    for member in range(bad.size):
        who = where + (f"population member {member}: " if bad.size > 1 else "")
        hp = jax.tree_util.tree_map(
            lambda x, i=member: np.asarray(x).reshape(bad.size, -1)[i] if bad.size > 1 else x, hparams
        )
        if bad[member] >= 0:
            step = int(bad[member])
            raise DivergenceError(
                f"{who}the training run went non-finite at inner step {step} (0-based) of T={T}, so its "
                f"hypergradient is undefined; hyperparameters: {scalar_summary(hp)}. A smaller learning rate "
                "or fewer steps usually helps.",
                step,
            )
        if grad_bad[member] >= 0 and result.solve_residual is not None and grad_bad[member] == T:
            residual = float(np.asarray(result.solve_residual).reshape(-1)[member])
            raise DivergenceError(
                f"{who}the implicit hypergradient's linear solve H v = ∂E/∂w at the trained weights did not "
                f"converge: relative residual ‖Hv − ∂E/∂w‖/‖∂E/∂w‖ = {residual:.3g}, above Implicit(tol=...). "
                "More iterations, a smaller Neumann alpha, or a longer (converged) training run usually help; "
                "conjugate gradients also needs a positive definite Hessian. "
                f"Hyperparameters: {scalar_summary(hp)}.",
                T,
            )
        if grad_bad[member] >= 0:
            step = int(grad_bad[member])
            raise DivergenceError(
                f"{who}the training run stayed finite but the derivative propagated through it went non-finite "
                f"at inner step {step} (0-based) of T={T}; hyperparameters: {scalar_summary(hp)}.",
                step,
            )
        if not np.isfinite(values[member]).all():
            raise DivergenceError(
                f"{who}the outer objective is non-finite at the trained weights "
                f"(value {values[member]}); hyperparameters: {scalar_summary(hp)}."
            )
        if not grads_ok[member]:
            raise DivergenceError(
                f"{who}the hypergradient is non-finite although training and its derivative "
                f"stayed finite (check val_loss's derivative); hyperparameters: "
                f"{scalar_summary(hp)}."
            )
