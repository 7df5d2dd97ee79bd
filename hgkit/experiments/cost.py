"""The cost of a hypergradient: time and memory of reverse and forward mode as T, m and the model grow.

Franceschi et al. (2017, §3, Table 1): with a training state ``s`` of |s| numbers, T inner steps and m scalar
hyperparameters,

===========  ===================  ==================
mode         time                 memory
===========  ===================  ==================
reverse      O(T · c)             O(T · |s|)          (the T states, for the backward pass)
forward      O(m · T · c)         O(m · |s|)          (one tangent of the state per hyperparameter)
===========  ===================  ==================

where c is the cost of one training step. So reverse mode's memory grows with T and not with m, forward mode's
memory is flat in T and its time grows with m. The time claims count work: on a CPU work is time, but a GPU
pushes the m tangents in parallel, so there forward mode's time stays nearly flat in m until the device is busy
(measured on an H200 at the DEFAULT size: log-log slope 0.11 from m = 1 to 64, while every memory claim held).

**The problem measured.** A one-hidden-layer MLP (``inputs → width → classes``, tanh, cross-entropy) on a fixed
batch of Gaussian inputs with random labels, trained by heavy-ball momentum (μ = 0.9) with m learning rates: entry
j of every weight array uses ``lr[j mod m]`` (parameter groups). The state is the weights and the velocity.

**How it is measured.** By :func:`hgkit.measure.measure_hypergradient`, the definition the classroom's cost
widget shares: each point is compiled once (``jax.jit(f).lower(...).compile()``); its memory is the compiled
program's temporaries + outputs (:func:`hgkit.hypergrad.planner.program_bytes`: exact, deterministic, no timing
noise; the arguments, the same for every method, are left out); its time is the fastest of ``repeats`` calls
after a warm-up call (compilation excluded; the fastest, not the median, because other processes on a shared
machine only ever add time). Three sweeps share one base point ``(T, m, width)``: T varies, then m, then width.

This module owns the cost problem, the sweeps, the claims checked against them and the report (``cost.md``,
``cost.csv``, ``cost.png``).

Example:
    >>> from hgkit.experiments import cost
    >>> config = cost.Config(Ts=(4, 8), ms=(1, 2), widths=(4,), T=4, m=1, width=4, examples=16, repeats=1)
    >>> config.points()  # (T, m, width): the T sweep, then the m sweep, then the width sweep, shared points once
    [(4, 1, 4), (8, 1, 4), (4, 2, 4)]
    >>> row = cost.measure(config, "reverse", T=8, m=1, width=4)
    >>> row["state_numbers"], row["peak_bytes"] > 8 * row["state_bytes"]  # the 8 states are stored
    (364, True)
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

import hgkit as hg

from .._checks import positive_int
from ..measure import measure_hypergradient
from ._config import check_positive_ints
from ._models import cross_entropy, mlp
from ._report import FailureLog, failures_note, markdown_table, save_figure, write_tables

NAME = "cost"
TITLE = "Cost of reverse and forward hypergradients: time and memory against T, m and model size (§3)"

METHODS = {"reverse": hg.Reverse(), "forward": hg.Forward()}
MOMENTUM = 0.9


@dataclasses.dataclass(frozen=True)
class Config:
    """The sweeps (``Ts``, ``ms``, ``widths``) around the base point ``(T, m, width)``, and the problem's size.

    Attributes:
        Ts: inner steps measured (at the base m and width).
        ms: numbers of hyperparameters (learning-rate groups) measured (at the base T and width).
        widths: hidden widths measured (at the base T and m).
        T, m, width: the base point.
        inputs, classes, examples: the MLP's input size, output size and the batch size.
        repeats: timed calls per point (the fastest is kept).
        dtype: ``"float32"`` or ``"float64"``.
        seed: the data's seed.
    """

    Ts: tuple[int, ...] = (25, 50, 100, 200, 400)
    ms: tuple[int, ...] = (1, 4, 16, 64)
    widths: tuple[int, ...] = (16, 64, 256)
    T: int = 100
    m: int = 4
    width: int = 64
    inputs: int = 32
    classes: int = 10
    examples: int = 256
    repeats: int = 5
    dtype: str = "float32"
    seed: int = 0

    def __post_init__(self):
        for name in ("Ts", "ms", "widths"):
            values = getattr(self, name)
            if not values or not all(map(positive_int, values)):
                raise ValueError(f"Config.{name} must be a non-empty tuple of positive ints; got {values!r}")
        check_positive_ints(self, ("T", "m", "width", "inputs", "classes", "examples", "repeats"))
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"Config.dtype must be 'float32' or 'float64'; got {self.dtype!r}")

    def points(self) -> list[tuple[int, int, int]]:
        """The distinct ``(T, m, width)`` measured, in sweep order."""
        sweep = [(t, self.m, self.width) for t in self.Ts]
        sweep += [(self.T, k, self.width) for k in self.ms]
        sweep += [(self.T, self.m, w) for w in self.widths]
        return list(dict.fromkeys(sweep))


SMOKE = Config(Ts=(10, 40), ms=(1, 16), widths=(8,), T=10, m=1, width=8, examples=2048, repeats=5)
DEFAULT = Config()
FULL = Config(Ts=(25, 50, 100, 200, 400, 800, 1600), ms=(1, 2, 4, 8, 16, 32, 64, 128), widths=(16, 64, 256, 1024))


# ----- the problem --------------------------------------------------------------------------------------------


def _grouped(lr):
    """Entry j of a weight array of any shape uses ``lr[j mod m]``: m learning-rate groups across the network."""

    def per(shape):
        size = int(np.prod(shape))
        return lr[jnp.arange(size) % lr.shape[0]].reshape(shape)

    return per


@functools.cache
def problem_and_data(inputs: int, width: int, classes: int, examples: int, dtype: str, seed: int):
    """The MLP problem with grouped learning rates, and its training and validation batches."""
    rng = np.random.default_rng(seed)
    shapes = {"w1": (inputs, width), "b1": (width,), "w2": (width, classes), "b2": (classes,)}
    scales = {"w1": inputs**-0.5, "b1": 0.0, "w2": width**-0.5, "b2": 0.0}
    init_params = {k: jnp.asarray(scales[k] * rng.normal(size=s), dtype) for k, s in shapes.items()}

    def batch():
        return jnp.asarray(rng.normal(size=(examples, inputs)), dtype), jnp.asarray(
            rng.integers(0, classes, size=examples), jnp.int32
        )

    def lr(hparams, step):
        per = _grouped(hparams["lr"])
        return {k: per(s) for k, s in shapes.items()}

    problem = hg.BilevelProblem(
        init=lambda hparams, key: init_params,
        train_loss=lambda w, hparams, b: cross_entropy(mlp(w, b[0]), b[1]),
        val_loss=lambda w, hparams, b: cross_entropy(mlp(w, b[0]), b[1]),
        optimizer=hg.optim.momentum(lr=lr, momentum=MOMENTUM),
    )
    state_numbers = 2 * sum(int(np.prod(s)) for s in shapes.values())  # weights and velocity
    return problem, batch(), batch(), state_numbers


def measure(config: Config, method: str, T: int, m: int, width: int) -> dict:
    """One row of the cost table: the hypergradient's compiled memory and time (``config.repeats`` calls)."""
    problem, train, val, state_numbers = problem_and_data(
        config.inputs, width, config.classes, config.examples, config.dtype, config.seed
    )
    hparams = {"lr": jnp.full((m,), 0.05, config.dtype)}
    cost = measure_hypergradient(problem, hparams, T, train, val, method=METHODS[method], repeats=config.repeats)
    return {
        "method": method,
        "T": T,
        "m": m,
        "seconds": cost["seconds"],
        "peak_bytes": cost["peak_bytes"],
        "width": width,
        "state_numbers": state_numbers,
        "state_bytes": state_numbers * np.dtype(config.dtype).itemsize,
    }


