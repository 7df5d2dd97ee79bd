"""Why hgkit's lr-schedules protocol and MARTHE's rank the online methods differently: one factor at a time.

``hgkit reproduce lr-schedules --protocol factors``. On MARTHE's protocol (:mod:`.lr_schedules_reference`) the
online methods come out RTHO > MARTHE > HD; on hgkit's (:mod:`.lr_schedules`) HD > RTHO > MARTHE. This experiment
starts from the reference protocol at its default size, with each method at β = ``beta`` (1e-4: the reference
grid's winner for all three on each of seeds 0-2), and changes one factor at a time to hgkit's value, read from
:data:`hgkit.experiments.lr_schedules.DEFAULT` (not re-typed here), then all of them at once:

* ``reference``: nothing changed;
* ``delta``: RTHO and MARTHE update η every Δ = 10 steps instead of every step (HD keeps Δ = 1, as in hgkit's);
* ``training-set``: 5,000 training images instead of 55,000, for the same number of steps (about 44 epochs
  instead of 4) and the same 21 steps between checks;
* ``objective``: E is the cross-entropy on the same first 500 validation images at every read-out, for HD too,
  instead of a fresh minibatch of 128 (HD: of training images);
* ``width``: an MLP 784-100-10 instead of 784-800-10;
* ``knobs``: hgkit's knobs, fixed beforehand, instead of the reference grid's winner: η_0 = 0.01 (not 0), HD
  β = 0.03, RTHO β = 0.003, MARTHE β_0 = 0.003 with the adaptive β (α = 1e-5);
* ``all``: the five at once;
* ``network``: hgkit's own MLP (``_models.mlp``: tanh, weights N(0, 1/fan_in)) instead of the reference's (ReLU,
  Glorot-uniform weights), a difference outside the issue's list, found while explaining the ``all`` row;
* ``hgkit``: the five, hgkit's MLP, its minibatches of 100 and its 2,000 steps: hgkit's protocol run by this module
  (what is left: which 5,000 training and 500 validation images, and how minibatches are drawn).

Every row is reported twice: at the accepted point (the reference's early stopping: the best of the checks) and at
the last check (hgkit's protocol reports the end of the run).

In every row the rest is the reference's: minibatches of 128 (but ``hgkit``), momentum 0.9, the clip at 100, early
stopping (never triggered in 4 epochs: the accepted point is the best check). What even the ``hgkit`` row keeps of
the reference: checks every 21 steps on the whole validation set, and its minibatch tables.

The table has a row per (factor, method, seed); the summary gives per factor the mean test accuracy of each method
over the seeds with its 95 % Student-t interval, the order of the means, and the paired differences (each seed runs
every method on the same initial weights and minibatches, so the differences are paired).

Example:
    >>> c = SMOKE
    >>> ref_config, settings = variant(c, "delta")
    >>> ref_config.delta, [s.label for s in settings]
    (2, ['HD, β = 0.001', 'RTHO, β = 0.001', 'MARTHE, β = 0.001'])
    >>> [s.label for s in variant(c, "knobs")[1]]
    ['HD, β = 0.03', 'RTHO, β = 0.003', 'MARTHE, β₀ = 0.003, α = 1e-05']
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import jax
import numpy as np
import pandas as pd

from . import lr_schedules as own
from . import lr_schedules_reference as ref
from ._config import check_positive_ints, check_positive_numbers, check_seeds
from ._report import (
    FailureLog,
    failures_note,
    mark_missing,
    markdown_table,
    over_seeds,
    paired_differences,
    save_figure,
    t_interval,
    write_tables,
)

NAME = "lr-schedules-factors"
TITLE = "Online learning-rate schedules: from MARTHE's protocol to hgkit's, one factor at a time"

FACTORS = {
    "reference": "MARTHE's protocol",
    "delta": "Δ = {delta} (RTHO, MARTHE)",
    "training-set": "{small_train:,} training images",
    "objective": "E on {objective_rows} fixed validation images",
    "width": "MLP 784-{narrow}-10",
    "knobs": "hgkit's fixed knobs",
    "all": "all five",
    "network": "hgkit's MLP (tanh, N(0, 1/fan_in))",
    "hgkit": "all five, hgkit's MLP, minibatches of {batch_size}, {steps:,} steps",
}
"""The factors, by their name on the command line, and their label in the report (a template of the config's
fields: :func:`label`)."""


def label(config, factor: str) -> str:
    """The factor's label with ``config``'s values."""
    return FACTORS[factor].format(**dataclasses.asdict(config))


METHODS = ("HD", "RTHO", "MARTHE")
COLORS = {"HD": "tab:orange", "RTHO": "tab:red", "MARTHE": "tab:blue"}


@dataclasses.dataclass(frozen=True)
class Config:
    """The reference protocol's sizes, and hgkit's values of the factors.

    Attributes:
        width, n_train, n_val, n_test, epochs, check_every, patience: the reference protocol's (see
            :class:`.lr_schedules_reference.Config`).
        beta: the step β of SGD on η of every method in the rows other than ``knobs``.
        delta, small_train, objective_rows, narrow: hgkit's Δ, training images, validation images of E and
            hidden units (the ``delta``, ``training-set``, ``objective`` and ``width`` factors).
        batch_size, steps: hgkit's minibatch and run length (the ``hgkit`` row).
        factors: the factors run (keys of :data:`FACTORS`).
        seeds: one repetition per seed (initial weights, minibatch order); every factor runs on every seed.
        mnist_dir: a folder of MNIST's four IDX files; empty: :func:`hgkit.datasets.load_mnist` (the cache).

    ``DEFAULT``: 9 factors × 3 methods × 3 seeds, 81 runs of at most about 2,000 steps (1,636 s on this machine's
    2 cores, with the test suite on them for half of it). ``FULL`` adds seeds 3 and 4.
    """

    width: int = ref.DEFAULT.width
    n_train: int = ref.DEFAULT.n_train
    n_val: int = ref.DEFAULT.n_val
    n_test: int = ref.DEFAULT.n_test
    epochs: float = ref.DEFAULT.epochs
    check_every: float = ref.DEFAULT.check_every
    patience: int = ref.DEFAULT.patience
    beta: float = 1e-4
    delta: int = own.DEFAULT.delta
    small_train: int = own.DEFAULT.n_train
    objective_rows: int = own.DEFAULT.n_hyper
    narrow: int = own.DEFAULT.width
    batch_size: int = own.DEFAULT.batch_size
    steps: int = own.DEFAULT.T
    factors: tuple[str, ...] = tuple(FACTORS)
    seeds: tuple[int, ...] = (0, 1, 2)
    mnist_dir: str = ""

    def __post_init__(self):
        check_positive_ints(self, ("width", "n_train", "n_val", "n_test", "patience", "delta", "small_train"))
        check_positive_ints(self, ("objective_rows", "narrow", "batch_size", "steps"))
        check_positive_numbers(self, ("epochs", "check_every", "beta"))
        unknown = [f for f in self.factors if f not in FACTORS]
        if unknown or not self.factors:
            raise ValueError(f"Config.factors: choose one or more of {list(FACTORS)}; got {list(self.factors)}")
        if self.small_train > self.n_train:
            raise ValueError(f"Config.small_train ({self.small_train}) exceeds Config.n_train ({self.n_train})")
        check_seeds(self)
        for factor in self.factors:  # each variant's own checks (sizes against the split, ...), before any run
            variant(self, factor)


def reference_config(config: Config) -> ref.Config:
    """The ``reference`` row: the reference protocol at ``config``'s sizes, HD, RTHO and MARTHE at β alone."""
    return ref.Config(
        width=config.width, n_train=config.n_train, n_val=config.n_val, n_test=config.n_test, epochs=config.epochs,
        check_every=config.check_every, patience=config.patience, discounts=("1", "adapt"), betas=(config.beta,),
        alphas=(), fixed_lrs=(), decay_lrs=(), lr_free=(), seeds=config.seeds, mnist_dir=config.mnist_dir,
    )  # fmt: skip


