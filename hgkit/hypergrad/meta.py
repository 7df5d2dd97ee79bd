"""Learning across tasks: the mean hypergradient over a meta-batch of tasks, in one compiled, vmapped call.

Meta-learning is the bilevel problem hgkit already solves, with λ shared by M tasks (Franceschi, Frasconi, Salzo,
Grazzi and Pontil, "Bilevel Programming for Hyperparameter Optimization and Meta-Learning", ICML 2018). Task j
trains its own weights for T steps on its support set ``train_data[j]`` from ``init(λ, k_j)``, and is read out on
its query set ``val_data[j]``; the meta-objective is the mean

.. math::

    f(λ) = \\frac1M \\sum_{j=1}^{M} E_j\\big(w_{j,T}(λ), λ\\big), \\qquad
    \\nabla f(λ) = \\frac1M \\sum_{j=1}^{M} \\nabla_λ E_j\\big(w_{j,T}(λ), λ\\big),

each term computed by the method (reverse mode, forward mode, implicit) exactly as :func:`hgkit.hypergradient`
computes it for one task, with the key ``k_j = jax.random.split(key, M)[j]``.

No special class is needed for the usual learners; the bilevel problem says them:

* **MAML**: ``init(hparams, key)`` returns ``hparams["theta"]``, the shared initial weights.
* **hyper-representation**: ``train_loss`` embeds its inputs with ``hparams["repr"]`` and trains a linear head that
  starts at zero (:func:`linear_head`).
* **iMAML**: :class:`~hgkit.Implicit` on an inner loss with the proximal term ``(λ_reg/2)·‖w − θ‖²``.

Example, MAML on two one-dimensional regression tasks (the mean of two ``hg.hypergradient`` calls):
    >>> import jax, jax.numpy as jnp, hgkit as hg
    >>> problem = hg.BilevelProblem(
    ...     init=lambda hp, key: hp["theta"],
    ...     train_loss=lambda w, hp, b: jnp.mean((w * b["x"] - b["y"]) ** 2),
    ...     val_loss=lambda w, hp, b: jnp.mean((w * b["x"] - b["y"]) ** 2),
    ...     optimizer=hg.optim.sgd(0.1))
    >>> support = {"x": jnp.array([[1.0, 2.0], [1.0, -1.0]]), "y": jnp.array([[2.0, 4.0], [-3.0, 3.0]])}
    >>> query = {"x": jnp.array([[3.0], [2.0]]), "y": jnp.array([[6.0], [-6.0]])}
    >>> hp = {"theta": jnp.asarray(0.5)}
    >>> value, grads = hg.meta_hypergradient(problem, hp, 5, support, query)
    >>> one = [hg.hypergradient(problem, hp, 5, jax.tree.map(lambda x: x[j], support),
    ...                         jax.tree.map(lambda x: x[j], query))[1]["theta"] for j in (0, 1)]
    >>> bool(jnp.allclose(grads["theta"], (one[0] + one[1]) / 2))
    True
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .._tree import PyTree, is_traced, member
from ..hparams import check_hparams
from ..problem import BilevelProblem, precision
from ._inputs import check_inputs
from .base import HypergradientMethod, HypergradientResult
from .entry import check_method, hypergradient_result
from .failures import raise_if_diverged

__all__ = ["MetaHypergradientResult", "linear_head", "meta_hypergradient", "meta_hypergradient_result", "task_count"]


class MetaHypergradientResult(NamedTuple):
    """The mean hypergradient over a meta-batch, and every task's own result (all arrays: jit and vmap it).

    Attributes:
        value: the mean outer objective over the M tasks (a dict of means for several objectives).
        grads: the mean hypergradient, with the structure and dtypes of ``hparams``.
        failure: the :class:`~hgkit.Failure` code of the first task that failed (lowest index), ``0`` if none.
        failed_at: the inner step at which that task failed, or -1.
        failed_task: the index of that task in the meta-batch, or -1.
        tasks: each task's :class:`~hgkit.HypergradientResult`, every leaf with a leading axis M (its value,
            hypergradient, trained state, training losses and failure).
    """

    value: Any
    grads: PyTree
    failure: jax.Array
    failed_at: jax.Array
    failed_task: jax.Array
    tasks: HypergradientResult


def task_count(train_data: PyTree, val_data: PyTree) -> int:
    """M, the leading axis shared by every leaf of ``train_data`` and ``val_data`` (from shapes alone).

    Raises:
        TypeError: ``train_data`` is a callable (a meta-batch holds one support batch per task) or has no arrays.
        ValueError: a leaf has no leading axis, the leading axes disagree, or M is 0 (an empty meta-batch).
    """
    if callable(train_data):
        raise TypeError(
            "train_data must be the tasks' support sets, every leaf with a leading task axis M; got a callable "
            f"({train_data!r}): a meta-batch holds one training batch per task"
        )
    sizes = {}
    for what, tree in (("train_data", train_data), ("val_data", val_data)):
        for path, x in jax.tree_util.tree_leaves_with_path(tree):
            shape = np.shape(x)
            name = f"{what}{jax.tree_util.keystr(path)}"
            if not shape:
                raise ValueError(f"{name} is a scalar; every leaf of {what} needs a leading task axis M")
            sizes[name] = shape[0]
    if not any(name.startswith("train_data") for name in sizes):
        raise TypeError("train_data has no arrays: it must hold each task's support set, with a leading task axis")
    if len(set(sizes.values())) > 1:
        listed = ", ".join(f"{name}: {m}" for name, m in sizes.items())
        raise ValueError(f"the leading (task) axes of train_data and val_data must agree; got {listed}")
    M = next(iter(sizes.values()))
    if M == 0:
        raise ValueError("an empty meta-batch: train_data and val_data have a task axis of size 0")
    return int(M)


def meta_hypergradient_result(
    problem: BilevelProblem,
    hparams: PyTree,
    T: int,
    train_data: PyTree,
    val_data: PyTree,
    *,
    method: HypergradientMethod | None = None,
    key: Any = None,
) -> MetaHypergradientResult:
    """The mean hypergradient of M tasks as a pure function (jit, vmap and shard it); failures reported as data.

    Same arguments as :func:`meta_hypergradient`. Shards as its inputs do: with ``train_data`` and ``val_data``
    placed on a mesh along the task axis (``jax.device_put(x, NamedSharding(mesh, P("tasks")))``), each device
    trains its share of the tasks and the means are one all-reduce.
    """
    M = task_count(train_data, val_data)
    method = check_method(method)
    keys = None if key is None else jax.random.split(key, M)

    def one(train, val, k):
        return hypergradient_result(problem, hparams, T, train, val, method=method, key=k)

    tasks = jax.vmap(one, in_axes=(0, 0, None if keys is None else 0))(train_data, val_data, keys)
    failed = tasks.failure != 0
    first = jnp.argmax(failed)  # the lowest failing index (0 when none failed; masked below)
    anyone = jnp.any(failed)
    return MetaHypergradientResult(
        value=jax.tree_util.tree_map(lambda v: jnp.mean(v, axis=0), tasks.value),
        grads=jax.tree_util.tree_map(lambda g, h: jnp.mean(g, axis=0).astype(h.dtype), tasks.grads, hparams),
        failure=jnp.where(anyone, tasks.failure[first], 0).astype(jnp.int32),
        failed_at=jnp.where(anyone, tasks.failed_at[first], -1).astype(jnp.int32),
        failed_task=jnp.where(anyone, first, -1).astype(jnp.int32),
        tasks=tasks,
    )


@functools.partial(jax.jit, static_argnames=("problem", "T", "method"))
def _compiled(problem, hparams, T, train_data, val_data, method, key):
    return meta_hypergradient_result(problem, hparams, T, train_data, val_data, method=method, key=key)


def meta_hypergradient(
    problem: BilevelProblem,
    hparams: PyTree,
    T: int,
    train_data: PyTree,
    val_data: PyTree,
    *,
    method: HypergradientMethod | None = None,
    key: Any = None,
) -> tuple[Any, PyTree]:
    """``(f(λ), ∇f(λ))`` for the mean outer objective of M tasks, each trained T steps on its own support set.

    Args:
        problem: the :class:`~hgkit.problem.BilevelProblem` of one task.
        hparams: λ, shared by every task.
        T: the inner training steps of each task.
        train_data: the tasks' support sets: every leaf has a leading axis M; task j trains on ``train_data[j]``
            (one batch, used at every step).
        val_data: the tasks' query sets, with the same leading axis M.
        method: ``hg.Reverse()`` (default, with any store and truncation), ``hg.Forward()``, ``hg.Implicit()``.
        key: split into M keys; task j's weights start from ``init(hparams, jax.random.split(key, M)[j])``.

    Equal to the mean of M separate :func:`hgkit.hypergradient` calls, in one compiled, vmapped call (compiled
    once per problem, method, T and shapes). Checks its inputs on the host and raises
    :class:`~hgkit.DivergenceError` naming the first task that failed and its inner step; inside ``jit`` use
    :func:`meta_hypergradient_result`.
    """
    if is_traced((hparams, train_data, val_data, key)):
        raise TypeError(
            "hg.meta_hypergradient was called inside a JAX transformation (jax.jit, vmap, grad, ...): it checks its "
            "inputs and raises on divergence on the host. Inside jit or vmap use hg.meta_hypergradient_result, "
            "which reports a failure and the failing task as data."
        )
    check_hparams(hparams)
    method = check_method(method)
    M = task_count(train_data, val_data)
    check_task_inputs(problem, hparams, T, train_data, val_data, key, M)
    with precision(problem):
        result = _compiled(problem, hparams, T, train_data, val_data, method, key)
    raise_if_task_failed(result, T, hparams)
    return result.value, result.grads


def check_task_inputs(problem, hparams, T, train_data, val_data, key, M: int) -> None:
    """The checks of :func:`hgkit.hypergradient` on one task's share of the meta-batch (shapes alone)."""
    k = None if key is None else jax.eval_shape(lambda k: jax.random.split(k, M)[0], key)
    check_inputs(problem, hparams, T, _one_task_shape(train_data), _one_task_shape(val_data), k)


