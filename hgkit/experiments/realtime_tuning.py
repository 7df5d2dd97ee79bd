"""Real-time hyperparameter optimization (RTHO; Franceschi et al., 2017, §5.3) on MNIST.

One network is trained once, by minibatch heavy-ball momentum on the training loss

    L(w; λ) = CE(w; minibatch) + ½ wd · Σ‖W‖²,        w ← w − η v,  v ← μ v + ∇L,

and every Δ steps the learning rate η, the momentum μ and the weight decay wd are updated by Adam on the
real-time hypergradient of the validation cross-entropy E(w_t): forward mode's tangents ``Z_t = dw_t/dλ`` are
carried along the single run and never reset, so after each chunk ``dE/dλ ≈ ∂E/∂w_t Z_t`` costs nothing extra
but the tangents' upkeep, about m = 3 more Jacobian-vector products per step: (1 + m)× a plain step.
η and wd are optimized in log space (``λ = exp u``), μ through a sigmoid (``μ = σ(u)`` in (0, 1)).

Compared, on the same network, minibatches and initial weights (the paper's TIMIT is not freely available, so
this is MNIST, with the clean labels of the packaged 5,000 / 5,000 / 10,000 split):

* **fixed**: the initial hyperparameters, never changed (T plain steps);
* **RTHO**: one run of T steps tuned online, charged (1 + m)·T step-equivalents;
* **random search**: the same (1 + m)·T step-equivalents spent as 1 + m full runs of T steps at hyperparameters
  drawn log-uniformly (η, wd) and uniformly (μ); the run with the lowest validation error is kept.

Wall times leave compilation out (each method compiles once; on small problems that would dominate).

This module owns the experiment's config, problem, the three methods and the report (``real-time.md``, ``.csv``,
``real-time-hyperparameters.png``, ``real-time-validation.png``); seed loop, config checks, models, data and report
files are the ones every experiment shares.

Example:
    >>> from hgkit.experiments import realtime_tuning as rt
    >>> rt.Config(T=100, delta=30)
    Traceback (most recent call last):
    ...
    ValueError: Config.delta (30) must divide Config.T (100): real time runs T/Δ whole chunks
    >>> rt.step_equivalents(T=1000, m=3)  # fixed, RTHO and random search
    {'fixed': 1000, 'RTHO': 4000, 'random search': 4000}
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pandas as pd

import hgkit as hg

from ._config import check_positive_ints, check_seeds, check_split_sizes
from ._data import minibatch_fn, mnist
from ._models import cross_entropy, error_rate, mlp, mlp_init, plain_training, weight_norm2
from ._report import (
    FailureLog,
    failed_methods,
    failures_note,
    mark_missing,
    markdown_table,
    mean_over_seeds,
    over_seeds,
    save_figure,
    write_tables,
)

NAME = "real-time"
TITLE = "Real-time tuning of learning rate, momentum and weight decay on MNIST (RTHO, §5.3)"

HYPERPARAMETERS = ("lr", "mu", "wd")
METHODS = ("fixed", "RTHO", "random search")
METHOD_COLORS = {"fixed": "0.4", "RTHO": "tab:red", "random search": "tab:green"}


@dataclasses.dataclass(frozen=True)
class Config:
    """Sizes, the starting hyperparameters, RTHO's settings and random search's ranges.

    Attributes:
        n_train, n_val, n_test: how many of the packaged split's 5,000 / 5,000 / 10,000 images are used.
        width: the MLP's hidden units (784 → width → 10).
        batch_size: the minibatch of each inner step.
        T: inner steps of every training run; delta: Δ, inner steps between hyperparameter updates.
        lr, momentum, weight_decay: the starting (and, for "fixed", the only) hyperparameters.
        hyper_lr: Adam's step on the reparameterized hyperparameters (log η, logit μ, log wd). The default, 0.05,
            keeps RTHO away from the edge of stability, chosen on validation error over seeds 0-2 among 0.05, 0.1
            and 0.2 (RESULTS.md): 0.2 did best on another machine, but there it sits at the edge, where RTHO drives
            η/(1 − μ) up until its tangent overflows on one seed of three and the outcome then depends on the
            processor's rounding; 0.05 gives the same numbers on both machines.
        restart_above: RTHO's guard at the edge of stability (``hg.HyperOptimizer(restart_above=...)``): a chunk
            whose hypergradient is non-finite or above it leaves λ unchanged and restarts the tangents from zero,
            where the run would otherwise end with a HyperDivergenceError. The default, ``inf``, acts only on
            non-finite hypergradients, so a run that never blows up is exactly the unguarded one; ``none`` turns
            it off. (At Adam's step 0.2, seed 0 drove η to 0.56 and μ to 0.95 and the tangent overflowed at chunk 33,
            on this project's current machine and on another; at the default step it never acts.)
        lr_range, weight_decay_range: random search's log-uniform ranges; momentum_range: its uniform range.
        seeds: one repetition per seed (weights, minibatch order and random search's draws).
    """

    n_train: int = 5000
    n_val: int = 5000
    n_test: int = 10000
    width: int = 100
    batch_size: int = 100
    T: int = 3000
    delta: int = 50
    lr: float = 0.02
    momentum: float = 0.5
    weight_decay: float = 1e-3
    hyper_lr: float = 0.05
    restart_above: float | None = math.inf
    lr_range: tuple[float, float] = (1e-3, 0.5)
    momentum_range: tuple[float, float] = (0.0, 0.95)
    weight_decay_range: tuple[float, float] = (1e-6, 1e-2)
    seeds: tuple[int, ...] = (0,)

    def __post_init__(self):
        check_positive_ints(self, ("n_train", "n_val", "n_test", "width", "batch_size", "T", "delta"))
        check_split_sizes(self, ("n_train", "n_val", "n_test"))
        if self.T % self.delta:
            raise ValueError(
                f"Config.delta ({self.delta}) must divide Config.T ({self.T}): real time runs T/Δ whole chunks"
            )
        if self.batch_size > self.n_train:
            raise ValueError(f"Config.batch_size ({self.batch_size}) exceeds Config.n_train ({self.n_train})")
        if not (self.lr > 0 and self.weight_decay > 0 and 0 < self.momentum < 1 and self.hyper_lr > 0):
            raise ValueError(
                "Config needs lr > 0, weight_decay > 0, 0 < momentum < 1 and hyper_lr > 0; got "
                f"lr={self.lr}, weight_decay={self.weight_decay}, momentum={self.momentum}, hyper_lr={self.hyper_lr}"
            )
        if self.restart_above is not None and not self.restart_above > 0:
            raise ValueError(
                f"Config.restart_above must be > 0 (inf: non-finite only) or None; got {self.restart_above}"
            )
        for name in ("lr_range", "momentum_range", "weight_decay_range"):
            lo, hi = getattr(self, name)
            if not (0 <= lo < hi) or (name != "momentum_range" and lo <= 0) or (name == "momentum_range" and hi >= 1):
                raise ValueError(f"Config.{name} must be an increasing pair within its domain; got {(lo, hi)}")
        check_seeds(self)


SMOKE = Config(n_train=1000, n_val=500, n_test=1000, width=16, batch_size=50, T=200, delta=20, hyper_lr=0.1)
DEFAULT = Config()
FULL = Config(width=100, T=6000, delta=100, seeds=(0, 1, 2))


def step_equivalents(T: int, m: int) -> dict[str, int]:
    """The compute each method is charged, in plain inner steps: RTHO's tangents make a step (1 + m)× dearer,
    and random search gets that budget as 1 + m runs of T steps."""
    return {"fixed": T, "RTHO": (1 + m) * T, "random search": (1 + m) * T}


# ----- the problem --------------------------------------------------------------------------------------------


def load_data(config: Config):
    """The packaged split, cut to the configured sizes, as float32 / int32 device arrays (clean labels)."""
    return mnist(train=config.n_train, val=config.n_val, test=config.n_test)


def make_problem(config: Config, data, seed: int):
    """The bilevel problem and its minibatch function ``step -> (x, y)`` for one seed."""
    x, y = data["train"]
    batch = minibatch_fn(x, y, config.batch_size, config.T, np.random.default_rng(seed))

    def train_loss(w, hp, b):
        return cross_entropy(mlp(w, b[0]), b[1]) + 0.5 * hp["wd"] * weight_norm2(w)

    def val_loss(w, hp, b):
        return cross_entropy(mlp(w, b[0]), b[1])

    problem = hg.BilevelProblem(
        init=lambda hp, key: mlp_init(key, x.shape[1], config.width, 10),
        train_loss=train_loss,
        val_loss=val_loss,
        optimizer=hg.optim.momentum(lr="lr", momentum="mu"),
    )
    return problem, batch


def hparams_of(lr: float, mu: float, wd: float) -> dict:
    return {"lr": jnp.asarray(lr, jnp.float32), "mu": jnp.asarray(mu, jnp.float32), "wd": jnp.asarray(wd, jnp.float32)}


@jax.jit
def evaluate(params, x, y):
    """``(cross-entropy, error rate)`` of the MLP on ``(x, y)``."""
    logits = mlp(params, x)
    return cross_entropy(logits, y), error_rate(logits, y)


def train_fixed(problem, batch, hp, config: Config, data, key, clock_offset: float = 0.0):
    """T plain steps under fixed ``hp``, the validation loss and error after every chunk of Δ steps.

    ``wall_time`` counts from after a warm-up chunk and evaluation that compile (compilation is not charged).
    """
    state = hg.initial_state(problem, hp, key)
    warm = plain_training(problem, hp, batch, config.delta, state=state).state
    jax.block_until_ready(evaluate(warm.params, *data["val"]))
    rows, start = [], time.perf_counter()
    for chunk in range(config.T // config.delta):
        state = plain_training(problem, hp, batch, config.delta, state=state, first=chunk * config.delta).state
        val_loss, val_error = jax.device_get(evaluate(state.params, *data["val"]))
        rows.append(
            dict(
                chunk=chunk,
                inner_steps=(chunk + 1) * config.delta,
                wall_time=clock_offset + time.perf_counter() - start,
                val_loss=float(val_loss),
                val_error=float(val_error),
            )
        )
    return state.params, pd.DataFrame(rows)


# ----- the three methods ----------------------------------------------------------------------------------------


def run_rtho(problem, batch, config: Config, data, key, progress: bool):
    """One training run tuned online by RTHO; the loop's result."""
    x_val, y_val = data["val"]
    opt = hg.HyperOptimizer(
        problem,
        method=hg.RealTime(delta=config.delta),
        hyper_optimizer=optax.adam(config.hyper_lr),
        constraints={"lr": hg.constraints.log(), "mu": hg.constraints.sigmoid(0.0, 1.0), "wd": hg.constraints.log()},
        metrics={"val_error": lambda params, hp: error_rate(mlp(params, x_val), y_val)},
        restart_above=config.restart_above,
    )
    hp0 = hparams_of(config.lr, config.momentum, config.weight_decay)
    return opt.run(hp0, T=config.T, train_data=batch, val_data=data["val"], key=key, progress=progress)


def sample_configs(config: Config, n: int, seed: int) -> list[dict]:
    """``n`` random-search draws: η and wd log-uniform, μ uniform in their ranges."""
    rng = np.random.default_rng([seed, 1])

    def log_uniform(lo, hi):
        return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))

    return [
        dict(
            lr=log_uniform(*config.lr_range),
            mu=float(rng.uniform(*config.momentum_range)),
            wd=log_uniform(*config.weight_decay_range),
        )
        for _ in range(n)
    ]