def _resized(c: ref.Config, n_train: int, batch_size: int, steps: float) -> ref.Config:
    """``c`` on ``n_train`` images in minibatches of ``batch_size`` for about ``steps`` steps (the last check within
    them), with the same steps between checks: the reference's config says both in epochs."""
    per_epoch = n_train // batch_size
    # int(check_every · per_epoch) must give the interval back: aim half a step above it.
    check_every = (ref.check_interval(c) + 0.5) / per_epoch
    return dataclasses.replace(c, n_train=n_train, batch_size=batch_size, epochs=steps / per_epoch,
                               check_every=check_every)  # fmt: skip


def _fewer_images(config: Config, c: ref.Config) -> ref.Config:
    """``small_train`` images for the same steps and the same steps between checks."""
    return _resized(c, config.small_train, c.batch_size, ref.total_steps(c))


CHANGES = {
    "delta": lambda config, c: dataclasses.replace(c, delta=config.delta),
    "training-set": _fewer_images,
    "objective": lambda config, c: dataclasses.replace(c, objective_rows=config.objective_rows),
    "width": lambda config, c: dataclasses.replace(c, width=config.narrow),
    "knobs": lambda config, c: dataclasses.replace(c, lr0=own.DEFAULT.lr),
}
"""How each factor changes the reference protocol's config (``knobs`` also changes the settings)."""


