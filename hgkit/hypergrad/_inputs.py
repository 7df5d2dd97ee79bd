"""The input checks every method makes before any compute: from shapes alone, while tracing.

Each error names the argument or the user function that failed, on what structure, and what was expected.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from .._checks import require_positive_int
from .._tree import PyTree, is_float, join_model, path_name, tree_map
from ..hparams import MissingHyperparameterError, check_hparams
from ..problem import BilevelProblem, TrainState, initial_state, objective_index, train_step


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


def _few(names: list[str], shown: int = 3) -> str:
    """At most ``shown`` names, then how many more."""
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def _are(names: list[str], what) -> str:
    """``a is float32`` or ``a, b are float32``."""
    return f"{_few(names)} {'is' if len(names) == 1 else 'are'} {what}"


def _changed_structure(state: TrainState, new_state: TrainState, hparams: PyTree) -> str:
    """Why a training step changed the state's structure, shapes or dtypes, in a few lines: the float dtypes of
    the parameters and the hyperparameters, with the two fixes, when a dtype changed because those differ; else
    which leaves changed."""
    message = "a training step must keep the state's structure, shapes and dtypes (the library never casts)"
    if jax.tree_util.tree_structure(state) != jax.tree_util.tree_structure(new_state):
        return f"{message}; it went from {_structure(state)} to {_structure(new_state)}"
    pairs = zip(jax.tree_util.tree_leaves_with_path(state), jax.tree_util.tree_leaves(new_state), strict=True)
    changed = [(jax.tree_util.keystr(p).lstrip("."), a, b) for (p, a), b in pairs if _structure(a) != _structure(b)]
    leaves = jax.tree_util.tree_leaves_with_path(state.arrays)
    params = [(f"params{jax.tree_util.keystr(p)}", x.dtype) for p, x in leaves if is_float(x)]
    hp = [(repr(path_name(p)), x.dtype) for p, x in jax.tree_util.tree_leaves_with_path(hparams) if is_float(x)]
    wide = [(name, dtype) for name, dtype in hp if dtype not in {dtype for _, dtype in params}]
    if params and wide and any(a.dtype != b.dtype for _, a, b in changed):
        narrow, broad = params[0][1], wide[0][1]
        these = [name for name, dtype in params if dtype == narrow]
        given = [name for name, dtype in wide if dtype == broad]
        return (
            f"{message}, but params and hparams have different float dtypes: {_are(these, narrow)}; hparams "
            f"{_are(given, broad)}.\nCast the hyperparameters, jax.tree.map(lambda x: x.astype(jnp.{narrow}), "
            f"hparams), or build the parameters in {broad} (dtype=jnp.{broad} in Equinox layers, "
            f"param_dtype=jnp.{broad} in Flax)."
        )
    return (
        f"{message}; it changed {_few([f'{name} from {_structure(a)} to {_structure(b)}' for name, a, b in changed])}"
    )


def _refuse_missing_key(problem: BilevelProblem, hp, e: Exception) -> None:
    """``init`` failed with no key (``e``): if it works with one, say that ``key=`` is missing (JAX's own error,
    "unexpected PRNG key type NoneType", names neither ``init`` nor ``key=``); else return."""
    try:
        jax.eval_shape(lambda h, k: initial_state(problem, h, k), hp, jax.random.key(0))
    except Exception:
        return  # it fails with a key too: the general message says how
    raise TypeError(
        "init(hparams, key) uses its key, but no key was given (key=None): pass one, e.g. key=jax.random.key(0), "
        f"to hg.hypergradient / hg.hypergradient_result / HyperOptimizer.run. (init failed with {type(e).__name__}: "
        f"{e})"
    ) from e


def check_inputs(
    problem: BilevelProblem, hparams: PyTree, T: int, train_data, val_data: PyTree, key, init_state=None
) -> TrainState:
    """Every check that can be made from shapes alone; returns the abstract initial state."""
    if not isinstance(problem, BilevelProblem):
        raise TypeError(f"problem must be an hg.BilevelProblem, got {type(problem).__name__}")
    check_hparams(hparams)
    require_positive_int("T", T, "the number of training steps")
    hp = _abstract(hparams)
    if init_state is None:
        try:
            state = jax.eval_shape(lambda h, k: initial_state(problem, h, k), hp, _abstract(key))
        except MissingHyperparameterError:
            raise
        except Exception as e:
            if key is None:
                _refuse_missing_key(problem, hp, e)
            _reraise(e, f"init(hparams, key) or optimizer.init(params, hparams) failed: {type(e).__name__}: {e}")
    else:
        state = _abstract(init_state)
    arrays = state.arrays  # the model's arrays (None at its static leaves)
    bad = [jax.tree_util.keystr(p) for p, x in jax.tree_util.tree_leaves_with_path(arrays) if not is_float(x)]
    if bad:
        raise TypeError(f"init must return float parameters; params{bad[0]} is {_structure(arrays)}")

    step = jax.ShapeDtypeStruct((), jnp.int32)
    if callable(train_data):
        batch = _call("train_data(step), called with an int32 step,", train_data, step)
        origin = "the batch returned by train_data(step)"
    else:
        batch = _abstract(train_data)
        origin = "train_data"
    try:
        loss = jax.eval_shape(lambda a, h, b: problem.inner_loss(a, h, b, state.static), arrays, hp, batch)
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
        raise TypeError(_changed_structure(state, new_state, hp))

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
        out = _call(
            f"{what}(params, hparams, val_data)",
            lambda v, h, d, fn=fn: fn(join_model(v, state.static), h, d),
            arrays,
            hp,
            _abstract(data),
        )
        if np.shape(out) != ():
            raise ValueError(f"{what} must return a scalar; it returned shape {np.shape(out)}")
    objective_index(problem, hparams)  # checks `follows`
    return state