def run_one_seed(config: Config, data, seed: int, progress: bool, failures: FailureLog):
    """The three methods on one seed: the summary rows, the trajectories (one DataFrame per method) and RTHO's loop
    result. The methods do not depend on each other: one that raises is recorded in ``failures`` and has no row;
    if RTHO diverged, its trajectory up to then and its partial result are kept for the figures."""
    problem, batch = make_problem(config, data, seed)
    key = jax.random.PRNGKey(seed)
    budget = step_equivalents(config.T, len(HYPERPARAMETERS))

    def test_accuracy(params):
        return 1.0 - float(evaluate(params, *data["test"])[1])

    def fixed():
        hp0 = dict(lr=config.lr, mu=config.momentum, wd=config.weight_decay)
        params, curve = train_fixed(problem, batch, hparams_of(**hp0), config, data, key)
        row = dict(**hp0, **_final(curve), test_accuracy=test_accuracy(params))
        return row, curve.assign(step_equivalents=curve["inner_steps"])

    def rtho():
        result = run_rtho(problem, batch, config, data, key, progress)
        tuned = {k: float(v) for k, v in result.hparams.items()}
        # The history's last row is the final weights' validation loss and error (the loss and the metric).
        row = dict(**tuned, **_final(result.history), test_accuracy=test_accuracy(result.state.params))
        return row, rtho_curve(result.history), result

    def random_search():  # with RTHO's budget
        draws = sample_configs(config, budget["random search"] // config.T, seed)
        runs, clock = [], 0.0
        for i, hp in enumerate(draws):
            params, curve = train_fixed(problem, batch, hparams_of(**hp), config, data, key, clock_offset=clock)
            clock = float(curve["wall_time"].iloc[-1])
            curve = curve.assign(run=i, step_equivalents=curve["inner_steps"] + i * config.T)
            runs.append((curve, params, hp))
        best_curve, best_params, best_hp = min(runs, key=lambda r: r[0]["val_error"].iloc[-1])
        row = dict(**best_hp, **_final(best_curve), test_accuracy=test_accuracy(best_params))
        return row, pd.concat([c for c, _, _ in runs], ignore_index=True)

    methods = {"fixed": fixed, "RTHO": rtho, "random search": random_search}
    outs = {method: failures.attempt(seed, method, fn) for method, fn in methods.items()}
    rows, curves = [], {}
    for method, out in outs.items():
        if out is not None:
            row, curves[method] = out[:2]
            wall_time = float(curves[method]["wall_time"].iloc[-1])
            rows.append(dict(seed=seed, method=method, **row, step_equivalents=budget[method], wall_time=wall_time))
    if outs["RTHO"] is not None:
        return pd.DataFrame(rows), curves, outs["RTHO"][2]
    result = failures.partial(seed, "RTHO")  # what RTHO left if it diverged: its trajectory up to then
    if result is not None and len(result.history):
        curves["RTHO"] = rtho_curve(result.history)
    return pd.DataFrame(rows), curves, result


def rtho_curve(history: pd.DataFrame) -> pd.DataFrame:
    """RTHO's trajectory (validation loss and error after every chunk) from its loop history."""
    m = len(HYPERPARAMETERS)
    return pd.DataFrame(
        dict(
            chunk=history["iteration"],
            inner_steps=history["inner_steps"],
            wall_time=_without_compilation(history["wall_time"].to_numpy(float)),
            val_loss=history["val_loss"],
            val_error=history["val_error"],
            step_equivalents=history["inner_steps"] * (1 + m),
        )
    )


def _without_compilation(wall_time: np.ndarray) -> np.ndarray:
    """The loop's clock less its first chunk's compilation, that chunk taken to last as long as the second."""
    if len(wall_time) < 2:
        return wall_time
    first = wall_time[1] - wall_time[0]
    return wall_time - wall_time[0] + first


def _final(curve: pd.DataFrame) -> dict:
    return dict(val_loss=float(curve["val_loss"].iloc[-1]), val_error=float(curve["val_error"].iloc[-1]))


# ----- results --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Results:
    """Per seed and method the final hyperparameters, validation loss and error, test accuracy, compute charged
    and wall time (``table``); the first seed's trajectories (``curves``) and RTHO's loop result (``rtho``); what
    failed (``failures``, :class:`~hgkit.experiments._report.RunFailure`), whose rows the table lacks.

    If RTHO diverged on the first seed, ``rtho`` is its result up to then (``rtho.stopped == "diverged"``) and
    ``curves["RTHO"]`` its trajectory; a method that failed otherwise has no curve, and ``rtho`` may be None.
    """

    config: Config
    table: pd.DataFrame
    curves: dict
    rtho: object
    failures: tuple = ()

    def means(self) -> pd.DataFrame:
        """Mean and standard deviation over seeds per method."""
        columns = ["val_error", "test_accuracy", "step_equivalents", "wall_time"]
        return mean_over_seeds(self.table, columns, spread=["val_error", "test_accuracy"])

    def summary(self) -> str:
        c = self.config
        return (
            f"{TITLE}\nMLP 784-{c.width}-10, {c.n_train} training images, minibatches of {c.batch_size}, T = {c.T}, "
            f"Δ = {c.delta}; seeds {list(c.seeds)}\n"
            f"RTHO (seed {c.seeds[0]}): {self._rtho_moves()}\n" + markdown_table(self.means())
        ) + failures_note(self.failures)

    def _rtho_moves(self) -> str:
        history = None if self.rtho is None else self.rtho.history
        if history is None or not len(history):
            return "failed before its first chunk"
        start = {k: float(history[k].iloc[0]) for k in HYPERPARAMETERS}
        end = {k: float(v) for k, v in self.rtho.hparams.items()}
        moves = ", ".join(f"{k} {start[k]:.3g} → {end[k]:.3g}" for k in HYPERPARAMETERS)
        text = (
            f"{moves}; validation loss {history['val_loss'].iloc[0]:.3f} → {history['val_loss'].iloc[-1]:.3f} over "
            f"{len(history)} chunks"
        )
        return f"failed; until then {text}" if "RTHO" in failed_methods(self.failures, self.config.seeds[0]) else text


def run(config: Config = DEFAULT, progress: bool = True) -> Results:
    """Every method on every seed; one that raises is recorded in ``Results.failures`` and the others go on."""
    data = load_data(config)
    failures = FailureLog()
    table, per_seed = over_seeds(
        config.seeds, lambda seed: run_one_seed(config, data, seed, progress, failures), failures
    )
    curves, rtho = per_seed.get(config.seeds[0], ({}, None))
    return Results(config, table, curves, rtho, tuple(failures.records))


def draw_trajectories(fig, results: Results) -> dict:
    """RTHO's η, μ and wd against inner steps, one panel each, the fixed values dashed (up to the divergence if
    it diverged)."""
    from .. import plot

    history = None if results.rtho is None else results.rtho.history
    axes = {}
    for ax, name in zip(fig.subplots(1, 3), HYPERPARAMETERS, strict=True):
        axes[name] = ax
        if history is None or not len(history):
            mark_missing(ax, "RTHO failed before its first chunk")
            continue
        plot.hyperparameters(ax, history, [name], x="inner_steps")
        ax.axhline(float(history[name].iloc[0]), color="0.5", linestyle="--", label="fixed")
        ax.set_title({"lr": "learning rate η", "mu": "momentum μ", "wd": "weight decay"}[name])
        if name != "mu":
            ax.set_yscale("log")
        ax.legend(fontsize="small")
    return axes


def draw_validation(fig, results: Results) -> dict:
    """Validation error against wall time and against compute charged, for the three methods (first seed).

    Random search's runs are drawn one after the other; its thick line is the best validation error so far. A
    method that failed is left out, or drawn up to its divergence and labelled "failed".
    """
    axes = dict(zip(("wall_time", "step_equivalents"), fig.subplots(1, 2), strict=True))
    failed = failed_methods(results.failures, results.config.seeds[0])
    for x, ax in axes.items():
        if not results.curves:
            mark_missing(ax, "every method failed")
            continue
        for method in METHODS:
            if method not in results.curves:
                continue
            curve = results.curves[method]
            color = METHOD_COLORS[method]
            if method == "random search":
                for _, run in curve.groupby("run"):
                    ax.plot(run[x], run["val_error"], color=color, alpha=0.3, linewidth=1)
                ends = curve.groupby("run").tail(1)
                ax.step(ends[x], ends["val_error"].cummin(), where="post", color=color, linewidth=2, label=method)
            else:
                label, marker = (f"{method} (failed)", "x") if method in failed else (method, None)
                ax.plot(curve[x], curve["val_error"], color=color, linewidth=2, label=label, marker=marker)
        ax.set_xlabel("wall time (s)" if x == "wall_time" else "compute (plain inner-step equivalents)")
        ax.set_ylabel("validation error")
        ax.set_yscale("log")
        ax.legend()
    return axes


def write_report(results: Results, out_dir) -> list[Path]:
    """``real-time.md`` and ``.csv`` (every seed and method), ``real-time-hyperparameters.png`` and
    ``real-time-validation.png``."""
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    notes = "## Mean over seeds\n\n" + markdown_table(results.means())
    paths = write_tables(results.table, out_dir, NAME, TITLE, notes, results.failures)
    fig = plt.figure(figsize=(13, 3.8), layout="constrained")
    draw_trajectories(fig, results)
    failed = "RTHO" in failed_methods(results.failures, results.config.seeds[0])
    fig.suptitle("RTHO: hyperparameters along the single training run" + (" (until it failed)" if failed else ""))
    paths.append(save_figure(fig, out_dir / f"{NAME}-hyperparameters.png"))
    fig = plt.figure(figsize=(12, 4.2), layout="constrained")
    draw_validation(fig, results)
    fig.suptitle("Validation error: fixed hyperparameters, RTHO, random search with RTHO's compute")
    paths.append(save_figure(fig, out_dir / f"{NAME}-validation.png"))
    return paths
