"""Reverse-mode hypergradient (Franceschi et al., 2017, §3.1): train forward keeping what the way back needs, then
propagate the adjoint backwards.

With ``A_t = ∂Φ_t/∂s_{t-1}`` and ``B_t = ∂Φ_t/∂λ``::

    p_T = ∂E/∂s_T,      g = ∂E/∂λ
    for t = T..1:       g += p_t B_t,     p_{t-1} = p_t A_t
    g += p_0 ∂S_0/∂λ                      (initial weights that depend on λ)

Each product ``p_t A_t``, ``p_t B_t`` is one vector-Jacobian product of the training step. What is kept from the
forward sweep for them is the method's ``store`` (:mod:`~hgkit.hypergrad.stores`: residuals, states, segments or
binomial checkpointing); :func:`reverse_mode` wires the initial state, an untracked head (truncation), the store's
sweeps and the initial weights' derivative together. :meth:`Reverse.within` picks the fastest store for a memory
budget, on the host (:mod:`~hgkit.hypergrad.planner`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Literal

import jax
import jax.numpy as jnp

from .._checks import positive_int
from .._tree import PyTree, combine, partition, tree_map
from ..problem import BilevelProblem, TrainState, initial_state, unroll
from . import planner
from ._inputs import check_inputs
from .base import HypergradientMethod, HypergradientResult, result
from .stores import Binomial, Steps, Store, per_objective

HVP = ("forward-over-reverse", "reverse-over-reverse")


def initial(
    problem: BilevelProblem, hparams: PyTree, key: Any, init_state: TrainState | None, differentiate: bool
) -> tuple[TrainState, Callable | None]:
    """``s_0``, and the VJP of ``λ ↦ s_0`` when the initial weights depend on λ and that is differentiated."""
    if init_state is not None:
        return init_state, None
    if not differentiate:
        return initial_state(problem, hparams, key), None
    floats, s0_vjp, rest = jax.vjp(lambda hp: partition(initial_state(problem, hp, key)), hparams, has_aux=True)
    return combine(floats, rest), s0_vjp


def reverse_mode(
    problem: BilevelProblem, hparams: PyTree, T: int, train_data: Any, val_data: PyTree, key: Any,
    init_state: TrainState | None, *, store: Store, K: int, hvp: str,
) -> HypergradientResult:  # fmt: skip
    """Reverse mode through the last K of T steps, keeping what ``store`` keeps."""
    head = T - K  # steps trained without keeping anything (truncation)
    s0, s0_vjp = initial(problem, hparams, key, init_state, differentiate=head == 0)
    bad, head_losses = jnp.int32(-1), []
    if head:
        out = unroll(problem, s0, hparams, train_data, 0, head)
        s0, bad, head_losses = out.state, out.diverged_at, [out.losses]
    steps = Steps(problem, hparams, train_data, val_data, hvp, bad)
    run = store.reverse(steps, s0, head, K)
    g = run.adjoint.g
    if s0_vjp is not None:
        (g_0,) = per_objective(s0_vjp, run.adjoint.p)
        g = tree_map(jnp.add, g, g_0)
    losses = jnp.concatenate([*head_losses, run.losses]) if head_losses else run.losses
    return result(problem, hparams, run.adjoint.values, g, run.state, losses, run.diverged_at,
                  run.adjoint.grad_diverged_at)  # fmt: skip


# What 0.2's keywords became: a TypeError names the new spelling (see the README's changelog).
_OLD_STORES = {"states": "hg.States()", "residuals": "hg.Residuals()"}


def _old_keyword(name: str, value: Any) -> str:
    if name == "memory":
        return (
            f"Reverse(memory={value!r}) is gone: planning now happens once, on the host, and returns a method: "
            f"method = hg.Reverse.within({value!r}, problem, hparams, T, train_data, val_data, key=key)"
        )
    if isinstance(value, Binomial):
        new = f"hg.Binomial(slots={value.slots})"
    elif value == "sqrt" or positive_int(value):
        new = f"hg.Segments(length={value!r})"
    else:
        new = "hg.Segments(...) or hg.Binomial(slots=...)"
    return f"Reverse(checkpoint={value!r}) is now Reverse(store={new}): one store value says what is kept"


@dataclasses.dataclass(frozen=True)
class Reverse(HypergradientMethod):
    """Reverse mode: exact hypergradient for any number of hyperparameters.

    Recurrence (``A_t = ∂Φ_t/∂s_{t-1}``, ``B_t = ∂Φ_t/∂λ``): ``p_T = ∂E/∂s_T``, then for t = T..1,
    ``g += p_t B_t`` and ``p_{t-1} = p_t A_t``; finally ``g += p_0 ∂S_0/∂λ``.

    What it keeps from the forward sweep for the backward one is the trade between memory and time, one store
    value (:mod:`~hgkit.hypergrad.stores`); every store gives the same hypergradient, to rounding. With |s| the
    training state, r one step's residuals, W the working memory of a step and F(T, s) revolve's count of
    recomputed steps:

    ===============================  ============  ===========================================================
    ``store=``                       memory        time
    ===============================  ============  ===========================================================
    ``hg.Residuals()``               W + T·r       as ``jax.grad`` through ``lax.scan``: nothing recomputed
    ``hg.States()``                  W + T·|s|     each step again inside its VJP (one more training run)
    ``hg.Segments("sqrt")``          W + 2√T·|s|   two more training runs
    ``hg.Binomial(slots=s)``         W + s·|s|     one more run and F(T, s) steps (32 slots, T = 10⁴: 3.3 runs)
    ===============================  ============  ===========================================================

    ``Reverse()`` (``store=None``) keeps residuals when one step's take at most 1.5 training states (r ≤ 1.5|s|),
    states otherwise, decided from abstract evaluation of the step (:func:`~hgkit.hypergrad.planner.default_store`).
    Measured in CPU time on 2 shared CPU cores, back to back against ``jax.grad`` through ``lax.scan``
    (``benchmarks/peers.py --interleaved``, T = 1,000; BENCHMARKS.md): on a softmax regression 784→10 over 500
    images (r = 1.2|s|) storing states took 1.64× its time for 0.83× its memory, residuals 1.05× for 1.00×; on an
    MLP 784-64-10 (r = 3.2|s|) states took 1.15× its time for 0.31× its memory, residuals 0.97× for 1.00× (and on
    an H200, states were faster than ``jax.grad`` there: 0.86-0.88×). For a memory budget, :meth:`within` picks
    the store; :func:`hg.plan <hgkit.plan>` shows what any store will take.

    Args:
        store: what the forward sweep keeps: an :class:`~hgkit.Store` (:class:`~hgkit.Residuals`,
            :class:`~hgkit.States`, :class:`~hgkit.Segments`, :class:`~hgkit.Binomial`, or one of your own), or
            ``None`` (default) for the rule above.
        truncate: ``K``, back-propagate through the last K steps only (Shaban et al., "Truncated
            Back-propagation for Bilevel Optimization", AISTATS 2019): the first T − K steps run as plain
            training, keeping nothing, and the store applies to the last K, memory O(K) whatever T. The result is
            the derivative with the state ``s_{T-K}`` held constant: it ignores how λ acts through the first
            T − K steps (and through the initial weights); ``truncate=T`` is the full hypergradient. Must satisfy
            1 ≤ K ≤ T.
        hvp: how the backward sweep differentiates the gradient inside each step. ``"reverse-over-reverse"``
            (default): plain ``jax.vjp`` of the step, as ``jax.grad`` with ``jax.checkpoint`` would do it.
            ``"forward-over-reverse"``: linearizes the gradient and uses the symmetry of the Hessian. Which is
            faster depends on the model: measured on 2 CPU cores, forward-over-reverse was about 10% faster on
            an MLP 64-256-10 and about 35% slower on a softmax regression over 5,000 MNIST images, where reading
            the data dominates (``benchmarks/core_cost.py`` prints both).

    Example:
        >>> import jax.numpy as jnp, hgkit as hg
        >>> problem = hg.BilevelProblem(
        ...     init=lambda hp, key: jnp.zeros(2),
        ...     train_loss=lambda w, hp, b: jnp.sum((w - b) ** 2) + hp["wd"] * jnp.sum(w**2),
        ...     val_loss=lambda w, hp, b: jnp.sum((w - 2 * b) ** 2),
        ...     optimizer=hg.optim.sgd(0.1))
        >>> hp, b = {"wd": jnp.asarray(0.1)}, jnp.ones(2)
        >>> _, full = hg.hypergradient(problem, hp, T=50, train_data=b, val_data=b)
        >>> _, sqrt = hg.hypergradient(problem, hp, 50, b, b, method=hg.Reverse(store=hg.Segments("sqrt")))
        >>> bool(jnp.allclose(full["wd"], sqrt["wd"]))
        True
        >>> _, last = hg.hypergradient(problem, hp, 50, b, b, method=hg.Reverse(truncate=5))
        >>> bool(abs(last["wd"]) < abs(full["wd"]))  # the last 5 steps see only part of λ's effect
        True
        >>> method = hg.Reverse.within(2**20, problem, hp, 50, b, b)   # a megabyte holds every step's residuals
        >>> method.label
        'reverse mode (Residuals())'
    """

    store: Store | None = None
    truncate: int | None = None
    hvp: Literal["forward-over-reverse", "reverse-over-reverse"] = "reverse-over-reverse"

    def __new__(cls, *args, **kwargs):
        # 0.2's keywords (checkpoint=, memory=) are refused with their new spelling before the dataclass's own
        # "unexpected keyword" error, which would not say it.
        for name in ("checkpoint", "memory"):
            if name in kwargs:
                raise TypeError(_old_keyword(name, kwargs[name]))
        return super().__new__(cls)

    def __post_init__(self):
        if self.hvp not in HVP:
            raise ValueError(
                f"Reverse(hvp=...) must be 'forward-over-reverse' or 'reverse-over-reverse'; got {self.hvp!r}"
            )
        if isinstance(self.store, str) and self.store in _OLD_STORES:
            raise TypeError(f"Reverse(store={self.store!r}) is now Reverse(store={_OLD_STORES[self.store]})")
        if not (self.store is None or isinstance(self.store, Store)):
            raise TypeError(
                "Reverse(store=...) must be None (the default rule), hg.Residuals(), hg.States(), hg.Segments(...), "
                f"hg.Binomial(slots=...) or a subclass of hg.Store of your own; got {self.store!r}"
            )
        if not (self.truncate is None or positive_int(self.truncate)):
            raise ValueError(
                "Reverse(truncate=...) must be None or a positive int K (back-propagate through the last K "
                f"steps); got {self.truncate!r}"
            )

    @property
    def label(self) -> str:
        parts = [repr(self.store)] if self.store is not None else []
        parts += [f"truncate={self.truncate}"] if self.truncate is not None else []
        parts += [f"hvp={self.hvp!r}"] if self.hvp != "reverse-over-reverse" else []
        return "reverse mode" + (f" ({', '.join(parts)})" if parts else "")

    def reversed_steps(self, T: int) -> int:
        """K: the steps back-propagated through, T unless ``truncate``."""
        K = T if self.truncate is None else self.truncate
        if K > T:
            raise ValueError(
                f"Reverse(truncate=K) needs 1 ≤ K ≤ T (it back-propagates through the last K of the T training "
                f"steps); got truncate={K} with T={T}"
            )
        return K

    @classmethod
    def within(
        cls,
        budget_bytes: int,
        problem: BilevelProblem,
        hparams: PyTree,
        T: int,
        train_data: Any,
        val_data: PyTree,
        *,
        key: Any = None,
        init_state: TrainState | None = None,
        truncate: int | None = None,
        hvp: Literal["forward-over-reverse", "reverse-over-reverse"] = "reverse-over-reverse",
    ) -> Reverse:
        """The fastest reverse mode whose predicted memory fits ``budget_bytes``: a ``Reverse`` with a concrete
        store (residuals where ``Reverse()`` would keep them, states, √T segments, then binomial checkpointing with
        as many slots as fit; :mod:`~hgkit.hypergrad.planner`).

        Call it once, on the host, outside ``jit``: it compiles the hypergradient over 8 steps to measure the
        problem (abstract shapes only). The method it returns is an ordinary value: jit, vmap and hash it, pass
        it to the loop. ``ValueError`` if no store fits, naming the least any needs. ``budget_bytes`` is the
        hypergradient program's memory (:func:`~hgkit.hypergrad.planner.program_bytes`), per member of a vmapped
        population. :func:`hg.plan <hgkit.plan>` shows the chosen plan's prediction.
        """
        if not positive_int(budget_bytes):
            raise ValueError(f"Reverse.within(budget_bytes, ...) must be a positive int of bytes; got {budget_bytes!r}")
        method = cls(truncate=truncate, hvp=hvp)
        check_inputs(problem, hparams, T, train_data, val_data, key, init_state)
        K = method.reversed_steps(T)
        sizes = planner.measure(method, problem, hparams, train_data, val_data, key=key, init_state=init_state)
        return dataclasses.replace(method, store=planner.choose(sizes, budget_bytes, T, K, truncate).store)

    def run(
        self,
        problem: BilevelProblem,
        hparams: PyTree,
        T: int,
        train_data: Any,
        val_data: PyTree,
        *,
        key: Any = None,
        init_state: TrainState | None = None,
    ) -> HypergradientResult:
        """The hypergradient and what came with it; pure, so it can be jitted and vmapped."""
        check_inputs(problem, hparams, T, train_data, val_data, key, init_state)
        K = self.reversed_steps(T)
        store = self.store
        if store is None:
            store = planner.default_store(problem, hparams, train_data, key=key, init_state=init_state, hvp=self.hvp)
        return reverse_mode(problem, hparams, T, train_data, val_data, key, init_state, store=store, K=K, hvp=self.hvp)


__all__ = ["Reverse", "reverse_mode"]
