"""The entry points: :func:`hypergradient` (checks, compiles, raises) and :func:`hypergradient_result` (pure).

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
from typing import Any

import jax

from .._checks import positive_int
from .._tree import PyTree, is_traced
from ..hparams import check_hparams
from ..problem import BilevelProblem, TrainState, precision
from .base import HypergradientMethod, HypergradientResult, OnlineMethod
from .failures import raise_if_diverged
from .reverse import Reverse

__all__ = ["check_method", "hypergradient", "hypergradient_result"]


def hypergradient_result(
    problem: BilevelProblem,
    hparams: PyTree,
    T: int,
    train_data: Any,
    val_data: PyTree,
    *,
    method: HypergradientMethod | None = None,
    key: Any = None,
    init_state: TrainState | None = None,
) -> HypergradientResult:
    """The hypergradient with everything that came with it, as a pure function (jit, vmap and shard it).

    Same arguments as :func:`hypergradient`, plus ``init_state``: start from this training state (warm restart)
    instead of ``init``; the initial weights then do not depend on ``hparams``. Failures are reported in the
    result's ``failure`` and ``failed_at`` fields, not raised (see :func:`~hgkit.raise_if_diverged`).
    """
    method = check_method(method)
    return method.run(problem, hparams, T, train_data, val_data, key=key, init_state=init_state)


@functools.partial(jax.jit, static_argnames=("problem", "T", "method", "train_fn"))
def _compiled(problem, hparams, T, train_fn, train_batch, val_data, method, key):
    train_data = train_fn if train_fn is not None else train_batch
    return hypergradient_result(problem, hparams, T, train_data, val_data, method=method, key=key)


def hypergradient(
    problem: BilevelProblem,
    hparams: PyTree,
    T: int,
    train_data: Any,
    val_data: PyTree,
    *,
    method: HypergradientMethod | None = None,
    key: Any = None,
) -> tuple[Any, PyTree]:
    """``(f(λ), df/dλ)`` for ``f(λ) = val_loss`` after T steps of training under hyperparameters λ.

    Args:
        problem: the :class:`~hgkit.problem.BilevelProblem`.
        hparams: λ, any pytree of float arrays; the hypergradient has its structure and dtypes.
        T: the number of training steps.
        train_data: one batch (any pytree) used at every step, or a callable ``step -> batch`` (``step`` an
            int32 counting from 0) for minibatches.
        val_data: the batch of the outer objective (a mapping of batches for several objectives).
        method: ``hg.Reverse()`` (default; ``store=`` and ``truncate=`` for long runs), ``hg.Forward()``,
            ``hg.RealTime(delta)``, ``hg.Implicit()``, or any :class:`~hgkit.HypergradientMethod`.
        key: passed to ``problem.init``.

    Compiled once per problem, method, T, ``train_data`` callable and input shapes: new hyperparameter values do
    not recompile. Matrix products run at the problem's ``matmul_precision`` (full float32 by default). Checks
    its inputs and raises :class:`~hgkit.DivergenceError`, naming the inner step, if training goes non-finite:
    both on the host, so it cannot itself be jitted or vmapped (use :func:`hypergradient_result` there, under
    ``jax.default_matmul_precision`` if wanted).
    """
    if is_traced((hparams, train_data, val_data, key)):
        raise TypeError(
            "hg.hypergradient was called inside a JAX transformation (jax.jit, vmap, grad, ...): it checks its "
            "inputs and raises on divergence on the host, so it cannot be traced. Inside jit or vmap use the pure "
            "form, hg.hypergradient_result(problem, hparams, T, train_data, val_data, method=..., key=...), which "
            "returns the value, the grads and a failure code (check it with hg.raise_if_diverged outside)."
        )
    check_hparams(hparams)
    method = check_method(method)
    train_fn, train_batch = (train_data, None) if callable(train_data) else (None, train_data)
    with precision(problem):
        result = _compiled(problem, hparams, T, train_fn, train_batch, val_data, method, key)
    raise_if_diverged(result, T, hparams)
    return result.value, result.grads


def check_method(method: Any) -> HypergradientMethod:
    """``method`` itself, or :class:`~hgkit.Reverse` for ``None``, after checking that it follows the contract.

    The one check behind both entry points, :func:`hgkit.hypergradient` and :class:`hgkit.HyperOptimizer`.
    """
    if method is None:
        return Reverse()
    if not isinstance(method, HypergradientMethod):
        raise TypeError(
            "method must be a hypergradient method: hg.Reverse(), hg.Forward(), hg.RealTime(delta=...), "
            "hg.Implicit(), or your own subclass of hg.HypergradientMethod (a frozen dataclass with a run(...)); "
            f"got {method!r}"
        )
    try:
        hash(method)
    except TypeError:
        raise TypeError(
            f"method {method!r} is not hashable; a method is a static argument of the compiled call: make it a "
            "frozen dataclass (@dataclasses.dataclass(frozen=True)) with hashable fields"
        ) from None
    if isinstance(method, OnlineMethod) and not positive_int(getattr(method, "delta", None)):
        raise TypeError(
            f"{type(method).__name__} is an hg.OnlineMethod, so it needs a positive int attribute delta (the inner "
            f"steps of one step(...)); got {getattr(method, 'delta', None)!r}"
        )
    return method
