"""The loop's compiled hyper-iteration: hypergradient, optax update, projection and the history row, in one call.

Used by :mod:`hgkit.outer`. :class:`StepSpec` holds everything static about the call (the problem, the method, the
optax transformation, the metrics and constraints; hashed by identity), so a new value of λ never recompiles.
:func:`hyper_step` is one run's iteration, :func:`population_step` every member's at once (``vmap``).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ._tree import PyTree, all_finite
from .constraints import Constraint
from .history import StepReport, vector_stats
from .hypergrad import Failure, HypergradientMethod, OnlineMethod, hypergradient_result, meta_hypergradient_result
from .hypergrad._inputs import _reraise
from .problem import BilevelProblem, initial_state, precision


@dataclasses.dataclass(frozen=True)
class StepSpec:
    """Everything static about the compiled step (hashable: problem, optax functions and constraints by identity)."""

    problem: BilevelProblem
    method: HypergradientMethod
    tx: optax.GradientTransformation
    metrics: tuple[tuple[str, Callable], ...]
    constraints: tuple[Constraint | None, ...]
    treedef: Any
    warm: bool  # restart each inner run from the last one's final state
    restart_above: float | None = None  # online methods: the guard of HyperOptimizer(restart_above=...)
    tasks: Callable | None = None  # meta-learning: key -> (support sets, query sets) of one meta-batch
    mesh: Any = None  # meta-learning: the tasks are split over this mesh's first axis

    @property
    def online(self) -> bool:
        """Whether the method goes on within one training run (the loop then never restarts training)."""
        return isinstance(self.method, OnlineMethod)

    def leafwise(self, what: str, tree: PyTree) -> PyTree:
        """Each constraint's ``what`` (``"value"``, ``"free"``, ``"project"``) on its leaf (others unchanged)."""
        leaves = self.treedef.flatten_up_to(tree)
        out = [x if c is None else getattr(c, what)(x) for c, x in zip(self.constraints, leaves, strict=True)]
        return jax.tree_util.tree_unflatten(self.treedef, out)


def hyper_step(spec: StepSpec, T, train_fn, u, opt_state, carry, iteration, key, train_batch, val_data):
    """One hyper-iteration (pure; compiled below): ``(u, opt_state, carry, state, λ used, StepReport)``."""
    train_data = train_fn if train_fn is not None else train_batch
    hp, c_vjp = jax.vjp(lambda v: spec.leafwise("value", v), u)
    if spec.online:
        carry, res = spec.method.step(spec.problem, carry, hp, train_data, val_data)
        out = _Outcome.of(spec, res, hp)
    elif spec.tasks is not None:
        out = _tasks_outcome(spec, T, hp, key, iteration)
    else:
        k = None if key is None else jax.random.fold_in(key, iteration)
        init_state = carry if spec.warm else None
        res = hypergradient_result(
            spec.problem, hp, T, train_data, val_data, method=spec.method, key=k, init_state=init_state
        )
        carry = res.state if spec.warm else carry
        out = _Outcome.of(spec, res, hp)
    (g_u,) = c_vjp(out.grads)
    updates, new_opt_state = spec.tx.update(g_u, opt_state, u)
    new_u = spec.leafwise("project", optax.apply_updates(u, updates))
    grad_norm = optax.tree.norm(out.grads)
    failure, restarted = out.failure, jnp.asarray(False)
    if spec.online and spec.restart_above is not None:
        # The guard: a derivative that blew up (non-finite, or above the bound) while training is fine changes
        # nothing in λ, and the method forgets the derivative's past; the run goes on from the same weights.
        blown = (failure == Failure.DERIVATIVE_NONFINITE) | (failure == Failure.HYPERGRADIENT_NONFINITE)
        restarted = blown | ((failure == Failure.NONE) & ~(grad_norm <= spec.restart_above))
        new_u, new_opt_state = _select(restarted, (u, opt_state), (new_u, new_opt_state))
        carry = _select(restarted, spec.method.restart(carry), carry)
        failure = jnp.where(restarted, jnp.int32(Failure.NONE), failure)
    update_failed = (failure == Failure.NONE) & ~all_finite(new_u)
    report = StepReport(
        values=tuple(out.values[k] for k in spec.problem.objective_names),
        train_loss=out.train_loss,
        grad_norm=grad_norm,
        grad_norms=tuple(jnp.linalg.norm(jnp.ravel(g)) for g in jax.tree_util.tree_leaves(out.grads)),
        hp=tuple(x if x.size == 1 else vector_stats(x) for x in jax.tree_util.tree_leaves(hp)),
        metrics=out.metrics,
        failure=jnp.where(update_failed, jnp.int32(Failure.UPDATE_NONFINITE), failure),
        failed_at=out.failed_at,
        solve_residual=out.solve_residual,
        restarted=restarted,
        failed_task=out.failed_task,
    )
    return new_u, new_opt_state, carry, out.state, hp, report


