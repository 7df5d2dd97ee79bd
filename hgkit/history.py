"""The loop's records: what a run is (:class:`RunInfo`), the history's columns, and the callback protocol.

:class:`RunInfo` is the one owner of the history's column schema. The loop builds it once per run and passes it to
the callbacks' ``on_start``; each hyper-iteration becomes one record (a dict, one row of the history) made by
:meth:`RunInfo.record`; the history DataFrame carries it in ``history.attrs``, from which the plots and the
dashboard read it back with :meth:`RunInfo.of`.

Columns, in order: ``iteration``, ``member`` (populations only), ``inner_steps``, ``wall_time``, the objectives
(``val_loss``, or ``val_loss.<name>`` per objective), ``train_loss``, ``grad_norm``, ``grad_norm.<hp>`` per
hyperparameter, ``restarted`` (with the loop's ``restart_above`` guard: 1 where it restarted the derivative), each
scalar hyperparameter's value ``<hp>``, ``<hp>.<stat>`` for each vector (:data:`STATS`), and the metrics.

A callback is a function ``record -> bool | None`` (True stops the run) or an object with some of ``on_start(info)``,
``on_record(record)`` and ``on_end(result)``.

Example:
    >>> info = RunInfo(hyperparameters=("lr", "w"), scalars=("lr",), vectors=("w",), objectives=("val_loss",),
    ...                metrics=("acc",))
    >>> info.columns[:6], info.columns[8:11]
    (['iteration', 'inner_steps', 'wall_time', 'val_loss', 'train_loss', 'grad_norm'], ['lr', 'w.mean', 'w.min'])
    >>> RunInfo.from_columns(info.columns) == info
    True
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import numpy as np

from ._tree import PyTree, path_names

__all__ = ["STATS", "RunInfo", "StepReport", "as_callbacks", "notify"]

STATS = ("mean", "min", "max", "norm", "q10", "median", "q90")
"""What the history keeps of a vector hyperparameter at each iteration: its mean, extremes and Euclidean norm, and
its 10 %, 50 % and 90 % quantiles (its distribution: a vector whose mean is fixed, as per-example weights under a
budget Σλ = R, still shows its progress by them)."""
QUANTILES = (0.1, 0.5, 0.9)  # the levels of STATS' q10, median, q90
HOOKS = ("on_start", "on_record", "on_end")


class StepReport(NamedTuple):
    """One hyper-iteration's figures as the compiled step returns them (device arrays, one transfer)."""

    values: tuple  # the objectives, in RunInfo.objectives order
    train_loss: Any  # the last inner step's training loss
    grad_norm: Any  # ‖g‖ over all hyperparameters
    grad_norms: tuple  # ‖g‖ per hyperparameter
    hp: tuple  # per hyperparameter: its value (scalar) or its STATS (vector)
    metrics: tuple  # the metrics at the trained weights
    failure: Any  # an int32 hg.Failure code (0: it went through)
    failed_at: Any  # int32: the inner step of the failure, or -1
    solve_residual: Any  # Implicit's residual, else None
    restarted: Any = False  # bool: the loop's restart_above guard discarded this update and restarted the derivative
    failed_task: Any = -1  # int32: with tasks, the first task of the meta-batch that failed, or -1


def vector_stats(x) -> Any:
    """A vector hyperparameter's :data:`STATS`, stacked in that order (traceable)."""
    import jax.numpy as jnp

    flat = jnp.ravel(x)
    quantiles = jnp.quantile(flat, jnp.asarray(QUANTILES, flat.dtype))
    return jnp.concatenate([jnp.stack([flat.mean(), flat.min(), flat.max(), jnp.linalg.norm(flat)]), quantiles])


