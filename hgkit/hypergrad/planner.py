"""The memory planner of :class:`~hgkit.Reverse`: the fastest exact reverse mode that fits a memory budget.

Four ways to run reverse mode, fastest first, each storing less (residuals only where one step's take at most
1.5 training states: beyond, they bought little time, 3% on an MLP 784-64-10 with r = 3.2|s|, and cost time where
they are much larger, 2-3× on an MLP 32-64-10 with r = 17.9|s|, where writing and reading them dominates):

==============================  ==========================================  ====================================
plan                            stores (besides the working memory W)       training steps evaluated per step
==============================  ==========================================  ====================================
``store="residuals"``           every step's linearization: K·r             1 (none recomputed)
``store="states"``              the K states: K·|s|                         2 (each step again in its VJP)
``checkpoint="sqrt"``           ⌈K/S⌉ + S states, S = ⌈√K⌉                  3
``checkpoint=Binomial(s)``      s states (and the one recomputed)           1 + (F(K, s) + 1)/K
==============================  ==========================================  ====================================

(K: the steps reversed, T unless ``truncate``; |s|: the training state's bytes; r: one step's residuals;
F: :func:`~hgkit.hypergrad.checkpointing.forward_steps`.) The sizes come from compiling the hypergradient
over a few steps (XLA's ``memory_analysis()``, from abstract shapes only: it works while tracing), which gives
the working memory W beside the stored states (memory is exactly linear in the steps stored: ``W + n·|s|``),
and one step's residuals r from the shapes of what ``jax.vjp`` keeps (:func:`calibrate`). A margin covers what
the small program cannot show (:data:`MARGIN`).

:func:`choose` takes the first plan whose prediction fits the budget; with no plan fitting it refuses, naming
the least any plan needs (binomial checkpointing with one slot).

Example (a state of 1 KB, one step's residuals 1.5 KB, 20 KB of working memory, T = 1,000):
    >>> cal = Calibration(1000, 4, 20_000, 1004, 20_000, 1504)
    >>> [str(choose(cal, budget, 1000, 1000).checkpoint) for budget in (2_000_000, 1_200_000, 200_000, 80_000)]
    ['None', 'None', 'sqrt', 'Binomial(slots=49)']
    >>> choose(cal, 2_000_000, 1000, 1000).store, choose(cal, 1_200_000, 1000, 1000).store
    ('residuals', 'states')
    >>> print(choose(cal, 80_000, 1000, 1000))  # doctest: +ELLIPSIS
    checkpoint=Binomial(slots=49): keeps 49 states (binomial checkpointing); predicted 0.08 MiB of 0.08 MiB, ...
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Literal

from .checkpointing import Binomial, forward_steps

__all__ = ["Calibration", "Plan", "choose", "predict"]

MARGIN = 0.02  # relative, on top of 2 states: what the small calibration programs cannot show
RESIDUALS_UP_TO = 1.5  # residuals are kept (by Reverse() and the planner) when a step's are at most this many states
# What binomial checkpointing holds beside its slots and full reverse mode's working memory: the state it recomputes
# (restored from a slot, advanced, then differentiated) and some bookkeeping. Measured: 1.26 states on an MLP
# (|s| = 22 KB), about 1 KB where states are a few hundred bytes.
BINOMIAL_EXTRA, BINOMIAL_EXTRA_BYTES = 1.5, 1024


@dataclasses.dataclass(frozen=True)
class Calibration:
    """What one problem's reverse mode needs, measured on small horizons (bytes)."""

    state: int  # |s|: one training state
    loss: int  # one training loss (the (T,) losses buffer)
    work_states: int  # W of store="states": compiled memory minus the stored states' bytes
    per_step_states: int  # bytes per reversed step with store="states" (|s| and the step's bookkeeping)
    work_residuals: int  # W of store="residuals"
    per_step_residuals: int  # bytes per reversed step with store="residuals"


@dataclasses.dataclass(frozen=True)
class Plan:
    """How :class:`~hgkit.Reverse` will run: what it stores, the memory it is predicted to take, and how many
    training steps it evaluates per step of the run (1.0: none recomputed).

    ``predicted_bytes`` is XLA's temporary memory of the hypergradient computation (the model
    ``W + stored`` of :mod:`~hgkit.hypergrad.planner`, rounded up by its margin); ``budget`` the ``memory=``
    asked for, if any.
    """

    store: Literal["states", "residuals"]
    checkpoint: Literal["sqrt"] | int | Binomial | None
    stored: str
    predicted_bytes: int
    recompute_factor: float
    T: int
    truncate: int | None = None
    budget: int | None = None

    def __str__(self) -> str:
        what = f"store={self.store!r}"
        if self.checkpoint is not None:
            what = f"checkpoint={self.checkpoint!r}" if self.store == "states" else f"{what}, {self.checkpoint!r}"
        budget = f" of {_mib(self.budget)}" if self.budget is not None else ""
        return (
            f"{what}: keeps {self.stored}; predicted {_mib(self.predicted_bytes)}{budget}, "
            f"{self.recompute_factor:.2f} training steps evaluated per step (T={self.T}"
            + (f", truncate={self.truncate})" if self.truncate is not None else ")")
        )


