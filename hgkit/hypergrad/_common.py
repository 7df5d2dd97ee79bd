"""What the hypergradient methods share: the result type, input checks, and small pytree helpers."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ..hparams import MissingHyperparameterError, check_hparams
from ..problem import BilevelProblem, TrainState, initial_state, objective_index, train_step

tree_map = jax.tree_util.tree_map


class HypergradientResult(NamedTuple):
    """Everything one hypergradient computation produces (all arrays, so it can be jitted and vmapped).

    Attributes:
        value: the outer objective at the trained weights: a scalar, or a dict of scalars for several objectives.
        grads: the hypergradient, a pytree with the structure and dtypes of ``hparams``.
        state: the final training state ``s_T`` (weights and optimizer state).
        train_losses: the training loss at each step, shape ``(T,)``.
        diverged_at: the first inner step (0-based) whose new state was non-finite, or -1.
        grad_diverged_at: the inner step at which the derivative (adjoint or tangents) first went
            non-finite while the state stayed finite, or -1 (:class:`~hgkit.hypergrad.Implicit`: T when its
            linear solve did not reach its tolerance).
        solve_residual: :class:`~hgkit.hypergrad.Implicit` only: the relative residual of its linear solve,
            ``‖H v − ∂E/∂w‖ / ‖∂E/∂w‖`` (the largest over objectives); ``None`` for the other methods.
    """

    value: Any
    grads: Any
    state: TrainState
    train_losses: jax.Array
    diverged_at: jax.Array
    grad_diverged_at: jax.Array
    solve_residual: Any = None


# ----- pytree helpers ---------------------------------------------------------------------------------------


def is_float(x) -> bool:
    return jnp.issubdtype(jnp.result_type(x), jnp.inexact)


def partition(tree):
    """Split a pytree into its float leaves (differentiated) and the rest (step counters: carried along)."""
    floats = tree_map(lambda x: x if is_float(x) else None, tree)
    rest = tree_map(lambda x: None if is_float(x) else x, tree)
    return floats, rest


def combine(floats, rest):
    return tree_map(lambda a, b: b if a is None else a, floats, rest, is_leaf=lambda x: x is None)


def all_finite(tree) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree) if is_float(x)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def mark_first(bad_at: jax.Array, finite: jax.Array, step) -> jax.Array:
    """Remember the first step at which ``finite`` turned false."""
    return jnp.where((bad_at < 0) & ~finite, jnp.asarray(step, jnp.int32), bad_at)


def tree_size(tree) -> int:
    return sum(int(np.prod(np.shape(x))) for x in jax.tree_util.tree_leaves(tree))


def tree_bytes(tree) -> int:
    return sum(int(np.prod(np.shape(x))) * jnp.dtype(x.dtype).itemsize for x in jax.tree_util.tree_leaves(tree))


def per_objective_grads(problem: BilevelProblem, hparams, stacked):
    """From per-objective gradients (leading axis k), keep for each leaf the row of the objective it follows."""
    rows = objective_index(problem, hparams)
    leaves, treedef = jax.tree_util.tree_flatten(hparams)
    g_leaves = treedef.flatten_up_to(stacked)
    out = [g[r].astype(h.dtype) for g, r, h in zip(g_leaves, rows, leaves, strict=True)]
    return jax.tree_util.tree_unflatten(treedef, out)


def unstack_value(problem: BilevelProblem, values: jax.Array):
    """The objective vector as the user wrote it: a scalar, or a dict for several objectives."""
    if isinstance(problem.val_loss, Mapping):
        return {k: values[i] for i, k in enumerate(problem.val_loss)}
    return values[0]


def path_name(path) -> str:
    """A pytree path as a readable name: ``lr``, ``group/lr``, ``layers/0``."""
    parts = [str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path]
    return "/".join(parts) or "hparams"


def scalar_summary(hparams) -> str:
    """Scalar hyperparameters as ``lr=0.1, mu=0.9`` for error messages (vectors by their shape)."""
    parts = []
    for path, x in jax.tree_util.tree_leaves_with_path(hparams):
        name = path_name(path)
        try:
            parts.append(f"{name}={float(x):.6g}" if np.size(x) == 1 else f"{name}: shape {np.shape(x)}")
        except (TypeError, jax.errors.ConcretizationTypeError):
            parts.append(f"{name}: shape {np.shape(x)}")
    return ", ".join(parts)


# ----- input checks (run while tracing, so they come before any compute) -------------------------------------


def _abstract(tree):
    return tree_map(lambda x: jax.ShapeDtypeStruct(np.shape(x), jnp.result_type(x)) if _is_arraylike(x) else x, tree)


def _is_arraylike(x) -> bool:
    return isinstance(x, jax.Array | np.ndarray | np.generic | float | int | complex | bool)


def _structure(tree) -> str:
    return str(tree_map(lambda x: f"{jnp.result_type(x)}{list(np.shape(x))}", _abstract(tree)))


def _call(what: str, fn, *args):
    """``jax.eval_shape(fn, *args)`` with a message saying which user function failed and on what."""
    try:
        return jax.eval_shape(fn, *args)
    except MissingHyperparameterError:
        raise
    except Exception as e:  # re-raised with context: which function, on which inputs
        _reraise(e, f"{what} failed: {type(e).__name__}: {e}")


def _reraise(e: Exception, message: str):
    """Raise ``message`` as an exception of ``e``'s type where that type takes a message, else as TypeError."""
    try:
        new = type(e)(message)
    except Exception:
        new = TypeError(message)
    raise new from e