class _Outcome(NamedTuple):
    """What a hyper-iteration's hypergradient computation hands to the update and the history."""

    values: dict  # {objective name: value}
    grads: PyTree
    train_loss: Any  # the last inner step's training loss (the mean over the tasks of a meta-batch)
    metrics: tuple
    state: Any  # the trained state (every task's, with a leading axis, for a meta-batch)
    failure: Any
    failed_at: Any
    solve_residual: Any
    failed_task: Any = -1

    @classmethod
    def of(cls, spec: StepSpec, res, hp) -> _Outcome:
        """One training run's outcome (a :class:`~hgkit.HypergradientResult`)."""
        return cls(
            values=res.value if isinstance(res.value, dict) else {"val": res.value},
            grads=res.grads,
            train_loss=res.train_losses[-1],
            metrics=tuple(_metric(name, fn, res.state.params, hp) for name, fn in spec.metrics),
            state=res.state,
            failure=res.failure,
            failed_at=res.failed_at,
            solve_residual=res.solve_residual,
        )


def _tasks_outcome(spec: StepSpec, T, hp, key, iteration) -> _Outcome:
    """A meta-batch's outcome: iteration ``i`` draws its tasks with one half of ``fold_in(key, i)`` and starts
    their weights with the other (:func:`~hgkit.meta_hypergradient_result`); metrics are averaged over tasks,
    each called on its task's trained weights and query set."""
    k_tasks, k_init = jax.random.split(jax.random.fold_in(key, iteration))
    train, val = spec.tasks(k_tasks)
    if spec.mesh is not None:
        train, val = shard_tasks((train, val), spec.mesh)
    meta = meta_hypergradient_result(spec.problem, hp, T, train, val, method=spec.method, key=k_init)
    tasks = meta.tasks

    def per_task(name, fn):
        return jnp.mean(jax.vmap(lambda s, v: _metric(name, fn, s.params, hp, v))(tasks.state, val), axis=0)

    residual = tasks.solve_residual
    return _Outcome(
        values=meta.value if isinstance(meta.value, dict) else {"val": meta.value},
        grads=meta.grads,
        train_loss=jnp.mean(tasks.train_losses[:, -1]),
        metrics=tuple(per_task(name, fn) for name, fn in spec.metrics),
        state=tasks.state,
        failure=meta.failure,
        failed_at=meta.failed_at,
        solve_residual=None if residual is None else jnp.max(residual),
        failed_task=meta.failed_task,
    )


def shard_tasks(tree: PyTree, mesh) -> PyTree:
    """``tree`` with its leading (task) axis split over the first axis of ``mesh`` (a sharding constraint).

    The mesh's axes are taken as automatic ones: the compiler places everything else (the inner runs' scans and
    their vmap do not take explicitly sharded axes)."""
    auto = (jax.sharding.AxisType.Auto,) * len(mesh.axis_names)
    mesh = jax.sharding.Mesh(mesh.devices, mesh.axis_names, axis_types=auto)
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(mesh.axis_names[0]))
    return jax.tree_util.tree_map(lambda x: jax.lax.with_sharding_constraint(x, sharding), tree)


def _select(which: jax.Array, yes: PyTree, no: PyTree) -> PyTree:
    """``yes`` where the scalar ``which`` is true, else ``no`` (leaf by leaf: PRNG keys included)."""
    return jax.tree_util.tree_map(lambda a, b: _where(which[None], a[None], b[None])[0], yes, no)


def _metric(name: str, fn: Callable, params, hp, *query):
    """``fn(params, hp)`` (``fn(params, hp, query)`` with tasks), an error in it re-raised naming the metric (it
    happens while the step is traced)."""
    try:
        return jnp.asarray(fn(params, hp, *query))
    except Exception as e:
        call = "(params, hparams, query)" if query else "(params, hparams)"
        _reraise(e, f"metrics[{name!r}]{call} failed: {type(e).__name__}: {e}")


