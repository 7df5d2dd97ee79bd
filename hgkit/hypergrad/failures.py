"""How a hypergradient computation can fail, and the one place that says so in words.

Every method reports failure in its result as data (a :class:`Failure` code and the inner step), never by raising
from traced code, so results can be jitted and vmapped. :func:`classify` turns what a method observed into the
code (inside the computation); :func:`explain` turns a code into the message (on the host). Everything that
raises on a failure goes through :func:`explain`: :func:`raise_if_diverged` (behind :func:`hgkit.hypergradient`),
the optimization loop and its populations.

Example:
    >>> import jax.numpy as jnp
    >>> code, step = classify(jnp.int32(-1), jnp.int32(7), False, jnp.asarray(0.5), {"lr": jnp.asarray(1.0)})
    >>> Failure(int(code)).name, int(step)
    ('DERIVATIVE_NONFINITE', 7)
    >>> print(explain(Failure(int(code)), int(step), T=10, hparams={"lr": 0.1}))
    the training run stayed finite but the derivative propagated through it went non-finite at inner step 7 \
(0-based) of T=10; hyperparameters: lr=0.1.
"""

from __future__ import annotations

import enum

import jax
import jax.numpy as jnp
import numpy as np

from .._checks import require_positive_int
from .._tree import PyTree, all_finite, member, path_names, scalar_summary

__all__ = ["DivergenceError", "Failure", "classify", "explain", "raise_if_diverged"]


class Failure(enum.IntEnum):
    """The ways a hypergradient computation (or a step of the loop) can fail, most fundamental first."""

    NONE = 0
    TRAINING_NONFINITE = 1  # the training state went non-finite at an inner step
    DERIVATIVE_NONFINITE = 2  # training stayed finite; the adjoint or the tangents did not
    SOLVE_NOT_CONVERGED = 3  # Implicit: the linear solve stopped above its tolerance
    OBJECTIVE_NONFINITE = 4  # the outer objective is non-finite at finite trained weights
    HYPERGRADIENT_NONFINITE = 5  # everything above was finite, the hypergradient is not
    UPDATE_NONFINITE = 6  # the loop only: the hyper-optimizer's update of λ is non-finite


class DivergenceError(FloatingPointError):
    """The training run (or its derivative) went non-finite; ``step`` says at which inner step (0-based).

    Attributes: ``failure`` (a :class:`Failure`), ``step`` (the inner step, or None).
    """

    def __init__(self, message: str, step: int | None = None, failure: Failure | None = None):
        super().__init__(message)
        self.step, self.failure = step, failure


def classify(diverged_at, grad_diverged_at, solve_failed, value, grads) -> tuple[jax.Array, jax.Array]:
    """The failure code and the inner step it happened at (-1 when it has none): traceable.

    The first failure in :class:`Failure`'s order wins: a non-finite training run makes everything after it
    non-finite too, and is what the user must change.
    """
    diverged_at, grad_diverged_at = jnp.asarray(diverged_at, jnp.int32), jnp.asarray(grad_diverged_at, jnp.int32)
    checks = [
        (diverged_at >= 0, Failure.TRAINING_NONFINITE, diverged_at),
        (grad_diverged_at >= 0, Failure.DERIVATIVE_NONFINITE, grad_diverged_at),
        (jnp.asarray(solve_failed), Failure.SOLVE_NOT_CONVERGED, -1),
        (~all_finite(value), Failure.OBJECTIVE_NONFINITE, -1),
        (~all_finite(grads), Failure.HYPERGRADIENT_NONFINITE, -1),
    ]
    code, step = jnp.int32(Failure.NONE), jnp.int32(-1)
    for failed, failure, at in reversed(checks):  # the first in the list is applied last, so it wins
        code = jnp.where(failed, jnp.int32(failure), code)
        step = jnp.where(failed, jnp.asarray(at, jnp.int32), step)
    return code, step


def explain(
    failure: Failure, step: int | None, *, T: int, hparams: PyTree, residual: float | None = None, state=None
) -> str:
    """One sentence: what failed, where, with which hyperparameters, and what usually helps.

    Args:
        failure, step: from a result (``Failure(int(result.failure))``, ``int(result.failed_at)``).
        T: the inner steps of the run the step is counted in.
        hparams: the hyperparameters used (host values).
        residual: the relative residual of an implicit solve.
        state: the final training state (host values), to recognise known causes (an optax Adam without
            ``eps_root``).
    """
    used = f"hyperparameters: {scalar_summary(hparams)}."
    if failure == Failure.TRAINING_NONFINITE:
        return (
            f"the training run went non-finite at inner step {step} (0-based) of T={T}, so its hypergradient is "
            f"undefined; {used} A smaller learning rate or fewer steps usually helps."
        )
    if failure == Failure.DERIVATIVE_NONFINITE:
        return (
            f"the training run stayed finite but the derivative propagated through it went non-finite at inner "
            f"step {step} (0-based) of T={T}; {used}" + _optax_adam_hint(state)
        )
    if failure == Failure.SOLVE_NOT_CONVERGED:
        shown = "unknown" if residual is None else f"{residual:.3g}"
        return (
            "the implicit hypergradient's linear solve H v = ∂E/∂w at the trained weights did not converge: "
            f"relative residual ‖Hv − ∂E/∂w‖/‖∂E/∂w‖ = {shown}, above Implicit(tol=...). More iterations, a smaller "
            "Neumann alpha, or a longer (converged) training run usually help; conjugate gradients also needs a "
            f"positive definite Hessian. {used[0].upper()}{used[1:]}"
        )
    if failure == Failure.OBJECTIVE_NONFINITE:
        return f"the outer objective is non-finite at the trained weights; {used}"
    if failure == Failure.HYPERGRADIENT_NONFINITE:
        return (
            "the hypergradient is non-finite although training and its derivative stayed finite (check val_loss's "
            f"derivative); {used}" + _optax_adam_hint(state)
        )
    if failure == Failure.UPDATE_NONFINITE:
        return f"the hyperparameter update is non-finite (is the hyper_optimizer's step too large?); {used}"
    raise ValueError(f"explain: {failure!r} is not a failure")