def positive_int(x) -> bool:
    """Whether ``x`` is an int (Python or NumPy, never a bool) of at least 1: the check of every count argument."""
    return isinstance(x, int | np.integer) and not isinstance(x, bool) and x >= 1


def check_inputs(problem: BilevelProblem, hparams, T, train_data, val_data, key, init_state=None) -> TrainState:
    """Every check that can be made from shapes alone; returns the abstract initial state."""
    if not isinstance(problem, BilevelProblem):
        raise TypeError(f"problem must be an hg.BilevelProblem, got {type(problem).__name__}")
    check_hparams(hparams)
    if not positive_int(T):
        raise ValueError(f"T (the number of training steps) must be a positive int; got {T!r}")
    hp = _abstract(hparams)
    if init_state is None:
        state = _call(
            "init(hparams, key) or optimizer.init(params, hparams)",
            lambda h, k: initial_state(problem, h, k),
            hp,
            _abstract(key),
        )
    else:
        state = _abstract(init_state)
    bad = [jax.tree_util.keystr(p) for p, x in jax.tree_util.tree_leaves_with_path(state.params) if not is_float(x)]
    if bad:
        raise TypeError(f"init must return float parameters; params{bad[0]} is {_structure(state.params)}")

    step = jax.ShapeDtypeStruct((), jnp.int32)
    if callable(train_data):
        batch = _call("train_data(step), called with an int32 step,", train_data, step)
        origin = "the batch returned by train_data(step)"
    else:
        batch = _abstract(train_data)
        origin = "train_data"
    try:
        loss = jax.eval_shape(problem.train_loss, state.params, hp, batch)
    except MissingHyperparameterError:
        raise
    except Exception as e:
        hint = ""
        v0 = val_data[problem.objective_names[0]] if isinstance(problem.val_loss, Mapping) else val_data
        if isinstance(v0, tuple | list | dict) and (
            jax.tree_util.tree_structure(_abstract(v0)) != jax.tree_util.tree_structure(batch)
        ):
            hint = f" (val_data has structure {_structure(v0)})"
        _reraise(
            e,
            f"train_loss(params, hparams, batch) failed on {origin}, which has structure "
            f"{_structure(batch)}{hint}: {type(e).__name__}: {e}",
        )
    if np.shape(loss) != ():
        raise ValueError(f"train_loss must return a scalar; it returned shape {np.shape(loss)}")

    new_state, _ = _call(
        "the training step (optimizer.update)", lambda s, h, b: train_step(problem, s, h, b, 0), state, hp, batch
    )
    if _structure(new_state) != _structure(state):
        raise TypeError(
            "a training step must keep the state's structure, shapes and dtypes (the library never casts); "
            f"it went from {_structure(state)} to {_structure(new_state)}. "
            "Are hparams and params of different float dtypes?"
        )

    names = problem.objective_names
    if isinstance(problem.val_loss, Mapping):
        if not isinstance(val_data, Mapping) or set(val_data) != set(names):
            got = sorted(val_data) if isinstance(val_data, Mapping) else type(val_data).__name__
            raise ValueError(
                f"with several objectives, val_data must be a mapping with keys {sorted(names)}; got {got}"
            )
        fns = [(f"val_loss[{k!r}]", problem.val_loss[k], val_data[k]) for k in names]
    else:
        fns = [("val_loss", problem.val_loss, val_data)]
    for what, fn, data in fns:
        out = _call(f"{what}(params, hparams, val_data)", fn, state.params, hp, _abstract(data))
        if np.shape(out) != ():
            raise ValueError(f"{what} must return a scalar; it returned shape {np.shape(out)}")
    objective_index(problem, hparams)  # checks `follows`
    return state