def population_step(spec: StepSpec, T, train_fn, u, opt_state, carry, iteration, keys, train_batch, val_data, alive):
    """Every member's hyper-iteration at once: ``vmap`` of :func:`hyper_step` over the variables, the optax state,
    the carry and the keys (the data are shared). A member that fails now, or has failed before (``alive``
    False), keeps its variables, so that the others go on; its report's failure says why."""
    step = functools.partial(hyper_step, spec, T, train_fn)
    axes = (0, 0, 0, None, 0, None, None)
    new_u, new_opt, new_carry, state, hp, report = jax.vmap(step, in_axes=axes)(
        u, opt_state, carry, iteration, keys, train_batch, val_data
    )
    ok = alive & (report.failure == Failure.NONE)

    def keep(new, old):
        return jax.tree_util.tree_map(lambda a, b: _where(ok, a, b), new, old)

    return keep(new_u, u), keep(new_opt, opt_state), keep(new_carry, carry), state, hp, report


def _where(ok, a, b):
    """``a`` for the members where ``ok``, else ``b`` (leading axis: the member); PRNG keys included."""
    if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
        data = _where(ok, jax.random.key_data(a), jax.random.key_data(b))
        return jax.random.wrap_key_data(data, impl=jax.random.key_impl(a))
    return jnp.where(jnp.reshape(ok, ok.shape + (1,) * (a.ndim - 1)), a, b)


def initial_carry(spec: StepSpec, u, key):
    """What runs on across hyper-iterations: an online method's carry, the training state for warm restarts,
    or nothing."""
    hp = spec.leafwise("value", u)
    if spec.online:
        return spec.method.init(spec.problem, hp, key=key)
    return initial_state(spec.problem, hp, key) if spec.warm else None


class CompiledSteps(NamedTuple):
    """The loop's compiled functions, held by one :class:`~hgkit.HyperOptimizer` (:func:`compiled_steps`)."""

    step: Callable  # (spec, T, train_fn, u, opt_state, carry, iteration, key, train_batch, val_data)
    population: Callable  # the same, and ``alive``, for every member at once
    initial_carry: Callable  # (spec, u, key)


def compiled_steps() -> CompiledSteps:
    """New jitted copies of :func:`hyper_step`, :func:`population_step` and :func:`initial_carry`.

    Why copies, one set per optimizer: a trace embeds as constants the arrays the user's functions close over (a
    ``train_data`` that indexes a training set, a metric over a test set), and jit's caches hold the compiled
    program with them, keyed weakly by the jitted function but strongly by its static arguments. Module-level jits
    kept every run's programs, and so its data, for the life of the process (a few hundred MB per run of an
    experiment over full MNIST); these are freed with the optimizer that holds them. The same optimizer run again
    reuses its compilations."""
    return CompiledSteps(
        jax.jit(_new(hyper_step), static_argnums=(0, 1, 2)),
        jax.jit(_new(population_step), static_argnums=(0, 1, 2)),
        jax.jit(_new(initial_carry), static_argnums=0),
    )


def _new(fn: Callable) -> Callable:
    """A new function object that calls ``fn``, under ``fn``'s name (the name of the compiled program)."""

    @functools.wraps(fn)
    def call(*args):
        return fn(*args)

    return call


def per_member(P: int | None, fn, in_axes=0):
    """``fn`` itself for a single run, its ``vmap`` over the members of a population."""
    return fn if P is None else jax.vmap(fn, in_axes=in_axes)


def templates(steps: CompiledSteps, spec: StepSpec, P, T, train_fn, u0, keys, train_batch, val_data) -> dict:
    """The pytree structures a checkpoint's leaves are put back into (they are not stored), and the abstract
    :class:`~hgkit.history.StepReport` of one hyper-iteration (``"report"``).

    Found by tracing the step on shapes alone, which also checks the data and the problem before anything runs.
    """
    carry_axes = (0, None if keys is None else 0)
    with precision(spec.problem):  # as the calls will run: their traces are then reused
        carry = jax.eval_shape(per_member(P, functools.partial(steps.initial_carry, spec), carry_axes), u0, keys)
        opt_state = jax.eval_shape(per_member(P, spec.tx.init), u0)
        args = (u0, opt_state, carry, jnp.int32(0), keys, train_batch, val_data)
        if P is None:
            out = jax.eval_shape(functools.partial(steps.step, spec, T, train_fn), *args)
        else:
            out = jax.eval_shape(functools.partial(steps.population, spec, T, train_fn), *args, np.ones(P, bool))
    tree = jax.tree_util.tree_structure
    trees = dict(u=spec.treedef, opt_state=tree(opt_state), carry=tree(carry), state=tree(out[3]), last_hp=spec.treedef)
    return {**trees, "report": out[5]}  # the report's shapes: what the metrics return
