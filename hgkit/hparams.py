"""Hyperparameters as data: checking the pytree, and resolving what an optimizer argument refers to.

An optimizer argument such as ``lr`` may be

* a number or array (a constant, not tuned),
* a string naming an entry of ``hparams`` (``"lr"``; nested mappings with ``"group/lr"``),
* a callable ``(hparams, step) -> value`` (schedules: ``lambda hp, t: hp["lr"][t]``).

Whatever it is, it is resolved inside the traced training step, so the value is a function of ``hparams``
that ``grad``, ``jvp`` and ``vmap`` see, and new values never recompile.

Example:
    >>> import jax.numpy as jnp
    >>> from hgkit.hparams import resolve
    >>> hp = {"lr": jnp.asarray(0.1), "sched": jnp.linspace(1.0, 0.0, 5)}
    >>> float(resolve("lr", hp, 0, name="lr"))
    0.1
    >>> float(resolve(lambda h, t: h["sched"][t], hp, 2, name="lr"))
    0.5
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Spec = float | str | Callable[[Any, Any], Any]


class MissingHyperparameterError(KeyError):
    """An optimizer argument names an entry that ``hparams`` does not have."""

    def __str__(self) -> str:  # KeyError would print the message with quotes around it
        return str(self.args[0])


def describe_keys(hparams: Any) -> str:
    """The entries of ``hparams`` as ``'a', 'b/c'`` (nested mappings shown as paths)."""
    if not isinstance(hparams, Mapping):
        return f"(none: hparams is a {type(hparams).__name__}, not a mapping)"

    def walk(tree, prefix):
        for k, v in tree.items():
            path = f"{prefix}{k}"
            if isinstance(v, Mapping):
                yield from walk(v, path + "/")
            else:
                yield path

    return ", ".join(repr(p) for p in walk(hparams, "")) or "(none: hparams is empty)"


def lookup(hparams: Any, path: str, *, name: str) -> Any:
    """The entry of ``hparams`` at ``path`` (``"lr"`` or ``"group/lr"``); ``name`` is the argument that asked."""
    node = hparams
    for part in path.split("/"):
        if not isinstance(node, Mapping) or part not in node:
            raise MissingHyperparameterError(
                f"optimizer argument {name}={path!r} names an entry of hparams that does not exist; "
                f"hparams has {describe_keys(hparams)}"
            )
        node = node[part]
    return node


def resolve(spec: Spec, hparams: Any, step: Any, *, name: str) -> Any:
    """The value of one optimizer argument at ``step``: a constant, an entry of ``hparams``, or a schedule."""
    if isinstance(spec, str):
        return lookup(hparams, spec, name=name)
    if callable(spec):
        return spec(hparams, step)
    return spec


def per_parameter(value: Any, params: Any) -> list:
    """``value`` as one entry per leaf of ``params``.

    A hyperparameter is either shared by every parameter (a scalar, or an array that broadcasts) or given
    per parameter as a pytree with the structure of ``params`` (per-parameter learning rates, decays). For a model
    with static leaves, ``params`` is its arrays (``state.arrays``, None at the static leaves), the structure
    ``eqx.filter(model, eqx.is_array)`` gives.
    """
    p_def = jax.tree_util.tree_structure(params)
    v_leaves, v_def = jax.tree_util.tree_flatten(value)
    if v_def == p_def and p_def.num_leaves > 1:
        return v_leaves
    if v_def.num_leaves != 1:
        raise ValueError(f"a per-parameter hyperparameter must have the structure of params ({p_def}); got {v_def}")
    return [v_leaves[0]] * p_def.num_leaves


def check_hparams(hparams: Any) -> None:
    """Refuse hyperparameter pytrees that cannot be differentiated: non-array or non-float leaves.

    Runs on concrete values and on tracers alike, so the error comes before any compute.
    """
    leaves = jax.tree_util.tree_leaves_with_path(hparams)
    if not leaves:
        raise ValueError("hparams has no leaves: there is nothing to differentiate with respect to")
    for path, leaf in leaves:
        where = "hparams" + jax.tree_util.keystr(path)
        if not isinstance(leaf, jax.Array | np.ndarray | np.generic):
            raise TypeError(
                f"{where} is a {type(leaf).__name__} ({leaf!r}); hyperparameters must be float arrays, "
                f"for example jnp.asarray({leaf!r}, dtype=jnp.float32)"
            )
        if not jnp.issubdtype(leaf.dtype, jnp.floating):
            raise TypeError(
                f"{where} has dtype {leaf.dtype}; hyperparameters must be floating point "
                "(float32 or float64) to be differentiated"
            )
        stored = jax.dtypes.canonicalize_dtype(leaf.dtype)
        if isinstance(leaf, np.ndarray | np.generic) and stored != leaf.dtype:
            # JAX would truncate it (float64 without jax_enable_x64) with a warning pointing inside hgkit; the
            # library never casts, so say it here, where the value comes in.
            raise TypeError(
                f"{where} is a NumPy {leaf.dtype} value, which JAX stores as {stored} unless "
                "float64 is enabled; hgkit does not cast: pass jnp.asarray(value, jnp.float32), or enable float64 "
                'first with jax.config.update("jax_enable_x64", True)'
            )