def _mib(b: int) -> str:
    return f"{b / 2**20:.2f} MiB"


def _rounded(b: float, cal: Calibration) -> int:
    return int(math.ceil(b * (1 + MARGIN) + 2 * cal.state))


def predict(
    cal: Calibration, store: str, checkpoint: Any, T: int, K: int, truncate: int | None = None, budget=None
) -> Plan:
    """The :class:`Plan` of one (store, checkpoint) over T steps of which the last K are reversed."""
    head = T - K
    if store == "residuals":
        raw = cal.work_residuals + K * cal.per_step_residuals + head * cal.loss
        stored, factor = f"{K} steps' residuals ({cal.per_step_residuals / 2**10:.1f} KiB each)", K * 1.0
    else:
        extra = cal.per_step_states - cal.state  # what a step stores beside its state (its loss, ...)
        base = cal.work_states + T * max(extra, cal.loss)
        if checkpoint is None:
            n_states, factor = K, 2.0 * K
            stored = f"{K} states ({cal.state / 2**10:.1f} KiB each)"
        elif isinstance(checkpoint, Binomial):
            slots = min(checkpoint.slots, K)
            n_states, factor = slots + BINOMIAL_EXTRA, K + forward_steps(K, slots) + 1.0
            base += BINOMIAL_EXTRA_BYTES
            stored = f"{slots} states (binomial checkpointing)"
        else:
            S = segment(checkpoint, K)
            n_states, factor = K // S + (1 if K % S else 0) + S, 3.0 * K
            stored = f"{n_states} states ({K // S} segment starts, one segment of {S} recomputed)"
        raw = base + n_states * cal.state
    factor = (factor + head) / T
    return Plan(store, checkpoint, stored, _rounded(raw, cal), factor, T, truncate, budget)


def segment(checkpoint, n: int) -> int:
    """How many steps one recomputed segment holds, for ``checkpoint`` ("sqrt" or an int) over n steps."""
    if checkpoint == "sqrt":
        return max(1, math.ceil(math.sqrt(n)))
    return min(int(checkpoint), n)


def residuals_pay(state_bytes: int, residual_bytes: int) -> bool:
    """Whether keeping residuals is worth it: one step's take at most :data:`RESIDUALS_UP_TO` training states."""
    return residual_bytes <= RESIDUALS_UP_TO * state_bytes


def candidates(cal: Calibration, T: int, K: int, truncate: int | None, budget: int | None) -> list[Plan]:
    """Every plan worth considering, fastest first: residuals (where they pay), states, √T; binomial comes after."""
    options = [("residuals", None)] if residuals_pay(cal.state, cal.per_step_residuals - cal.loss) else []
    options += [("states", None)] + ([("states", "sqrt")] if K > 1 else [])
    return [predict(cal, store, checkpoint, T, K, truncate, budget) for store, checkpoint in options]


def choose(cal: Calibration, budget: int, T: int, K: int, truncate: int | None = None) -> Plan:
    """The fastest plan whose predicted memory fits ``budget`` (bytes); ``ValueError`` naming the minimum if none.

    Binomial checkpointing takes as many slots as fit: ``(budget − W_states − bookkeeping) / |s|``, less the
    margin.
    """
    for plan in candidates(cal, T, K, truncate, budget):
        if plan.predicted_bytes <= budget:
            return plan
    one = predict(cal, "states", Binomial(1), T, K, truncate, budget)
    if one.predicted_bytes > budget:
        raise ValueError(
            f"Reverse(memory={budget}): no plan fits {_mib(budget)}; the least any needs is {one.predicted_bytes} "
            f"bytes ({_mib(one.predicted_bytes)}: binomial checkpointing with 1 slot, which evaluates "
            f"{one.recompute_factor:.0f} training steps per step). Raise memory=, or shorten T (or truncate=)."
        )
    lo, hi = 1, K  # the most slots that fit: predicted bytes grow with the slots
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if predict(cal, "states", Binomial(mid), T, K, truncate, budget).predicted_bytes <= budget:
            lo = mid
        else:
            hi = mid - 1
    return predict(cal, "states", Binomial(lo), T, K, truncate, budget)


def calibrate(measured: int, n: int, state_bytes: int, residual_bytes: int, loss_bytes: int) -> Calibration:
    """The model's constants: ``measured`` is XLA's temporary memory of the hypergradient over n steps storing
    states, so the working memory W is what it needs beside its n stored states and losses; ``residual_bytes`` is
    one step's residuals, from the shapes of what ``jax.vjp`` keeps. The residual mode's own working memory is
    taken to be W too: its way back applies the stored linearization instead of recomputing the step and
    linearizing it, so it needs less."""
    per_state = state_bytes + loss_bytes
    work = max(measured - n * per_state, 0)
    return Calibration(state_bytes, loss_bytes, work, per_state, work, residual_bytes + loss_bytes)