# ----- the results --------------------------------------------------------------------------------------------


def _sweep(costs: pd.DataFrame, config: Config, method: str, x: str) -> pd.DataFrame:
    fixed = {"T": config.T, "m": config.m, "width": config.width}
    rows = costs[costs["method"] == method]
    for name, value in fixed.items():
        if name != x:
            rows = rows[rows[name] == value]
    return rows.sort_values(x)


def _per_unit(rows: pd.DataFrame, x: str, y: str) -> float:
    """The least-squares slope of y against x (bytes per step, per hyperparameter)."""
    if len(rows) < 2:
        return float("nan")
    return float(np.polyfit(rows[x].to_numpy(float), rows[y].to_numpy(float), 1)[0])


def _exponent(rows: pd.DataFrame, x: np.ndarray, y: str) -> float:
    """The log-log slope of y against x: 1 for proportional, 0 for flat."""
    if len(rows) < 2:
        return float("nan")
    return float(np.polyfit(np.log(x), np.log(rows[y].to_numpy(float)), 1)[0])


def _ratio(rows: pd.DataFrame, y: str) -> float:
    values = rows[y].to_numpy(float)
    return float(values[-1] / values[0]) if len(values) > 1 else float("nan")


def check_claims(costs: pd.DataFrame, config: Config) -> pd.DataFrame:
    """The paper's complexity claims against the measurements: one row per claim, with whether it holds.

    Memory claims are read from exact compiled sizes: reverse mode's bytes per extra inner step and forward mode's
    bytes per extra hyperparameter are compared with the state's size |s| (their theory: one state, one tangent,
    i.e. a ratio near 1). Time claims are log-log slopes (1: proportional, 0: flat), loose because timings on a
    shared CPU are noisy and constant overheads flatten small sizes.
    """
    state_bytes = float(costs["state_bytes"][(costs["width"] == config.width)].iloc[0])
    rev_T, fwd_T = _sweep(costs, config, "reverse", "T"), _sweep(costs, config, "forward", "T")
    rev_m, fwd_m = _sweep(costs, config, "reverse", "m"), _sweep(costs, config, "forward", "m")
    rev_w, fwd_w = _sweep(costs, config, "reverse", "width"), _sweep(costs, config, "forward", "width")
    per_step = _per_unit(rev_T, "T", "peak_bytes") / state_bytes
    per_hp = _per_unit(fwd_m, "m", "peak_bytes") / state_bytes
    fwd_mem_m = _exponent(fwd_m, fwd_m["m"].to_numpy(float), "peak_bytes")
    fwd_flat = _ratio(fwd_T, "peak_bytes")
    rev_flat_m = _ratio(rev_m, "peak_bytes")
    fwd_time_m = _exponent(fwd_m, 1 + fwd_m["m"].to_numpy(float), "seconds")
    rev_time_m = _ratio(rev_m, "seconds")
    rev_time_T = _exponent(rev_T, rev_T["T"].to_numpy(float), "seconds")
    fwd_time_T = _exponent(fwd_T, fwd_T["T"].to_numpy(float), "seconds")
    rev_mem_s = _exponent(rev_w, rev_w["state_numbers"].to_numpy(float), "peak_bytes")
    fwd_mem_s = _exponent(fwd_w, fwd_w["state_numbers"].to_numpy(float), "peak_bytes")
    m_span = f"m={fwd_m['m'].min()}..{fwd_m['m'].max()}"
    T_span = f"T={rev_T['T'].min()}..{rev_T['T'].max()}"
    s_span = f"|s|={rev_w['state_numbers'].min():,}..{rev_w['state_numbers'].max():,}"
    rows = [
        ("reverse memory ∝ T", "O(T·|s|)", f"+{per_step:.2f}·|s| bytes per inner step", per_step, 0.5 <= per_step <= 4),
        ("forward memory flat in T", "O(m·|s|)", f"×{fwd_flat:.3f} over {T_span}", fwd_flat, abs(fwd_flat - 1) <= 0.1),
        (
            "forward memory ∝ m",
            "O(m·|s|)",
            f"log-log slope {fwd_mem_m:.2f} over {m_span} (+{per_hp:.1f}·|s| bytes per hyperparameter: the tangents "
            "of the state and of one step's activations)",
            fwd_mem_m,
            fwd_mem_m >= 0.5,
        ),
        (
            "reverse memory flat in m",
            "O(T·|s|)",
            f"×{rev_flat_m:.3f} over {m_span}",
            rev_flat_m,
            abs(rev_flat_m - 1) <= 0.1,
        ),
        ("forward time ∝ m", "O(m·T)", f"log-log slope {fwd_time_m:.2f} against 1+m", fwd_time_m, fwd_time_m >= 0.5),
        ("reverse time flat in m", "O(T)", f"×{rev_time_m:.2f} over {m_span}", rev_time_m, rev_time_m <= 2),
        ("reverse time ∝ T", "O(T)", f"log-log slope {rev_time_T:.2f} over {T_span}", rev_time_T, rev_time_T >= 0.6),
        ("forward time ∝ T", "O(m·T)", f"log-log slope {fwd_time_T:.2f} over {T_span}", fwd_time_T, fwd_time_T >= 0.6),
        (
            "reverse memory ∝ |s|",
            "O(T·|s|)",
            f"log-log slope {rev_mem_s:.2f} over {s_span}",
            rev_mem_s,
            rev_mem_s >= 0.6,
        ),
        (
            "forward memory ∝ |s|",
            "O(m·|s|)",
            f"log-log slope {fwd_mem_s:.2f} over {s_span}",
            fwd_mem_s,
            fwd_mem_s >= 0.6,
        ),
    ]
    # A sweep of a single point measures nothing: its claim is left undecided rather than failed.
    rows = [
        (c, p, m if np.isfinite(v) else "not measured (one point)", bool(h) if np.isfinite(v) else None)
        for c, p, m, v, h in rows
    ]
    return pd.DataFrame(rows, columns=["claim", "paper", "measured", "holds"])


