"""The hyperparameter optimization loop: descend the validation objective in λ with any optax optimizer.

The optimizer works on ``u`` with ``λ = c(u)`` (``c`` the identity unless a constraint reparameterizes) and
projects with ``P`` (identity unless a constraint projects). Hyper-iteration ``i``::

    λ_i = c(u_i)
    f_i, g_i = f(λ_i), df/dλ(λ_i)                  (T inner steps from init, or from the last weights if
                                                    warm_restart; the method computes g_i)
    u_{i+1} = P(u_i + optax_update(c'(u_i)ᵀ g_i))

With ``method=hg.RealTime(Δ)`` there is a single training run of T steps: chunk ``i`` runs Δ more steps under
``λ_i``, the weights and tangents are carried on, and ``g_i`` is the real-time hypergradient at its end.

Each hyper-iteration is one compiled call (hypergradient, optax update, projection and metrics together, compiled
once per run settings: new values of λ never recompile) and one transfer to the host of the history row.

The history (a DataFrame, one row per hyper-iteration) reports λ_i, the constrained values used in iteration i,
``f_i`` (``val_loss``), the last inner training loss, ``grad_norm = ‖g_i‖`` (in λ, not u) and its per-hyperparameter
parts, and the metrics at the trained weights; ``history.attrs`` says which column is which. The inner run of
iteration i draws its initial weights with ``jax.random.fold_in(key, i)``, so the same key gives the same history
bit for bit. Checkpoints are one ``.npz`` file replaced atomically (format in :mod:`hgkit._checkpoint`).

A population (``run(..., population=P)``) runs P copies of this loop side by side, one ``vmap`` of the compiled
step: member ``p`` starts from ``λ[p]`` (every leaf stacked on a leading axis) with the key
``jax.random.split(key, P)[p]``, and its rows carry ``member = p``.

Example:
    >>> import jax.numpy as jnp, optax, hgkit as hg
    >>> problem = hg.BilevelProblem(
    ...     init=lambda hp, key: jnp.zeros(2),
    ...     train_loss=lambda w, hp, b: jnp.sum((w - b) ** 2) + hp["wd"] * jnp.sum(w**2),
    ...     val_loss=lambda w, hp, b: jnp.sum((w - 0.5 * b) ** 2),
    ...     optimizer=hg.optim.sgd(0.1))
    >>> opt = hg.HyperOptimizer(problem, hyper_optimizer=optax.sgd(0.5),
    ...                         constraints={"wd": hg.constraints.positive()})
    >>> result = opt.run({"wd": jnp.asarray(0.1)}, hyper_iterations=20, T=30,
    ...                  train_data=jnp.ones(2), val_data=jnp.ones(2), progress=False)
    >>> list(result.history.columns[:6])
    ['iteration', 'inner_steps', 'wall_time', 'val_loss', 'train_loss', 'grad_norm']
    >>> bool(result.history.val_loss.iloc[-1] < 0.1 * result.history.val_loss.iloc[0])
    True
    >>> round(float(result.hparams["wd"]), 1)   # the best weight decay here is 1: w = b / (1 + wd)
    1.0
"""

from __future__ import annotations

import dataclasses
import functools
import signal
import threading
import time
import warnings
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pandas as pd
from tqdm.auto import tqdm

from . import constraints as C
from ._checkpoint import load_checkpoint, save_checkpoint
from ._history import as_callbacks, columns, named, on_record, to_record
from .hparams import check_hparams
from .hypergrad import DivergenceError, RealTime, Reverse, hypergradient_result
from .hypergrad._common import all_finite, path_name, positive_int, scalar_summary
from .problem import BilevelProblem, initial_state

__all__ = ["HyperOptimizer", "HyperOptimizationResult", "HyperDivergenceError"]


