"""Pytree helpers shared across hgkit: the ``PyTree`` alias, float/other splits, finiteness, sizes, path names.

Example:
    >>> import jax.numpy as jnp
    >>> floats, rest = partition({"w": jnp.ones(2), "count": jnp.int32(3)})
    >>> floats["count"] is None, rest["w"] is None
    (True, True)
    >>> arrays, static = partition({"w": jnp.ones(2), "act": jnp.tanh}, keep=is_array)
    >>> arrays["act"] is None, static["act"] is jnp.tanh, combine(arrays, static)["w"] is arrays["w"]
    (True, True, True)
    >>> path_names({"opt": {"lr": 0.1}, "wd": 0.0})
    ['opt/lr', 'wd']
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeAlias

import jax
import jax.numpy as jnp
import numpy as np

PyTree: TypeAlias = Any
"""Any pytree (nested tuples, lists, dicts, NamedTuples, dataclasses registered with JAX) of arrays."""

tree_map = jax.tree_util.tree_map


def is_float(x) -> bool:
    """Whether ``x`` has an inexact (float or complex) dtype: what derivatives flow through."""
    return jnp.issubdtype(jnp.result_type(x), jnp.inexact)


def is_array(x) -> bool:
    """Whether ``x`` is an array leaf (concrete, traced or abstract): what training carries and differentiates;
    any other leaf of a model (an activation function, a Python int, a string) is static."""
    return isinstance(x, jax.Array | np.ndarray | np.generic | jax.ShapeDtypeStruct)


def partition(tree: PyTree, keep: Callable[[Any], bool] = is_float) -> tuple[PyTree, PyTree]:
    """Split a pytree in two of its own structure: the leaves ``keep`` accepts, with None elsewhere, and the rest,
    with None where the first has a leaf (as ``equinox.partition``). The one splitter hgkit uses: the float leaves
    (differentiated) from the step counters by default, a model's arrays from its static leaves with
    ``keep=is_array``."""
    kept = tree_map(lambda x: x if keep(x) else None, tree)
    rest = tree_map(lambda x: None if keep(x) else x, tree)
    return kept, rest


def combine(kept: PyTree, rest: PyTree) -> PyTree:
    """The inverse of :func:`partition`."""
    return tree_map(lambda a, b: b if a is None else a, kept, rest, is_leaf=lambda x: x is None)


def all_finite(tree: PyTree) -> jax.Array:
    """A boolean scalar: whether every float leaf of ``tree`` is finite everywhere (traceable)."""
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree) if is_float(x)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def mark_first(bad_at: jax.Array, finite: jax.Array, step) -> jax.Array:
    """Remember the first step at which ``finite`` turned false (``bad_at`` is -1 until then)."""
    return jnp.where((bad_at < 0) & ~finite, jnp.asarray(step, jnp.int32), bad_at)


def tree_size(tree: PyTree) -> int:
    """The number of scalars in ``tree``."""
    return sum(int(np.prod(np.shape(x))) for x in jax.tree_util.tree_leaves(tree))


def tree_bytes(tree: PyTree) -> int:
    """The bytes ``tree``'s leaves take (from shapes and dtypes: works on abstract values too)."""
    return sum(int(np.prod(np.shape(x))) * jnp.dtype(x.dtype).itemsize for x in jax.tree_util.tree_leaves(tree))


def path_name(path) -> str:
    """A pytree path as a readable name: ``lr``, ``group/lr``, ``layers/0``."""
    parts = [str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path]
    return "/".join(parts) or "hparams"


def path_names(tree: PyTree) -> list[str]:
    """The :func:`path_name` of every leaf of ``tree``, in leaf order."""
    return [path_name(p) for p, _ in jax.tree_util.tree_leaves_with_path(tree)]


def scalar_summary(hparams: PyTree) -> str:
    """Scalar hyperparameters as ``lr=0.1, mu=0.9`` for messages (vectors by their shape)."""
    parts = []
    for path, x in jax.tree_util.tree_leaves_with_path(hparams):
        name = path_name(path)
        try:
            parts.append(f"{name}={float(x):.6g}" if np.size(x) == 1 else f"{name}: shape {np.shape(x)}")
        except (TypeError, jax.errors.ConcretizationTypeError):
            parts.append(f"{name}: shape {np.shape(x)}")
    return ", ".join(parts)


def member(tree: PyTree, p: int) -> PyTree:
    """Member ``p``'s part of a population's pytree (row ``p`` of every leaf)."""
    return tree_map(lambda x: x[p], tree)


def is_traced(tree: PyTree) -> bool:
    """Whether any leaf of ``tree`` is a JAX tracer (the caller is being jitted, vmapped or differentiated)."""
    return any(isinstance(x, jax.core.Tracer) for x in jax.tree_util.tree_leaves(tree))


# ----- models with static leaves (Equinox modules, flax nnx modules, ...) ----------------------------------------


class Static:
    """The static part of a model (its non-array leaves, None where the arrays are), hashable and compared by
    value, so that it can live in a pytree's structure (:class:`~hgkit.TrainState` keeps it there): jit, vmap,
    scan and checkpoints then see the arrays only, and the model is rebuilt as written with :func:`combine`."""

    __slots__ = ("_key", "tree")

    def __init__(self, tree: PyTree):
        self.tree = tree
        leaves, treedef = jax.tree_util.tree_flatten(tree, is_leaf=lambda x: x is None)
        self._key = (treedef, tuple(leaves))

    def __eq__(self, other) -> bool:
        return isinstance(other, Static) and self._key == other._key

    def __hash__(self) -> int:
        return hash(self._key)

    def __repr__(self) -> str:
        return f"Static({self.tree!r})"


def split_model(model: PyTree) -> tuple[PyTree, Static | None]:
    """``(arrays, static)``: the model's arrays (its own structure, None at the static leaves) and its static part,
    ``None`` when every leaf is an array (the model is then its own arrays).

    Refuses, naming the path, a non-array leaf that cannot be static (an unhashable one).
    """
    leaves = jax.tree_util.tree_leaves_with_path(model)
    if all(is_array(x) for _, x in leaves):
        return model, None
    for path, x in leaves:
        if not is_array(x):
            try:
                hash(x)
            except TypeError:
                raise TypeError(
                    f"params{jax.tree_util.keystr(path)} is a {type(x).__name__}, neither an array nor a static "
                    "(hashable) value. Parameters may be any pytree whose leaves are arrays (trained) or hashable "
                    "values such as functions, ints and strings (carried unchanged): make this field an array, or "
                    "a hashable value (e.g. a tuple instead of a list), or mark it static in your model library."
                ) from None
    arrays, static = partition(model, keep=is_array)
    return arrays, Static(static)


def join_model(arrays: PyTree, static: Static | None) -> PyTree:
    """The inverse of :func:`split_model`: the model as written."""
    return arrays if static is None else combine(arrays, static.tree)
