"""Online learning-rate schedules on MNIST: hypergradient descent, RTHO and MARTHE beside a grid, a hand-designed
schedule and random search.

One network (MLP 784-width-10) trained once per method by minibatch heavy-ball momentum (μ fixed), its learning
rate η scheduled by each method:

* **fixed**: the best constant η of a small grid (picked by validation error; the whole grid is charged);
* **cosine**: cosine decay ``η_t = η_0 (1 + cos(π t / T)) / 2`` from the grid's best η (grid + one run);
* **hypergradient descent**: ``hg.RealTime(delta=1, discount=0.0)``, η updated every step by SGD with step β on
  the one-step-back hypergradient (Baydin et al., 2018, with a validation objective as in the MARTHE paper);
* **RTHO**: ``hg.RealTime(delta, discount=1.0)``, the same SGD on the tangent carried over the whole run;
* **MARTHE**: ``hg.RealTime(delta, discount="adapt")`` with the adaptive hyper-learning rate
  :func:`hgkit.schedules.adaptive_sgd` (β_0, α);
* **random search**: constant η drawn log-uniformly, as many full runs as the most expensive method's compute; the
  run with the lowest validation error is kept.

The online methods descend the validation cross-entropy E on the first ``n_hyper`` validation images (read out
after every chunk); each hypergradient is clipped at ``clip`` (``optax.clip``, as MARTHE's authors do) and η is
kept ≥ 0 by the projection ``hg.constraints.positive(0.0)``. They all start from the same ``lr``. Selection (grid,
random search) and the reported validation loss and error use all ``n_val`` validation images; the test set is only
read for the final table. ``Results.by_loss()`` also picks random search's draw by validation cross-entropy, the
online methods' kind of objective.

**Compute** is counted in plain inner-step equivalents: a plain step is 1; an online step adds m = 1 tangent JVP
(counted as a full step also for μ = 0, whose JVP in λ alone is in fact cheaper here); each read-out adds a forward
and backward pass on the ``n_hyper`` validation images, ``n_hyper / batch_size`` steps; MARTHE adds m = 1 JVP per
chunk (``B_t``). Wall times are measured without compilation (each run compiles once).

**Sensitivity**: on the first seed, each online method is re-run with its hyper-learning rate (β, or MARTHE's β_0)
multiplied by each of ``sweep`` (the factor 1 is the main run); the final validation and test accuracy against
the factor.

This module owns the experiment's config, problem, methods and report (``lr-schedules.md``, ``.csv``,
``lr-schedules-schedules.png``, ``lr-schedules-sensitivity.png``). While it runs, one progress bar (tqdm) counts its
training runs and names the one in flight (``training the fixed-η grid, η = 0.1 (3 of 4)``); in a notebook the
results show as Markdown tables (``Results`` displays itself) and :func:`styled` formats a table of them.

Example:
    >>> from hgkit.experiments import lr_schedules as ls
    >>> c = ls.Config(T=1000, delta=10, n_hyper=500, batch_size=100, grid=(0.01, 0.1))
    >>> {k: int(v) for k, v in ls.step_equivalents(c).items()}  # doctest: +NORMALIZE_WHITESPACE
    {'fixed': 2000, 'cosine': 3000, 'hypergradient descent': 7000, 'RTHO': 2500, 'MARTHE': 2600,
     'random search': 7000}
"""

from __future__ import annotations

import contextlib
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

from ._config import check_positive_ints, check_positive_numbers, check_seeds, check_split_sizes
from ._data import minibatch_fn, mnist
from ._models import cross_entropy, error_rate, mlp, mlp_init, plain_training
from ._report import FailureLog, failures_note, mark_missing, markdown_table, over_seeds, save_figure, write_tables

NAME = "lr-schedules"
TITLE = "Online learning-rate schedules on MNIST: hypergradient descent, RTHO and MARTHE"

ONLINE = ("hypergradient descent", "RTHO", "MARTHE")
METHODS = ("fixed", "cosine", *ONLINE, "random search")
METHOD_COLORS = {
    "fixed": "0.4",
    "cosine": "tab:purple",
    "hypergradient descent": "tab:orange",
    "RTHO": "tab:red",
    "MARTHE": "tab:blue",
    "random search": "tab:green",
}