def _optax_adam_hint(state) -> str:
    """A sentence on ``eps_root`` if the inner optimizer's state is an optax Adam-like one with an exact zero in
    its second moment: ``sqrt`` at 0 has an infinite derivative, the usual cause of such a failure."""
    if state is None:
        return ""
    nodes = jax.tree_util.tree_leaves(state, is_leaf=_is_optax_moment_state)
    if any(_is_optax_moment_state(n) and _has_zero(n.nu) for n in nodes):
        return (
            " The inner optimizer is an optax Adam-like transformation and a parameter's second moment is exactly "
            "0 (its gradient was always 0): with eps_root=0, optax's default, sqrt(0) has an infinite derivative. "
            "Pass eps_root (e.g. optax.adam(lr, eps_root=1e-16)) or use hg.optim.adam, which puts ε inside the "
            "square root."
        )
    return ""


def _is_optax_moment_state(node) -> bool:
    return type(node).__module__.startswith("optax") and hasattr(node, "nu")


def _has_zero(tree) -> bool:
    return any(np.any(np.asarray(x) == 0) for x in jax.tree_util.tree_leaves(tree))


def raise_if_diverged(result, T: int, hparams: PyTree, where: str = "") -> None:
    """Raise :class:`DivergenceError` if ``result`` (a :class:`~hgkit.HypergradientResult`) reports a failure.

    Runs on the host. Works on a vmapped result too (a population: a leading axis P on every leaf): the first
    failing member p is named, with its hyperparameters.

    Args:
        result: the result, or a population's.
        T: the inner steps it was computed with (``result.train_losses.shape[-1]``; for the result of one ``step``
            of an online method, its ``delta``).
        hparams: the hyperparameters it was computed with (the structure of ``result.grads``); for a population,
            every member's (a leading axis P) or one set shared by all.

    Raises:
        ValueError: ``T`` or ``hparams`` does not match the result.
    """
    batch = np.shape(result.failure)  # () for one result, (P,) for a population
    shared = _check_matches(result, T, hparams, batch)
    codes = np.asarray(result.failure).reshape(-1)
    if not codes.any():
        return
    steps = np.asarray(result.failed_at).reshape(-1)
    residuals = None if result.solve_residual is None else np.asarray(result.solve_residual).reshape(-1)
    p = int(np.flatnonzero(codes)[0])
    failure, step = Failure(int(codes[p])), int(steps[p])
    state, hp = jax.device_get(result.state), jax.device_get(hparams)
    who = where
    if batch:
        index = np.unravel_index(p, batch)
        state = member(state, index)
        leaves, treedef = jax.tree_util.tree_flatten(hp)
        hp = treedef.unflatten([x if s else x[index] for x, s in zip(leaves, shared, strict=True)])
        who += f"population member {p if len(batch) == 1 else tuple(int(i) for i in index)}"
        names = [name for name, s in zip(path_names(hparams), shared, strict=True) if s]
        if names:
            who += f" (hparams {', '.join(names)} {'has' if len(names) == 1 else 'have'} no population axis, so "
            who += f"{'it is' if len(names) == 1 else 'they are'} shown as given)"
        who += ": "
    message = explain(
        failure,
        step if step >= 0 else None,
        T=T,
        hparams=hp,
        residual=None if residuals is None else float(residuals[p]),
        state=state,
    )
    raise DivergenceError(who + message, step if step >= 0 else None, failure)


def _check_matches(result, T, hparams: PyTree, batch: tuple) -> list[bool]:
    """Refuse a ``T`` or ``hparams`` that ``result`` was not computed with (from shapes alone). Returns, per leaf
    of ``hparams``, whether a population's members share it (it has no population axis)."""
    require_positive_int("T", T, "the inner steps of the result")
    losses = np.shape(result.train_losses)
    if losses[len(batch) :] != (T,):
        per = " per member" if batch else ""
        known = f", T = {losses[-1]}" if len(losses) == len(batch) + 1 else ""
        raise ValueError(
            f"raise_if_diverged: T = {T}, but result.train_losses has shape {losses}, one loss per inner step{per}: "
            f"pass the T the result was computed with{known} (for one step of an online method, its delta)"
        )
    names = path_names(hparams)
    if jax.tree_util.tree_structure(hparams) != jax.tree_util.tree_structure(result.grads):
        raise ValueError(
            f"raise_if_diverged: hparams has {', '.join(names)}, but the result was computed with (its grads have) "
            f"{', '.join(path_names(result.grads))}: pass the hyperparameters it was computed with"
        )
    shared = []
    leaves = zip(names, jax.tree_util.tree_leaves(hparams), jax.tree_util.tree_leaves(result.grads), strict=True)
    for name, h, g in leaves:
        h, g = np.shape(h), np.shape(g)
        if h != g and h != g[len(batch) :]:
            wanted = f"{g} (a row per member of the population) or {g[len(batch) :]} (shared)" if batch else f"{g}"
            raise ValueError(
                f"raise_if_diverged: hparams {name!r} has shape {h}, but the result was computed with shape {wanted}: "
                "pass the hyperparameters it was computed with"
            )
        shared.append(bool(batch) and h != g)
    return shared
