"""Learning task interactions (Franceschi et al., 2017, §5.2) on MNIST: ten one-vs-rest tasks that share
what they know through a learned interaction matrix.

Task j (digit j against the rest) has a linear scorer ``s_j(x) = x·w_j + b_j`` and a logistic loss L_j. The tasks
are trained together, by T steps of heavy-ball momentum from zero weights, on

    Σ_j L_j(w_j) + ρ Σ_{j,k} C_jk ‖w_j − w_k‖² + wd · Σ_j ‖w_j‖²,

so a large C_jk pulls the scorers of digits j and k towards each other. The hyperparameters are the interaction
matrix C (symmetric and non-negative: it is built from its upper triangle, ten choose two = 45 entries, projected
after each update onto ``0 ≤ c ≤ c_max``; the cap keeps the coupling's curvature, at most 8ρ(n−1)c_max, inside
the inner step's stable range) and the weight decay wd (in log space). The outer objective is the sum of the
tasks' validation losses; its hypergradient comes from reverse mode through the whole training run, and Adam
follows it. With few training images per digit the tasks are data-starved, so borrowing strength between
similar digits can help.

Compared on the test set (multiclass accuracy from the argmax of the ten scores, and the mean per-task binary
accuracy): **independent** tasks (C = 0, the weight decay tuned in the same way), the **uniform** starting C with
the starting wd (no tuning), and the **learned** C and wd. The paper's CIFAR data are not packaged, so this is
the packaged MNIST split (clean labels).

This module owns the experiment's config, the coupled problem, the three methods and the report
(``task-interactions.md``, ``.csv``, ``.png``); seed loop, config checks, models, data and report files are the ones
every experiment shares.

Example:
    >>> import jax.numpy as jnp
    >>> from hgkit.experiments.task_interactions import interaction_matrix, coupling
    >>> C = interaction_matrix(jnp.arange(1.0, 4.0), tasks=3)  # the upper triangle (0,1), (0,2), (1,2)
    >>> C.tolist()
    [[0.0, 1.0, 2.0], [1.0, 0.0, 3.0], [2.0, 3.0, 0.0]]
    >>> W = jnp.eye(3)  # three unit scorers, pairwise distance² 2
    >>> float(coupling(W, C))  # Σ_jk C_jk ‖w_j − w_k‖² = 2 · (1 + 2 + 3) · 2
    24.0
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pandas as pd

import hgkit as hg

from ._config import check_positive_ints, check_positive_numbers, check_seeds, check_split_sizes
from ._data import mnist
from ._models import accuracy, linear, linear_init, plain_training
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

NAME = "task-interactions"
TITLE = "Learning task interactions: ten one-vs-rest MNIST tasks coupled by a learned matrix C (§5.2)"

TASKS = 10
METHODS = ("independent", "uniform C", "learned C")
METHOD_COLORS = {"independent": "0.4", "uniform C": "tab:blue", "learned C": "tab:red"}


@dataclasses.dataclass(frozen=True)
class Config:
    """Sizes and settings.

    Attributes:
        train_per_class, val_per_class: images of each digit in the training and validation sets (drawn at random
            per seed from the packaged 5,000-image training and validation sets).
        n_test: test images (the first ones of the packaged 10,000).
        T: inner training steps; lr, momentum: the inner optimizer's (fixed) settings.
        rho: ρ, the coupling's scale; c_max: the cap on each C_jk.
        c0, wd0: the starting interaction (every pair) and weight decay.
        hyper_iterations, hyper_lr: the outer loop's length and Adam's step.
        seeds: one repetition per seed (the images drawn).
    """

    train_per_class: int = 50
    val_per_class: int = 50
    n_test: int = 10000
    T: int = 200
    lr: float = 0.05
    momentum: float = 0.9
    rho: float = 0.01
    c_max: float = 1.0
    c0: float = 0.1
    wd0: float = 1e-3
    hyper_iterations: int = 100
    hyper_lr: float = 0.05
    seeds: tuple[int, ...] = (0,)

    def __post_init__(self):
        check_positive_ints(self, ("train_per_class", "val_per_class", "n_test", "T", "hyper_iterations"))
        check_split_sizes(self, ("n_test",))
        check_positive_numbers(self, ("lr", "rho", "c_max", "wd0", "hyper_lr"))
        if not 0 <= self.c0 <= self.c_max:
            raise ValueError(f"Config.c0 must be in [0, c_max={self.c_max}]; got {self.c0!r}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"Config.momentum must be in [0, 1); got {self.momentum!r}")
        check_seeds(self)


SMOKE = Config(train_per_class=20, val_per_class=20, n_test=1000, T=50, hyper_iterations=12, hyper_lr=0.1)
DEFAULT = Config()
FULL = Config(train_per_class=100, T=300, hyper_iterations=300, seeds=(0, 1, 2))


# ----- the model ------------------------------------------------------------------------------------------------


def interaction_matrix(upper, tasks: int = TASKS):
    """The symmetric matrix with zero diagonal whose strict upper triangle, row by row, is ``upper``."""
    rows, cols = np.triu_indices(tasks, k=1)
    C = jnp.zeros((tasks, tasks), upper.dtype).at[rows, cols].set(upper)
    return C + C.T


def coupling(W, C):
    """``Σ_{j,k} C_jk ‖w_j − w_k‖²`` for the columns w_j of W, through the Gram matrix G = WᵀW:
    ``‖w_j − w_k‖² = G_jj + G_kk − 2 G_jk``."""
    G = W.T @ W
    d = jnp.diag(G)
    return jnp.sum(C * (d[:, None] + d[None, :] - 2 * G))


def task_losses(params, batch):
    """Each task's mean logistic loss on its one-vs-rest labels (±1): a vector of ten."""
    x, y = batch
    signs = jnp.where(y[:, None] == jnp.arange(TASKS), 1.0, -1.0).astype(x.dtype)
    return jnp.mean(jax.nn.softplus(-signs * linear(params, x)), axis=0)