@dataclasses.dataclass(frozen=True)
class Config:
    """Sizes, the grid, the online methods' settings and the sweep.

    Attributes:
        n_train, n_val, n_test: images of the packaged 5,000 / 5,000 / 10,000 split used.
        n_hyper: the first ``n_hyper`` validation images make the online methods' objective E.
        width: hidden units; batch_size: the minibatch of each inner step; momentum: the fixed heavy-ball μ.
        T: inner steps of every training run; delta: Δ of RTHO and MARTHE (hypergradient descent has Δ = 1).
        lr: the online methods' starting η.
        grid: the constant η tried for "fixed" (the best then starts the cosine schedule).
        hd_beta, rtho_beta: the step β of SGD on η for hypergradient descent and RTHO.
        marthe_beta, marthe_alpha: MARTHE's starting β_0 and the step α of its hypergradient descent on β.
        clip: every hypergradient is clipped to [−clip, clip] before the update.
        lr_range: random search's log-uniform range for η.
        sweep: factors applied to each online method's β (β_0 for MARTHE) in the sensitivity study (first seed).
        eval_every: the plain runs' curve of E (the schedules figure) is taken every ``eval_every`` steps.
        seeds: one repetition per seed (initial weights, minibatch order, random search's draws).

    The defaults of β, β_0 and α were chosen on validation error alone, at the default size on seed 0, from
    β ∈ {3·10⁻³, 10⁻², 3·10⁻², 10⁻¹} (hypergradient descent), β ∈ {3·10⁻⁵, …, 3·10⁻³} (RTHO), β_0 ∈ {3·10⁻⁴, …,
    10⁻²} and α ∈ {0, 10⁻⁵, 3·10⁻⁵, 10⁻⁴, 10⁻³} (MARTHE; α = 10⁻³ blows η up): the best of each, though the
    differences were mostly within the validation set's noise (RESULTS.md).
    """

    n_train: int = 5000
    n_val: int = 5000
    n_test: int = 10000
    n_hyper: int = 500
    width: int = 100
    batch_size: int = 100
    momentum: float = 0.9
    T: int = 2000
    delta: int = 10
    lr: float = 0.01
    grid: tuple[float, ...] = (0.01, 0.03, 0.1, 0.3)
    hd_beta: float = 3e-2
    rtho_beta: float = 3e-3
    marthe_beta: float = 3e-3
    marthe_alpha: float = 1e-5
    clip: float = 100.0
    lr_range: tuple[float, float] = (0.003, 1.0)
    sweep: tuple[float, ...] = (0.1, 1.0, 10.0)
    eval_every: int = 100
    seeds: tuple[int, ...] = (0,)

    def __post_init__(self):
        check_positive_ints(self, ("n_train", "n_val", "n_test", "n_hyper", "width", "batch_size", "T", "delta"))
        check_positive_ints(self, ("eval_every",))
        check_split_sizes(self, ("n_train", "n_val", "n_test"))
        check_positive_numbers(self, ("lr", "hd_beta", "rtho_beta", "marthe_beta", "clip"))
        if self.n_hyper > self.n_val:
            raise ValueError(f"Config.n_hyper ({self.n_hyper}) exceeds Config.n_val ({self.n_val})")
        if self.batch_size > self.n_train:
            raise ValueError(f"Config.batch_size ({self.batch_size}) exceeds Config.n_train ({self.n_train})")
        if self.T % self.delta or self.T % self.eval_every:
            raise ValueError(
                f"Config.delta ({self.delta}) and Config.eval_every ({self.eval_every}) must divide Config.T "
                f"({self.T}): the runs are cut into whole chunks"
            )
        if not 0 <= self.momentum < 1:
            raise ValueError(f"Config.momentum must be in [0, 1); got {self.momentum!r}")
        if not (isinstance(self.marthe_alpha, int | float) and self.marthe_alpha >= 0):
            raise ValueError(f"Config.marthe_alpha must be a number >= 0; got {self.marthe_alpha!r}")
        for name in ("grid", "sweep"):
            values = getattr(self, name)
            if not values or not all(isinstance(v, int | float) and v > 0 for v in values):
                raise ValueError(f"Config.{name} must be a non-empty tuple of positive numbers; got {values!r}")
        if 1.0 not in self.sweep:
            raise ValueError(f"Config.sweep must contain 1.0 (the main run); got {self.sweep!r}")
        lo, hi = self.lr_range
        if not 0 < lo < hi:
            raise ValueError(f"Config.lr_range must be an increasing pair of positive numbers; got {self.lr_range!r}")
        check_seeds(self)


# SMOKE's sweep is the main runs alone: every further factor recompiles three online methods (seconds each).
SMOKE = Config(
    n_train=500, n_val=500, n_test=500, n_hyper=100, width=16, batch_size=50, T=60, delta=5, grid=(0.03, 0.3),
    sweep=(1.0,), eval_every=20,
)  # fmt: skip
DEFAULT = Config()
FULL = Config(T=4000, sweep=(0.1, 0.3, 1.0, 3.0, 10.0), seeds=(0, 1, 2))