class HyperOptimizationResult(NamedTuple):
    """What :meth:`HyperOptimizer.run` returns (see the module docstring of the loop's contract)."""

    hparams: Any  # the tuned hyperparameters (constrained values), the structure of the starting ones
    history: pd.DataFrame  # one row per hyper-iteration (per chunk in real time); column names in .attrs
    snapshots: dict  # {iteration: {hp name: np.ndarray}}: the values used at those iterations
    state: Any  # the final TrainState of the last inner run
    stopped: str | None  # None (ran to the end), "callback", "interrupted", or "diverged" (on the error's .result)

    def best_member(self, column: str | None = None) -> int:
        """In a population, the member whose last recorded ``column`` (the first objective by default) is lowest.

        Its tuned values are ``jax.tree.map(lambda x: x[m], result.hparams)``.
        """
        if "member" not in self.history:
            raise ValueError("best_member is for populations (HyperOptimizer.run(..., population=P))")
        column = self.history.attrs["objectives"][0] if column is None else column
        if column not in self.history:
            raise ValueError(
                f"column must be one of the history's columns {list(self.history.columns)}; got {column!r}"
            )
        last = self.history.groupby("member")[column].last()
        return int(last.idxmin())


class HyperDivergenceError(DivergenceError):
    """An inner run or its hypergradient went non-finite during the loop.

    Attributes: ``iteration`` (0-based hyper-iteration), ``step`` (inner step, or None), ``hparams`` (the values
    that iteration used, the last finite ones), ``result`` (a :class:`HyperOptimizationResult` up to the
    previous iteration).
    """

    def __init__(self, message, iteration, step, hparams, result):
        super().__init__(message, step)
        self.iteration, self.hparams, self.result = iteration, hparams, result


@dataclasses.dataclass(frozen=True)
class _Spec:
    """Everything static about the compiled step (hashable: problem, optax functions and constraints by identity)."""

    problem: BilevelProblem
    method: Any
    tx: optax.GradientTransformation
    metrics: tuple
    constraints: tuple
    treedef: Any
    warm: bool

    @property
    def realtime(self) -> bool:
        return isinstance(self.method, RealTime)

    def leafwise(self, what: str, tree):
        leaves = self.treedef.flatten_up_to(tree)
        out = [x if c is None else getattr(c, what)(x) for c, x in zip(self.constraints, leaves, strict=True)]
        return jax.tree_util.tree_unflatten(self.treedef, out)


def _step(spec: _Spec, T, train_fn, u, opt_state, carry, iteration, key, train_batch, val_data):
    """One hyper-iteration: hypergradient, optax update, projection, and the history row (pure; compiled below)."""
    train_data = train_fn if train_fn is not None else train_batch
    hp, c_vjp = jax.vjp(lambda v: spec.leafwise("value", v), u)
    if spec.realtime:
        carry, res = spec.method.step(spec.problem, carry, hp, train_data, val_data)
        state = carry.state
    else:
        k = None if key is None else jax.random.fold_in(key, iteration)
        res = hypergradient_result(
            spec.problem, hp, T, train_data, val_data, spec.method, k, carry if spec.warm else None
        )
        state, carry = res.state, (res.state if spec.warm else carry)
    (g_u,) = c_vjp(res.grads)
    updates, opt_state = spec.tx.update(g_u, opt_state, u)
    new_u = spec.leafwise("project", optax.apply_updates(u, updates))
    values = res.value if isinstance(res.value, Mapping) else {"val": res.value}
    leaves, grads = jax.tree_util.tree_leaves(hp), jax.tree_util.tree_leaves(res.grads)
    row = dict(
        values=[values[k] for k in spec.problem.objective_names],
        train_loss=res.train_losses[-1],
        grad_norm=optax.tree.norm(res.grads),
        grad_norms=[jnp.linalg.norm(jnp.ravel(g)) for g in grads],
        hp=[x if x.size == 1 else jnp.stack([x.mean(), x.min(), x.max(), jnp.linalg.norm(x.ravel())]) for x in leaves],
        metrics=[fn(state.params, hp) for _, fn in spec.metrics],
        diverged_at=res.diverged_at,
        grad_diverged_at=res.grad_diverged_at,
        finite=all_finite((values, res.grads)),
        update_ok=all_finite(new_u),
    )
    return new_u, opt_state, carry, state, hp, row


_hyper_step = jax.jit(_step, static_argnames=("spec", "T", "train_fn"))