def make_problem(config: Config, n_features: int):
    """The bilevel problem; hyperparameters ``{"C": the 45 upper-triangle entries, "wd": scalar}``."""

    def train_loss(params, hp, batch):
        C = interaction_matrix(hp["C"])
        penalty = config.rho * coupling(params["W"], C) + hp["wd"] * jnp.sum(params["W"] ** 2)
        return jnp.sum(task_losses(params, batch)) + penalty

    def val_loss(params, hp, batch):
        return jnp.sum(task_losses(params, batch))

    return hg.BilevelProblem(
        init=lambda hp, key: linear_init(n_features, TASKS),
        train_loss=train_loss,
        val_loss=val_loss,
        optimizer=hg.optim.momentum(lr=config.lr, momentum=config.momentum),
    )


def accuracies(params, x, y) -> dict:
    """Multiclass accuracy (argmax of the ten scores) and the mean over tasks of each one-vs-rest accuracy."""
    s = linear(params, x)
    multiclass = float(accuracy(s, y))
    per_task = float(jnp.mean((s > 0) == (y[:, None] == jnp.arange(TASKS))))
    return {"test_accuracy": multiclass, "test_task_accuracy": per_task}


def load_data(config: Config, seed: int):
    """``train_per_class`` / ``val_per_class`` images of each digit drawn with ``seed``, and the test images."""
    rng = np.random.default_rng([seed, 2])

    def per_class(n):
        return lambda y: np.concatenate(
            [rng.choice(np.flatnonzero(y == c), size=n, replace=False) for c in range(TASKS)]
        )

    return mnist(train=per_class(config.train_per_class), val=per_class(config.val_per_class), test=config.n_test)


# ----- the runs -------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4)
def setup(config: Config, n_features: int):
    """The problem and the two loops (reverse mode, Adam on the sum of validation losses): C learned, and C held
    at 0 by the constraint 0 ≤ C ≤ 0 (independent tasks, only wd tuned). Made once per config and shared by the
    seeds, since the compiled steps are cached on these objects' identity."""
    problem = make_problem(config, n_features)

    def loop(c_max):
        constraints = {"C": hg.constraints.box(0.0, c_max), "wd": hg.constraints.log()}
        return hg.HyperOptimizer(
            problem, method=hg.Reverse(), hyper_optimizer=optax.adam(config.hyper_lr), constraints=constraints
        )

    return problem, loop(config.c_max), loop(0.0)