@dataclasses.dataclass(frozen=True)
class RunInfo:
    """What a run is: its hyperparameters, objectives and metrics by name, its length and method.

    Attributes:
        hyperparameters: every hyperparameter's path name (``"lr"``, ``"group/lr"``), in leaf order.
        scalars, vectors: which of them are scalars (one column) and which are not (one column per stat).
        objectives: the objectives' column names: ``("val_loss",)``, or ``("val_loss.<name>", ...)``.
        metrics: the metrics' names.
        hyper_iterations: the run's length (None if unknown).
        method: the method's label (``"reverse mode"``).
        matmul_precision: the precision of the matrix products the run computed with (the problem's
            ``matmul_precision``: ``"highest"`` by default; None for JAX's default, or unknown).
        population: the number of members of a population, or None for a single run.
        log_scale: the hyperparameters whose scale is logarithmic (constrained with
            :func:`hgkit.constraints.log`, ``λ = exp u``): the plots and the dashboard draw them on a log axis
            (and, decided from the values, any positive one that spans more than a decade).
        restarts: whether the run has the ``restarted`` column (``HyperOptimizer(..., restart_above=...)``).
    """

    hyperparameters: tuple[str, ...]
    scalars: tuple[str, ...]
    vectors: tuple[str, ...]
    objectives: tuple[str, ...] = ("val_loss",)
    metrics: tuple[str, ...] = ()
    hyper_iterations: int | None = None
    method: str | None = None
    matmul_precision: str | None = None
    population: int | None = None
    log_scale: tuple[str, ...] = ()
    restarts: bool = False

    def __post_init__(self):
        for name in ("hyperparameters", "scalars", "vectors", "objectives", "metrics", "log_scale"):
            value = getattr(self, name)
            if isinstance(value, str) or not all(isinstance(v, str) for v in value):
                raise TypeError(f"RunInfo.{name} must be a sequence of names (str); got {value!r}")
            object.__setattr__(self, name, tuple(value))

    @classmethod
    def create(cls, hparams: PyTree, objective_names: Sequence[str], metrics: Iterable[str] = (), **more):
        """The info of a run over ``hparams`` (one member's, for a population) and the problem's objectives."""
        leaves = jax.tree_util.tree_leaves(hparams)
        names = path_names(hparams)
        objectives = ["val_loss"] if len(objective_names) == 1 else [f"val_loss.{k}" for k in objective_names]
        return cls(
            hyperparameters=tuple(names),
            scalars=tuple(n for n, x in zip(names, leaves, strict=True) if np.size(x) == 1),
            vectors=tuple(n for n, x in zip(names, leaves, strict=True) if np.size(x) != 1),
            objectives=tuple(objectives),
            metrics=tuple(metrics),
            **more,
        )

    # ----- the columns ---------------------------------------------------------------------------------------

    @property
    def columns(self) -> list[str]:
        """The history's columns, in order (see the module docstring)."""
        member = ["member"] if self.population is not None else []
        cols = ["iteration", *member, "inner_steps", "wall_time", *self.objectives, "train_loss", "grad_norm"]
        cols += [f"grad_norm.{n}" for n in self.hyperparameters] + (["restarted"] if self.restarts else [])
        for n in self.hyperparameters:
            cols += self.value_columns(n)
        return cols + list(self.metrics)

    def value_columns(self, name: str) -> list[str]:
        """The columns that hold hyperparameter ``name``'s value: ``[name]``, or one per stat for a vector."""
        return [f"{name}.{s}" for s in STATS] if name in self.vectors else [name]

    def record(self, i: int, inner_steps: int, wall_time: float, row: StepReport, member: int | None = None) -> dict:
        """One history row as plain Python numbers, from a :class:`StepReport` on the host."""
        rec: dict[str, Any] = {"iteration": i} if member is None else {"iteration": i, "member": member}
        rec.update(inner_steps=inner_steps, wall_time=wall_time)
        rec.update({c: float(v) for c, v in zip(self.objectives, row.values, strict=True)})
        rec.update(train_loss=float(row.train_loss), grad_norm=float(row.grad_norm))
        rec.update({f"grad_norm.{n}": float(g) for n, g in zip(self.hyperparameters, row.grad_norms, strict=True)})
        if self.restarts:
            rec["restarted"] = int(row.restarted)
        for n, v in zip(self.hyperparameters, row.hp, strict=True):
            rec.update(zip(self.value_columns(n), map(float, np.reshape(v, -1)), strict=True))
        rec.update({m: float(v) for m, v in zip(self.metrics, row.metrics, strict=True)})
        return rec

    def named(self, hparams: PyTree) -> dict[str, np.ndarray]:
        """``{name: array}`` of a hyperparameter pytree (snapshots)."""
        leaves = jax.tree_util.tree_leaves(hparams)
        return {n: np.asarray(x) for n, x in zip(self.hyperparameters, leaves, strict=True)}

    # ----- the history ---------------------------------------------------------------------------------------

    def attrs(self) -> dict:
        """What the history keeps in ``history.attrs`` (lists and plain values: pandas copies them)."""
        out = {k: list(getattr(self, k)) for k in ("hyperparameters", "scalars", "vectors", "objectives", "metrics")}
        out.update(method=self.method, matmul_precision=self.matmul_precision, hyper_iterations=self.hyper_iterations)
        if self.population is not None:
            out["population"] = self.population
        if self.log_scale:
            out["log_scale"] = list(self.log_scale)
        if self.restarts:
            out["restarts"] = True
        return out

    def frame(self, records: Sequence[Mapping]):
        """The records as the history DataFrame: these columns, this info in ``attrs``."""
        import pandas as pd

        history = pd.DataFrame(list(records), columns=self.columns)
        history.attrs.update(self.attrs())
        return history

    @classmethod
    def of(cls, history) -> RunInfo:
        """The info of a history DataFrame: from its ``attrs`` (as :meth:`frame` writes them), or, for a frame
        that lost them, from its columns."""
        attrs = getattr(history, "attrs", {}) or {}
        if "hyperparameters" in attrs:
            fields = {f.name for f in dataclasses.fields(cls)}
            return cls(**{k: v for k, v in attrs.items() if k in fields})
        return cls.from_columns(list(history.columns))

    @classmethod
    def from_columns(cls, columns: Sequence[str]) -> RunInfo:
        """The info a record or history with these columns was made from (for a callback that never got
        ``on_start``): a name with ``grad_norm.<name>`` is a hyperparameter, a vector if ``<name>.mean`` exists."""
        present = set(columns)
        standard = {"iteration", "member", "inner_steps", "wall_time", "train_loss", "grad_norm", "restarted"}
        names = tuple(c[len("grad_norm.") :] for c in columns if c.startswith("grad_norm."))
        vectors = tuple(n for n in names if f"{n}.mean" in present)
        objectives = tuple(c for c in columns if c == "val_loss" or c.startswith("val_loss."))
        taken = standard | set(objectives) | {f"grad_norm.{n}" for n in names}
        taken |= {c for n in names for c in ([n] if n not in vectors else [f"{n}.{s}" for s in STATS])}
        return cls(
            hyperparameters=names,
            scalars=tuple(n for n in names if n not in vectors),
            vectors=vectors,
            objectives=objectives,
            metrics=tuple(c for c in columns if c not in taken),
            population=None if "member" not in present else 0,
            restarts="restarted" in present,
        )


# ----- callbacks -------------------------------------------------------------------------------------------------


def as_callbacks(callbacks) -> list:
    """A list of callbacks: plain functions ``record -> bool | None`` or objects with some of the hooks."""
    if callable(callbacks) or any(hasattr(callbacks, h) for h in HOOKS):
        callbacks = [callbacks]
    out = list(callbacks)
    for cb in out:
        if not (callable(cb) or any(hasattr(cb, h) for h in HOOKS)):
            raise TypeError(
                f"each callback must be a function record -> bool | None or an object with on_start / on_record / "
                f"on_end; got {cb!r}"
            )
    return out


def notify(callbacks: Sequence, hook: str, value) -> bool:
    """Call ``hook`` on every callback (a plain function only hears ``on_record``); whether any asked to stop.

    Every callback is called, even after one has asked to stop.
    """
    stop = False
    for cb in callbacks:
        if any(hasattr(cb, h) for h in HOOKS):
            fn = getattr(cb, hook, None)
        else:
            fn = cb if hook == "on_record" else None
        if fn is not None:
            stop |= bool(fn(dict(value) if hook == "on_record" else value))
    return stop