def knob_settings() -> list[ref.Setting]:
    """hgkit's own knobs (:data:`.lr_schedules.DEFAULT`): HD's and RTHO's β, MARTHE's β_0 and α."""
    o = own.DEFAULT
    return [
        ref.Setting("HD", f"HD, β = {o.hd_beta:g}", 0.0, o.hd_beta, objective="train"),
        ref.Setting("RTHO", f"RTHO, β = {o.rtho_beta:g}", 1.0, o.rtho_beta),
        ref.Setting("MARTHE", f"MARTHE, β₀ = {o.marthe_beta:g}, α = {o.marthe_alpha:g}", "adapt", o.marthe_beta,
                    o.marthe_alpha),
    ]  # fmt: skip


def variant(config: Config, factor: str) -> tuple[ref.Config, list[ref.Setting]]:
    """The reference protocol's config and the three methods' settings with ``factor`` changed (``all``: every
    factor)."""
    changed = [f for f in CHANGES if f == factor or factor in ("all", "hgkit")]
    c = reference_config(config)
    for name in changed:
        c = CHANGES[name](config, c)
    if factor in ("network", "hgkit"):
        c = dataclasses.replace(c, mlp="hgkit")
    if factor == "hgkit":
        c = _resized(c, c.n_train, config.batch_size, config.steps)  # hgkit's minibatch and length
    settings = knob_settings() if "knobs" in changed else [s for s in ref.settings(c) if s.family in METHODS]
    return c, settings


SMOKE = Config(
    width=32, n_train=1280, n_val=256, n_test=500, epochs=3.0, check_every=0.2, patience=5, beta=1e-3, delta=2,
    small_train=384, objective_rows=128, narrow=16, factors=("reference", "delta", "objective", "all"), seeds=(0,),
)  # fmt: skip
DEFAULT = Config()
FULL = Config(seeds=(0, 1, 2, 3, 4))


# ----- the runs ------------------------------------------------------------------------------------------------