def _ok(row):
    """Whether a hyper-iteration went through: finite training, derivative, objective and update."""
    return (row["diverged_at"] < 0) & (row["grad_diverged_at"] < 0) & row["finite"] & row["update_ok"]


@functools.partial(jax.jit, static_argnames=("spec", "T", "train_fn"))
def _population_step(spec: _Spec, T, train_fn, u, opt_state, carry, iteration, keys, train_batch, val_data, alive):
    """The hyper-iteration of every member of a population at once: ``vmap`` of the step over the variables, the
    optax state, the carry and the keys (the data are shared). A member that fails now, or has failed before
    (``alive`` False), keeps its variables, so that the others go on."""
    step = functools.partial(_step, spec, T, train_fn)
    axes = (0, 0, 0, None, 0, None, None)
    new_u, new_opt, new_carry, state, hp, row = jax.vmap(step, in_axes=axes)(
        u, opt_state, carry, iteration, keys, train_batch, val_data
    )
    ok = alive & _ok(row)

    def keep(new, old):
        return jax.tree_util.tree_map(lambda a, b: _where(ok, a, b), new, old)

    return keep(new_u, u), keep(new_opt, opt_state), keep(new_carry, carry), state, hp, {**row, "ok": ok}


def _where(ok, a, b):
    """``a`` for the members where ``ok``, else ``b`` (leading axis: the member); PRNG keys included."""
    if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
        data = _where(ok, jax.random.key_data(a), jax.random.key_data(b))
        return jax.random.wrap_key_data(data, impl=jax.random.key_impl(a))
    return jnp.where(jnp.reshape(ok, ok.shape + (1,) * (a.ndim - 1)), a, b)


@functools.partial(jax.jit, static_argnames=("spec",))
def _initial_carry(spec: _Spec, u, key):
    """What runs on across hyper-iterations: the real-time carry, or the training state for warm restarts."""
    hp = spec.leafwise("value", u)
    if spec.realtime:
        return spec.method.init(spec.problem, hp, key)
    return initial_state(spec.problem, hp, key) if spec.warm else None


# One shared instance: optax transformations are compared by identity in the compiled step's cache key, so
# optimizers made with the default reuse each other's compilations.
_DEFAULT_HYPER_OPTIMIZER = optax.adam(1e-2)


class _Loop(NamedTuple):
    """The loop's state after a completed hyper-iteration; replaced as a whole, so an interrupt never splits it."""

    next: int  # the next hyper-iteration to run
    u: Any
    opt_state: Any
    carry: Any
    state: Any
    last_hp: Any  # the hyperparameters the last completed iteration used
    rows: tuple
    snapshots: dict
    elapsed: float  # wall time of earlier sessions (resumed runs)
    dropped: dict  # {member: why}: the population members that diverged (frozen since)


