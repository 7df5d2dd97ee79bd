"""Constraints on hyperparameters for the optimization loop: projections and reparameterizations.

The outer optimizer works on a variable ``u``; the hyperparameter the problem sees is ``λ = c(u)``. A constraint
is a pair ``(c, P)``:

* a **projection** keeps ``c`` the identity and maps every update back onto the feasible set,
  ``u ← P(u + Δu)`` with ``P(y) = argmin_{x ∈ C} ‖x − y‖``: :func:`box`, :func:`positive`,
  :func:`capped_simplex`;
* a **reparameterization** leaves ``u`` unconstrained and changes ``c``: :func:`log` (``λ = exp u``) and
  :func:`sigmoid` (``λ = lo + (hi − lo) σ(u)``); the hypergradient reaches ``u`` by the chain rule,
  ``∂f/∂u = c'(u) ∂f/∂λ``.

Either way the history and the result report ``λ``, the constrained value.

Example:
    >>> import jax.numpy as jnp
    >>> from hgkit import constraints
    >>> constraints.box(0.0, 0.99).project(jnp.asarray([-1.0, 0.5, 2.0])).tolist()
    [0.0, 0.5, 0.99]
    >>> x = constraints.capped_simplex(1.0).project(jnp.asarray([0.9, 0.8, -0.3]))
    >>> [round(v, 6) for v in x.tolist()]
    [0.55, 0.45, 0.0]
    >>> c = constraints.log()
    >>> round(float(c.value(c.free(jnp.asarray(0.1)))), 6)
    0.1
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ._tree import path_name

__all__ = ["Constraint", "box", "positive", "capped_simplex", "log", "sigmoid", "per_leaf"]


def _identity(x):
    return x


@dataclasses.dataclass(frozen=True, eq=False)  # eq=False: hashed by identity, so usable in a jit static argument
class Constraint:
    """How one hyperparameter (leaf) is kept feasible.

    Attributes:
        name: how the constraint is shown in messages, e.g. ``"box(0, 0.99)"``.
        project: ``u -> u``, applied after every update (identity for reparameterizations).
        value: ``u -> λ``, the reparameterization (identity for projections).
        free: ``λ -> u``, its inverse, used once on the starting values.
        feasible: ``λ -> bool`` on the host: whether a starting value may be used.
        bounds: arrays that must broadcast to the hyperparameter's shape.
        vector_only: the constraint couples entries, so it refuses scalars.
        scale: ``"log"`` when ``λ = exp u`` (:func:`log`: the optimizer moves in log λ, and the plots and the
            dashboard draw λ on a log axis), else ``"linear"``.
    """

    name: str
    project: Callable[[Any], Any] = _identity
    value: Callable[[Any], Any] = _identity
    free: Callable[[Any], Any] = _identity
    feasible: Callable[[np.ndarray], bool] = lambda x: True
    bounds: tuple = ()
    vector_only: bool = False
    scale: str = "linear"

    def __repr__(self) -> str:
        return self.name

    def check(self, leaf, where: str) -> None:
        """Refuse a hyperparameter this constraint cannot hold: wrong shape, or a starting value outside it."""
        shape = np.shape(leaf)
        for b in self.bounds:
            try:
                ok = np.broadcast_shapes(np.shape(b), shape) == shape
            except ValueError:
                ok = False
            if not ok:
                raise ValueError(
                    f"constraints[{where!r}] = {self.name} has bounds of shape {np.shape(b)}, which do not "
                    f"broadcast to the hyperparameter's shape {shape}"
                )
        if self.vector_only and np.size(leaf) < 2:
            raise ValueError(f"constraints[{where!r}] = {self.name} needs a vector hyperparameter; got shape {shape}")
        if not self.feasible(np.asarray(leaf, np.float64)):
            raise ValueError(
                f"hparams[{where!r}] starts outside its constraint {self.name}: {np.asarray(leaf)!r}. "
                "Start from a feasible value."
            )


def _fmt(x) -> str:
    return f"{float(x):g}" if np.size(x) == 1 else f"array{np.shape(x)}"


def box(lo, hi) -> Constraint:
    """``lo ≤ λ ≤ hi`` elementwise, by projection: ``P(y) = clip(y, lo, hi)``. Bounds broadcast to λ's shape."""
    lo_np, hi_np = np.asarray(lo, np.float64), np.asarray(hi, np.float64)
    if not np.all(lo_np <= hi_np):
        raise ValueError(f"box(lo, hi) needs lo <= hi; got lo={lo!r}, hi={hi!r}")
    return Constraint(
        name=f"box({_fmt(lo)}, {_fmt(hi)})",
        project=lambda u: jnp.clip(u, jnp.asarray(lo, u.dtype), jnp.asarray(hi, u.dtype)),
        feasible=lambda x: bool(np.all((x >= lo_np) & (x <= hi_np))),
        bounds=(lo_np, hi_np),
    )


def positive(eps: float = 1e-8) -> Constraint:
    """``λ ≥ eps`` elementwise, by projection: ``P(y) = max(y, eps)``."""
    if not eps >= 0:
        raise ValueError(f"positive(eps) needs eps >= 0; got {eps!r}")
    return Constraint(
        name=f"positive({eps:g})",
        project=lambda u: jnp.maximum(u, jnp.asarray(eps, u.dtype)),
        feasible=lambda x: bool(np.all(x >= eps)),
    )