def tune(opt, hparams, config: Config, data, progress: bool):
    """Hypergradient descent with the loop ``opt`` from ``hparams``."""
    return opt.run(
        hparams,
        hyper_iterations=config.hyper_iterations,
        T=config.T,
        train_data=data["train"],
        val_data=data["val"],
        progress=progress,
    )


def trained(problem, hparams, config: Config, data):
    """The weights after T steps under ``hparams``, and the validation objective there."""
    state = plain_training(problem, hparams, data["train"], config.T).state
    return state.params, float(problem.val_loss(state.params, hparams, data["val"]))


def run_one_seed(config: Config, seed: int, progress: bool, failures: FailureLog):
    """The three methods on one seed: summary rows, the learned C, and the two loop results.

    "learned C" and "independent" each tune then train; "uniform C" only trains. None needs another's output, so a
    method that raises is recorded in ``failures`` and has no row while the others go on; a tuned method that
    diverged leaves its loop result up to then (``stopped == "diverged"``) for the figure, and no C.
    """
    data = load_data(config, seed)
    problem, learning, independent_tasks = setup(config, data["train"][0].shape[1])
    pairs = TASKS * (TASKS - 1) // 2
    start = {"C": jnp.full((pairs,), config.c0, jnp.float32), "wd": jnp.asarray(config.wd0, jnp.float32)}
    zero = {"C": jnp.zeros((pairs,), jnp.float32), "wd": jnp.asarray(config.wd0, jnp.float32)}
    learned = failures.attempt(seed, "learned C", tune, learning, start, config, data, progress)
    independent = failures.attempt(seed, "independent", tune, independent_tasks, zero, config, data, progress)

    def row(method, hp):
        params, val = trained(problem, hp, config, data)
        C = np.asarray(hp["C"])
        return dict(
            seed=seed,
            method=method,
            wd=float(hp["wd"]),
            C_mean=float(C.mean()),
            C_max=float(C.max()),
            val_loss=val,
            **accuracies(params, *data["test"]),
        )

    def tuned(result):
        return None if result is None else result.hparams

    rows = []
    for method, hp in (("independent", tuned(independent)), ("uniform C", start), ("learned C", tuned(learned))):
        if hp is None:
            continue  # its tuning failed, and is recorded
        out = failures.attempt(seed, method, row, method, hp)
        if out is not None:
            rows.append(out)
    C = None if learned is None else np.asarray(interaction_matrix(learned.hparams["C"]))
    learned = learned if learned is not None else failures.partial(seed, "learned C")
    independent = independent if independent is not None else failures.partial(seed, "independent")
    return pd.DataFrame(rows), C, learned, independent


@dataclasses.dataclass(frozen=True)
class Results:
    """Per seed and method the hyperparameters' summary, the validation objective and the test accuracies
    (``table``); the first seed's learned C (``C``, 10 × 10) and loop results (``learned``, ``independent``); what
    failed (``failures``, :class:`~hgkit.experiments._report.RunFailure`), whose rows the table lacks.

    If learning C failed on the first seed, ``C`` is None and ``learned`` the loop's result up to its divergence
    (``stopped == "diverged"``) or None; the same for ``independent``.
    """

    config: Config
    table: pd.DataFrame
    C: np.ndarray | None
    learned: object
    independent: object
    failures: tuple = ()

    def means(self) -> pd.DataFrame:
        """Mean (and, with several seeds, standard deviation of the accuracies) over seeds per method."""
        columns = ["wd", "C_mean", "val_loss", "test_accuracy", "test_task_accuracy"]
        return mean_over_seeds(self.table, columns, spread=["test_accuracy", "test_task_accuracy"])

    def strongest_pairs(self, n: int = 5) -> list[tuple[int, int, float]]:
        """The ``n`` largest learned interactions as ``(digit, digit, C_jk)`` (none if learning C failed)."""
        if self.C is None:
            return []
        rows, cols = np.triu_indices(TASKS, k=1)
        values = self.C[rows, cols]
        order = np.argsort(-values)[:n]
        return [(int(rows[i]), int(cols[i]), float(values[i])) for i in order]

    def summary(self) -> str:
        c = self.config
        return (
            f"{TITLE}\n{c.train_per_class} training and {c.val_per_class} validation images per digit, T = {c.T}, "
            f"{c.hyper_iterations} hyper-iterations, seeds {list(c.seeds)}\n"
            f"learned C (seed {c.seeds[0]}): {self._learned()}\n" + markdown_table(self.means())
        ) + failures_note(self.failures)

    def _learned(self) -> str:
        history = None if self.learned is None else self.learned.history
        if history is None or not len(history):
            return "failed before its first hyper-iteration"
        objective = f"validation objective {history['val_loss'].iloc[0]:.3f} → {history['val_loss'].iloc[-1]:.3f}"
        if self.C is None:
            return f"failed at hyper-iteration {len(history)}; until then {objective}"
        pairs = ", ".join(f"{j}–{k} {v:.3f}" for j, k, v in self.strongest_pairs())
        return f"{objective}; strongest pairs {pairs}"


