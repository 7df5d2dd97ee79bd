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
from .hypergrad._common import all_finite, path_name, scalar_summary
from .problem import BilevelProblem, initial_state

__all__ = ["HyperOptimizer", "HyperOptimizationResult", "HyperDivergenceError"]


class HyperOptimizationResult(NamedTuple):
    """What :meth:`HyperOptimizer.run` returns (see the module docstring of the loop's contract)."""

    hparams: Any  # the tuned hyperparameters (constrained values), the structure of the starting ones
    history: pd.DataFrame  # one row per hyper-iteration (per chunk in real time); column names in .attrs
    snapshots: dict  # {iteration: {hp name: np.ndarray}}: the values used at those iterations
    state: Any  # the final TrainState of the last inner run
    stopped: str | None  # None (ran to the end), "callback", "interrupted", or "diverged" (on the error's .result)


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


@functools.partial(jax.jit, static_argnames=("spec", "T", "train_fn"))
def _hyper_step(spec: _Spec, T, train_fn, u, opt_state, carry, iteration, key, train_batch, val_data):
    """One hyper-iteration: hypergradient, optax update, projection, and the history row, all compiled."""
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
    ) -> HyperOptimizationResult:
        """Run the loop; see the contract in the module docstring.

        ``hparams`` are the starting values (ignored, but checked, when resuming from ``checkpoint_dir``). With a
        restarting method, the inner run of iteration ``i`` initializes its weights with
        ``jax.random.fold_in(key, i)``. ``callbacks``: functions ``record -> bool | None`` or objects with
        ``on_start(info)``, ``on_record(record)``, ``on_end(result)``; True stops after that iteration.
        ``checkpoint_dir``: save every ``checkpoint_every`` iterations and on the way out; a later run with the
        same directory resumes. Ctrl-C ends the run after the hyper-iteration in flight, saves and returns
        ``stopped="interrupted"``.
        """
        hyper_iterations, per_iteration = self._check(hparams, hyper_iterations, T, checkpoint_every, snapshot_every)
        callbacks = as_callbacks(callbacks)
        spec = _Spec(
            self.problem,
            self.method,
            self.hyper_optimizer,
            tuple(self.metrics.items()),
            C.per_leaf(self.constraints, hparams),
            jax.tree_util.tree_structure(hparams),
            self.warm_restart and not isinstance(self.method, RealTime),
        )
        info = _describe(spec, hparams, hyper_iterations)
        leaves = [[n, list(np.shape(x)), str(x.dtype)] for n, x in named(info, hparams).items()]
        fingerprint = dict(hparams=leaves, method=info["method"], T=T, warm_restart=spec.warm)
        train_fn, train_batch = (train_data, None) if callable(train_data) else (None, train_data)
        # Strong dtypes from the start: a weakly typed jnp.asarray(0.1) would come back strong from the first update
        # and recompile the step.
        u0 = spec.leafwise("free", jax.tree_util.tree_map(lambda x: jnp.asarray(x, dtype=x.dtype), hparams))
        templates = _templates(spec, T, train_fn, u0, key, train_batch, val_data)
        loaded = load_checkpoint(checkpoint_dir, fingerprint, templates)
        if loaded is None:  # a fresh start
            loop = _Loop(0, u0, spec.tx.init(u0), _initial_carry(spec, u0, key), None, None, (), {}, 0.0)
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
                    u, opt_state, carry, state, hp, row = _hyper_step(
                        spec, T, train_fn, loop.u, loop.opt_state, loop.carry, jnp.int32(i), key, train_batch, val_data
                    )
                    snap = i == 0 or (snapshot_every is not None and i % snapshot_every == 0)
                    row, hp_host = jax.device_get((row, hp if snap else None))  # the one transfer of the iteration
                    if max(row["diverged_at"], row["grad_diverged_at"]) >= 0 or not (
                        row["finite"] and row["update_ok"]
                    ):
                        raise _divergence(i, row, hp, _result(spec, info, loop, "diverged"), spec.realtime)
                    record = to_record(
                        i, (i + 1) * per_iteration, loop.elapsed + time.perf_counter() - start, row, info
                    )
                    snapshots = {**loop.snapshots, i: named(info, hp_host)} if snap else loop.snapshots
                    loop = _Loop(i + 1, u, opt_state, carry, state, hp, (*loop.rows, record), snapshots, loop.elapsed)
                    bar.update(1)
                    bar.set_postfix({k: record[k] for k in (*info["objectives"], "grad_norm")}, refresh=False)
                    if any([bool(on_record(cb, record)) for cb in callbacks]):  # a list: every callback sees the row
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

    def _check(self, hparams, hyper_iterations, T, checkpoint_every, snapshot_every) -> tuple[int, int]:
        """Refuse bad settings before anything runs; returns (hyper_iterations, inner steps per iteration)."""
        check_hparams(hparams)
        if not _positive_int(T):
            raise ValueError(f"T (inner steps) must be a positive int; got {T!r}")
        if not _positive_int(checkpoint_every):
            raise ValueError(f"checkpoint_every must be a positive int; got {checkpoint_every!r}")
        if snapshot_every is not None and not _positive_int(snapshot_every):
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
        if not _positive_int(hyper_iterations):
            raise ValueError(f"hyper_iterations must be a positive int; got {hyper_iterations!r}")
        return hyper_iterations, T


def _positive_int(x) -> bool:
    return isinstance(x, int | np.integer) and not isinstance(x, bool) and x >= 1


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
    snapshots = dict(loop.snapshots)
    if loop.last_hp is not None:  # the last iteration run is always there
        snapshots.setdefault(loop.next - 1, named(info, jax.device_get(loop.last_hp)))
    return HyperOptimizationResult(spec.leafwise("value", loop.u), history, snapshots, loop.state, stopped)


def _divergence(i: int, row, hp, so_far: HyperOptimizationResult, realtime: bool) -> HyperDivergenceError:
    hp = jax.device_get(hp)
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
    return HyperDivergenceError(
        f"hyper-iteration {i}: {what}; hyperparameters used: {scalar_summary(hp)}. The history of the {i} "
        "completed hyper-iterations is in this error's .result; a smaller hyper_optimizer learning rate or a "
        "constraint (hg.constraints) usually helps.",
        i,
        step,
        hp,
        so_far,
    )


def _templates(spec: _Spec, T, train_fn, u0, key, train_batch, val_data) -> dict:
    """The pytree structures a checkpoint's leaves are put back into (they are not stored).

    Found by tracing the step on shapes alone, which also checks the data and the problem before anything runs.
    """
    carry = jax.eval_shape(functools.partial(_initial_carry, spec), u0, key)
    opt_state = jax.eval_shape(spec.tx.init, u0)
    step = functools.partial(_hyper_step, spec, T, train_fn)
    _, _, _, state, _, _ = jax.eval_shape(step, u0, opt_state, carry, jnp.int32(0), key, train_batch, val_data)
    tree = jax.tree_util.tree_structure
    return dict(u=spec.treedef, opt_state=tree(opt_state), carry=tree(carry), state=tree(state), last_hp=spec.treedef)
