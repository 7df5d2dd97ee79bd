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

What lives where: this module runs the loop (prepare, iterate, finish); :mod:`hgkit._loop_step` is the compiled
hyper-iteration; :mod:`hgkit.history` owns the records and the history's columns; :mod:`hgkit._checkpoint` the file
format; failures are classified and explained by :mod:`hgkit.hypergrad.failures`.

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

import contextlib
import dataclasses
import functools
import math
import os
import time
import warnings
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from . import constraints as C
from ._checkpoint import FILE as CHECKPOINT_FILE
from ._checkpoint import check_writable, describe_state, load_checkpoint, save_checkpoint
from ._checks import positive_int, real_number, require_positive_int
from ._interrupt import DeferredInterrupt
from ._loop_step import StepSpec, compiled_steps, per_member, templates
from ._tree import PyTree, member, path_name, path_names
from .history import RunInfo, StepReport, as_callbacks, notify
from .hparams import check_hparams
from .hypergrad import DivergenceError, Failure, HypergradientMethod, OnlineMethod
from .hypergrad._inputs import check_inputs
from .hypergrad.entry import check_method
from .hypergrad.failures import explain
from .problem import BilevelProblem, precision

if TYPE_CHECKING:  # pandas is imported by the first history made (RunInfo.frame), not with hgkit
    import pandas as pd

__all__ = ["HyperDivergenceError", "HyperOptimizationResult", "HyperOptimizer"]


_ENDINGS = {
    None: "ran to the end",
    "callback": "stopped by a callback",
    "interrupted": "interrupted",
    "diverged": "diverged",
    "error": "ended by an exception",
}


class HyperOptimizationResult(NamedTuple):
    """What :meth:`HyperOptimizer.run` returns (see the module docstring of the loop's contract)."""

    hparams: PyTree  # the tuned hyperparameters (constrained values), the structure of the starting ones
    history: pd.DataFrame  # one row per hyper-iteration (per chunk in real time); its RunInfo in .attrs
    snapshots: dict  # {iteration: {hp name: np.ndarray}}: the values used at those iterations
    state: Any  # the final TrainState of the last inner run
    stopped: str | None  # None (ran to the end), "callback", "interrupted", or, on an exception's .result,
    # "diverged" (HyperDivergenceError) or "error" (any other exception, a callback's included)

    def summary(self) -> str:
        """A few lines to read: how the run ended, its hyper-iterations, the tuned hyperparameters as plain numbers
        (a vector by its shape, mean and range), and the first, best and last validation loss."""
        info = RunInfo.of(self.history)
        objective = info.objectives[0]
        n = len(self.history) if "member" not in self.history else self.history.iteration.nunique()
        total = f" of {info.hyper_iterations}" if info.hyper_iterations else ""
        ended = _ENDINGS.get(self.stopped, str(self.stopped))
        lines = [f"{info.method or 'hyperparameter optimization'}: {n}{total} hyper-iterations, {ended}"]
        lines += [f"  {name} = {value}" for name, value in _numbers(info, self.hparams).items()]
        if len(self.history):
            loss = self.history[objective]
            lines.append(f"  {objective}: first {loss.iloc[0]:.6g}, best {loss.min():.6g}, last {loss.iloc[-1]:.6g}")
        lines.append("  (result.history: every hyper-iteration, as a DataFrame)")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"HyperOptimizationResult(\n{self.summary()}\n)"

    def _repr_html_(self) -> str:
        """How a notebook shows the result: the summary as a small table, not the model's repr."""
        import html

        head, *rows = self.summary().splitlines()
        cells = "".join(
            f"<tr><td style='text-align:left'>{html.escape(k.strip())}</td><td style='text-align:left'>"
            f"{html.escape(v.strip())}</td></tr>"
            for k, _, v in (r.partition("=") if "=" in r else r.partition(":") for r in rows[:-1])
        )
        return (
            f"<div class='hgkit-result'><b>{html.escape(head)}</b><table>{cells}</table>"
            f"<i>{html.escape(rows[-1].strip())}</i></div>"
        )

    def best_member(self, column: str | None = None) -> int:
        """In a population, the member whose last recorded ``column`` (the first objective by default) is lowest.

        Its tuned values are ``jax.tree.map(lambda x: x[m], result.hparams)``.
        """
        if "member" not in self.history:
            raise ValueError("best_member is for populations (HyperOptimizer.run(..., population=P))")
        column = RunInfo.of(self.history).objectives[0] if column is None else column
        if column not in self.history:
            raise ValueError(
                f"column must be one of the history's columns {list(self.history.columns)}; got {column!r}"
            )
        last = self.history.groupby("member")[column].last()
        return int(last.idxmin())