def _one_task_shape(tree: PyTree) -> PyTree:
    return jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(np.shape(x)[1:], jnp.result_type(x)), tree)


def raise_if_task_failed(result: MetaHypergradientResult, T: int, hparams: PyTree) -> None:
    """Raise :class:`~hgkit.DivergenceError` naming the first failing task of ``result`` (host values)."""
    j = int(result.failed_task)
    if j < 0:
        return
    M = int(np.shape(result.tasks.failure)[0])
    raise_if_diverged(member(result.tasks, j), T, hparams, where=f"task {j} of the meta-batch of {M}: ")


def linear_head(features: int, ways: int, dtype=jnp.float32) -> dict[str, jax.Array]:
    """A linear classifier ``{"w": (features, ways), "b": (ways,)}`` at zero: the inner weights of a
    hyper-representation, which every task starts from the same point (so ``init`` needs no key).

    Zero is the natural start: the first step's logits are all equal, and T steps of gradient descent on the
    support set's cross-entropy then depend on the representation alone.

    Example:
        >>> head = linear_head(64, 5)
        >>> head["w"].shape, head["b"].shape, float(abs(head["w"]).sum())
        ((64, 5), (5,), 0.0)
    """
    return {"w": jnp.zeros((features, ways), dtype), "b": jnp.zeros((ways,), dtype)}