def run_one_seed(config: Config, seed: int, failures: FailureLog, bar=None):
    """Every factor's three methods on one seed: the table, and the η per step by (factor, method)."""
    rows, schedules = [], {}
    for factor in config.factors:
        c, settings = variant(config, factor)
        ctx = ref.Context(c, ref.load_data(c), seed)
        for setting in settings:
            if bar is not None:
                bar.set_description_str(f"seed {seed}: {label(config, factor)}, {setting.label}")
            out = failures.attempt(seed, f"{factor}: {setting.label}", ref.run_online, setting, ctx)
            jax.clear_caches()  # as in the reference protocol's runs: each run's program holds the training set
            if bar is not None:
                bar.update(1)
            if out is None:
                continue
            row, checks, lr = out
            last = checks.iloc[-1] if len(checks) else {"val_accuracy": math.nan, "test_accuracy": math.nan}
            row |= {"last_val_accuracy": last["val_accuracy"], "last_test_accuracy": last["test_accuracy"]}
            every = 1 if setting.discount == 0 else c.delta  # η is recorded once per chunk of Δ steps
            schedules[factor, setting.family] = (every * np.arange(1, len(lr) + 1), lr)
            rows.append(dict(factor=factor, method=setting.family, **row))
    table = pd.DataFrame(rows)
    table.insert(0, "seed", seed)
    return table, schedules


@dataclasses.dataclass(frozen=True)
class Results:
    """A row per (seed, factor, method): the accepted point, the steps, the clips, the last η and the wall time
    (``table``); the first seed's ``(inner steps, η)`` by ``(factor, method)``; what failed."""

    config: Config
    table: pd.DataFrame
    schedules: dict
    failures: tuple = ()

    def means(self, value: str = "test_accuracy") -> pd.DataFrame:
        """Per factor: each method's mean test accuracy over the seeds (``"last_test_accuracy"``: at the last
        check), its 95 % half-width, and the order."""
        return means(self.table, self.config, value)

    def differences(self, value: str = "test_accuracy") -> pd.DataFrame:
        """Per factor: the paired differences RTHO − HD, MARTHE − HD and RTHO − MARTHE, mean and 95 % half-width."""
        return differences(self.table, self.config, value)

    def tables(self) -> str:
        """The means and the paired differences, at the accepted point and at the last check, as Markdown."""
        out = []
        for value, where in (("test_accuracy", "at the accepted point"), ("last_test_accuracy", "at the last check")):
            out += [
                f"## Test accuracy {where}, mean over seeds ± 95 % (Student t)",
                markdown_table(self.means(value), 4),
                f"## Paired differences {where} (points of accuracy, ± 95 %)",
                markdown_table(self.differences(value), 2),
            ]
        return "\n\n".join(out)

    def summary(self) -> str:
        return f"{TITLE}\n{settings_line(self.config)}\n\n" + self.tables() + failures_note(self.failures)

    def __repr__(self) -> str:
        return self.summary()


PAIRS = (("RTHO", "HD"), ("MARTHE", "HD"), ("RTHO", "MARTHE"))


def means(table: pd.DataFrame, config: Config, value: str = "test_accuracy") -> pd.DataFrame:
    """Per factor each method's mean of ``value`` over the seeds, its 95 % half-width, and the order of the means."""
    rows = []
    for factor, group in table.groupby("factor", sort=False):
        row = {"factor": label(config, factor), "seeds": group["seed"].nunique()}
        for method in METHODS:
            row[method], row[f"{method} ±"] = t_interval(group.loc[group["method"] == method, value])
        present = [m for m in METHODS if not math.isnan(row[m])]
        row["order"] = " > ".join(sorted(present, key=lambda m: -row[m]))
        rows.append(row)
    return pd.DataFrame(rows)


def differences(table: pd.DataFrame, config: Config, value: str = "test_accuracy") -> pd.DataFrame:
    """Per factor the paired differences of ``value`` (points) between the methods, mean and 95 % half-width."""
    out = paired_differences(table, "factor", PAIRS, value)
    out["factor"] = [label(config, f) for f in out["factor"]]
    return out


def settings_line(c: Config) -> str:
    base = reference_config(c)
    return (
        f"from {ref.settings_line(base)}; each method at β = {c.beta:g} except in the knobs row; hgkit's values: "
        f"Δ = {c.delta}, {c.small_train} training images, E on {c.objective_rows} validation images, width "
        f"{c.narrow}, η₀ = {own.DEFAULT.lr:g}, minibatches of {c.batch_size}, {c.steps} steps"
    )