class HyperDivergenceError(DivergenceError):
    """An inner run or its hypergradient went non-finite during the loop.

    Attributes: ``iteration`` (0-based hyper-iteration), ``step`` (inner step, or None), ``failure`` (an
    :class:`~hgkit.Failure`), ``hparams`` (the values that iteration used, the last finite ones), ``result`` (a
    :class:`HyperOptimizationResult` up to the previous iteration).
    """

    def __init__(self, message, iteration, step, hparams, result, failure=None):
        super().__init__(message, step, failure)
        self.iteration, self.hparams, self.result = iteration, hparams, result


# One shared instance: optax transformations are compared by identity in the compiled step's cache key, so
# optimizers made with the default reuse each other's compilations.
_DEFAULT_HYPER_OPTIMIZER = optax.adam(1e-2)


@dataclasses.dataclass(frozen=True)
class _Run:
    """A run's fixed settings, checked: what :meth:`HyperOptimizer.run` prepared."""

    spec: StepSpec
    info: RunInfo
    fingerprint: dict  # what a checkpoint must match to be resumed
    T: int
    per_iteration: int  # inner steps per hyper-iteration (T, or Δ for an online method)
    train_fn: Any  # the train_data callable, or None
    train_batch: Any  # the fixed training batch, or None
    val_data: Any
    keys: Any  # the key, or one per member
    checkpoint_dir: Any
    checkpoint_every: int
    snapshot_every: int | None

    @property
    def population(self) -> int | None:
        return self.info.population


class _LoopState(NamedTuple):
    """The loop's state after a completed hyper-iteration; replaced as a whole, so an interrupt never splits it."""

    next: int  # the next hyper-iteration to run
    u: Any  # the hyper-optimizer's variable
    opt_state: Any
    carry: Any  # an online method's carry, the warm-restart state, or None
    state: Any  # the last trained state
    last_hp: Any  # the hyperparameters the last completed iteration used
    rows: tuple  # the history's records
    snapshots: dict
    elapsed: float  # wall time of earlier sessions (resumed runs)
    dropped: dict  # {member: why}: the population members that diverged (frozen since)


