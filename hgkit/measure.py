"""What a hypergradient costs in memory and time, measured one way for the cost experiment
(:mod:`hgkit.experiments.cost`) and the classroom's cost widget (:class:`hgkit.widgets.classroom.CostExplorer`).

**Memory** (``peak_bytes``) is :func:`hgkit.hypergrad.planner.program_bytes` of the compiled program, the
definition the planner uses too: XLA's temporaries plus outputs. The arguments (the hyperparameters and the data)
are left out: the caller holds them whatever the method, so they add the same to every row and would only dilute
the growth the theory speaks of (one state per step, one tangent per hyperparameter). The figure is exact and
deterministic: no timing noise, nothing else in the process counted.

**Time** (``seconds``) is the fastest of ``repeats`` calls of the compiled program after one warm-up call
(compilation excluded). The fastest, not the median: on a shared machine other processes only ever add time, so
the minimum is the closest to the program's own cost, and slopes fitted through it (the time claims) are not
bent by one unlucky call.

Example:
    >>> import jax.numpy as jnp
    >>> from hgkit.measure import measure
    >>> cost = measure(lambda x: jnp.cumsum(x) * 2, (jnp.ones(1000, jnp.float32),), repeats=2)
    >>> sorted(cost), cost["peak_bytes"] >= 4000, cost["seconds"] > 0  # the output alone is 1000 float32
    (['peak_bytes', 'seconds'], True, True)
"""

from __future__ import annotations

import time

import jax
import numpy as np

from .hypergrad.entry import hypergradient_result
from .hypergrad.planner import program_bytes
from .problem import precision

__all__ = ["measure", "measure_hypergradient"]


def measure(fn, args: tuple, *, repeats: int) -> dict:
    """Compile ``fn`` for ``args`` once: ``{"seconds": fastest of repeats calls, "peak_bytes": temp + output}``."""
    compiled = jax.jit(fn).lower(*args).compile()
    peak = program_bytes(compiled)
    jax.block_until_ready(compiled(*args))  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - start)
    return {"seconds": float(np.min(times)), "peak_bytes": peak}


def measure_hypergradient(problem, hparams, T: int, train_data, val_data, *, method, repeats: int) -> dict:
    """:func:`measure` of one hypergradient (its value and gradient) of ``problem`` by ``method``, at the problem's
    ``matmul_precision`` as :func:`hgkit.hypergradient` runs it."""

    def hypergradient(hp, train, val):
        return hypergradient_result(problem, hp, T, train, val, method=method)[:2]

    with precision(problem):
        return measure(hypergradient, (hparams, train_data, val_data), repeats=repeats)
