"""Implicit-differentiation hypergradient: train, then differentiate the optimality condition at the end.

If training converges, the trained weights ``w*(λ)`` solve ``∇_w L(w, λ) = 0`` and the implicit function
theorem gives ``dw*/dλ = −H⁻¹ ∂²L/∂w∂λ`` with ``H = ∇²_w L``. Hence, with ``v`` the solution of ``H v = ∂E/∂w``::

    df/dλ = ∂E/∂λ − (∂²L/∂λ∂w) v

evaluated at ``w_T``. ``v`` is found with Hessian-vector products only (conjugate gradients or a Neumann series),
so memory is O(|w|) whatever T, and the cost is T training steps plus a few dozen Hessian-vector products.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import jax
import jax.numpy as jnp
from jax import lax
from jax.flatten_util import ravel_pytree

from .._checks import positive_number, require_positive_int
from .._tree import PyTree
from ..problem import BilevelProblem, TrainState, batch_at, initial_state, outer_derivatives, unroll
from ._inputs import check_inputs
from .base import HypergradientMethod, HypergradientResult, result


def _relative(r, b):
    b_norm = jnp.linalg.norm(b)
    return jnp.where(b_norm > 0, jnp.linalg.norm(r) / jnp.where(b_norm > 0, b_norm, 1), jnp.linalg.norm(r))


def conjugate_gradients(matvec, b, iterations: int, tol: float):
    """Solve ``H x = b`` for a symmetric positive definite H given as ``matvec``; stop at ``‖r‖ ≤ tol·‖b‖``.

    A ``lax.while_loop``, so it jits and vmaps (a vmapped solve runs until every member has converged).
    """

    def cond(c):
        _, r, _, rs, i = c
        return (i < iterations) & (jnp.sqrt(rs) > tol * jnp.linalg.norm(b))

    def body(c):
        x, r, p, rs, i = c
        hp = matvec(p)
        step = rs / jnp.vdot(p, hp)
        x, r = x + step * p, r - step * hp
        rs_new = jnp.vdot(r, r)
        return x, r, r + (rs_new / rs) * p, rs_new, i + 1

    x, *_ = lax.while_loop(cond, body, (jnp.zeros_like(b), b, b, jnp.vdot(b, b), 0))
    return x


def neumann(matvec, b, iterations: int, tol: float, alpha: float):
    """``x = α Σ_j (I − αH)^j b``, the Neumann series of ``H⁻¹ b``, summed as ``x ← x + α (b − H x)``.

    Converges when every eigenvalue of H lies in (0, 2/α); stops at ``‖b − H x‖ ≤ tol·‖b‖``.
    """

    def cond(c):
        _, r, i = c
        return (i < iterations) & (jnp.linalg.norm(r) > tol * jnp.linalg.norm(b))

    def body(c):
        x, r, i = c
        x = x + alpha * r
        return x, b - matvec(x), i + 1

    x, *_ = lax.while_loop(cond, body, (jnp.zeros_like(b), b, 0))
    return x


@dataclasses.dataclass(frozen=True)
class Implicit(HypergradientMethod):
    """Implicit differentiation at the trained weights: memory independent of T, exact only at a minimum.

    Trains T steps (storing nothing), then solves ``H v = ∂E/∂w`` at ``w_T`` with Hessian-vector products of the
    training loss and returns ``∂E/∂λ − (∂²L/∂λ∂w) v``. The training loss is evaluated on one fixed batch: the
    last one, ``train_data(T - 1)`` when ``train_data`` is a callable.

    What it assumes: that ``w_T`` minimises the training loss (the gradient there is zero) and that the Hessian
    is positive definite (for ``"cg"``). It is the derivative of the *minimiser*, not of the T-step run: the
    dependence of training on the optimizer's hyperparameters (learning rate, momentum) and on the initial
    weights does not exist at a minimum, so their hypergradient is zero — use :class:`Reverse` or
    :class:`Forward` for those. Costs: T training steps plus up to ``iterations`` Hessian-vector products;
    memory O(|w|).

    Failures are reported, never silent: a non-finite run is ``Failure.TRAINING_NONFINITE`` at its step; a solve
    whose relative residual ``‖H v − ∂E/∂w‖ / ‖∂E/∂w‖`` stays above ``tol`` (or is non-finite) is
    ``Failure.SOLVE_NOT_CONVERGED``, with the residual in the result's ``solve_residual``;
    :func:`hgkit.hypergradient` and the loop then raise, saying so.

    Args:
        solver: ``"cg"`` (conjugate gradients, default) or ``"neumann"`` (the series ``α Σ (I − αH)^j``).
        iterations: the most Hessian-vector products the solve may use.
        tol: the relative residual at which the solve stops, and above which it is reported as failed.
        alpha: the Neumann step size; the series converges when ``α < 2 / λ_max(H)``.

    Example:
        >>> import jax.numpy as jnp, hgkit as hg
        >>> problem = hg.BilevelProblem(
        ...     init=lambda hp, key: jnp.zeros(1),
        ...     train_loss=lambda w, hp, b: 0.5 * jnp.sum((w - b) ** 2) + 0.5 * hp["wd"] * jnp.sum(w**2),
        ...     val_loss=lambda w, hp, b: jnp.sum(w**2),
        ...     optimizer=hg.optim.sgd(0.5))
        >>> hp = {"wd": jnp.asarray(1.0)}
        >>> # w* = b / (1 + wd), so d(w*²)/d wd = -2 b² / (1 + wd)³ = -0.25 at b = 1.
        >>> _, g = hg.hypergradient(problem, hp, T=60, train_data=jnp.ones(1), val_data=None, method=hg.Implicit())
        >>> round(float(g["wd"]), 6)
        -0.25
    """

    solver: Literal["cg", "neumann"] = "cg"
    iterations: int = 100
    tol: float = 1e-6
    alpha: float = 0.1

    def __post_init__(self):
        if self.solver not in ("cg", "neumann"):
            raise ValueError(f"Implicit(solver=...) must be 'cg' or 'neumann'; got {self.solver!r}")
        require_positive_int("Implicit(iterations=...)", self.iterations, "the most Hessian-vector products")
        for name in ("tol", "alpha"):
            if not positive_number(getattr(self, name)):
                raise ValueError(f"Implicit({name}=...) must be a positive number; got {getattr(self, name)!r}")

    @property
    def label(self) -> str:
        return f"implicit differentiation ({self.solver})"

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
        s0 = initial_state(problem, hparams, key) if init_state is None else init_state
        trained = unroll(problem, s0, hparams, train_data, 0, T)

        batch = batch_at(train_data, jnp.int32(T - 1))
        w, unravel = ravel_pytree(trained.state.arrays)
        static = trained.state.static

        def grad_w(x, hp):
            return ravel_pytree(jax.grad(problem.inner_loss)(unravel(x), hp, batch, static))[0]

        _, hvp = jax.linearize(lambda x: grad_w(x, hparams), w)  # H·v, linearized once
        values, dE_dw, dE_dh = outer_derivatives(problem, trained.state, hparams, val_data)
        b = jax.vmap(lambda g: ravel_pytree(g)[0])(dE_dw)  # one row per objective

        if self.solver == "cg":
            v = jax.vmap(lambda b: conjugate_gradients(hvp, b, self.iterations, self.tol))(b)
        else:
            v = jax.vmap(lambda b: neumann(hvp, b, self.iterations, self.tol, self.alpha))(b)
        residual = jnp.max(jax.vmap(lambda x, b: _relative(hvp(x) - b, b))(v, b))

        _, mixed_vjp = jax.vjp(lambda hp: grad_w(w, hp), hparams)
        (mixed,) = jax.vmap(mixed_vjp)(v)
        g = jax.tree_util.tree_map(lambda d, m: d - m.astype(d.dtype), dE_dh, mixed)
        failed = ~(residual <= self.tol)  # NaN counts as failed
        return result(problem, hparams, values, g, trained.state, trained.losses, trained.diverged_at,
                      solve_failed=failed, solve_residual=residual)  # fmt: skip