class HyperOptimizer:
    """Tunes the hyperparameters of a :class:`~hgkit.problem.BilevelProblem` by hypergradient descent.

    Args:
        problem: the bilevel problem.
        method: ``hg.Reverse()`` (default), ``hg.Forward()``, ``hg.Implicit()``, ``hg.RealTime(delta)``, or any
            :class:`~hgkit.HypergradientMethod`; an :class:`~hgkit.OnlineMethod` makes one training run of T steps
            with λ updated every ``delta`` steps, the others restart training at every hyper-iteration.
        hyper_optimizer: an optax ``GradientTransformation`` on the (unconstrained) hyperparameters;
            ``optax.adam(1e-2)`` by default.
        constraints: ``{hp name: constraint}`` from :mod:`hgkit.constraints` (names as ``"lr"``, ``"group/lr"``,
            or a group prefix).
        metrics: ``{name: fn(params, hparams) -> scalar}`` evaluated (compiled) at each iteration's trained weights.
        warm_restart: start each inner run from the previous run's final training state instead of ``init``
            (the initial weights' dependence on λ is then ignored). Not used by online methods (never restart).
        restart_above: online methods only (``hg.RealTime``): a guard for a run at the edge of stability. Where
            the training dynamics amplify perturbations (an effective step η/(1 − μ) too large for the curvature),
            RTHO's tangent ``Z_t = A_t Z_{t-1} + B_t`` grows exponentially and its hypergradient with it, until it
            is inf or NaN while the weights are still fine. With ``restart_above=c``, a chunk whose hypergradient
            is non-finite or has norm above ``c`` changes nothing in λ (its update is discarded) and the method
            forgets its derivative's past (:meth:`~hgkit.OnlineMethod.restart`: the tangents start again from
            zero; the training run goes on); the history's ``restarted`` column is 1 there. ``math.inf`` restarts
            on non-finite hypergradients only; ``None`` (default) raises :class:`HyperDivergenceError` as any
            other failure. A failing training run (non-finite weights) still raises.
    """

    def __init__(
        self,
        problem: BilevelProblem,
        *,
        method: HypergradientMethod | None = None,
        hyper_optimizer: optax.GradientTransformation | None = None,
        constraints: Mapping | None = None,
        metrics: Mapping | None = None,
        warm_restart: bool = False,
        restart_above: float | None = None,
    ):
        if not isinstance(problem, BilevelProblem):
            raise TypeError(f"problem must be an hg.BilevelProblem, got {type(problem).__name__}")
        method = check_method(method)
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
        if restart_above is not None:
            if not isinstance(method, OnlineMethod):
                raise ValueError(
                    "restart_above is for online methods (hg.RealTime), which carry a derivative along one training "
                    f"run; {method.label} restarts training at every hyper-iteration anyway"
                )
            if type(method).restart is OnlineMethod.restart:
                raise ValueError(f"restart_above needs {type(method).__name__}.restart (see hg.OnlineMethod.restart)")
            bound = math.inf if restart_above == math.inf else real_number(restart_above)
            if bound is None or bound <= 0:
                raise ValueError(f"restart_above must be a number > 0, or math.inf; got {restart_above!r}")
            restart_above = bound
        self.constraints, self.metrics, self.warm_restart = constraints, dict(metrics), bool(warm_restart)
        self.restart_above = restart_above
        self._steps = compiled_steps()  # this optimizer's compilations, freed with it (see compiled_steps)

    def run(
        self,
        hparams: PyTree,
        hyper_iterations: int | None = None,
        T: int | None = None,
        train_data: Any = None,
        val_data: PyTree = None,
        *,
        key: Any = None,
        callbacks=(),
        progress: bool = True,
        checkpoint_dir=None,
        checkpoint_every: int = 10,
        snapshot_every: int | None = None,
        population: int | None = None,
        tasks: Callable | None = None,
        mesh: jax.sharding.Mesh | None = None,
    ) -> HyperOptimizationResult:
        """Run the loop; see the contract in the module docstring.

        ``hparams`` are the starting values (ignored, but checked, when resuming from ``checkpoint_dir``). With a
        restarting method, the inner run of iteration ``i`` initializes its weights with
        ``jax.random.fold_in(key, i)``. ``callbacks``: functions ``record -> bool | None`` or objects with
        ``on_start(info)`` (a :class:`~hgkit.history.RunInfo`), ``on_record(record)``, ``on_end(result)``; True
        stops after that iteration. ``checkpoint_dir``: save every ``checkpoint_every`` iterations and on the way
        out; a later run with the same directory resumes. Ctrl-C ends the run after the hyper-iteration in flight,
        saves and returns ``stopped="interrupted"``.

        ``population=P`` tunes P settings together, in one compiled call per hyper-iteration (``vmap``): every
        leaf of ``hparams`` then has a leading axis of size P (member ``p``'s starting values are ``x[p]``),
        member ``p`` uses the key ``jax.random.split(key, P)[p]`` (so it runs exactly as a separate run with that
        key would), the history has a ``member`` column and one row per member and iteration, callbacks get
        every member's record, and the result's hyperparameters keep the leading axis
        (:meth:`HyperOptimizationResult.best_member` picks one). A member that diverges is frozen at its last
        finite values, reported with a warning and in ``history.attrs["dropped"]``, and the others go on; the
        run raises :class:`HyperDivergenceError` only when every member has diverged.

        ``tasks=sample`` meta-learns λ across tasks instead of fitting it to one ``train_data``/``val_data``:
        ``sample(key) -> (train_data, val_data)`` draws one meta-batch (every leaf with a leading task axis M, as
        :func:`hgkit.meta_hypergradient` takes them) and must be jittable. Hyper-iteration ``i`` draws its tasks
        with one half of ``jax.random.split(jax.random.fold_in(key, i))`` and starts the tasks' weights with the
        other; the sampling, the M inner runs, the mean hypergradient, the optax step and the constraints are one
        compiled call. The history's objectives are the means over the meta-batch, and each metric is called as
        ``fn(params, hparams, query)`` on every task's trained weights and query set and averaged. ``mesh``: split
        the tasks over the first axis of this :class:`jax.sharding.Mesh` (M a multiple of its size; also across
        processes joined by ``jax.distributed``). Not with online methods, ``population`` or ``warm_restart``.
        """
        callbacks = as_callbacks(callbacks)
        run = self._prepare(
            hparams, hyper_iterations, T, train_data, val_data, key, checkpoint_dir, checkpoint_every,
            snapshot_every, population, tasks, mesh,
        )  # fmt: skip
        u0 = per_member(run.population, lambda h: run.spec.leafwise("free", h))(_strong(hparams))
        tmpl = templates(self._steps, run.spec, run.population, T, run.train_fn, u0, run.keys, run.train_batch,
                         val_data)  # fmt: skip
        _check_metrics(run.spec.metrics, tmpl["report"].metrics, run.population)
        loaded = load_checkpoint(checkpoint_dir, run.fingerprint, tmpl)
        loop = _LoopState(**loaded) if loaded is not None else self._fresh(run, u0)
        notify(callbacks, "on_start", run.info)
        loop, stopped = self._iterate(run, loop, callbacks, progress, resumed=loaded is not None)
        out = _result(run, loop, stopped)
        notify(callbacks, "on_end", out)
        return out

    # ----- prepare ---------------------------------------------------------------------------------------------

    def _prepare(
        self, hparams, hyper_iterations, T, train_data, val_data, key, checkpoint_dir, checkpoint_every,
        snapshot_every, population, tasks, mesh,
    ) -> _Run:  # fmt: skip
        """Refuse bad settings before anything runs, and fix what the run is."""
        check_hparams(hparams)
        require_positive_int("T", T, "inner steps")
        require_positive_int("checkpoint_every", checkpoint_every)
        require_positive_int("snapshot_every", snapshot_every, optional=True)
        hyper_iterations, per_iteration = _iterations(self.method, hyper_iterations, T)
        P = _check_population(population, hparams)
        if tasks is not None:
            self._check_tasks_setting(train_data, val_data, key, P, mesh)
        elif mesh is not None:
            raise ValueError("mesh splits a meta-batch's tasks over devices: it needs tasks=sample")
        template = hparams if P is None else member(hparams, 0)
        spec = StepSpec(
            problem=self.problem,
            method=self.method,
            tx=self.hyper_optimizer,
            metrics=tuple(self.metrics.items()),
            constraints=C.per_leaf(self.constraints, template),
            treedef=jax.tree_util.tree_structure(hparams),
            warm=self.warm_restart and not isinstance(self.method, OnlineMethod),
            restart_above=self.restart_above,
            tasks=tasks,
            mesh=mesh,
        )
        for p in range(P or 0):  # every member's starting values must be feasible
            try:
                C.per_leaf(self.constraints, member(hparams, p))
            except ValueError as e:
                raise ValueError(f"population member {p}: {e}") from None
        log_scale = [n for n, c in zip(path_names(template), spec.constraints, strict=True) if c and c.scale == "log"]
        info = RunInfo.create(
            template,
            self.problem.objective_names,
            self.metrics,
            hyper_iterations=hyper_iterations,
            method=self.method.label,
            matmul_precision=self.problem.matmul_precision,
            population=P,
            log_scale=log_scale,  # constrained with log(): drawn on a log axis
            restarts=self.restart_above is not None,
        )
        if tasks is None:
            state = check_inputs(self.problem, template, T, train_data, val_data, key)  # the abstract initial state
        else:
            state = _check_tasks(self.problem, template, T, tasks, key, mesh)
        leaves = [[n, list(np.shape(x)), str(x.dtype)] for n, x in info.named(template).items()]
        fingerprint = dict(hparams=leaves, method=repr(self.method), T=T, warm_restart=spec.warm)
        if tasks is not None:  # what a meta-batch is: another sampler's checkpoint is refused
            fingerprint["tasks"] = _structure(jax.eval_shape(tasks, key))
        if self.restart_above is not None:
            fingerprint["restart_above"] = self.restart_above
        fingerprint.update(describe_state(state))  # the model: a checkpoint of another one is refused
        if P is not None:
            fingerprint["population"] = P
        if checkpoint_dir is not None:
            check_writable(checkpoint_dir)
        train_fn, train_batch = (train_data, None) if callable(train_data) else (None, train_data)
        keys = key if P is None or key is None else jax.random.split(key, P)
        return _Run(
            spec=spec,
            info=info,
            fingerprint=fingerprint,
            T=T,
            per_iteration=per_iteration,
            train_fn=train_fn,
            train_batch=train_batch,
            val_data=val_data,
            keys=keys,
            checkpoint_dir=checkpoint_dir,
            checkpoint_every=checkpoint_every,
            snapshot_every=snapshot_every,
        )

    def _check_tasks_setting(self, train_data, val_data, key, population, mesh) -> None:
        """Refuse what does not go with ``tasks=`` before anything runs."""
        if train_data is not None or val_data is not None:
            raise ValueError(
                "give either tasks=sample (meta-learning: each hyper-iteration draws its own tasks) or train_data "
                "and val_data (one task), not both"
            )
        if key is None:
            raise ValueError("tasks=sample needs key=: hyper-iteration i draws its tasks with fold_in(key, i)")
        if isinstance(self.method, OnlineMethod):
            raise ValueError(
                f"tasks= is for methods that restart training at every hyper-iteration; {self.method.label} is "
                "online (one training run), which a new meta-batch of tasks at every iteration cannot continue"
            )
        if population is not None:
            raise ValueError("tasks= and population= cannot be combined (a meta-batch is already vmapped)")
        if self.warm_restart:
            raise ValueError("tasks= and warm_restart=True cannot be combined: every meta-batch has new tasks")
        if mesh is not None and not isinstance(mesh, jax.sharding.Mesh):
            raise TypeError(f"mesh must be a jax.sharding.Mesh; got {type(mesh).__name__}")

    def _fresh(self, run: _Run, u0) -> _LoopState:
        """The loop's state before the first hyper-iteration."""
        P = run.population
        carry_axes = (0, None if run.keys is None else 0)
        with precision(run.spec.problem):
            carry = per_member(P, functools.partial(self._steps.initial_carry, run.spec), carry_axes)(u0, run.keys)
        return _LoopState(
            next=0,
            u=u0,
            opt_state=per_member(P, run.spec.tx.init)(u0),
            carry=carry,
            state=None,
            last_hp=None,
            rows=(),
            snapshots={},
            elapsed=0.0,
            dropped={},
        )

    # ----- iterate ---------------------------------------------------------------------------------------------

    def _iterate(self, run: _Run, loop: _LoopState, callbacks, progress: bool, resumed: bool):
        """Hyper-iterations until the end, a stop or a Ctrl-C; saves as it goes. Returns (loop state, stopped).

        Nothing completed is lost: any exception (a callback's, a divergence) saves a checkpoint of the completed
        hyper-iterations and leaves with the run so far attached to the exception as ``.result``; a checkpoint
        that cannot be written (a full or removed disk) is reported by a warning and the run goes on.
        """
        start, stopped, since_save = time.perf_counter(), None, 0
        disk = _Saves(run)

        def save(loop):
            disk.save(loop._replace(elapsed=loop.elapsed + time.perf_counter() - start))

        from tqdm.auto import tqdm  # here, not at the top: `import hgkit` stays light (only a run draws a bar)

        total = run.info.hyper_iterations
        bar = tqdm(total=total, initial=loop.next, disable=not progress, desc="hyper-iterations")
        ctrl_c = DeferredInterrupt()
        try:
            with ctrl_c:
                while loop.next < total and stopped is None and not ctrl_c.pending:
                    loop, records = self._one(run, loop, start)
                    bar.update(1)
                    best = min(records, key=lambda r: r[run.info.objectives[0]])
                    bar.set_postfix({k: best[k] for k in (*run.info.objectives, "grad_norm")}, refresh=False)
                    if any([notify(callbacks, "on_record", r) for r in records]):  # a list: every record heard
                        stopped = "callback"
                    since_save += 1
                    if since_save >= run.checkpoint_every:
                        save(loop)
                        since_save = 0
        except KeyboardInterrupt:
            stopped = "interrupted"
        except HyperDivergenceError as error:
            save(loop)  # the last good state
            notify(callbacks, "on_end", error.result)  # a dashboard shows how the run ended, and its history
            raise
        except Exception as error:
            # A callback's (or any other) exception: keep what was done, then let the user's exception through
            # unchanged, with the run so far on it, as HyperDivergenceError carries it.
            save(loop)
            error.result = _result(run, loop, "error")
            with contextlib.suppress(Exception):  # the other callbacks hear the end; their errors must not hide it
                notify(callbacks, "on_end", error.result)
            raise
        finally:
            bar.close()
        if ctrl_c.pending and stopped is None:
            stopped = "interrupted"
        if since_save or (not resumed and disk.attempted != loop.next):  # what is not saved yet
            save(loop)
        return loop, stopped

    def _one(self, run: _Run, loop: _LoopState, start: float) -> tuple[_LoopState, list[dict]]:
        """Hyper-iteration ``loop.next``: the compiled step, one transfer to the host, the records."""
        i, P = loop.next, run.population
        args = (loop.u, loop.opt_state, loop.carry, jnp.int32(i), run.keys, run.train_batch, run.val_data)
        with precision(run.spec.problem):  # the same value at every iteration: no recompilation
            if P is None:
                u, opt_state, carry, state, hp, report = self._steps.step(run.spec, run.T, run.train_fn, *args)
            else:
                alive = np.array([p not in loop.dropped for p in range(P)])
                u, opt_state, carry, state, hp, report = self._steps.population(
                    run.spec, run.T, run.train_fn, *args, alive
                )
        snap = i == 0 or (run.snapshot_every is not None and i % run.snapshot_every == 0)
        report, hp_host = jax.device_get((report, hp if snap else None))  # the one transfer of the iteration
        wall = loop.elapsed + time.perf_counter() - start
        steps = (i + 1) * run.per_iteration
        if P is None:
            if report.failure != Failure.NONE:
                raise _divergence(run, loop, i, report, hp, state)
            records, dropped = [run.info.record(i, steps, wall, report)], loop.dropped
        else:
            records, dropped = _members(run, loop, i, steps, wall, report, hp, state)
        snapshots = {**loop.snapshots, i: run.info.named(hp_host)} if snap else loop.snapshots
        new = _LoopState(
            next=i + 1,
            u=u,
            opt_state=opt_state,
            carry=carry,
            state=state,
            last_hp=hp,
            rows=(*loop.rows, *records),
            snapshots=snapshots,
            elapsed=loop.elapsed,
            dropped=dropped,
        )
        return new, records