@dataclasses.dataclass(frozen=True)
class Results:
    """The cost table (:data:`hgkit.plot.COST_COLUMNS` plus ``width``, ``state_numbers``, ``state_bytes``),
    the claims checked against it, the config, and what failed (``failures``,
    :class:`~hgkit.experiments._report.RunFailure`; a point that failed has no row, the claims use the others)."""

    config: Config
    costs: pd.DataFrame
    claims: pd.DataFrame
    device: str
    failures: tuple = ()

    def summary(self) -> str:
        c = self.config
        base = self.costs[self.costs["width"] == c.width] if len(self.costs) else self.costs
        state = "|s| not measured"
        if len(base):
            numbers, nbytes = int(base["state_numbers"].iloc[0]), int(base["state_bytes"].iloc[0])
            state = f"|s| = {numbers:,} numbers ({nbytes / 2**10:.1f} KiB, {c.dtype})"
        head = f"{TITLE}\nMLP {c.inputs}-{c.width}-{c.classes}, {state}, base point T={c.T}, m={c.m}; {self.device}\n"
        decided = self.claims["holds"].dropna()
        return (
            head
            + markdown_table(self.claims)
            + f"\n{int(decided.sum())} of {len(decided)} claims measured hold."
            + failures_note(self.failures)
        )


