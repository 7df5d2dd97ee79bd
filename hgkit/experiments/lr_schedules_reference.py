"""Online learning-rate schedules on MNIST by MARTHE's own protocol: the authors' MNIST comparison
(``lucfra/Marthe-TF``, ``marthe/mnist_comparison.py``) with hgkit's :class:`~hgkit.RealTime`.

``hgkit reproduce lr-schedules --protocol reference``. What the reference does, and what this module does alike:

* **data**: full MNIST split as TensorFlow's reader splits it (the first 5,000 training images are the validation
  set, the other 55,000 the training set; the 10,000 test images), pixels in [0, 1];
* **network and training**: ``"ffnn"`` 784-800-10 (ReLU) or ``"cnn"`` (conv 32 5×5 → max-pool 2 → conv 64 5×5
  ReLU → max-pool 2 → dense 1024 ReLU → dense 10, 'same' padding), Glorot-uniform weights and zero biases (TF's
  defaults), trained by heavy-ball momentum 0.9 (``v ← μ v + g``, ``w ← w − η v``: TF's ``MomentumOptimizer``) on
  minibatches of 128;
* **validation objective E**: the cross-entropy on a validation minibatch of 128 drawn at every step; for
  hypergradient descent (HD) the *training* minibatch of the step instead (the reference's ``MnistExpConfigHD``);
* **early stopping**: the accuracy on the whole validation set every ``int(0.05 · iterations per epoch)`` steps
  (21 at full size), training stops after 200 checks without a strict improvement (:func:`early_stopping`, a
  transcription of ``marthe/utils.py`` ``early_stopping``), and the test accuracy at the last accepted check is
  reported;
* **the online methods**: ``hg.RealTime(delta=1, discount=μ)`` in ``hg.HyperOptimizer``, the hypergradient
  clipped at 100 (``optax.clip``), η kept ≥ 0 (``hg.constraints.positive(0.0)``), η updated by SGD with step β
  (``hg.schedules.adaptive_sgd(β, 0)``); the reference's grid: η_0 = ``lr0``, μ ∈ {0, 0.5, 0.9, 0.999, 1}, β ∈
  {1e-4, 1e-5, 1e-6}; here also μ = ``"adapt"`` (MARTHE, ``RealTime(clip=100)``) on the same β, HD on the same β,
  and MARTHE's adaptive β (``adaptive_sgd(1e-8, α)``: ``β_{t+1} = max(β_t + α δ_t δ_{t−1}, 0)`` from 1e-8,
  ``Marthe(beta=α)`` in the reference) on a grid of α;
* **baselines**: constant η (a grid), exponential decay ``η_0 r^(t / iterations per epoch)`` and its staircase
  (``r^⌊t / iterations per epoch⌋``) as TF's ``exponential_decay``, all with the same momentum; and the
  learning-rate-free optimizers of ``optax.contrib`` (prodigy, DoG, D-Adapt AdamW, and schedule-free SGD, which
  still takes a learning rate), with their own defaults and no momentum of ours.

**Departures** (each also in the report):

1. The tangent is pushed by the JVP ``A_t Z`` of the paper's recurrence; the reference's graph computes
   ``∇_w⟨Φ_t, Z⟩ = A_tᵀ Z`` (``marthe_alg.py`` l. 136), the same only for a symmetric ``A_t`` (plain SGD); with
   heavy-ball momentum the state's Jacobian is not symmetric.
2. hgkit's loop takes one fixed ``val_data``; the minibatch of E is picked by a step counter the model carries
   (``params["t"]``, which every training step increments; its tangent stays 0), from a table of minibatches in
   ``val_data``. With Δ = 1, hyper-iteration k reads E after step k on the minibatch of step k + 1: that is the
   reference's δ_{k+1} exactly. MARTHE's ``b_k = ∇E(w_{k+1})·B_k`` then uses the same minibatch (k + 1), where the
   reference evaluates it on minibatch k (the one of ``δ_k``).
3. The early-stopping checks (full validation and test accuracy) are computed inside the compiled step (a
   ``lax.cond`` on the counter; skipped between checks) and read by a callback that stops the loop; the run ends
   at the last check (the reference's generator runs one more step, to ``epochs · iterations per epoch``).
4. The sizes of ``DEFAULT`` (below) are a subset; minibatches are drawn as epochs of permutations.

**Compute** is counted in plain inner-step equivalents, as in :mod:`~hgkit.experiments.lr_schedules`: a plain
step is 1; an online step adds one tangent JVP (1) and the read-out of ∇E on a minibatch of the batch size (1),
so 3; MARTHE adds the JVP ``B_t`` of its rule for μ (4). The learning-rate-free optimizers are charged 1 (their
own few vector operations are not counted). The early-stopping checks, the same for every method, are not
charged. A configuration is charged the steps it ran (up to its early stop); a family (the grid of one method)
the sum of its configurations, and the best-so-far figure plots the test accuracy at the accepted point of the
configuration with the best validation accuracy seen so far against the family's compute spent so far.

**Clipping**: a step's hypergradient was clipped when ``|δ| > clip``: counted from the history's ``grad_norm``
(``|δ|`` for the one scalar η), one per step (the reference's ``hg_clip_counter`` counts a clip twice when its
``Marthe.run`` evaluates δ twice, with ``"adapt"`` or an adaptive β).

**Data**: full MNIST by :func:`hgkit.datasets.load_mnist` (downloaded once into hgkit's cache, then read from it),
or ``Config.mnist_dir``, a folder of the four IDX files (``--set mnist_dir=PATH``).

Example:
    >>> c = SMOKE
    >>> iterations_per_epoch(c), check_interval(c), total_steps(c)
    (10, 2, 29)
    >>> [s.label for s in settings(c)]
    ['HD, β = 0.001', 'RTHO, β = 0.001', 'MARTHE, β = 0.001', 'η = 0.1']
    >>> early_stopping([0.1, 0.3, 0.2, 0.4, 0.4, 0.1, 0.9], patience=2)  # a tie is no improvement
    (3, 5)
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

from ._config import check_positive_ints, check_positive_numbers, check_seeds, check_split_sizes
from ._marthe_mnist import (  # noqa: F401 - early_stopping, load_data and network are this protocol's too
    EarlyStopping,
    accuracy_fn,
    batch_order,
    counting,
    early_stopping,
    load_data,
    make_problem,
    network,
)
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

NAME = "lr-schedules-reference"
TITLE = "Online learning-rate schedules on MNIST by MARTHE's protocol (lucfra/Marthe-TF)"

FAMILIES = (
    "HD",
    "μ = 0",
    "discounted",
    "RTHO",
    "MARTHE",
    "MARTHE, adaptive β",
    "fixed η",
    "exponential decay",
    "staircase decay",
    "prodigy",
    "dog",
    "dadapt_adamw",
    "schedule_free_sgd",
)
"""The method families: HD (μ = 0, E on the training minibatch), μ = 0 with the validation E, discounted
(0 < μ < 1), RTHO (μ = 1), MARTHE (μ adapted), MARTHE with the adaptive β, the plain schedules and the
learning-rate-free optimizers."""

COLORS = dict(zip(FAMILIES, (
    "tab:orange", "tab:brown", "tab:pink", "tab:red", "tab:blue", "tab:cyan", "0.4", "tab:purple", "tab:olive",
    "tab:green", "darkgreen", "limegreen", "k",
), strict=True))  # fmt: skip

LR_FREE = ("prodigy", "dog", "dadapt_adamw", "schedule_free_sgd")
MODELS = ("ffnn", "cnn")
DATA = ("full", "packaged")


@dataclasses.dataclass(frozen=True)
class Config:
    """The reference's settings, and the grid.

    Attributes:
        model: ``"ffnn"`` (784-``width``-10) or ``"cnn"``.
        width: the FFNN's hidden units (800 in the reference).
        mlp: ``"reference"``: the FFNN as the reference builds it (ReLU, Glorot-uniform weights); ``"hgkit"``: hgkit's
            own MLP (tanh, weights N(0, 1/fan_in)), for :mod:`.lr_schedules_factors`.
        n_train, n_val, n_test: the first images of TF's 55,000 / 5,000 / 10,000 split.
        batch_size, momentum: 128 and 0.9.
        epochs: the longest run, in epochs of ``n_train // batch_size`` steps.
        check_every: early stopping's check, in epochs (``int(check_every · iterations per epoch)`` steps).
        patience: checks without improvement before training stops.
        lr0: η_0 of the online methods.
        discounts: μ of the online grid (``"adapt"``: MARTHE), as text (``--set discounts=0,1,adapt``).
        betas: β of the online grid (every μ, and HD).
        alphas: α of MARTHE's adaptive β (from ``beta_start``); empty: not run.
        beta_start: the adaptive β's start (1e-8 in the reference).
        clip: the hypergradient's clip.
        delta: Δ of the online methods whose μ is not 0 (1 in the reference; HD and μ = 0 always take Δ = 1); a
            run then ends at the last whole chunk.
        objective_rows: 0 (the reference): E on a fresh validation minibatch every step; n > 0: E on the first
            n validation images at every read-out, for every online method, HD included (hgkit's own protocol).
        fixed_lrs: the constant-η grid.
        decay_lrs, decay_rates: η_0 and the rate per epoch of the exponential and staircase decays.
        lr_free: the ``optax.contrib`` optimizers run (a subset of :data:`LR_FREE`).
        schedule_free_lr: schedule-free SGD's learning rate.
        seeds: one repetition per seed (initial weights, minibatch order).
        data: ``"full"``: full MNIST split as TF's reader splits it (the reference); ``"packaged"``: hgkit's
            packaged 5,000 / 5,000 / 10,000 split (:func:`hgkit.datasets.hyper_cleaning_mnist`, no download: the
            lesson in ``notebooks/lr_schedules.ipynb``).
        mnist_dir: a folder of MNIST's four IDX files; empty: :func:`hgkit.datasets.load_mnist` (the cache).

    ``FULL`` is the reference's main grid (CNN, η_0 = 0.05, 15 epochs; μ ∈ {0, 0.5, 0.9, 0.999, 1, "adapt"} ×
    β ∈ {1e-4, 1e-5, 1e-6}, HD on the same β, three α, and the baselines): 24 online runs of up to 6,435 CNN steps
    and 306 checks each. Estimated from a CNN gradient (0.6 s) and its JVP (1.2 s) timed on this shared machine:
    an online step about 2 s and a check (15,000 images) about 20 s, so about 5 days of this machine; on one GPU
    a few hours (not measured). :data:`FFNN` is the reference's commented-out setting
    (FFNN, η_0 = 0, 20 epochs) on the same grid: about 2 h of one core here (an online step of the FFNN takes
    about 18 ms, a plain one 5 ms, a check 0.17 s, each run's compilation about 10 s).

    ``DEFAULT`` is a subset of :data:`FFNN` sized for about 15–20 minutes of one core: **4 epochs instead of 20**
    (so early stopping, whose patience of 200 checks is about 9.8 epochs, never ends a run: the accepted point is
    the best of the run's 82 checks), **μ ∈ {0, 1, "adapt"}** (no 0.5, 0.9, 0.999), one α, two constant η, one
    exponential and one staircase decay, **one seed**; β ∈ {1e-4, 1e-5, 1e-6} and HD as in the reference.
    """

    model: str = "ffnn"
    width: int = 800
    mlp: str = "reference"
    n_train: int = 55000
    n_val: int = 5000
    n_test: int = 10000
    batch_size: int = 128
    momentum: float = 0.9
    epochs: float = 4.0
    check_every: float = 0.05
    patience: int = 200
    lr0: float = 0.0
    discounts: tuple[str, ...] = ("0", "1", "adapt")
    betas: tuple[float, ...] = (1e-4, 1e-5, 1e-6)
    alphas: tuple[float, ...] = (1e-9,)
    beta_start: float = 1e-8
    clip: float = 100.0
    delta: int = 1
    objective_rows: int = 0
    fixed_lrs: tuple[float, ...] = (0.03, 0.1)
    decay_lrs: tuple[float, ...] = (0.1,)
    decay_rates: tuple[float, ...] = (0.8,)
    lr_free: tuple[str, ...] = LR_FREE
    schedule_free_lr: float = 0.1
    seeds: tuple[int, ...] = (0,)
    data: str = "full"
    mnist_dir: str = ""

    def __post_init__(self):
        if self.model not in MODELS:
            raise ValueError(f"Config.model must be one of {MODELS}; got {self.model!r}")
        if self.mlp not in ("reference", "hgkit"):
            raise ValueError(f"Config.mlp must be 'reference' or 'hgkit'; got {self.mlp!r}")
        if self.data not in DATA:
            raise ValueError(f"Config.data must be one of {DATA}; got {self.data!r}")
        if self.data == "packaged":
            check_split_sizes(self, ("n_train", "n_val", "n_test"))
        check_positive_ints(self, ("width", "n_train", "n_val", "n_test", "batch_size", "patience", "delta"))
        check_positive_numbers(self, ("epochs", "check_every", "clip", "beta_start", "schedule_free_lr"))
        for name, limit in (("n_train", 55000), ("n_val", 5000), ("n_test", 10000)):
            if getattr(self, name) > limit:
                raise ValueError(f"Config.{name} ({getattr(self, name)}) exceeds TF's split ({limit})")
        if not (isinstance(self.objective_rows, int) and 0 <= self.objective_rows <= self.n_val):
            raise ValueError(f"Config.objective_rows must be an int in [0, n_val = {self.n_val}]; got "
                             f"{self.objective_rows!r}")  # fmt: skip
        if self.batch_size > min(self.n_train, self.n_val):
            raise ValueError(f"Config.batch_size ({self.batch_size}) exceeds n_train or n_val")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"Config.momentum must be in [0, 1); got {self.momentum!r}")
        if not (isinstance(self.lr0, int | float) and self.lr0 >= 0):
            raise ValueError(f"Config.lr0 must be a number >= 0; got {self.lr0!r}")
        for mu in self.discounts:
            if mu != "adapt" and not (_is_number(mu) and 0 <= float(mu) <= 1):
                raise ValueError(f'Config.discounts: each must be a number in [0, 1] or "adapt"; got {mu!r}')
        for name in ("betas", "alphas", "fixed_lrs", "decay_lrs", "decay_rates"):
            values = getattr(self, name)
            if not all(isinstance(v, int | float) and v > 0 for v in values):
                raise ValueError(f"Config.{name} must be a tuple of positive numbers; got {values!r}")
        unknown = sorted(set(self.lr_free) - set(LR_FREE))
        if unknown:
            raise ValueError(f"Config.lr_free: {unknown} unknown; choose from {LR_FREE}")
        check_seeds(self)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except (TypeError, ValueError):
        return False
    return True


# SMOKE runs HD, RTHO, MARTHE and one constant η (each run compiles, seconds each); the tests run the others apart.
SMOKE = Config(
    width=32, n_train=1280, n_val=256, n_test=500, epochs=3.0, check_every=0.2, patience=5, discounts=("1", "adapt"),
    betas=(1e-3,), alphas=(), fixed_lrs=(0.1,), decay_lrs=(), lr_free=(),
)  # fmt: skip
DEFAULT = Config()
FULL = Config(
    model="cnn", epochs=15.0, lr0=0.05, discounts=("0", "0.5", "0.9", "0.999", "1", "adapt"),
    betas=(1e-4, 1e-5, 1e-6), alphas=(1e-12, 1e-9, 1e-6), fixed_lrs=(0.01, 0.03, 0.05, 0.1),
    decay_lrs=(0.05, 0.1), decay_rates=(0.8, 0.9), lr_free=LR_FREE,
)  # fmt: skip
FFNN = Config(
    epochs=20.0, discounts=("0", "0.5", "0.9", "0.999", "1", "adapt"), betas=(1e-4, 1e-5, 1e-6),
    alphas=(1e-12, 1e-9, 1e-6), fixed_lrs=(0.01, 0.03, 0.1), decay_lrs=(0.05, 0.1), decay_rates=(0.8, 0.9),
    lr_free=LR_FREE,
)  # fmt: skip
"""The reference's commented-out setting on the whole grid (about 5 h on one CPU core)."""
LESSON = Config(
    data="packaged", width=100, n_train=5000, n_val=1000, n_test=2000, epochs=20.0, check_every=0.25,
    discounts=("1", "adapt"), betas=(1e-3,), alphas=(), fixed_lrs=(0.1,), decay_lrs=(), lr_free=(),
)  # fmt: skip
"""The lesson of ``notebooks/lr_schedules.ipynb``: the reference's per-step algorithm (Δ = 1, E on a fresh
minibatch, HD on the training one, momentum 0.9, early stopping) on the packaged 5,000 training images, an MLP
784-100-10, 20 epochs (775 steps), HD, RTHO and MARTHE at β = 1e-3 beside η = 0.1 (about 20 s on 2 cores)."""


def iterations_per_epoch(config: Config) -> int:
    return config.n_train // config.batch_size


def check_interval(config: Config) -> int:
    """Steps between early-stopping checks: the reference's ``int(cke · iter_per_epoch)`` (at least 1)."""
    return max(1, int(config.check_every * iterations_per_epoch(config)))


def total_steps(config: Config) -> int:
    """The steps of a run that is not stopped early: up to the last check within ``epochs``."""
    longest = int(round(config.epochs * iterations_per_epoch(config)))
    return 1 + check_interval(config) * ((longest - 1) // check_interval(config))


# ----- the configurations --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Setting:
    """One configuration: its family and label, and what it needs (the others None)."""

    family: str
    label: str
    discount: float | str | None = None  # online
    beta: float | None = None
    alpha: float | None = None
    objective: str = "val"  # the online E: "val" or, for HD, "train"
    lr: float | None = None  # plain
    rate: float | None = None

    @property
    def online(self) -> bool:
        return self.discount is not None

    @property
    def step_cost(self) -> float:
        """Plain-step equivalents per inner step (see the module docstring)."""
        if not self.online:
            return 1.0
        return 4.0 if self.discount == "adapt" else 3.0


def settings(config: Config) -> list[Setting]:
    """Every configuration of the grid, in the report's order."""
    out = [Setting("HD", f"HD, β = {b:g}", 0.0, b, objective="train") for b in config.betas]
    for text in config.discounts:
        mu = "adapt" if text == "adapt" else float(text)
        family = {"adapt": "MARTHE", 0.0: "μ = 0", 1.0: "RTHO"}.get(mu, "discounted")
        name = "MARTHE" if mu == "adapt" else "RTHO" if mu == 1 else f"μ = {mu:g}"
        out += [Setting(family, f"{name}, β = {b:g}", mu, b) for b in config.betas]
    out += [Setting("MARTHE, adaptive β", f"MARTHE, α = {a:g}", "adapt", config.beta_start, a) for a in config.alphas]
    out += [Setting("fixed η", f"η = {lr:g}", lr=lr) for lr in config.fixed_lrs]
    for family in ("exponential decay", "staircase decay"):
        out += [Setting(family, f"{family}, η₀ = {lr:g}, r = {r:g}", lr=lr, rate=r)
                for lr in config.decay_lrs for r in config.decay_rates]  # fmt: skip
    out += [Setting(name, name, lr=config.schedule_free_lr if name == "schedule_free_sgd" else None)
            for name in config.lr_free]  # fmt: skip
    return out


# ----- the runs ------------------------------------------------------------------------------------------------


class Context:
    """One seed's data, network, minibatch tables and evaluation functions."""

    def __init__(self, config: Config, data: dict, seed: int):
        self.config, self.data, self.seed = config, data, seed
        self.init, self.apply = network(config)
        steps = total_steps(config)
        x, y = data["train"]
        self.train_order = batch_order(len(x), config.batch_size, steps + 1, np.random.default_rng([seed, 2]))
        self.val_order = batch_order(len(data["val"][0]), config.batch_size, steps + 1,
                                     np.random.default_rng([seed, 3]))  # fmt: skip
        order = self.train_order

        def batch(step):
            rows = order[step]
            return x[rows], y[rows]

        self.batch = batch
        self.val_accuracy = accuracy_fn(self.apply, *data["val"])
        self.test_accuracy = accuracy_fn(self.apply, *data["test"])
        self.key = jax.random.PRNGKey(seed)


def online_result(setting: Setting, ctx: Context, steps: int | None = None, callbacks=()):
    """The online configuration's loop result (at most ``steps`` inner steps; default: the whole run) and its
    early-stopping rule, which stopped it; ``callbacks`` (a dashboard) follow the rule in the loop."""
    c, interval = ctx.config, check_interval(ctx.config)
    problem = make_problem(c, ctx.apply, ctx.init, hg.optim.momentum("lr", c.momentum))
    delta = 1 if setting.discount == 0 else c.delta
    if setting.discount == "adapt":
        method = hg.RealTime(delta, discount="adapt", clip=c.clip)
    else:
        method = hg.RealTime(delta, discount=setting.discount)
    tx = optax.chain(optax.clip(c.clip), hg.schedules.adaptive_sgd(setting.beta, setting.alpha or 0.0))

    def at_checks(evaluate):
        def metric(p, hp):
            # A check when the chunk just made (steps t − Δ .. t − 1) holds a multiple of the interval; with
            # Δ = 1, when the step just made is one.
            last = p["t"].astype(jnp.int32) - 1
            due = last // interval != (last - delta) // interval
            return jax.lax.cond(due, lambda: evaluate(p["net"]).astype(jnp.float32), lambda: jnp.float32(jnp.nan))

        return metric

    metrics = {"val_accuracy": at_checks(ctx.val_accuracy), "test_accuracy": at_checks(ctx.test_accuracy)}
    opt = hg.HyperOptimizer(problem, method=method, hyper_optimizer=tx,
                            constraints={"lr": hg.constraints.positive(0.0)}, metrics=metrics)  # fmt: skip
    rule = EarlyStopping(c.patience)

    def stop(record):
        if math.isnan(record["val_accuracy"]):
            return False
        return rule.update(record["val_accuracy"], step=record["inner_steps"], test=record["test_accuracy"])

    hp = {"lr": jnp.asarray(c.lr0, jnp.float32)}
    T = (steps or total_steps(c)) // delta * delta
    try:
        result = opt.run(hp, T=T, train_data=ctx.batch, val_data=objective_data(setting, ctx), key=ctx.key,
                         progress=False, callbacks=[stop, *callbacks])  # fmt: skip
    except hg.HyperDivergenceError as error:
        result = error.result
    return result, rule


def objective_data(setting: Setting, ctx: Context) -> tuple:
    """``(x, y, order)`` from which E reads the rows ``order[t]`` after step t: with ``objective_rows`` = n, the
    first n validation images every time (every method); otherwise HD the training minibatches and the others the
    validation minibatches."""
    rows = ctx.config.objective_rows
    if rows:
        x, y = ctx.data["val"]
        return x, y, jnp.broadcast_to(jnp.arange(rows, dtype=jnp.int32), (len(ctx.val_order), rows))
    if setting.objective == "train":
        return (*ctx.data["train"], ctx.train_order)
    return (*ctx.data["val"], ctx.val_order)


def run_online(setting: Setting, ctx: Context, callbacks=()) -> tuple[dict, pd.DataFrame, np.ndarray]:
    """One online run with early stopping: its row, its checks and its η per step."""
    c = ctx.config
    result, rule = online_result(setting, ctx, callbacks=callbacks)
    history = result.history
    checks = history[history["val_accuracy"].notna()]
    checks = pd.DataFrame(dict(step=checks["inner_steps"].to_numpy(int), val_accuracy=checks["val_accuracy"],
                               test_accuracy=checks["test_accuracy"])).reset_index(drop=True)  # fmt: skip
    clipped = int((history["grad_norm"] > c.clip).sum())
    wall = history["wall_time"].to_numpy(float)
    row = _row(setting, rule, int(history["inner_steps"].iloc[-1]) if len(history) else 0,
               wall_time=_without_compilation(wall), diverged=result.stopped == "diverged", clipped=clipped,
               lr_end=float(history["lr"].iloc[-1]) if len(history) else math.nan)  # fmt: skip
    return row, checks, history["lr"].to_numpy(float)


def _without_compilation(wall: np.ndarray) -> float:
    """The last wall time less the first step's compilation (the first step taken to last as long as the next)."""
    if len(wall) < 2:
        return float(wall[-1]) if len(wall) else math.nan
    return float(wall[-1] - wall[0] + (wall[1] - wall[0]))


def _row(setting: Setting, rule: EarlyStopping, steps: int, **more) -> dict:
    accepted = rule.accepted or {}
    return dict(
        family=setting.family, setting=setting.label, discount=str(setting.discount) if setting.online else "",
        beta=setting.beta, alpha=setting.alpha, lr=setting.lr, steps=steps, accepted_step=accepted.get("step"),
        val_accuracy=accepted.get("value", math.nan), test_accuracy=accepted.get("test", math.nan),
        step_cost=setting.step_cost, step_equivalents=steps * setting.step_cost, **more,
    )  # fmt: skip


def plain_inner(setting: Setting, config: Config, per_epoch: int):
    """The plain configuration's inner optimizer (its η a function of the step), and its η per step or None."""
    if setting.family in LR_FREE:
        contrib = optax.contrib
        tx = {
            "prodigy": lambda: contrib.prodigy(),
            "dog": lambda: contrib.dog(),
            "dadapt_adamw": lambda: contrib.dadapt_adamw(),
            "schedule_free_sgd": lambda: contrib.schedule_free_sgd(setting.lr),
        }[setting.family]()
        return hg.optim.from_optax(tx), None
    lr0, rate = setting.lr, setting.rate

    def lr(hp, step):
        t = jnp.asarray(step, jnp.float32) / per_epoch
        if setting.family == "staircase decay":
            t = jnp.floor(t)
        return lr0 * rate**t if rate is not None else jnp.float32(lr0)

    return hg.optim.momentum(lr, config.momentum), lr


def run_plain(setting: Setting, ctx: Context) -> tuple[dict, pd.DataFrame, np.ndarray | None]:
    """One plain run with early stopping, chunk by chunk between checks."""
    from ._models import plain_training

    c, interval = ctx.config, check_interval(ctx.config)
    inner, lr = plain_inner(setting, c, iterations_per_epoch(c))
    problem = make_problem(c, ctx.apply, ctx.init, inner)
    hp = {}
    state = hg.initial_state(problem, hp, ctx.key)
    rule, rows, step, diverged = EarlyStopping(c.patience), [], 0, False
    evaluate = jax.jit(lambda p: (ctx.val_accuracy(p), ctx.test_accuracy(p)))
    schedule_free = setting.family == "schedule_free_sgd"
    timed = []  # (steps, seconds) of each chunk and its check
    while step < total_steps(c):
        n = 1 if step == 0 else interval
        start = time.perf_counter()
        traj = plain_training(problem, hp, ctx.batch, n, state=state, first=step)
        state, step = traj.state, step + n
        net = state.params["net"]
        if schedule_free:  # evaluated at the averaged iterate, as schedule-free methods are meant to be
            net = optax.contrib.schedule_free_eval_params(state.opt_state, net)
        val, test = map(float, jax.device_get(evaluate(net)))
        timed.append((n, time.perf_counter() - start))
        rows.append(dict(step=step, val_accuracy=val, test_accuracy=test))
        if int(traj.diverged_at) >= 0:
            diverged = True
            break
        if rule.update(val, step=step, test=test):
            break
    # The first two chunks compile (one step, then a whole interval): the others, scaled to all the steps.
    later = timed[2:]
    wall = sum(t for _, t in later) * step / sum(n for n, _ in later) if later else math.nan
    schedule = None if lr is None else np.asarray(jax.vmap(lambda t: lr({}, t))(jnp.arange(step)))
    row = _row(setting, rule, step, wall_time=wall, diverged=diverged, clipped=0,
               lr_end=float(schedule[-1]) if schedule is not None else math.nan)  # fmt: skip
    return row, pd.DataFrame(rows, columns=["step", "val_accuracy", "test_accuracy"]), schedule


def run_one_seed(config: Config, data: dict, seed: int, failures: FailureLog, bar=None, callbacks=()):
    """Every configuration on one seed: the table, and the checks and η schedules by label; ``callbacks`` follow
    each online run."""
    ctx = Context(config, data, seed)
    rows, checks, schedules = [], {}, {}
    for setting in settings(config):
        if bar is not None:
            bar.set_description_str(f"seed {seed}: {setting.label}")
        if setting.online:
            out = failures.attempt(seed, setting.label, run_online, setting, ctx, callbacks)
        else:
            out = failures.attempt(seed, setting.label, run_plain, setting, ctx)
        # Every run compiles its own program, with the training set as a constant; JAX's caches would keep each one
        # (tens of runs over full MNIST ran out of 24 GB).
        jax.clear_caches()
        if bar is not None:
            bar.update(1)
        if out is None:
            continue
        row, checks[setting.label], schedules[setting.label] = out
        rows.append(row)
    table = pd.DataFrame(rows)
    table.insert(0, "seed", seed)
    return table, checks, schedules


# ----- results -------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Results:
    """Per seed and configuration the accepted point (step, validation and test accuracy), the steps run, the
    compute, the clipped steps and the wall time (``table``); the first seed's checks and η schedules by label;
    what failed."""

    config: Config
    table: pd.DataFrame
    checks: dict
    schedules: dict
    failures: tuple = ()

    def best(self) -> pd.DataFrame:
        """Per family (and seed) the configuration with the best validation accuracy at its accepted point, and the
        family's compute (the sum over its configurations)."""
        if not len(self.table):
            return pd.DataFrame(columns=["seed", "family", "setting", "val_accuracy", "test_accuracy"])
        out = []
        for (seed, family), group in self.table.groupby(["seed", "family"], sort=False):
            won = group.loc[group["val_accuracy"].fillna(-1).idxmax()]
            out.append(dict(seed=seed, family=family, setting=won["setting"], accepted_step=won["accepted_step"],
                            val_accuracy=won["val_accuracy"], test_accuracy=won["test_accuracy"],
                            family_step_equivalents=group["step_equivalents"].sum(),
                            configurations=len(group)))  # fmt: skip
        return pd.DataFrame(out)

    def over_seeds(self) -> pd.DataFrame:
        """Per family: the seeds, and the test and validation accuracy of each seed's best configuration, mean and
        95 % Student-t half-width over the seeds."""
        rows = []
        for family, group in self.best().groupby("family", sort=False):
            test, test_half = t_interval(group["test_accuracy"])
            val, val_half = t_interval(group["val_accuracy"])
            rows.append(dict(family=family, seeds=len(group), test_accuracy=test, test_half_width=test_half,
                             val_accuracy=val, val_half_width=val_half))  # fmt: skip
        return pd.DataFrame(rows)

    def differences(self) -> pd.DataFrame:
        """The paired differences (points of test accuracy) between the best configurations of RTHO, MARTHE and HD
        over the seeds, mean and 95 % half-width."""
        best = self.best().rename(columns={"family": "method"}).assign(protocol="reference")
        return paired_differences(best, "protocol", (("RTHO", "HD"), ("MARTHE", "HD"), ("RTHO", "MARTHE")))

    def summary(self) -> str:
        c = self.config
        text = f"{TITLE}\n{settings_line(c)}\n\nBest of each family (by validation accuracy):\n" + markdown_table(
            self.best(), 4
        )
        if len(c.seeds) > 1:
            text += "\n\nOver the seeds (mean ± 95 %):\n" + markdown_table(self.over_seeds(), 4)
            text += "\n\nPaired differences (points):\n" + markdown_table(self.differences(), 2)
        return text + failures_note(self.failures)

    def __repr__(self) -> str:
        return self.summary()


def settings_line(c: Config) -> str:
    return (
        f"{c.model} ({'784-' + str(c.width) + '-10' if c.model == 'ffnn' else 'CNN'}), momentum {c.momentum}, "
        f"{c.n_train}/{c.n_val}/{c.n_test} images, minibatches of {c.batch_size}, at most {total_steps(c)} steps "
        f"({c.epochs:g} epochs), checks every {check_interval(c)} steps, patience {c.patience}; online methods "
        f"from η = {c.lr0:g}, Δ = {c.delta}{' (HD and μ = 0: 1)' if c.delta > 1 else ''}, clip {c.clip:g}"
        + (f", E on the first {c.objective_rows} validation images" if c.objective_rows else "")
        + f"; seeds {list(c.seeds)}"
    )


def run(config: Config = DEFAULT, progress: bool = True, callbacks=()) -> Results:
    """Every configuration on every seed; ``callbacks`` (a dashboard) follow each online run's loop (the plain runs
    are not loops of hgkit's)."""
    from tqdm.auto import tqdm

    bar = tqdm(total=len(config.seeds) * len(settings(config)), disable=not progress, unit="run",
               desc="loading the data")  # fmt: skip
    try:
        data = load_data(config)
        failures = FailureLog()
        table, per_seed = over_seeds(config.seeds, lambda s: run_one_seed(config, data, s, failures, bar, callbacks),
                                     failures)  # fmt: skip
    finally:
        bar.close()
    checks, schedules = per_seed.get(config.seeds[0], ({}, {}))
    return Results(config, table, checks, schedules, tuple(failures.records))


# ----- figures and report --------------------------------------------------------------------------------------


def best_so_far(results: Results, family: str) -> pd.DataFrame:
    """The family's configurations run one after the other (first seed): after each check, the family's compute
    so far and the test accuracy at the accepted point of the best validation accuracy seen so far."""
    table = results.table[(results.table["seed"] == results.config.seeds[0]) & (results.table["family"] == family)]
    rows, spent, best_val, best_test = [], 0.0, -math.inf, math.nan
    for _, row in table.iterrows():
        checks = results.checks.get(row["setting"])
        for check in checks.itertuples() if checks is not None else ():
            if check.val_accuracy > best_val:
                best_val, best_test = check.val_accuracy, check.test_accuracy
            rows.append(dict(step_equivalents=spent + check.step * row["step_cost"], test_accuracy=best_test))
        spent += row["step_equivalents"]
    return pd.DataFrame(rows, columns=["step_equivalents", "test_accuracy"])


def draw_best_so_far(ax, results: Results) -> list:
    """Best-so-far test accuracy against compute, one line per family."""
    artists = []
    for family in FAMILIES:
        curve = best_so_far(results, family)
        if len(curve):
            artists += ax.step(curve["step_equivalents"], curve["test_accuracy"], where="post", label=family,
                               color=COLORS[family])  # fmt: skip
    if not artists:
        mark_missing(ax, "no run")
        return artists
    from ..plot.panels import legend_outside

    ends = np.array([a.get_ydata()[-1] for a in artists], float)  # each family's final best
    if np.isfinite(ends).any():  # from a little below the worst family's final value: the early climb runs off
        ax.set_ylim(max(0.0, float(np.nanmin(ends)) - 0.02), min(1.0, float(np.nanmax(ends)) + 0.005))
    ax.set_xscale("log")
    ax.set_xlabel("compute spent on the family (plain-step equivalents)")
    ax.set_ylabel("test accuracy at the best validation accuracy so far")
    legend_outside(ax, fontsize="small")
    return artists


def draw_schedules(ax, results: Results) -> list:
    """η against the step for each family's best configuration (first seed; the learning-rate-free optimizers
    have no η of ours and are left out)."""
    best = results.best()
    best = best[best["seed"] == results.config.seeds[0]] if len(best) else best
    artists = []
    for row in best.itertuples():
        schedule = results.schedules.get(row.setting)
        if schedule is None:
            continue
        artists += ax.plot(np.arange(len(schedule)), schedule, color=COLORS[row.family], linewidth=1.2,
                           label=row.setting)  # fmt: skip
    if not artists:
        mark_missing(ax, "no schedule")
        return artists
    from ..plot.panels import legend_outside

    ax.set_xlabel("inner step")
    ax.set_ylabel("learning rate η")
    legend_outside(ax, fontsize="small")
    return artists


DEPARTURES = """## Departures from the reference

1. The tangent is pushed by ``A_t Z`` (a JVP, the paper's recurrence); the reference computes ``A_tᵀ Z``
   (``marthe_alg.py`` l. 136), which differs with heavy-ball momentum (non-symmetric Jacobian).
2. E's minibatch is picked by a step counter carried in the model's parameters (hgkit's loop takes one fixed
   ``val_data``); δ_{k+1} is the reference's exactly, but MARTHE's ``b_k = ∇E(w_{k+1})·B_k`` uses the minibatch of
   step k + 1, where the reference uses that of step k.
3. Runs end at the last check within the epochs (the reference runs one step more).
4. The compute unit: plain-step equivalents (online step 3, MARTHE 4, plain 1), checks not charged.
5. Minibatches are epochs of permutations of the training and validation sets, not the reference's suppliers.
"""


def write_report(results: Results, out_dir) -> list[Path]:
    """``lr-schedules-reference.md`` / ``.csv`` (every configuration), ``-best-so-far.png`` and ``-schedules.png``."""
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    c = results.config
    notes = (
        settings_line(c)
        + "\n\n## Best configuration of each family (by validation accuracy at its accepted point)\n\n"
        + markdown_table(results.best(), 4)
        + "\n\n"
    )
    if len(c.seeds) > 1:
        notes += (
            "## Over the seeds: each seed's best configuration, mean ± 95 % (Student t)\n\n"
            + markdown_table(results.over_seeds(), 4)
            + "\n\n## Paired differences over the seeds (points of test accuracy, ± 95 %)\n\n"
            + markdown_table(results.differences(), 2)
            + "\n\n"
        )
    notes += DEPARTURES
    paths = write_tables(results.table, out_dir, NAME, TITLE, notes, results.failures)
    fig, ax = plt.subplots(figsize=(10, 5), layout="constrained")
    draw_best_so_far(ax, results)
    ax.set_title(f"Best-so-far test accuracy against compute (seed {c.seeds[0]})")
    paths.append(save_figure(fig, out_dir / f"{NAME}-best-so-far.png"))
    fig, ax = plt.subplots(figsize=(10, 5), layout="constrained")
    draw_schedules(ax, results)
    ax.set_title(f"η of each family's best configuration (seed {c.seeds[0]})")
    paths.append(save_figure(fig, out_dir / f"{NAME}-schedules.png"))
    return paths