# ----- finish, and the helpers of the three parts ---------------------------------------------------------------


class _Saves:
    """The run's checkpoint writes: a write that fails (a full or removed disk) is reported, never raised, so that
    the run and its result go on; the warning names the checkpoint that could not be written and the last one
    that was."""

    def __init__(self, run: _Run):
        self.run, self.last, self.attempted = run, None, None

    def save(self, loop: _LoopState) -> None:
        if self.run.checkpoint_dir is None:
            return
        self.attempted = loop.next
        try:
            save_checkpoint(self.run.checkpoint_dir, self.run.fingerprint, loop._asdict())
            self.last = loop.next
        except OSError as e:
            path = os.path.join(os.fspath(self.run.checkpoint_dir), CHECKPOINT_FILE)
            last = (
                f"the last one written holds {self.last} hyper-iterations" if self.last is not None
                else "none was written in this run"
            )  # fmt: skip
            warnings.warn(
                f"could not write the checkpoint of hyper-iteration {loop.next} to {path} ({type(e).__name__}: "
                f"{e.strerror or e}); {last}. The run goes on and its result is returned; free the disk to "
                "checkpoint again.",
                RuntimeWarning,
                stacklevel=5,  # the caller of HyperOptimizer.run
            )


def _result(run: _Run, loop: _LoopState, stopped) -> HyperOptimizationResult:
    history = run.info.frame(loop.rows)
    if run.population is not None:
        history.attrs["dropped"] = dict(loop.dropped)
    snapshots = dict(loop.snapshots)
    if loop.last_hp is not None:  # the last iteration run is always there
        snapshots.setdefault(loop.next - 1, run.info.named(jax.device_get(loop.last_hp)))
    hparams = per_member(run.population, lambda u: run.spec.leafwise("value", u))(loop.u)
    return HyperOptimizationResult(hparams, history, snapshots, loop.state, stopped)