@functools.partial(jax.jit, static_argnames="iterations")
def project_capped_simplex(y, R, iterations: int = 100):
    """Euclidean projection of ``y`` (any shape) onto ``{x : 0 ≤ x ≤ 1, Σ x ≤ R}``.

    KKT: ``x = clip(y − τ, 0, 1)`` with ``τ ≥ 0`` the multiplier of the sum; ``τ = 0`` if that point is feasible,
    else the root of the decreasing piecewise-linear ``h(τ) = Σ clip(y − τ, 0, 1) − R`` on ``[0, max y]``.
    Bisection brackets the root, then one exact step solves ``h`` on its linear piece:
    ``τ = (Σ_{0<y−τ<1} y + #{y − τ ≥ 1} − R) / #{0 < y − τ < 1}``, exact to rounding.
    """
    flat = jnp.ravel(y)
    R = jnp.asarray(R, flat.dtype)

    def excess(tau):
        return jnp.sum(jnp.clip(flat - tau, 0, 1)) - R

    def halve(_, bracket):
        lo, hi = bracket
        mid = (lo + hi) / 2
        above = excess(mid) > 0
        return jnp.where(above, mid, lo), jnp.where(above, hi, mid)

    zero = jnp.zeros((), flat.dtype)
    _, tau = lax.fori_loop(0, iterations, halve, (zero, jnp.maximum(jnp.max(flat), zero)))
    inside = (flat - tau > 0) & (flat - tau < 1)
    count = jnp.sum(inside)
    exact = (jnp.sum(jnp.where(inside, flat, 0)) + jnp.sum(flat - tau >= 1) - R) / jnp.maximum(count, 1)
    tau = jnp.where(count > 0, exact, tau)
    tau = jnp.where(excess(zero) > 0, jnp.maximum(tau, zero), zero)
    return jnp.clip(flat - tau, 0, 1).reshape(jnp.shape(y))


def capped_simplex(R: float) -> Constraint:
    """``0 ≤ λ ≤ 1`` and ``Σ λ ≤ R`` (e.g. per-example weights with a budget), by exact Euclidean projection."""
    if not R >= 0:
        raise ValueError(f"capped_simplex(R) needs R >= 0; got {R!r}")
    tol = 1e-9 * max(1.0, R)
    return Constraint(
        name=f"capped_simplex({R:g})",
        project=lambda u: project_capped_simplex(u, R),
        feasible=lambda x: bool(np.all((x >= 0) & (x <= 1)) and x.sum() <= R + tol * x.size),
        vector_only=True,
    )


def log() -> Constraint:
    """``λ > 0`` by reparameterization ``λ = exp(u)``: the optimizer takes steps in log λ (scale-free)."""
    return Constraint(name="log()", value=jnp.exp, free=jnp.log, feasible=lambda x: bool(np.all(x > 0)), scale="log")


def sigmoid(lo: float = 0.0, hi: float = 1.0) -> Constraint:
    """``lo < λ < hi`` by reparameterization ``λ = lo + (hi − lo) σ(u)``, ``u = logit((λ − lo) / (hi − lo))``."""
    if not lo < hi:
        raise ValueError(f"sigmoid(lo, hi) needs lo < hi; got lo={lo!r}, hi={hi!r}")
    return Constraint(
        name=f"sigmoid({lo:g}, {hi:g})",
        value=lambda u: lo + (hi - lo) * jax.nn.sigmoid(u),
        free=lambda x: jax.scipy.special.logit((x - lo) / (hi - lo)),
        feasible=lambda x: bool(np.all((x > lo) & (x < hi))),
    )


def per_leaf(constraints: Mapping | None, hparams) -> tuple[Constraint | None, ...]:
    """One constraint (or None) per leaf of ``hparams``, from a mapping ``{name: constraint}``.

    Names are the hyperparameters' path names (``"lr"``, ``"group/lr"``); a name may also be a prefix covering a
    whole group (``"group"``), or the mapping may be nested like ``hparams``. Refuses unknown names, leaves
    constrained twice, shapes a constraint cannot hold and infeasible starting values.
    """
    leaves = jax.tree_util.tree_leaves_with_path(hparams)
    names = [path_name(p) for p, _ in leaves]
    out: list[Constraint | None] = [None] * len(leaves)
    if constraints is None:
        return tuple(out)
    if not isinstance(constraints, Mapping):
        raise TypeError(
            f"constraints must be a mapping {{hyperparameter name: constraint}}, got {type(constraints).__name__}"
        )
    flat = jax.tree_util.tree_leaves_with_path(constraints, is_leaf=lambda x: isinstance(x, Constraint))
    for path, c in flat:
        key = path_name(path)
        if not isinstance(c, Constraint):
            raise TypeError(
                f"constraints[{key!r}] must be an hg.constraints constraint (box, positive, capped_simplex, log, "
                f"sigmoid); got {c!r}"
            )
        hits = [i for i, n in enumerate(names) if n == key or n.startswith(key + "/")]
        if not hits:
            raise ValueError(f"constraints[{key!r}] names no hyperparameter; hparams has {names}")
        for i in hits:
            if out[i] is not None:
                raise ValueError(f"hyperparameter {names[i]!r} has two constraints: {out[i]} and {c}")
            c.check(leaves[i][1], names[i])
            out[i] = c
    return tuple(out)