def run(config: Config = DEFAULT, progress: bool = True, callbacks=()) -> Results:
    """Every factor's three methods on every seed (``callbacks`` are not used: the runs stop themselves early)."""
    from tqdm.auto import tqdm

    del callbacks
    total = len(config.seeds) * len(config.factors) * len(METHODS)
    bar = tqdm(total=total, disable=not progress, unit="run", desc="loading the data")
    try:
        failures = FailureLog()
        table, per_seed = over_seeds(config.seeds, lambda s: run_one_seed(config, s, failures, bar), failures)
    finally:
        bar.close()
    (schedules,) = per_seed.get(config.seeds[0], ({},))
    return Results(config, table, schedules, tuple(failures.records))


# ----- figures and report --------------------------------------------------------------------------------------


def draw_means(ax, results: Results) -> list:
    """Per factor (top to bottom) each method's test accuracy: every seed as a dot, the mean as a bar with its
    95 % interval."""
    table = results.table
    if not len(table):
        mark_missing(ax, "no run")
        return []
    factors = list(dict.fromkeys(table["factor"]))
    artists = []
    for k, method in enumerate(METHODS):
        offset = (k - 1) * 0.25
        for i, factor in enumerate(factors):
            acc = 100 * table.loc[(table["factor"] == factor) & (table["method"] == method), "test_accuracy"]
            if not len(acc):
                continue
            y = i + offset
            mean, half = t_interval(acc)
            artists.append(ax.errorbar(mean, y, xerr=None if math.isnan(half) else half, fmt="s",
                                       color=COLORS[method], capsize=3, label=method if i == 0 else None))  # fmt: skip
            artists.append(ax.scatter(acc, np.full(len(acc), y), s=10, color=COLORS[method], alpha=0.5))
    ax.set_yticks(range(len(factors)), [label(results.config, f) for f in factors])
    ax.invert_yaxis()
    dots = 100 * table["test_accuracy"].dropna()
    if len(dots):  # every seed in view; an interval wider than that (one seed collapsed) runs off the panel
        ax.set_xlim(float(dots.min()) - 0.5, min(100.0, float(dots.max()) + 0.5))
    ax.set_xlabel("test accuracy at the accepted point (%): dots are seeds, squares means ± 95 %")
    ax.legend(loc="lower left", fontsize="small")
    return artists


def draw_schedules(axes, results: Results) -> list:
    """η against the inner step, one panel per factor, the three methods (first seed)."""
    artists = []
    for ax, factor in zip(axes, results.config.factors, strict=False):
        for method in METHODS:
            schedule = results.schedules.get((factor, method))
            if schedule is not None:
                artists += ax.plot(*schedule, color=COLORS[method], label=method)
        ax.set_title(label(results.config, factor), fontsize="small")
        ax.set_xlabel("inner step")
    if artists:
        axes[0].set_ylabel("η")
        axes[0].legend(fontsize="small")
    return artists


def write_report(results: Results, out_dir) -> list[Path]:
    """``lr-schedules-factors.md`` / ``.csv`` (every run), ``-means.png`` and ``-schedules.png``."""
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    notes = settings_line(results.config) + "\n\n" + results.tables()
    paths = write_tables(results.table, out_dir, NAME, TITLE, notes, results.failures)
    fig, ax = plt.subplots(figsize=(10, 0.6 * len(results.config.factors) + 1.5), layout="constrained")
    draw_means(ax, results)
    ax.set_title("From MARTHE's protocol to hgkit's, one factor at a time")
    paths.append(save_figure(fig, out_dir / f"{NAME}-means.png"))
    n = len(results.config.factors)
    fig, axes = plt.subplots(1, n, figsize=(2.6 * n, 3), layout="constrained", sharey=True, squeeze=False)
    draw_schedules(axes[0], results)
    fig.suptitle(f"η of each method in each row (seed {results.config.seeds[0]})")
    paths.append(save_figure(fig, out_dir / f"{NAME}-schedules.png"))
    return paths