def run(config: Config = DEFAULT, progress: bool = True) -> Results:
    """Every method on every seed; one that raises is recorded in ``Results.failures`` and the others go on."""
    failures = FailureLog()
    table, per_seed = over_seeds(config.seeds, lambda seed: run_one_seed(config, seed, progress, failures), failures)
    C, learned, independent = per_seed.get(config.seeds[0], (None, None, None))
    return Results(config, table, C, learned, independent, tuple(failures.records))


def draw_interactions(ax, C: np.ndarray, cmap: str = "viridis"):
    """The interaction matrix as a heatmap, rows and columns labelled with the digits; returns the image."""
    image = ax.imshow(C, cmap=cmap)
    ax.set_xticks(range(TASKS), [str(d) for d in range(TASKS)])
    ax.set_yticks(range(TASKS), [str(d) for d in range(TASKS)])
    ax.set_xlabel("digit k")
    ax.set_ylabel("digit j")
    ax.figure.colorbar(image, ax=ax, label="C_jk")
    return image


def draw(fig, results: Results) -> dict:
    """The learned C as a heatmap, and the validation objective of both tuned runs against hyper-iterations (a run
    that diverged up to then, labelled "failed")."""
    heat, curve = fig.subplots(1, 2, width_ratios=[1.1, 1])
    if results.C is None:
        mark_missing(heat, f"learning C failed on seed {results.config.seeds[0]}")
    else:
        draw_interactions(heat, results.C)
    heat.set_title("learned task interactions C")
    drawn, failed_on_first = False, failed_methods(results.failures, results.config.seeds[0])
    for method, res in (("learned C", results.learned), ("independent", results.independent)):
        if res is None or not len(res.history):
            continue
        h, failed = res.history, method in failed_on_first
        label = f"{method} (wd tuned{', failed' if failed else ''})"
        marker = "x" if failed else None  # a diverged run may have a single point
        curve.plot(h["iteration"], h["val_loss"], color=METHOD_COLORS[method], label=label, marker=marker)
        drawn = True
    curve.set_xlabel("hyper-iteration")
    curve.set_ylabel("Σ_j validation loss L_j")
    if drawn:
        curve.legend()
    else:
        mark_missing(curve, "both tuned runs failed")
    return {"C": heat, "val_loss": curve}


def write_report(results: Results, out_dir) -> list[Path]:
    """``task-interactions.md`` and ``.csv`` (every seed and method) and ``task-interactions.png``."""
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    pairs = "\n".join(f"- {j} and {k}: {v:.4f}" for j, k, v in results.strongest_pairs()) or "(none: learning C failed)"
    notes = "## Mean over seeds\n\n" + markdown_table(results.means()) + "\n\n## Strongest learned pairs\n\n" + pairs
    paths = write_tables(results.table, out_dir, NAME, TITLE, notes, results.failures)
    fig = plt.figure(figsize=(11, 4.5), layout="constrained")
    draw(fig, results)
    paths.append(save_figure(fig, out_dir / f"{NAME}.png"))
    return paths