def _check_metrics(metrics, shapes, population: int | None) -> None:
    """Refuse, before anything runs, a metric that does not return a scalar (its shape is known from the compiled
    step's trace, which the first hyper-iteration reuses)."""
    for (name, _), out in zip(metrics, shapes, strict=True):
        shape = tuple(out.shape)[0 if population is None else 1 :]
        if shape != ():
            raise ValueError(
                f"metrics[{name!r}] must return a scalar (one number per hyper-iteration, a column of the history); "
                f"it returns an array of shape {shape}. Reduce it (e.g. jnp.mean(...)), or make one metric per entry."
            )


def _numbers(info: RunInfo, hparams: PyTree) -> dict[str, str]:
    """Each hyperparameter as text of plain numbers: a scalar as ``0.0123``, a population's or a vector's values
    by their shape, mean and range."""
    out = {}
    for name, x in info.named(hparams).items():
        x = np.asarray(x, dtype=float)
        if x.size == 1:
            out[name] = f"{x.item():.6g}"
        elif x.size <= 4:
            out[name] = "[" + ", ".join(f"{v:.6g}" for v in x.ravel()) + "]"
        else:
            out[name] = f"shape {x.shape}, mean {x.mean():.6g}, min {x.min():.6g}, max {x.max():.6g}"
    return out


