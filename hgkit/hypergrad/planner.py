"""Reverse mode's memory: what it is, what a problem's reverse mode needs, and the fastest store that fits a budget.

**Memory** is one thing throughout hgkit (:func:`~hgkit.hypergrad.planner.program_bytes`): a compiled program's
own buffers as XLA assigns them, temporaries plus outputs; the arguments (hyperparameters, data) are left out,
since the caller holds them whatever the method. The planner predicts it, the cost experiment and the classroom
measure it.

**Planning happens on the host**, once, before anything is traced: :meth:`hg.Reverse.within(budget, ...)
<hgkit.Reverse.within>` measures the problem and returns an ordinary :class:`~hgkit.Reverse` whose ``store`` is
concrete (jittable, hashable, its ``label`` says what it keeps); :func:`plan` shows what a method will keep, the
memory predicted and the recomputation. Nothing here is cached between calls, and nothing compiles while a
caller's function is being traced (the default store of ``Reverse()`` is chosen by :func:`default_store`, from
abstract evaluation only).

The measurements (:func:`measure`): ``|s|`` and one loss from the shapes of the initial state; one step's
residuals from the shapes of what ``jax.vjp`` keeps over 4 and 8 steps (abstract evaluation); the working memory
W from compiling the hypergradient over 8 steps storing states (memory is exactly linear in the steps stored:
``W + n·(|s| + loss)``). Each store's :meth:`~hgkit.Store.cost` turns them into a prediction, to which
:func:`predict` adds a margin for what the small program cannot show (:data:`MARGIN`).

:func:`choose` takes, fastest first, :class:`~hgkit.Residuals` (only where one step's residuals take at most
:data:`RESIDUALS_UP_TO` training states: beyond, they bought little time, 3% on an MLP 784-64-10 with r = 3.2|s|,
and cost time where they are much larger, 2-3× on an MLP 32-64-10 with r = 17.9|s|), :class:`~hgkit.States`,
:class:`~hgkit.Segments` (√T), then :class:`~hgkit.Binomial` with as many slots as fit; with none fitting it
refuses, naming the least any needs (one slot).

Example (a state of 1 KB, one step's residuals 1.5 KB, 20 KB of working memory, T = 1,000):
    >>> from hgkit.hypergrad.stores import Sizes
    >>> sizes = Sizes(1000, 4, 20_000, 1004, 20_000, 1504)
    >>> [choose(sizes, budget, 1000, 1000).store for budget in (2_000_000, 1_200_000, 200_000, 80_000)]
    [Residuals(), States(), Segments(length='sqrt'), Binomial(slots=49)]
    >>> print(choose(sizes, 80_000, 1000, 1000))  # doctest: +ELLIPSIS
    Binomial(slots=49): keeps 49 states (binomial checkpointing); predicted 0.08 MiB of 0.08 MiB, ...
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp

from .._tree import PyTree, is_traced, tree_bytes
from ..problem import BilevelProblem, TrainState, initial_state, precision
from ._inputs import _abstract
from .stores import Binomial, Residuals, Segments, Sizes, States, Steps, Store, residual_sweep

__all__ = ["Plan", "choose", "default_store", "measure", "plan", "predict", "program_bytes"]

MARGIN = 0.02  # relative, on top of 2 states: what the small calibration programs cannot show
RESIDUALS_UP_TO = 1.5  # residuals are kept (by Reverse() and the planner) when a step's are at most this many states
CALIBRATION_STEPS = 8  # the horizon of the program compiled for the working memory


def program_bytes(compiled) -> int:
    """The memory of a compiled program (``jax.jit(f).lower(*args).compile()``): the one definition hgkit uses
    for memory, in the planner, the cost experiment and the classroom's cost widget.

    It is the program's own buffers as XLA assigns them, temporaries plus outputs
    (``memory_analysis().temp_size_in_bytes + output_size_in_bytes``). The arguments (hyperparameters, data) are
    left out: the caller holds them whatever the method. ``NotImplementedError`` where the backend gives no
    memory analysis.
    """
    stats = compiled.memory_analysis()
    if stats is None:
        raise NotImplementedError(
            f"the {jax.default_backend()!r} backend gives no memory analysis of a compiled program (XLA's "
            "memory_analysis()), which measuring or planning memory needs"
        )
    return int(stats.temp_size_in_bytes + stats.output_size_in_bytes)


@dataclasses.dataclass(frozen=True)
class Plan:
    """What a :class:`~hgkit.Reverse` keeps, the memory it is predicted to take and its recomputation.

    Attributes:
        store: the store that keeps what the backward sweep needs (:class:`~hgkit.Residuals`,
            :class:`~hgkit.States`, :class:`~hgkit.Segments`, :class:`~hgkit.Binomial`, or one of your own).
        stored: what it keeps, in words.
        predicted_bytes: the hypergradient program's memory (:func:`~hgkit.hypergrad.planner.program_bytes`:
            temporaries plus outputs), rounded up by the margin.
        recompute_factor: the training steps it evaluates per step of the run (1.0: none recomputed).
        T: the number of inner steps planned for.
        truncate: the number of last steps the derivative is carried back through (None: all T).
        budget: the memory budget asked for, in bytes, if any.
    """

    store: Store
    stored: str
    predicted_bytes: int
    recompute_factor: float
    T: int
    truncate: int | None = None
    budget: int | None = None

    def __str__(self) -> str:
        budget = f" of {_mib(self.budget)}" if self.budget is not None else ""
        return (
            f"{self.store!r}: keeps {self.stored}; predicted {_mib(self.predicted_bytes)}{budget}, "
            f"{self.recompute_factor:.2f} training steps evaluated per step (T={self.T}"
            + (f", truncate={self.truncate})" if self.truncate is not None else ")")
        )


def _mib(b: int) -> str:
    return f"{b / 2**20:.2f} MiB"


def predict(sizes: Sizes, store: Store, T: int, K: int, truncate: int | None = None, budget=None) -> Plan:
    """The :class:`Plan` of ``store`` over T steps of which the last K are reversed (the first T − K only keep
    their losses)."""
    cost = store.cost(sizes, K)
    head = T - K
    raw = cost.bytes + head * sizes.loss
    predicted = int(math.ceil(raw * (1 + MARGIN) + 2 * sizes.state))
    return Plan(store, cost.stored, predicted, (cost.evaluated + head) / T, T, truncate, budget)


def _default(state_bytes: int, residual_bytes: int) -> Store:
    """``Reverse()``'s rule, which :func:`choose` follows too: :class:`~hgkit.Residuals` when one step's take at most
    :data:`RESIDUALS_UP_TO` training states (keeping them pays), else :class:`~hgkit.States`."""
    return Residuals() if residual_bytes <= RESIDUALS_UP_TO * state_bytes else States()


def choose(sizes: Sizes, budget: int, T: int, K: int, truncate: int | None = None) -> Plan:
    """The fastest plan whose predicted memory fits ``budget`` (bytes); ``ValueError`` naming the minimum if none.

    Binomial checkpointing takes as many slots as fit (predicted bytes grow with the slots).
    """
    first = _default(sizes.state, sizes.per_step_residuals - sizes.loss)
    stores = ([first] if first == Residuals() else []) + [States()] + ([Segments("sqrt")] if K > 1 else [])
    for store in stores:
        chosen = predict(sizes, store, T, K, truncate, budget)
        if chosen.predicted_bytes <= budget:
            return chosen
    one = predict(sizes, Binomial(1), T, K, truncate, budget)
    if one.predicted_bytes > budget:
        raise ValueError(
            f"Reverse.within({budget}, ...): no store fits {_mib(budget)}; the least any needs is "
            f"{one.predicted_bytes} bytes ({_mib(one.predicted_bytes)}: hg.Binomial(slots=1), which evaluates "
            f"{one.recompute_factor:.0f} training steps per step). Raise the budget, or shorten T (or truncate=)."
        )
    lo, hi = 1, K
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if predict(sizes, Binomial(mid), T, K, truncate, budget).predicted_bytes <= budget:
            lo = mid
        else:
            hi = mid - 1
    return predict(sizes, Binomial(lo), T, K, truncate, budget)


# ----- the measurements ------------------------------------------------------------------------------------------


def step_sizes(
    problem: BilevelProblem, hparams: PyTree, train_data: Any, *, key: Any = None, init_state=None,
    hvp: str = "reverse-over-reverse",
) -> tuple[int, int, int]:  # fmt: skip
    """``(|s|, one step's residuals, one loss)`` in bytes, from abstract evaluation only (nothing compiles).

    The residuals are what ``jax.vjp`` of the training scan keeps (:class:`~hgkit.Residuals`): their growth from 4
    to 8 steps, so that what does not change from step to step (the data) does not count.
    """
    hp = _abstract(hparams)
    if init_state is None:
        state = jax.eval_shape(lambda hp, k: initial_state(problem, hp, k), hp, _abstract(key))
    else:
        state = _abstract(init_state)

    def residuals(n):
        def f(hp, tr, s0):
            steps = Steps(problem, hp, train_data if callable(train_data) else tr, None, hvp)
            return jax.tree_util.tree_leaves(residual_sweep(steps, s0, 0, n).step_vjp)

        return tree_bytes(jax.eval_shape(f, hp, None if callable(train_data) else _abstract(train_data), state))

    batch = jax.eval_shape(train_data, jax.ShapeDtypeStruct((), jnp.int32)) if callable(train_data) else train_data
    loss = jax.eval_shape(lambda a, h, b: problem.inner_loss(a, h, b, state.static), state.arrays, hp,
                          _abstract(batch))  # fmt: skip
    per_step = max(math.ceil((residuals(8) - residuals(4)) / 4), 0)
    return tree_bytes(state), per_step, tree_bytes(loss)


def default_store(
    problem: BilevelProblem, hparams: PyTree, train_data: Any, *, key: Any = None, init_state=None,
    hvp: str = "reverse-over-reverse",
) -> Store:  # fmt: skip
    """The store of ``hg.Reverse()``: :class:`~hgkit.Residuals` when one step's residuals take at most
    :data:`RESIDUALS_UP_TO` (1.5) training states, :class:`~hgkit.States` otherwise; from abstract evaluation
    of the training step only (it may be called while tracing: nothing compiles)."""
    state, residual, _ = step_sizes(problem, hparams, train_data, key=key, init_state=init_state, hvp=hvp)
    return _default(state, residual)


def measure(
    method, problem: BilevelProblem, hparams: PyTree, train_data: Any, val_data: PyTree, *, key: Any = None,
    init_state: TrainState | None = None,
) -> Sizes:  # fmt: skip
    """What the cost models need (:class:`~hgkit.hypergrad.stores.Sizes`), measured for ``method``'s ``hvp``:
    compiles the hypergradient over :data:`CALIBRATION_STEPS` steps storing states, from abstract shapes. On the
    host only: it refuses to run while a caller's function is traced."""
    if is_traced((hparams, train_data, val_data, key)):
        raise TypeError(
            "planning reverse mode's memory compiles a small program, which hgkit does not do while your function is "
            "being traced (jit, vmap, grad): call hg.Reverse.within(...) or hg.plan(...) once, outside, and pass the "
            "method it returns in"
        )
    state, residual, loss = step_sizes(problem, hparams, train_data, key=key, init_state=init_state, hvp=method.hvp)
    states = dataclasses.replace(method, store=States(), truncate=None)
    n = CALIBRATION_STEPS

    def hypergradient(hp, tr, va, k, s0):
        tr = train_data if callable(train_data) else tr
        return states.run(problem, hp, n, tr, va, key=k, init_state=s0)

    args = _abstract((hparams, None if callable(train_data) else train_data, val_data, key, init_state))
    with precision(problem):  # compiled as hg.hypergradient compiles it
        measured = program_bytes(jax.jit(hypergradient).lower(*args).compile())
    per_state = state + loss
    work = max(measured - n * per_state, 0)
    # The residual store's own working memory is taken to be W too: its way back applies the stored linearization
    # instead of recomputing the step and linearizing it, so it needs less.
    return Sizes(state, loss, work, per_state, work, residual + loss)


def plan(
    method, problem: BilevelProblem, hparams: PyTree, T: int, train_data: Any, val_data: PyTree, *,
    key: Any = None, init_state: TrainState | None = None,
) -> Plan:  # fmt: skip
    """What ``method`` (a :class:`~hgkit.Reverse`) keeps over T steps, the memory it is predicted to take
    (:func:`~hgkit.hypergrad.planner.program_bytes` of its hypergradient program) and the training steps it
    evaluates per step.

    On the host, outside ``jit``: compiles the hypergradient over 8 steps once
    (:func:`~hgkit.hypergrad.planner.measure`).

    Example:
        >>> import jax.numpy as jnp, hgkit as hg
        >>> problem = hg.BilevelProblem(lambda hp, k: jnp.zeros(2), lambda w, hp, b: jnp.sum((w - b) ** 2),
        ...                             lambda w, hp, b: jnp.sum((w - 2 * b) ** 2), hg.optim.sgd("lr"))
        >>> hp, b = {"lr": jnp.asarray(0.1)}, jnp.ones(2)
        >>> chosen = hg.plan(hg.Reverse(store=hg.Binomial(4)), problem, hp, 100, b, b)
        >>> chosen.stored, round(chosen.recompute_factor, 2)   # 4 slots for 100 steps: revolve recomputes much
        ('4 states (binomial checkpointing)', 4.75)
    """
    sizes = measure(method, problem, hparams, train_data, val_data, key=key, init_state=init_state)
    store = method.store
    if store is None:  # Reverse()'s rule, from the sizes just measured (default_store would measure them again)
        store = _default(sizes.state, sizes.per_step_residuals - sizes.loss)
    return predict(sizes, store, T, method.reversed_steps(T), method.truncate)