def step_equivalents(config: Config) -> dict[str, float]:
    """The compute each method is charged, in plain inner steps (see the module docstring); random search gets the
    most expensive method's, in whole runs of T steps."""
    T, m = config.T, 1
    read = config.n_hyper / config.batch_size  # one ∇E on the n_hyper validation images
    chunks = T // config.delta
    grid = len(config.grid) * T
    out = {
        "fixed": grid,
        "cosine": grid + T,
        "hypergradient descent": T * (1 + m) + T * read,
        "RTHO": T * (1 + m) + chunks * read,
        "MARTHE": T * (1 + m) + chunks * (read + m),
    }
    out["random search"] = random_search_runs(out, T) * T
    return out


def random_search_runs(costs: dict, T: int) -> int:
    """How many whole runs of T steps fit in the most expensive method's compute."""
    return max(1, int(max(costs.values()) // T))


# ----- the problem --------------------------------------------------------------------------------------------


def load_data(config: Config):
    """The packaged split cut to size (clean labels), and E's images: the first ``n_hyper`` validation images."""
    data = mnist(train=config.n_train, val=config.n_val, test=config.n_test)
    x, y = data["val"]
    data["hyper"] = (x[: config.n_hyper], y[: config.n_hyper])
    return data


def cosine(T: int):
    """The learning-rate spec ``(hparams, step) -> η`` of the plain runs: ``η_0 (1 − d (1 − cos(π step / T)) / 2)``
    with η_0 = ``hparams["lr"]`` and d = ``hparams["decay"]``: constant for d = 0, cosine decay to 0 for d = 1
    (one problem for both, so the plain runs compile once)."""

    def lr(hp, step):
        t = jnp.asarray(step, hp["lr"].dtype) / T
        return hp["lr"] * (1 - hp["decay"] * (1 - jnp.cos(jnp.pi * t)) / 2)

    return lr


def make_problems(config: Config, data, seed: int):
    """One seed's problems and minibatch function: ``"online"`` has η = ``hparams["lr"]``, ``"plain"`` the
    schedule :func:`cosine` (constant or decaying)."""
    x, y = data["train"]
    batch = minibatch_fn(x, y, config.batch_size, config.T, np.random.default_rng([seed, 2]))

    def loss(w, hp, b):
        return cross_entropy(mlp(w, b[0]), b[1])

    def problem(lr):
        return hg.BilevelProblem(
            init=lambda hp, key: mlp_init(key, x.shape[1], config.width, 10),
            train_loss=loss,
            val_loss=loss,
            optimizer=hg.optim.momentum(lr=lr, momentum=config.momentum),
        )

    return {"online": problem("lr"), "plain": problem(cosine(config.T))}, batch


def hp_of(lr: float, decay: float | None = None) -> dict:
    """``{"lr": η}``, and ``"decay"`` for the plain runs (0: constant, 1: cosine decay)."""
    hp = {"lr": jnp.asarray(lr, jnp.float32)}
    if decay is not None:
        hp["decay"] = jnp.asarray(decay, jnp.float32)
    return hp


@jax.jit
def evaluate(params, x, y):
    """``(cross-entropy, error rate)`` of the MLP on ``(x, y)``."""
    logits = mlp(params, x)
    return cross_entropy(logits, y), error_rate(logits, y)


def final_metrics(params, data) -> dict:
    """Validation loss and error on all validation images, and test accuracy."""
    val_loss, val_error = jax.device_get(evaluate(params, *data["val"]))
    test_error = float(evaluate(params, *data["test"])[1])
    return dict(val_loss=float(val_loss), val_error=float(val_error), test_accuracy=1.0 - test_error)


# ----- the methods --------------------------------------------------------------------------------------------


def train_plain(problem, batch, lr: float, config: Config, data, key, decay: float = 0.0):
    """T plain steps from η = ``lr`` (constant, or cosine decay with ``decay=1``): the final weights, the curve of
    η and E every ``eval_every`` steps and the wall time (after a warm-up chunk that compiles)."""
    hp = hp_of(lr, decay)
    schedule = cosine(config.T)
    state = hg.initial_state(problem, hp, key)
    warm = plain_training(problem, hp, batch, config.eval_every, state=state).state
    jax.block_until_ready(evaluate(warm.params, *data["hyper"]))
    rows, start = [], time.perf_counter()
    for chunk in range(config.T // config.eval_every):
        first = chunk * config.eval_every
        state = plain_training(problem, hp, batch, config.eval_every, state=state, first=first).state
        steps = first + config.eval_every
        rows.append(dict(inner_steps=steps, lr=float(schedule(hp, steps - 1)),
                         val_loss=float(evaluate(state.params, *data["hyper"])[0])))  # fmt: skip
    return state.params, pd.DataFrame(rows), time.perf_counter() - start


def online_settings(config: Config, factor: float = 1.0) -> dict:
    """Each online method's ``(hg.RealTime, hyper-optimizer, β)``, with the β (β_0) multiplied by ``factor``."""
    clip = optax.clip(config.clip)
    hd, rtho, marthe = config.hd_beta * factor, config.rtho_beta * factor, config.marthe_beta * factor
    return {
        "hypergradient descent": (hg.RealTime(1, discount=0.0), optax.chain(clip, optax.sgd(hd)), hd),
        "RTHO": (hg.RealTime(config.delta, discount=1.0), optax.chain(clip, optax.sgd(rtho)), rtho),
        "MARTHE": (
            hg.RealTime(config.delta, discount="adapt", clip=config.clip),
            optax.chain(clip, hg.schedules.adaptive_sgd(marthe, config.marthe_alpha)),
            marthe,
        ),
    }


def run_online(problem, batch, method, tx, config: Config, data, key, progress: bool, callbacks=()):
    """One training run with η scheduled online; the loop's result, or the error's partial result if it diverged
    (``stopped == "diverged"``)."""
    opt = hg.HyperOptimizer(
        problem, method=method, hyper_optimizer=tx, constraints={"lr": hg.constraints.positive(0.0)}
    )
    try:
        return opt.run(hp_of(config.lr), T=config.T, train_data=batch, val_data=data["hyper"], key=key,
                       progress=progress, callbacks=callbacks)  # fmt: skip
    except hg.HyperDivergenceError as error:
        return error.result


def without_compilation(wall_time: np.ndarray) -> float:
    """The loop's last wall time less its first chunk's compilation, that chunk taken to last as long as the next."""
    if len(wall_time) < 2:
        return float(wall_time[-1])
    return float(wall_time[-1] - wall_time[0] + (wall_time[1] - wall_time[0]))


def online_row(result, data) -> tuple[dict, pd.DataFrame]:
    """A method's results (η at the start and end, final metrics, wall time, whether it diverged) and its schedule
    curve (η and E after every chunk) from its loop result."""
    history = result.history
    diverged = result.stopped == "diverged"
    nan = dict(val_loss=math.nan, val_error=math.nan, test_accuracy=math.nan)
    info = dict(
        lr_start=float(history["lr"].iloc[0]) if len(history) else math.nan,
        lr_end=float(history["lr"].iloc[-1]) if len(history) else math.nan,
        **(nan if diverged else final_metrics(result.state.params, data)),
        wall_time=without_compilation(history["wall_time"].to_numpy(float)) if len(history) else math.nan,
        diverged=diverged,
    )
    curve = pd.DataFrame(dict(inner_steps=history["inner_steps"], lr=history["lr"], val_loss=history["val_loss"]))
    return info, curve


def random_search_draws(config: Config, seed: int) -> list[float]:
    """Random search's η on ``seed``: as many draws as whole runs of T fit in the most expensive other method's
    compute."""
    cost = step_equivalents(config)
    return sample_lrs(config, random_search_runs({k: v for k, v in cost.items() if k != "random search"}, config.T),
                      seed)  # fmt: skip


def sample_lrs(config: Config, n: int, seed: int) -> list[float]:
    """``n`` random-search draws of η, log-uniform in ``lr_range``."""
    rng = np.random.default_rng([seed, 3])
    lo, hi = np.log(config.lr_range)
    return [float(np.exp(v)) for v in rng.uniform(lo, hi, size=n)]


class Progress:
    """One progress bar (``tqdm.auto``: a widget in a notebook) over the experiment's training runs, its description
    the run in flight, so that the plain runs before and after the online ones (which a live dashboard shows) are
    seen too; ``enabled=False`` shows nothing."""

    def __init__(self, config: Config, enabled: bool = True):
        from tqdm.auto import tqdm  # here: importing the module draws nothing

        self.config = config
        total = len(config.seeds) * (len(config.grid) + 1 + len(ONLINE) + len(random_search_draws(config, 0)))
        total += len(ONLINE) * (len(config.sweep) - 1)
        self.bar = tqdm(total=total, disable=not enabled, unit="run", desc="loading the data")

    @contextlib.contextmanager
    def run(self, what: str, seed: int | None = None):
        """Around one training run: the bar says ``what`` runs (and on which seed, when there are several)."""
        several = seed is not None and len(self.config.seeds) > 1
        self.bar.set_description_str(f"seed {seed}: {what}" if several else what)
        try:
            yield
        finally:
            self.bar.update(1)

    def skip(self) -> None:
        """A run that is not made (one it needs failed)."""
        self.bar.update(1)

    def close(self) -> None:
        self.bar.set_description_str("done")
        self.bar.close()


def run_one_seed(
    config: Config, data, seed: int, progress: bool, failures: FailureLog, callbacks=(), bar: Progress | None = None
):
    """Every method on one seed: the table's rows, the schedules (one DataFrame per method), the online loops'
    results and random search's draws. ``progress``: the online loops' own bars; ``bar``: the experiment's.

    A method that raises is recorded in ``failures`` and has no row; the others go on, except cosine, which starts
    from the grid's best η and is not run when "fixed" failed. An online method that diverges is not a failure but
    a result: its row has ``diverged`` set and NaN metrics.
    """
    bar = bar or Progress(config, enabled=False)
    problems, batch = make_problems(config, data, seed)
    key = jax.random.PRNGKey(seed)
    cost = step_equivalents(config)
    rows, curves, results = [], {}, {}

    def row(method, **values):
        rows.append(dict(method=method, **values, step_equivalents=cost[method]))

    def grid():  # fixed: the best constant η of the grid by validation error.
        runs = []
        for k, lr in enumerate(config.grid):
            with bar.run(f"training the fixed-η grid, η = {lr:g} ({k + 1} of {len(config.grid)})", seed):
                params, curve, wall = train_plain(problems["plain"], batch, lr, config, data, key)
            runs.append((final_metrics(params, data), curve, wall, lr))
        best = min(runs, key=lambda g: (np.nan_to_num(g[0]["val_error"], nan=1.0), g[3]))
        return best, sum(g[2] for g in runs)

    fixed = failures.attempt(seed, "fixed", grid)
    if fixed is not None:
        (best_metrics, curves["fixed"], _, best_lr), grid_wall = fixed
        row("fixed", lr_start=best_lr, lr_end=best_lr, beta=math.nan, **best_metrics, wall_time=grid_wall,
            diverged=False)  # fmt: skip

    def cosine_decay():  # from the grid's best.
        with bar.run(f"training with cosine decay from η = {best_lr:g}", seed):
            params, curve, wall = train_plain(problems["plain"], batch, best_lr, config, data, key, decay=1.0)
        return final_metrics(params, data), curve, wall

    if fixed is None:
        bar.skip()
        failures.not_run(seed, "cosine", "it starts from the grid's best η, and fixed failed")
    else:
        out = failures.attempt(seed, "cosine", cosine_decay)
        if out is not None:
            metrics, curves["cosine"], wall = out
            row("cosine", lr_start=best_lr, lr_end=float(curves["cosine"]["lr"].iloc[-1]), beta=math.nan,
                **metrics, wall_time=grid_wall + wall, diverged=False)  # fmt: skip

    def online(rt, tx):
        result = run_online(problems["online"], batch, rt, tx, config, data, key, progress, callbacks)
        return result, *online_row(result, data)

    for k, (method, (rt, tx, beta)) in enumerate(online_settings(config).items()):
        with bar.run(f"{method}, an online schedule ({k + 1} of {len(ONLINE)})", seed):
            out = failures.attempt(seed, method, online, rt, tx)
        if out is not None:
            results[method], info, curves[method] = out
            row(method, lr_start=info.pop("lr_start"), lr_end=info.pop("lr_end"), beta=beta, **info)

    def random_search():  # on the most expensive method's compute.
        draws = random_search_draws(config, seed)
        runs = []
        for k, lr in enumerate(draws):
            with bar.run(f"random search, η = {lr:.3g} ({k + 1} of {len(draws)})", seed):
                params, curve, wall = train_plain(problems["plain"], batch, lr, config, data, key)
            runs.append((final_metrics(params, data), curve, wall, lr))
        return runs

    runs = failures.attempt(seed, "random search", random_search) or []
    if runs:
        won = min(runs, key=lambda r: (np.nan_to_num(r[0]["val_error"], nan=1.0), r[3]))
        row("random search", lr_start=won[3], lr_end=won[3], beta=math.nan, **won[0],
            wall_time=sum(r[2] for r in runs), diverged=False)  # fmt: skip
        curves["random search"] = won[1]

    table = pd.DataFrame(rows)
    table.insert(0, "seed", seed)
    draws_table = pd.DataFrame([dict(seed=seed, lr=r[3], **r[0]) for r in runs], columns=DRAW_COLUMNS)
    return table, curves, results, draws_table


DRAW_COLUMNS = ["seed", "lr", "val_loss", "val_error", "test_accuracy"]
SWEEP_COLUMNS = ["method", "factor", "beta", "lr_end", "val_accuracy", "test_accuracy", "diverged"]


def sensitivity(
    config: Config, data, main: pd.DataFrame, progress: bool, failures: FailureLog, bar: Progress | None = None
) -> pd.DataFrame:
    """The online methods on the first seed with β (β_0) × each factor of ``config.sweep``; factor 1 is taken
    from the main table (the same run). A run that raises is recorded in ``failures`` as ``"<method> ×<factor>"``
    and has no row, as has factor 1 of a method whose main run failed. ``bar``: the experiment's progress bar."""
    bar = bar or Progress(config, enabled=False)
    swept_runs = len(ONLINE) * (len(config.sweep) - 1)
    seed = config.seeds[0]
    problems, batch = make_problems(config, data, seed)
    key = jax.random.PRNGKey(seed)
    rows = []
    first = main[main["seed"] == seed].set_index("method") if len(main) else pd.DataFrame()

    def swept(rt, tx):
        return online_row(run_online(problems["online"], batch, rt, tx, config, data, key, progress), data)[0]

    done = 0
    for factor in config.sweep:
        for method, (rt, tx, beta) in online_settings(config, factor).items():
            if factor != 1.0:
                done += 1
                with bar.run(f"sensitivity: {method} with β × {factor:g} ({done} of {swept_runs})"):
                    info = failures.attempt(seed, f"{method} ×{factor:g}", swept, rt, tx)
            elif method in first.index:
                info = first.loc[method]
                info = dict(val_loss=info.val_loss, val_error=info.val_error, test_accuracy=info.test_accuracy,
                            lr_end=info.lr_end, diverged=bool(info.diverged))  # fmt: skip
            else:
                info = None  # the main run failed, and is recorded
            if info is None:
                continue
            rows.append(dict(method=method, factor=factor, beta=beta, lr_end=info["lr_end"],
                             val_accuracy=1.0 - info["val_error"], test_accuracy=info["test_accuracy"],
                             diverged=info["diverged"]))  # fmt: skip
    sweep = pd.DataFrame(rows, columns=SWEEP_COLUMNS)
    return sweep.sort_values(["method", "factor"], kind="stable").reset_index(drop=True)


# ----- results --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Results:
    """Per seed and method the schedule's ends, validation loss and error, test accuracy, compute and wall time
    (``table``); random search's draws (``draws``); the sensitivity sweep (``sweep``); the first seed's schedules
    (``curves``) and online loop results (``online``); what failed (``failures``,
    :class:`~hgkit.experiments._report.RunFailure`), whose rows, curves and results are missing."""

    config: Config
    table: pd.DataFrame
    draws: pd.DataFrame
    sweep: pd.DataFrame
    curves: dict
    online: dict
    failures: tuple = ()

    def means(self) -> pd.DataFrame:
        """Per method (in the table's order) ``mean ± std`` over seeds of the accuracy and losses, the compute and
        the wall time."""
        out = []
        for method, group in self.table.groupby("method", sort=False) if len(self.table) else ():
            out.append(
                dict(
                    method=method,
                    test_accuracy=_pm(group["test_accuracy"], 4),
                    val_loss=_pm(group["val_loss"], 4),
                    val_error=_pm(group["val_error"], 4),
                    step_equivalents=int(group["step_equivalents"].iloc[0]),
                    compute_ratio=f"{group['step_equivalents'].iloc[0] / self.config.T:.1f}× T",
                    wall_time=_pm(group["wall_time"], 1),
                    lr_end=_pm(group["lr_end"], 3, fmt="g"),
                )
            )
        return pd.DataFrame(out)

    def by_loss(self) -> pd.DataFrame:
        """Random search picked by the online methods' kind of objective, the validation cross-entropy (on all
        validation images), instead of the validation error: per seed the draw picked, and its test accuracy."""
        picked = self.draws.loc[self.draws.groupby("seed")["val_loss"].idxmin()]
        return picked[DRAW_COLUMNS].reset_index(drop=True)

    def summary(self) -> str:
        return self._summary(markdown=False)

    def __repr__(self) -> str:
        return self.summary()

    def _repr_markdown_(self) -> str:
        """The summary as a notebook shows it: rendered tables, not their Markdown source."""
        return self._summary(markdown=True)

    def _summary(self, markdown: bool) -> str:
        """The settings and the tables: as text for a terminal (Markdown tables under plain headings), or as Markdown
        to render (bold headings, blank lines around the tables, a sweep of the factor 1 alone said not run)."""
        c = self.config
        settings = (
            f"MLP 784-{c.width}-10, momentum {c.momentum}, {c.n_train} training images, minibatches of "
            f"{c.batch_size}, T = {c.T}; online methods from η = {c.lr}, E on {c.n_hyper} validation images, "
            f"RTHO and MARTHE Δ = {c.delta}; seeds {list(c.seeds)}"
        )
        sweep = markdown_table(self.sweep)
        if markdown and len(c.sweep) < 2:
            sweep = "Not run: `config.sweep` has the factor 1 alone (the main runs, in the table above)."

        def section(heading: str) -> str:
            return f"\n\n**{heading}**\n\n" if markdown else f"\n\n{heading}:\n"

        head = f"**{TITLE}**\n\n{settings}\n\n" if markdown else f"{TITLE}\n{settings}\n"
        return (
            head
            + markdown_table(self.means())
            + section("Random search picked by validation cross-entropy instead of error")
            + markdown_table(self.by_loss())
            + section("Sensitivity to the hyper-learning rate (first seed)")
            + sweep
            + failures_note(self.failures)
        )


def _pm(values, digits: int, fmt: str = "f") -> str:
    """``mean ± std`` (sample standard deviation) over seeds, or the value alone for one seed; short exponents
    (``2.06e-5``)."""
    values = np.asarray(values, float)
    text = f"{values[0]:.{digits}{fmt}}"
    if len(values) > 1:
        text = f"{values.mean():.{digits}{fmt}} ± {values.std(ddof=1):.{digits}{fmt}}"
    return text.replace("e-0", "e-").replace("e+0", "e+")


def run(config: Config = DEFAULT, progress: bool = True, callbacks=()) -> Results:
    """Every method on every seed, then the sensitivity sweep on the first seed. ``callbacks`` go to the online
    methods' loops (e.g. a live :class:`hgkit.widgets.Dashboard`). A method that raises is recorded in
    ``Results.failures`` and the others go on.

    ``progress``: a progress bar over the training runs that names the one in flight (:class:`Progress`), and each
    online run's own bar of chunks, unless ``callbacks`` are given (a dashboard shows those runs instead)."""
    bar = Progress(config, enabled=progress)
    loops = progress and not callbacks
    try:
        data = load_data(config)
        failures = FailureLog()
        table, per_seed = over_seeds(
            config.seeds, lambda seed: run_one_seed(config, data, seed, loops, failures, callbacks, bar), failures
        )
        draws = [rest[2] for rest in per_seed.values() if len(rest[2])]
        draws = pd.concat(draws, ignore_index=True) if draws else pd.DataFrame(columns=DRAW_COLUMNS)
        curves, online, _ = per_seed.get(config.seeds[0], ({}, {}, None))
        sweep = sensitivity(config, data, table, loops, failures, bar)
    finally:
        bar.close()
    return Results(config, table, draws, sweep, curves, online, tuple(failures.records))


def _eta(value) -> str:
    """A learning rate or a β: 3 significant digits, short exponents (``0.0123``, ``2.06e-5``)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.3g}".replace("e-0", "e-").replace("e+0", "e+")


TABLE_FORMATS = {
    **dict.fromkeys(("lr", "lr_start", "lr_end", "beta"), _eta),
    **dict.fromkeys(("val_loss", "val_error", "val_accuracy", "test_accuracy"), "{:.4f}"),
    "wall_time": "{:.1f} s",
    "step_equivalents": "{:,.0f}",
    "factor": "{:g}",
}


def styled(frame: pd.DataFrame):
    """A results table (``Results.table``, ``.by_loss()``, ``.draws``, ``.sweep``) formatted for a notebook (a pandas
    Styler): learning rates in 3 significant digits (a decayed η reads ``2.06e-5``, not a whole column in
    scientific notation), losses and accuracies in 4 decimals, wall times in seconds, without the index."""
    formats = {column: f for column, f in TABLE_FORMATS.items() if column in frame.columns}
    return frame.style.format(formats, na_rep="–").hide(axis="index")


# ----- figures --------------------------------------------------------------------------------------------------


LR_FLOOR = 1e-3  # the schedules figure's lowest η: cosine decay's tail and a learning rate of 0 run off its bottom


def draw_schedules(fig, results: Results) -> dict:
    """Left: η against the inner step for every method (first seed; η below ``LR_FLOOR``, such as cosine decay's
    tail or an online method that drove η to 0, runs off the bottom). Right: the objective E (validation
    cross-entropy on the ``n_hyper`` images) along each run. A method that failed is left out."""
    from ..plot.panels import legend_outside, log_ticks

    axes = dict(zip(("lr", "val_loss"), fig.subplots(1, 2), strict=True))
    methods = [m for m in METHODS if m in results.curves]
    if not methods:
        for ax in axes.values():
            mark_missing(ax, "every method failed")
        return axes
    ends = []
    for method in methods:
        curve = results.curves[method]
        style = dict(color=METHOD_COLORS[method], label=method, linewidth=1.5)
        if method in ("fixed", "random search"):
            style["linestyle"] = "--"
        for name, ax in axes.items():
            ax.plot(curve["inner_steps"], curve[name], **style)
        ends.append(float(curve["val_loss"].iloc[-1]))
    top = max(float(np.nanmax([results.curves[m]["lr"].max() for m in methods])), LR_FLOOR) * 2
    axes["lr"].set_yscale("log")
    axes["lr"].set_ylim(LR_FLOOR, top)
    log_ticks(axes["lr"].yaxis)  # labels to read η off (0.002, 0.005, 0.01, …), not decades alone
    axes["lr"].set_ylabel("learning rate η")
    if np.all(np.isfinite(ends)):
        axes["val_loss"].set_ylim(0.8 * min(ends), 2.5 * max(ends))
    axes["val_loss"].set_ylabel(f"E: validation cross-entropy ({results.config.n_hyper} images)")
    for ax in axes.values():
        ax.set_xlabel("inner step")
    legend_outside(axes["val_loss"], fontsize="small")  # one legend for both panels, beside them: not on a curve
    return axes


def draw_sensitivity(fig, results: Results) -> dict:
    """Final validation and test accuracy against the factor on each online method's hyper-learning rate (first
    seed), the fixed and cosine rows as horizontal references. The axis shows the 10 points below the best; a run
    below them (one that collapsed) is drawn as a triangle on the bottom edge with its value, a diverged one as a
    cross there. A run that failed is left out. With one factor (``sweep=(1.0,)``) each line would be one point:
    the panels say so instead."""
    from ..plot.panels import legend_outside

    axes = dict(zip(("val_accuracy", "test_accuracy"), fig.subplots(1, 2), strict=True))
    if results.sweep["factor"].nunique() < 2:
        for ax in axes.values():
            ax.set_xticks([])
            ax.set_yticks([])
            ax.text(0.5, 0.5, f"one factor on β only (config.sweep = {tuple(results.config.sweep)}): nothing to "
                    "compare\nrun with a sweep, e.g. lr_schedules.DEFAULT's (0.1, 1, 10)", ha="center", va="center",
                    transform=ax.transAxes, color="0.35")  # fmt: skip
        return axes
    table = results.table if len(results.table) else pd.DataFrame(columns=["seed", "method"])
    first = table[table["seed"] == results.config.seeds[0]].set_index("method")
    for column, ax in axes.items():
        references = {
            m: first.loc[m, "test_accuracy"] if column == "test_accuracy" else 1.0 - first.loc[m, "val_error"]
            for m in ("fixed", "cosine")
            if m in first.index
        }
        values = np.concatenate([results.sweep[column].to_numpy(float), list(references.values())])
        best = float(np.nanmax(values)) if np.isfinite(values).any() else 1.0
        lo, hi = best - 0.1, min(1.0, best + 0.02)
        for method in ONLINE:
            rows = results.sweep[results.sweep["method"] == method]
            color = METHOD_COLORS[method]
            shown = rows[column].clip(lower=lo)
            ax.plot(rows["factor"], shown, marker="o", color=color, label=method)
            for factor, value, diverged in zip(rows["factor"], rows[column], rows["diverged"], strict=True):
                if diverged or not np.isfinite(value):
                    ax.plot([factor], [lo], "x", color=color, markersize=10)
                elif value < lo:
                    ax.plot([factor], [lo], "v", color=color, markersize=10)
                    ax.annotate(f"{value:.3f}", (factor, lo), textcoords="offset points", xytext=(6, 6), color=color)
        for method, value in references.items():
            ax.axhline(value, color=METHOD_COLORS[method], linestyle=":", label=method)
        ax.set_ylim(lo, hi)
        ax.set_xscale("log")
        ax.set_xlabel("factor on the hyper-learning rate β (β₀ for MARTHE)")
        ax.set_ylabel(column.replace("_", " ").replace("val ", "validation "))
    legend_outside(axes["test_accuracy"], fontsize="small")
    return axes


def write_report(results: Results, out_dir) -> list[Path]:
    """``lr-schedules.md`` and ``.csv`` (every seed and method), ``lr-schedules-schedules.png`` and
    ``lr-schedules-sensitivity.png``."""
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    c = results.config
    notes = (
        "## Mean ± std over seeds\n\n" + markdown_table(results.means())
        + "\n\n## Random search picked by validation cross-entropy (the online methods' kind of objective)\n\n"
        + markdown_table(results.by_loss())
        + f"\n\n## Sensitivity to the hyper-learning rate (seed {c.seeds[0]})\n\n" + markdown_table(results.sweep)
        + "\n\n## Random search's draws\n\n" + markdown_table(results.draws)
    )  # fmt: skip
    paths = write_tables(results.table, out_dir, NAME, TITLE, notes, results.failures)
    fig = plt.figure(figsize=(12, 4.2), layout="constrained")
    draw_schedules(fig, results)
    fig.suptitle(f"Learning-rate schedules (seed {c.seeds[0]}, T = {c.T})")
    paths.append(save_figure(fig, out_dir / f"{NAME}-schedules.png"))
    fig = plt.figure(figsize=(12, 4.2), layout="constrained")
    draw_sensitivity(fig, results)
    fig.suptitle(f"Sensitivity to the hyper-learning rate (seed {c.seeds[0]})")
    paths.append(save_figure(fig, out_dir / f"{NAME}-sensitivity.png"))
    return paths