def _strong(hparams: PyTree) -> PyTree:
    """Strongly typed copies: a weakly typed jnp.asarray(0.1) would come back strong from the first update and
    recompile the step."""
    return jax.tree_util.tree_map(lambda x: jnp.asarray(x, dtype=x.dtype), hparams)


def _iterations(method: HypergradientMethod, hyper_iterations, T) -> tuple[int, int]:
    """(hyper-iterations, inner steps per hyper-iteration) for this method and T."""
    if isinstance(method, OnlineMethod):
        delta = method.delta
        if T % delta:
            raise ValueError(
                f"{type(method).__name__}(delta={delta}) must divide T={T}: an online method runs T/Δ whole chunks"
            )
        if hyper_iterations not in (None, T // delta):
            raise ValueError(
                f"with an online method hyper_iterations is T // delta = {T // delta} (one per chunk of one "
                f"training run); got {hyper_iterations!r}"
            )
        return T // delta, delta
    require_positive_int("hyper_iterations", hyper_iterations)
    return hyper_iterations, T


def _check_tasks(problem: BilevelProblem, hparams, T, tasks, key, mesh):
    """Check ``tasks(key)`` on shapes alone (a jittable sampler of a meta-batch) and one task's share of it as
    :func:`hgkit.hypergradient` checks its inputs; returns the abstract initial state of one task."""
    from .hypergrad.meta import _one_task_shape, task_count

    if not callable(tasks):
        raise TypeError(f"tasks must be a function key -> (train_data, val_data); got {type(tasks).__name__}")
    try:
        hash(tasks)
    except TypeError:
        raise TypeError(
            f"tasks must be hashable (it is a static part of the compiled step): {type(tasks).__name__} is not; "
            "a function, or a dataclass with eq=False, is"
        ) from None
    try:
        drawn = jax.eval_shape(tasks, key)
    except Exception as e:
        raise type(e)(f"tasks(key) failed while traced (it must be jittable): {type(e).__name__}: {e}") from e
    if not (isinstance(drawn, tuple) and len(drawn) == 2):
        raise TypeError(f"tasks(key) must return a pair (train_data, val_data); it returned {_structure(drawn)}")
    M = task_count(*drawn)
    if mesh is not None and M % mesh.size:
        raise ValueError(f"the meta-batch of M={M} tasks cannot be split evenly over the mesh's {mesh.size} devices")
    train, val = (_one_task_shape(x) for x in drawn)
    k = jax.eval_shape(lambda k: jax.random.split(k, M)[0], key)
    return check_inputs(problem, hparams, T, train, val, k)


def _structure(tree) -> str:
    return str(jax.tree_util.tree_map(lambda x: f"{x.dtype}{list(x.shape)}", tree))


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


def _what_failed(run: _Run, i: int, report: StepReport, hp, state) -> tuple[int | None, str]:
    """The inner step of the failure (or None), and the sentence that says what failed (one host member)."""
    failure, step = Failure(int(report.failure)), int(report.failed_at)
    step = step if step >= 0 else None
    residual = None if report.solve_residual is None else float(report.solve_residual)
    hp, state = jax.device_get((hp, state))
    where = "the training run" if run.spec.online else "this inner run"
    task = int(report.failed_task)
    if run.spec.tasks is not None and task >= 0:
        where, state = f"task {task} of the meta-batch", member(state, task)
    what = explain(failure, step, T=run.T, hparams=hp, residual=residual, state=state)
    return step, f"hyper-iteration {i} ({where}): {what}"


def _divergence(run: _Run, loop: _LoopState, i: int, report: StepReport, hp, state) -> HyperDivergenceError:
    step, what = _what_failed(run, i, report, hp, state)
    return HyperDivergenceError(
        f"{what} The history of the {i} completed hyper-iterations is in this error's .result; a smaller "
        "hyper_optimizer learning rate or a constraint (hg.constraints) usually helps.",
        i,
        step,
        jax.device_get(hp),
        _result(run, loop, "diverged"),
        Failure(int(report.failure)),
    )


def _members(run: _Run, loop: _LoopState, i, steps, wall, report, hp, state) -> tuple[list, dict]:
    """The records of the members that went through iteration ``i``, and the members dropped so far (a member
    that failed now is reported with a warning; when none is left, the run ends with the last one's error)."""
    records, dropped = [], dict(loop.dropped)
    for p in range(len(report.failure)):
        if p in dropped:
            continue
        mine = member(report, p)
        if mine.failure == Failure.NONE:
            records.append(run.info.record(i, steps, wall, mine, member=p))
            continue
        step, what = _what_failed(run, i, mine, member(hp, p), member(state, p))
        dropped[p] = f"population member {p}: {what}"
        if len(dropped) == len(report.failure):
            why = (
                f"every member of the population diverged; the last, {dropped[p]} The history so far is in "
                "this error's .result; a smaller hyper_optimizer learning rate or a constraint usually helps."
            )
            member_hp = jax.device_get(member(hp, p))
            raise HyperDivergenceError(
                why, i, step, member_hp, _result(run, loop, "diverged"), Failure(int(mine.failure))
            )
        warnings.warn(f"{dropped[p]} It stays at those values; the others go on.", RuntimeWarning, stacklevel=5)
    return records, dropped
