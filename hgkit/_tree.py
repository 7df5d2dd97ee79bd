"""Pytree helpers shared across hgkit: the ``PyTree`` alias, float/other splits, finiteness, sizes, path names.

Example:
    >>> import jax.numpy as jnp
    >>> floats, rest = partition({"w": jnp.ones(2), "count": jnp.int32(3)})
    >>> floats["count"] is None, rest["w"] is None
    (True, True)
    >>> path_names({"opt": {"lr": 0.1}, "wd": 0.0})
    ['opt/lr', 'wd']
"""

from __future__ import annotations

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


def partition(tree: PyTree) -> tuple[PyTree, PyTree]:
    """Split a pytree into its float leaves (differentiated) and the rest (step counters: carried along)."""
    floats = tree_map(lambda x: x if is_float(x) else None, tree)
    rest = tree_map(lambda x: None if is_float(x) else x, tree)
    return floats, rest


def combine(floats: PyTree, rest: PyTree) -> PyTree:
    """The inverse of :func:`partition`."""
    return tree_map(lambda a, b: b if a is None else a, floats, rest, is_leaf=lambda x: x is None)


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


# ----- parameters with static leaves (Equinox modules, flax nnx modules, ...) -----------------------------------


def is_array(x) -> bool:
    """Whether ``x`` is an array leaf (concrete, traced or abstract): what training carries and differentiates."""
    return isinstance(x, jax.Array | np.ndarray | np.generic | jax.ShapeDtypeStruct)


@jax.tree_util.register_pytree_with_keys_class
class ArrayView:
    """A model object seen through its arrays: the array leaves are its pytree children, every other leaf (an
    activation function, a Python int, a string) is static, part of the pytree's structure.

    This is how a model whose leaves are not all arrays (an ``equinox.nn.MLP`` holds its activation functions) is
    trained, differentiated, vmapped, checkpointed and given optimizer state: JAX and the optimizer see only the
    arrays. ``view.tree`` is the model itself; the view also passes attribute access and calls on to it, so
    ``state.params(x)`` and ``state.params.layers`` work as on the model. Static leaves must be hashable (they are
    compared and hashed as part of the structure, e.g. in jit's cache).

    Which leaves are arrays is decided once, when the view is made from the model; JAX's own rebuilding of the
    pytree (with tracers or placeholders in the array slots) keeps that decision.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> view = ArrayView({"w": jnp.ones(2), "act": jnp.tanh, "depth": 3})
        >>> [leaf.shape for leaf in jax.tree_util.tree_leaves(view)]  # the arrays only
        [(2,)]
        >>> doubled = jax.tree_util.tree_map(lambda x: 2 * x, view)
        >>> doubled.tree["w"].tolist(), doubled.tree["act"] is jnp.tanh, doubled["depth"]
        ([2.0, 2.0], True, 3)
    """

    __slots__ = ("_aux", "_children", "_tree")

    def __init__(self, tree):
        # None is kept as a position (an absent bias, or an array slot a tree_map emptied), so that the structure
        # is the same whatever the arrays were mapped to.
        with_path, treedef = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: x is None)
        slots = [i for i, (_, x) in enumerate(with_path) if is_array(x) or x is None]
        keys = tuple(jax.tree_util.keystr(with_path[i][0]) for i in slots)
        static = tuple((i, x) for i, (_, x) in enumerate(with_path) if i not in set(slots))
        self._aux = (treedef, static, keys)
        self._children = [with_path[i][1] for i in slots]
        self._tree = tree

    @property
    def tree(self):
        """The model object, rebuilt from the arrays and the static leaves."""
        if self._tree is None:
            treedef, static, _ = self._aux
            fixed, it = dict(static), iter(self._children)
            leaves = [fixed[i] if i in fixed else next(it) for i in range(treedef.num_leaves)]
            self._tree = jax.tree_util.tree_unflatten(treedef, leaves)
        return self._tree

    def tree_flatten_with_keys(self):
        return [(jax.tree_util.DictKey(k), x) for k, x in zip(self._aux[2], self._children, strict=True)], self._aux

    @classmethod
    def tree_unflatten(cls, aux, children):
        view = object.__new__(cls)
        view._aux, view._children, view._tree = aux, list(children), None
        return view

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.tree, name)

    def __getitem__(self, key):
        return self.tree[key]

    def __call__(self, *args, **kwargs):
        return self.tree(*args, **kwargs)

    def __repr__(self):
        return f"ArrayView({self.tree!r})"


def has_static_leaves(tree) -> bool:
    """Whether some leaf of ``tree`` is not an array (so it needs an :class:`ArrayView` to be trained)."""
    return not all(is_array(x) for x in jax.tree_util.tree_leaves(tree))


def as_view(tree):
    """``tree`` itself if all its leaves are arrays (or it is a view already), else its :class:`ArrayView`.

    Refuses, naming the path, a non-array leaf that cannot be static (an unhashable one).
    """
    if isinstance(tree, ArrayView) or not has_static_leaves(tree):
        return tree
    for path, x in jax.tree_util.tree_leaves_with_path(tree):
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
    return ArrayView(tree)


def unview(tree):
    """The object an :class:`ArrayView` shows (anything else unchanged)."""
    return tree.tree if isinstance(tree, ArrayView) else tree