class HyperOptimizer:
    """Tunes the hyperparameters of a :class:`~hgkit.problem.BilevelProblem` by hypergradient descent.

    Args:
        problem: the bilevel problem.
        method: ``hg.Reverse()`` (default), ``hg.Forward()``, ``hg.RealTime(delta)``, or any object with a
            ``run(problem, hparams, T, train_data, val_data, key, init_state)`` like theirs.
        hyper_optimizer: an optax ``GradientTransformation`` on the (unconstrained) hyperparameters;
            ``optax.adam(1e-2)`` by default.
        constraints: ``{hp name: constraint}`` from :mod:`hgkit.constraints` (names as ``"lr"``, ``"group/lr"``,
            or a group prefix).
        metrics: ``{name: fn(params, hparams) -> scalar}`` evaluated (compiled) at each iteration's trained weights.
        warm_restart: start each inner run from the previous run's final training state instead of ``init``
            (the initial weights' dependence on λ is then ignored). Not used in real-time mode (never restarts).
    """

    def __init__(self, problem, method=None, hyper_optimizer=None, constraints=None, metrics=None, warm_restart=False):
        if not isinstance(problem, BilevelProblem):
            raise TypeError(f"problem must be an hg.BilevelProblem, got {type(problem).__name__}")
        method = Reverse() if method is None else method
        if not callable(getattr(method, "run", None)):
            raise TypeError(
                f"method must be hg.Reverse(), hg.Forward(), hg.RealTime(delta=...) or another hypergradient method "
                f"with a .run(...); got {method!r}"
            )
        tx = _DEFAULT_HYPER_OPTIMIZER if hyper_optimizer is None else hyper_optimizer
        if not isinstance(tx, optax.GradientTransformation):
            raise TypeError(
                "hyper_optimizer must be an optax GradientTransformation such as optax.adam(1e-2); "
                f"got {type(tx).__name__}"
            )
        metrics = {} if metrics is None else metrics
        if not isinstance(metrics, Mapping) or not all(callable(f) for f in metrics.values()):
            raise TypeError(f"metrics must be a mapping {{name: fn(params, hparams) -> scalar}}; got {metrics!r}")
        if constraints is not None and not isinstance(constraints, Mapping):
            raise TypeError(f"constraints must be a mapping {{hp name: constraint}}; got {type(constraints).__name__}")
        self.problem, self.method, self.hyper_optimizer = problem, method, tx
        self.constraints, self.metrics, self.warm_restart = constraints, dict(metrics), bool(warm_restart)

    def run(
        self,
        hparams,
        hyper_iterations: int | None = None,
        T: int | None = None,
        train_data=None,
        val_data=None,
        key=None,
        callbacks=(),
        progress: bool = True,
        checkpoint_dir=None,
        checkpoint_every: int = 10,
        snapshot_every: int | None = None,
        population: int | None = None,
    ) -> HyperOptimizationResult:
        """Run the loop; see the contract in the module docstring.

        ``hparams`` are the starting values (ignored, but checked, when resuming from ``checkpoint_dir``). With a
        restarting method, the inner run of iteration ``i`` initializes its weights with
        ``jax.random.fold_in(key, i)``. ``callbacks``: functions ``record -> bool | None`` or objects with
        ``on_start(info)``, ``on_record(record)``, ``on_end(result)``; True stops after that iteration.
        ``checkpoint_dir``: save every ``checkpoint_every`` iterations and on the way out; a later run with the
        same directory resumes. Ctrl-C ends the run after the hyper-iteration in flight, saves and returns
        ``stopped="interrupted"``.

        ``population=P`` tunes P settings together, in one compiled call per hyper-iteration (``vmap``): every
        leaf of ``hparams`` then has a leading axis of size P (member ``p``'s starting values are ``x[p]``),
        member ``p`` uses the key ``jax.random.split(key, P)[p]`` (so it runs exactly as a separate run with that
        key would), the history has a ``member`` column and one row per member and iteration, callbacks get
        every member's record, and the result's hyperparameters keep the leading axis
        (:meth:`HyperOptimizationResult.best_member` picks one). A member that diverges is frozen at its last
        finite values, reported with a warning and in ``history.attrs["dropped"]``, and the others go on; the
        run raises :class:`HyperDivergenceError` only when every member has diverged.
        """
        hyper_iterations, per_iteration = self._check(hparams, hyper_iterations, T, checkpoint_every, snapshot_every)
        P = _check_population(population, hparams)
        template = hparams if P is None else _member(hparams, 0)
        callbacks = as_callbacks(callbacks)
        spec = _Spec(
            self.problem,
            self.method,
            self.hyper_optimizer,
            tuple(self.metrics.items()),
            C.per_leaf(self.constraints, template),
            jax.tree_util.tree_structure(hparams),
            self.warm_restart and not isinstance(self.method, RealTime),
        )
        for p in range(P or 0):  # every member's starting values must be feasible
            try:
                C.per_leaf(self.constraints, _member(hparams, p))
            except ValueError as e:
                raise ValueError(f"population member {p}: {e}") from None
        info = _describe(spec, template, hyper_iterations)
        info["population"] = P
        leaves = [[n, list(np.shape(x)), str(x.dtype)] for n, x in named(info, hparams).items()]
        fingerprint = dict(hparams=leaves, method=info["method"], T=T, warm_restart=spec.warm)
        if P is not None:
            fingerprint["population"] = P
        train_fn, train_batch = (train_data, None) if callable(train_data) else (None, train_data)
        keys = key if P is None or key is None else jax.random.split(key, P)
        # Strong dtypes from the start: a weakly typed jnp.asarray(0.1) would come back strong from the first update
        # and recompile the step.
        strong = jax.tree_util.tree_map(lambda x: jnp.asarray(x, dtype=x.dtype), hparams)
        u0 = _per_member(P, lambda h: spec.leafwise("free", h))(strong)
        templates = _templates(spec, P, T, train_fn, u0, keys, train_batch, val_data)
        loaded = load_checkpoint(checkpoint_dir, fingerprint, templates)
        if loaded is None:  # a fresh start
            opt_state = _per_member(P, spec.tx.init)(u0)
            carry_axes = (0, None if keys is None else 0)
            carry = _per_member(P, functools.partial(_initial_carry, spec), carry_axes)(u0, keys)
            loop = _Loop(0, u0, opt_state, carry, None, None, (), {}, 0.0, {})
        else:
            loop = _Loop(**loaded)
        start, stopped, since_save = time.perf_counter(), None, 0

        def save():
            if checkpoint_dir is not None:
                now = loop._replace(elapsed=loop.elapsed + time.perf_counter() - start)
                save_checkpoint(checkpoint_dir, fingerprint, now._asdict())

        for cb in callbacks:
            getattr(cb, "on_start", lambda info: None)(dict(info))
        bar = tqdm(total=hyper_iterations, initial=loop.next, disable=not progress, desc="hyper-iterations")
        ctrl_c = _DeferredInterrupt()
        try:
            with ctrl_c:
                while loop.next < hyper_iterations and stopped is None and not ctrl_c.pending:
                    i = loop.next
                    args = (loop.u, loop.opt_state, loop.carry, jnp.int32(i), keys, train_batch, val_data)
                    if P is None:
                        u, opt_state, carry, state, hp, row = _hyper_step(spec, T, train_fn, *args)
                    else:
                        alive = np.array([p not in loop.dropped for p in range(P)])
                        u, opt_state, carry, state, hp, row = _population_step(spec, T, train_fn, *args, alive)
                    snap = i == 0 or (snapshot_every is not None and i % snapshot_every == 0)
                    row, hp_host = jax.device_get((row, hp if snap else None))  # the one transfer of the iteration
                    wall = loop.elapsed + time.perf_counter() - start
                    if P is None:
                        if not _ok(row):
                            raise _divergence(i, row, hp, _result(spec, info, loop, "diverged"), spec.realtime)
                        records, dropped = [to_record(i, (i + 1) * per_iteration, wall, row, info)], loop.dropped
                    else:
                        records, dropped = self._members(spec, info, loop, i, per_iteration, wall, row, hp)
                    snapshots = {**loop.snapshots, i: named(info, hp_host)} if snap else loop.snapshots
                    rows = (*loop.rows, *records)
                    loop = _Loop(i + 1, u, opt_state, carry, state, hp, rows, snapshots, loop.elapsed, dropped)
                    bar.update(1)
                    best = min(records, key=lambda r: r[info["objectives"][0]])
                    bar.set_postfix({k: best[k] for k in (*info["objectives"], "grad_norm")}, refresh=False)
                    # A list, not a generator: every callback sees every record.
                    if any([bool(on_record(cb, r)) for r in records for cb in callbacks]):
                        stopped = "callback"
                    since_save += 1
                    if since_save >= checkpoint_every:
                        save()
                        since_save = 0
        except KeyboardInterrupt:
            stopped = "interrupted"
        except HyperDivergenceError as error:
            save()  # the last good state
            for cb in callbacks:  # a dashboard shows how the run ended, and its history so far
                getattr(cb, "on_end", lambda result: None)(error.result)
            raise
        finally:
            bar.close()
        if ctrl_c.pending and stopped is None:
            stopped = "interrupted"
        if since_save or loaded is None:
            save()
        out = _result(spec, info, loop, stopped)
        for cb in callbacks:
            getattr(cb, "on_end", lambda result: None)(out)
        return out

    @staticmethod
    def _members(spec, info, loop, i, per_iteration, wall, row, hp) -> tuple[list, dict]:
        """The records of the members that went through iteration ``i``, and the members dropped so far (a member
        that failed now is reported with a warning; when none is left, the run ends with the last one's error)."""
        records, dropped = [], dict(loop.dropped)
        for p in range(len(row["ok"])):
            if p in dropped:
                continue
            mine = _member(row, p)
            if mine["ok"]:
                records.append(to_record(i, (i + 1) * per_iteration, wall, mine, info, member=p))
                continue
            member_hp = jax.device_get(_member(hp, p))
            step, what = _what_failed(i, mine, member_hp, spec.realtime)
            dropped[p] = f"population member {p}: {what}"
            if len(dropped) == len(row["ok"]):
                why = (
                    f"every member of the population diverged; the last, {dropped[p]} The history so far is in "
                    "this error's .result; a smaller hyper_optimizer learning rate or a constraint usually helps."
                )
                raise HyperDivergenceError(why, i, step, member_hp, _result(spec, info, loop, "diverged"))
            warnings.warn(f"{dropped[p]} It stays at those values; the others go on.", RuntimeWarning, stacklevel=3)
        return records, dropped

    def _check(self, hparams, hyper_iterations, T, checkpoint_every, snapshot_every) -> tuple[int, int]:
        """Refuse bad settings before anything runs; returns (hyper_iterations, inner steps per iteration)."""
        check_hparams(hparams)
        if not positive_int(T):
            raise ValueError(f"T (inner steps) must be a positive int; got {T!r}")
        if not positive_int(checkpoint_every):
            raise ValueError(f"checkpoint_every must be a positive int; got {checkpoint_every!r}")
        if snapshot_every is not None and not positive_int(snapshot_every):
            raise ValueError(f"snapshot_every must be None or a positive int; got {snapshot_every!r}")
        if isinstance(self.method, RealTime):
            delta = self.method.delta
            if T % delta:
                raise ValueError(f"RealTime(delta={delta}) must divide T={T}: real time runs T/Δ whole chunks")
            if hyper_iterations not in (None, T // delta):
                raise ValueError(
                    f"in real-time mode hyper_iterations is T // delta = {T // delta} (one per chunk of one "
                    f"training run); got {hyper_iterations!r}"
                )
            return T // delta, delta
        if not positive_int(hyper_iterations):
            raise ValueError(f"hyper_iterations must be a positive int; got {hyper_iterations!r}")
        return hyper_iterations, T


def _describe(spec: _Spec, hparams, hyper_iterations: int) -> dict:
    """The names the history, the callbacks' info and the checkpoint's fingerprint use."""
    leaves = jax.tree_util.tree_leaves_with_path(hparams)
    names = [path_name(p) for p, _ in leaves]
    objectives = spec.problem.objective_names
    return dict(
        hyperparameters=names,
        scalars=[n for n, (_, x) in zip(names, leaves, strict=True) if np.size(x) == 1],
        vectors=[n for n, (_, x) in zip(names, leaves, strict=True) if np.size(x) != 1],
        objectives=["val_loss"] if len(objectives) == 1 else [f"val_loss.{k}" for k in objectives],
        metrics=[name for name, _ in spec.metrics],
        hyper_iterations=hyper_iterations,
        method=repr(spec.method),
    )


class _DeferredInterrupt:
    """Ctrl-C (SIGINT) during a run: finish the hyper-iteration in flight, then stop cleanly.

    A KeyboardInterrupt raised in the middle of JAX's dispatch or a device transfer can leave them half done, so
    the first Ctrl-C only sets ``pending`` and the loop stops between iterations; a second one interrupts at once.
    Only the main thread can own signal handlers; elsewhere this does nothing.
    """

    def __init__(self):
        self.pending, self._previous = False, None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.pending:
            raise KeyboardInterrupt
        self.pending = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
        return False


def _result(spec: _Spec, info: dict, loop: _Loop, stopped) -> HyperOptimizationResult:
    history = pd.DataFrame(list(loop.rows), columns=columns(info))
    history.attrs.update({k: info[k] for k in ("hyperparameters", "scalars", "vectors", "objectives", "metrics")})
    history.attrs["method"] = info["method"]
    if info["population"] is not None:
        history.attrs.update(population=info["population"], dropped=dict(loop.dropped))
    snapshots = dict(loop.snapshots)
    if loop.last_hp is not None:  # the last iteration run is always there
        snapshots.setdefault(loop.next - 1, named(info, jax.device_get(loop.last_hp)))
    hparams = _per_member(info["population"], lambda u: spec.leafwise("value", u))(loop.u)
    return HyperOptimizationResult(hparams, history, snapshots, loop.state, stopped)


def _member(tree, p: int):
    """Member ``p``'s part of a population's pytree (every leaf's row ``p``)."""
    return jax.tree_util.tree_map(lambda x: x[p], tree)


def _per_member(P: int | None, fn, in_axes=0):
    """``fn`` itself for a single run, its ``vmap`` over the members of a population."""
    return fn if P is None else jax.vmap(fn, in_axes=in_axes)


def _check_population(population, hparams) -> int | None:
    """``population`` as an int, after checking that every leaf of ``hparams`` has a leading axis of that size."""
    if population is None:
        return None
    if not positive_int(population):
        raise ValueError(f"population must be None or a positive int (the number of members); got {population!r}")
    for path, x in jax.tree_util.tree_leaves_with_path(hparams):
        if np.ndim(x) == 0 or np.shape(x)[0] != population:
            raise ValueError(
                f"with population={population}, every hyperparameter needs a leading axis of size {population} "
                f"(one row per member); {path_name(path)!r} has shape {tuple(np.shape(x))}"
            )
    return int(population)


def _divergence(i: int, row, hp, so_far: HyperOptimizationResult, realtime: bool) -> HyperDivergenceError:
    step, what = _what_failed(i, row, hp, realtime)
    return HyperDivergenceError(
        f"{what} The history of the {i} completed hyper-iterations is in this error's .result; a smaller "
        "hyper_optimizer learning rate or a constraint (hg.constraints) usually helps.",
        i,
        step,
        jax.device_get(hp),
        so_far,
    )


def _what_failed(i: int, row, hp, realtime: bool) -> tuple[int | None, str]:
    """The inner step that went non-finite (or None), and a sentence saying what failed, where, and with what."""
    where = "the training run" if realtime else "this inner run"
    step = None
    if row["diverged_at"] >= 0:
        step = int(row["diverged_at"])
        what = f"the inner training went non-finite at inner step {step} (0-based, counted in {where})"
    elif row["grad_diverged_at"] >= 0:
        step = int(row["grad_diverged_at"])
        what = f"the derivative carried through training went non-finite at inner step {step} (0-based, in {where})"
    elif not row["finite"]:
        what = "the validation objective or the hypergradient is non-finite"
    else:
        what = "the hyperparameter update is non-finite (is the hyper_optimizer's step too large?)"
    return step, f"hyper-iteration {i}: {what}; hyperparameters used: {scalar_summary(jax.device_get(hp))}."


def _templates(spec: _Spec, P, T, train_fn, u0, keys, train_batch, val_data) -> dict:
    """The pytree structures a checkpoint's leaves are put back into (they are not stored).

    Found by tracing the step on shapes alone, which also checks the data and the problem before anything runs.
    """
    carry_axes = (0, None if keys is None else 0)
    carry = jax.eval_shape(_per_member(P, functools.partial(_initial_carry, spec), carry_axes), u0, keys)
    opt_state = jax.eval_shape(_per_member(P, spec.tx.init), u0)
    args = (u0, opt_state, carry, jnp.int32(0), keys, train_batch, val_data)
    if P is None:
        out = jax.eval_shape(functools.partial(_hyper_step, spec, T, train_fn), *args)
    else:
        out = jax.eval_shape(functools.partial(_population_step, spec, T, train_fn), *args, np.ones(P, bool))
    tree = jax.tree_util.tree_structure
    return dict(u=spec.treedef, opt_state=tree(opt_state), carry=tree(carry), state=tree(out[3]), last_hp=spec.treedef)
