"""Binomial checkpointing (Griewank's *revolve*): reverse n steps of a recurrence keeping at most ``slots`` states;
the schedule and its executor behind :class:`hg.Binomial <hgkit.Binomial>`.

Reverse mode needs the state ``s_t`` before each step t, in the order t = n−1, …, 0. Storing them all costs n
states; storing ``slots`` of them and recomputing the others from the nearest stored one costs extra forward
steps. Griewank (1992) and Griewank & Walther ("Algorithm 799: revolve", ACM TOMS 26, 2000) give the schedule that
minimizes them, and its cost in closed form. With ``β(s, r) = C(s + r, s)`` and r the smallest integer such that
``β(s, r) ≥ n``, reversing n steps with s slots (the initial state's included) takes::

    F(n, s) = r·n − β(s + 1, r − 1)        forward steps (β(·, −1) = 0),

besides the n steps each reversal recomputes inside its vector-Jacobian product: at most r extra passes over the
run, and r grows like ``(n·s!)^(1/s)``: with 32 slots, r = 4 for n = 10,000 and n = 50,000. With ``s ≥ n`` it is
``n − 1``, one pass (store every state); with ``s = 1``, ``n(n − 1)/2``.

The schedule is the recursive split: to reverse steps a..b−1 holding ``s_a`` in a slot with c free slots, advance
to m, store ``s_m`` in a free slot, reverse m..b−1 with c − 1 free slots, restore ``s_a`` and reverse a..m−1 with c
free slots; ``m`` minimizes ``(m − a) + F(b − m, c) + F(m − a, c + 1)``, which reaches ``F(b − a, c + 1)``
(``tests/test_reverse_memory.py`` checks the formula and the schedules against an exhaustive dynamic programme).

:func:`schedule` computes it in Python (n and s are static) as int32 tables; :func:`execute` runs them with one
``lax.scan`` for the first sweep and one for the way back, so the compiled program does not grow with n: each
turn of the way back restores a slot, advances and stores as the table says (dynamic counts, in
``lax.while_loop``) and reverses one step, with no branch. The slots are one stacked buffer updated in place; the
tables are compile-time constants of 16 bytes per step reversed and 12 per advance, beside the s states.

Example:
    >>> forward_steps(10_000, 32), forward_steps(10, 1), forward_steps(10, 10)
    (32860, 45, 9)
    >>> sched = schedule(10, 3)
    >>> sched.slots, sched.forward_steps, sched.forward_steps == forward_steps(10, 3)
    (3, 15, True)
    >>> sched.turns[:, 3].tolist()   # every step reversed once, last first
    [9, 8, 7, 6, 5, 4, 3, 2, 1, 0]
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from .._checks import positive_int
from .._tree import PyTree, all_finite, mark_first, tree_map

__all__ = ["Schedule", "execute", "forward_steps", "schedule"]


# ----- the cost, in closed form ----------------------------------------------------------------------------------


@functools.lru_cache(maxsize=256)
def _betas(s: int, n_max: int) -> tuple[np.ndarray, np.ndarray]:
    """``β(s, r)`` for r = 0, 1, … until it reaches ``n_max``, and ``β(s + 1, r − 1)`` beside it (float64: exact
    for the integers below 2⁵³ met here)."""
    beta, beta_up, r = [1.0], [0.0], 0
    while beta[-1] < n_max:
        r += 1
        beta.append(beta[-1] * (s + r) / r)  # β(s, r) = β(s, r − 1)·(s + r)/r
        beta_up.append(beta_up[-1] * (s + r) / (r - 1) if r > 1 else 1.0)  # β(s + 1, r − 1)
    return np.round(np.asarray(beta)), np.round(np.asarray(beta_up))


def _forward_steps(n: np.ndarray, s: int) -> np.ndarray:
    """:func:`forward_steps` for an array of n (all ≥ 1) and one s ≥ 1."""
    beta, beta_up = _betas(s, int(np.max(n)))
    r = np.searchsorted(beta, n, side="left")  # the smallest r with β(s, r) ≥ n
    return r * n - beta_up[r]


def forward_steps(n: int, slots: int) -> int:
    """``F(n, s)``: the fewest plain forward steps that reverse n steps with s slots (revolve's bound, attained
    by :func:`schedule`); the n reversed steps (each recomputed inside its vector-Jacobian product) come on top."""
    if n < 1 or slots < 1:
        raise ValueError(f"forward_steps needs n ≥ 1 and slots ≥ 1; got n={n}, slots={slots}")
    return int(_forward_steps(np.asarray([n]), min(slots, n))[0])


@functools.lru_cache(maxsize=65536)
def _split(n: int, free: int) -> int:
    """Where to store the next state when reversing n ≥ 2 steps with ``free`` free slots: the m minimizing
    ``m + F(n − m, free) + F(m, free + 1)`` (the right part needs no slot when it is one step)."""
    if free == 0:
        return n - 1  # no slot: advance to the last step and reverse it, then start again from the stored state
    if free >= n - 2:
        return 1  # slots for every state: store each one on the way (n − 1 steps, the least possible)
    m = np.arange(1, n)
    right = np.where(n - m == 1, 0, _forward_steps(n - m, free))
    return int(m[np.argmin(m + right + _forward_steps(m, free + 1))])


# ----- the schedule --------------------------------------------------------------------------------------------


class Schedule(NamedTuple):
    """What :func:`execute` runs: the optimal schedule as two int32 tables.

    ``moves`` rows ``(first, count, slot)``: advance ``count`` plain steps from step ``first``, then store the
    current state in ``slot`` (-1: store nothing; the last advance before a reversal). The first sweep is
    ``moves[:sweep]``, from s_0 to s_{n−1}. ``turns`` rows ``(restore, move_from, move_to, t)`` reverse steps
    n − 1, …, 0, one each: make slot ``restore`` current (-1: keep the current state), do
    ``moves[move_from:move_to]``, and reverse step ``t`` from the current state. Step numbers count from 0 within
    the n steps scheduled; slot 0 holds the initial state.
    """

    n: int  # steps reversed
    slots: int  # slots used (≤ the slots allowed, ≤ n)
    forward_steps: int  # plain steps advanced, the first sweep included: F(n, slots)
    moves: np.ndarray  # (M, 3)
    sweep: int  # how many moves the first sweep makes
    turns: np.ndarray  # (n, 4)


def _actions(n: int, slots: int):
    """The recursive split as a stream of ``(action, value)``: ``advance`` (steps), ``snapshot`` (slot),
    ``restore`` (slot), ``reverse`` (step); an explicit stack, as the recursion can be n deep."""
    cur = 0
    stack = [(0, n, 0, slots - 1)]  # (a, b, slot holding s_a, free slots after it): reverse steps a..b-1
    while stack:
        a, b, j, free = stack.pop()
        if cur != a:
            yield "restore", j
            cur = a
        if b - a == 1:
            yield "reverse", a
            continue
        m = a + _split(b - a, free)
        yield "advance", m - a
        cur = m
        stack.append((a, m, j, free))  # reversed after the right part
        if b - m == 1:
            yield "reverse", m  # s_m is current: no need to store it
        else:
            yield "snapshot", j + 1
            stack.append((m, b, j + 1, free - 1))


@functools.lru_cache(maxsize=32)
def schedule(n: int, slots: int) -> Schedule:
    """The optimal schedule reversing n steps with at most ``slots`` stored states (revolve's, up to ties)."""
    if not (positive_int(n) and positive_int(slots)):
        raise ValueError(f"schedule needs positive ints n and slots; got n={n!r}, slots={slots!r}")
    slots = min(slots, n)
    moves, turns, used, forward, where = [], [], 1, 0, {0: 0}  # where: the step each slot's state is at
    cur, pending, restore, turn_moves, sweep = 0, None, -1, 0, None  # pending: an advance not yet stored
    for action, value in _actions(n, slots):
        if action == "advance":
            pending, cur, forward = (cur, value), cur + value, forward + value
        elif action == "snapshot":
            moves.append((*pending, value))
            pending, used, where[value] = None, max(used, value + 1), cur
        elif action == "restore":
            restore, turn_moves, cur = value, len(moves), where[value]
        else:  # reverse
            if pending:
                moves.append((*pending, -1))
                pending = None
            if sweep is None:  # the end of the first sweep, at step n - 1: the first turn only reverses
                sweep = turn_moves = len(moves)
            turns.append((restore, turn_moves, len(moves), value))
            restore, turn_moves = -1, len(moves)
    moves = np.asarray(moves, np.int32).reshape(-1, 3)
    return Schedule(n, used, forward, moves, sweep, np.asarray(turns, np.int32).reshape(-1, 4))


# ----- the executor --------------------------------------------------------------------------------------------


class Swept(NamedTuple):
    """What :func:`execute` returns."""

    state: PyTree  # s_n
    losses: jax.Array  # (n,): each step's loss (its output beside the new state)
    diverged_at: jax.Array  # int32: the first step (absolute) whose new state was non-finite, or the one passed in
    adjoint: PyTree  # the adjoint carry after reversing step 0


def execute(
    sched: Schedule,
    state: PyTree,
    first: int,
    step: Callable[[PyTree, jax.Array], tuple[PyTree, jax.Array]],
    start: Callable[[PyTree], PyTree],
    reverse: Callable[[PyTree, jax.Array, PyTree], PyTree],
    diverged_at: Any = -1,
) -> Swept:
    """Run ``sched`` from ``state`` = s_0 (step numbers offset by ``first``).

    Args:
        step: ``(s_t, t) -> (s_{t+1}, loss)``, one plain step (t absolute).
        start: ``s_n -> adjoint``, the adjoint carry at the end of the run (called once, after the first sweep).
        reverse: ``(s_t, t, adjoint) -> adjoint``, one step back from the state before step t.
        diverged_at: the first non-finite step before ``first`` (-1 if none).

    The first sweep (one ``lax.scan`` over its moves) advances from s_0 to s_{n−1}, storing on the way and
    recording the losses and the first non-finite state; one more step gives s_n and ``start(s_n)``; then one
    ``lax.scan`` over the turns reverses the n steps, each restoring a slot and recomputing from it. No branch:
    every turn restores (or keeps its state), advances (dynamic counts, in while loops), stores (or
    writes a slot back unchanged) and reverses, so that XLA updates the slots in place and compiles each of the
    step and its vector-Jacobian product once or twice, whatever n.
    """
    n = sched.n
    offset = jnp.int32(first)
    slots = tree_map(lambda x: jnp.zeros((sched.slots, *jnp.shape(x)), jnp.result_type(x)).at[0].set(x), state)
    moves = jnp.asarray(sched.moves if len(sched.moves) else np.zeros((1, 3), np.int32))  # never indexed if empty
    loss_dtype = jax.eval_shape(step, state, offset)[1].dtype

    def store(slots, current, slot):
        """``current`` into ``slot``; for -1, slot 0 gets back what it holds (in place: no copy of the slots)."""
        idx = jnp.maximum(slot, 0)

        def put(buf, x):
            kept = lax.dynamic_index_in_dim(buf, idx, keepdims=False)
            return lax.dynamic_update_index_in_dim(buf, jnp.where(slot >= 0, x, kept), idx, 0)

        return tree_map(put, slots, current)

    # The first sweep: advance (recording the losses and the first non-finite state) and store.
    def sweep(carry, move):
        def body(i, carry):
            current, losses, bad = carry
            t = move[0] + i
            new, loss = step(current, offset + t)
            losses = lax.dynamic_update_index_in_dim(losses, jnp.asarray(loss, loss_dtype), t, 0)
            return new, losses, mark_first(bad, all_finite(new), offset + t)

        current, slots, losses, bad = carry
        current, losses, bad = lax.fori_loop(0, move[1], body, (current, losses, bad))
        return (current, store(slots, current, move[2]), losses, bad), None

    carry = (state, slots, jnp.zeros(n, loss_dtype), jnp.asarray(diverged_at, jnp.int32))
    if sched.sweep:
        carry = lax.scan(sweep, carry, moves[: sched.sweep])[0]
    current, slots, losses, bad = carry
    last, loss = step(current, offset + (n - 1))  # s_n, from s_{n-1}: the adjoint starts there
    losses = losses.at[n - 1].set(jnp.asarray(loss, loss_dtype))
    bad = mark_first(bad, all_finite(last), offset + (n - 1))

    # The way back: one turn per step, n - 1 first.
    def turn(carry, row):
        current, slots, adjoint = carry
        restore, lo, hi, t = (row[i] for i in range(4))
        current = tree_map(
            lambda buf, x: jnp.where(restore >= 0, lax.dynamic_index_in_dim(buf, jnp.maximum(restore, 0), 0, False), x),
            slots,
            current,
        )

        def move(i, carry):
            current, slots = carry
            current = lax.fori_loop(0, moves[i, 1], lambda j, s: step(s, offset + moves[i, 0] + j)[0], current)
            return current, store(slots, current, moves[i, 2])

        current, slots = lax.fori_loop(lo, hi, move, (current, slots))
        return (current, slots, reverse(current, offset + t, adjoint)), None

    adjoint = lax.scan(turn, (current, slots, start(last)), jnp.asarray(sched.turns))[0][2]
    return Swept(last, losses, bad, adjoint)