def run(config: Config = DEFAULT, progress: bool = True) -> Results:
    """Measure every point of the sweeps with both methods. A point that raises is recorded in ``Results.failures``
    (method ``"<method> at T=…, m=…, width=…"``) and the others go on; so are the claims if they cannot be checked."""
    from tqdm.auto import tqdm

    failures = FailureLog()
    jobs = [(method, *point) for point in config.points() for method in METHODS]
    rows = []
    for method, T, m, width in tqdm(jobs, desc="cost", disable=not progress):
        row = failures.attempt(
            config.seed, f"{method} at T={T}, m={m}, width={width}", measure, config, method, T, m, width
        )
        if row is not None:
            rows.append(row)
    costs = pd.DataFrame(rows)
    claims = failures.attempt(config.seed, "claims", check_claims, costs, config)
    if claims is None:
        claims = pd.DataFrame(columns=["claim", "paper", "measured", "holds"])
    return Results(config, costs, claims, jax.devices()[0].device_kind, tuple(failures.records))


def draw(fig, results: Results) -> dict:
    """Memory and time (rows) against T, m and width (columns), measured with the theory's growth dashed."""
    from .. import plot
    from ..plot.cost import METHOD_COLORS

    c = results.config
    grid = fig.subplots(2, 3)
    axes = {}
    for row, y in enumerate(("peak_bytes", "seconds")):
        for col, x in enumerate(("T", "m")):
            ax = grid[row, col]
            rows = results.costs[results.costs["width"] == c.width]
            rows = rows[rows["m" if x == "T" else "T"] == (c.m if x == "T" else c.T)]
            plot.cost_curves(ax, rows, x=x, y=y, theory=True)
            ax.set_title(f"{'m' if x == 'T' else 'T'} = {c.m if x == 'T' else c.T}, width {c.width}")
            ax.legend(fontsize="x-small")
            axes[f"{y}/{x}"] = ax
        ax = grid[row, 2]
        for method in METHODS:
            rows = _sweep(results.costs, c, method, "width")
            ax.plot(rows["state_numbers"], rows[y], marker="o", color=METHOD_COLORS[method], label=method)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("state size |s| (numbers)")
        ax.set_ylabel("peak memory (bytes)" if y == "peak_bytes" else "time per hypergradient (s)")
        ax.set_title(f"T = {c.T}, m = {c.m}")
        ax.legend(fontsize="x-small")
        axes[f"{y}/width"] = ax
    return axes


def write_report(results: Results, out_dir) -> list[Path]:
    """``cost.md`` (the table and the claims), ``cost.csv`` and ``cost.png``."""
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    notes = "## The paper's claims\n\n" + markdown_table(results.claims)
    paths = write_tables(results.costs, out_dir, "cost", TITLE, notes, results.failures)
    fig = plt.figure(figsize=(15, 8.5), layout="constrained")
    draw(fig, results)
    fig.suptitle(f"Reverse and forward hypergradients: cost ({results.device})")
    paths.append(save_figure(fig, out_dir / "cost.png"))
    return paths
