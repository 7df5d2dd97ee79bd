"""Data hyper-cleaning (Franceschi et al., 2017, §5.1): learn which training labels to trust.

Half of the 5,000 training labels are changed to a random different class. A softmax regression is trained by
gradient descent on the per-example weighted loss

    L(w, λ) = (1/N) Σ_i λ_i · CE(w; x_i, y_i),      w_T = T steps of gradient descent from w_0 = 0,

and the per-example weights λ ∈ [0, 1]^N, with Σ_i λ_i ≤ R, descend the validation loss E(w_T) (mean
cross-entropy on 5,000 clean validation images) by reverse-mode hypergradients and Adam, projected exactly onto
{0 ≤ λ ≤ 1, Σλ ≤ R} after each step. An example whose weight ends below ``threshold`` is declared corrupted.

Reported on the 10,000 test images, for each budget R and seed:

* **baseline**: trained on all 5,000 examples (λ = 1);
* **oracle**: trained on the clean examples only;
* **cleaned**: retrained on the examples the learned weights keep (λ ≥ threshold);
* **weighted**: the inner problem's own model, trained with the learned λ;

plus precision, recall and F1 of the corrupted-example detection. Every model is trained by the same T steps of
gradient descent on the mean loss over the examples it uses.

This module owns the experiment's config, problem, detection scores, run and report; the seed loop, config checks,
models, data and report files are the ones every experiment shares (``_report``, ``_config``, ``_models``,
``_data``). The report is ``hyper-cleaning.md`` and ``.csv`` (one row per budget and seed; the means over seeds
in the Markdown) and ``hyper-cleaning.png``.

This is hgkit's protocol. ``hgkit reproduce hyper-cleaning --protocol reference`` runs the authors' code's instead
(:mod:`hgkit.experiments.hyper_cleaning_reference`: comparison models on the training and validation sets stacked,
a learning rate normalised by R, T = 2,000, a final round with the learned weights).

Example:
    >>> from hgkit.experiments import hyper_cleaning
    >>> config = hyper_cleaning.Config(n_train=200, n_val=200, n_test=200, n_corrupt=100, T=5,
    ...                                hyper_iterations=2, budgets=(100,), seeds=(0,))
    >>> results = hyper_cleaning.run(config, progress=False)
    >>> len(results.table), sorted(results.table.columns)[:3]
    (1, ['baseline_accuracy', 'budget', 'cleaned_accuracy'])
    >>> hyper_cleaning.Config(budgets=(6000.0,))
    Traceback (most recent call last):
    ...
    ValueError: Config.budgets must be a non-empty tuple of numbers in (0, n_train=5000]; got (6000.0,)
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pandas as pd

import hgkit as hg

from .._checks import positive_number
from ..datasets.mnist import corrupt_labels
from ._config import check_positive_ints, check_positive_numbers, check_seeds, check_split_sizes
from ._data import mnist
from ._models import accuracy, cross_entropies, linear, linear_init, plain_training
from ._report import FailureLog, failures_note, mark_missing, markdown_table, over_seeds, save_figure, write_tables

NAME = "hyper-cleaning"
TITLE = "Data hyper-cleaning on MNIST (Franceschi et al. 2017, §5.1)"
NUM_CLASSES = 10
ACCURACIES = ("baseline_accuracy", "oracle_accuracy", "cleaned_accuracy", "weighted_accuracy")
DETECTION = ("precision", "recall", "f1")


@dataclasses.dataclass(frozen=True)
class Config:
    """The experiment's settings; ``FULL`` is the paper's protocol, ``DEFAULT`` what ``hgkit reproduce`` runs."""

    seeds: tuple[int, ...] = (0,)  # label corruption and nothing else: the runs are deterministic given the seed
    budgets: tuple[float, ...] = (2500.0,)  # R in Σλ ≤ R
    n_train: int = 5000
    n_val: int = 5000
    n_test: int = 10000
    n_corrupt: int = 2500
    T: int = 500  # inner gradient-descent steps
    lr: float = 0.1  # inner learning rate
    hyper_iterations: int = 120
    hyper_lr: float = 0.005  # Adam on λ
    threshold: float = 1e-3  # λ below this: declared corrupted
    dtype: str = "float32"

    def __post_init__(self):
        check_config(self)
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"Config.dtype must be 'float32' or 'float64'; got {self.dtype!r}")


def check_config(config) -> None:
    """The checks a hyper-cleaning config of either protocol makes of its shared fields (sizes, budgets,
    corruption, threshold, seeds)."""
    check_positive_ints(config, ("n_train", "n_val", "n_test", "T", "hyper_iterations"))
    check_split_sizes(config, ("n_train", "n_val", "n_test"))
    check_positive_numbers(config, ("lr", "hyper_lr"))
    check_seeds(config)
    if not config.budgets or not all(positive_number(r) and r <= config.n_train for r in config.budgets):
        raise ValueError(
            f"Config.budgets must be a non-empty tuple of numbers in (0, n_train={config.n_train}]; "
            f"got {config.budgets!r}"
        )
    if not (isinstance(config.n_corrupt, int) and 0 <= config.n_corrupt < config.n_train):
        raise ValueError(f"Config.n_corrupt must be an int in [0, n_train={config.n_train}); got {config.n_corrupt!r}")
    if not 0 < config.threshold < 1:
        raise ValueError(f"Config.threshold must be in (0, 1); got {config.threshold!r}")


# Tests: seconds. The README's main job: one seed, R = 2500, a shorter horizon (minutes on 2 cores).
SMOKE = Config(n_train=500, n_val=500, n_test=1000, n_corrupt=250, T=30, hyper_iterations=12, hyper_lr=0.1,
               budgets=(250.0,), seeds=(0,))  # fmt: skip
DEFAULT = Config(T=250, hyper_iterations=60, hyper_lr=0.02, budgets=(2500.0,), seeds=(0,))
# The paper's setting: T = 500 steps of learning rate 0.1, every budget, five seeds (hours on 2 cores).
FULL = Config(
    T=500, hyper_iterations=120, hyper_lr=0.005, budgets=(1000.0, 1500.0, 2000.0, 2500.0), seeds=(0, 1, 2, 3, 4)
)


# ----- the problem --------------------------------------------------------------------------------------------


def make_problem(n_features: int, lr: float, dtype) -> hg.BilevelProblem:
    """Softmax regression from zero weights; the per-example weights ``hp["weights"]`` scale the training loss."""

    def train_loss(w, hp, batch):
        x, y = batch
        return jnp.mean(hp["weights"] * cross_entropies(linear(w, x), y))

    def val_loss(w, hp, batch):
        x, y = batch
        return jnp.mean(cross_entropies(linear(w, x), y))

    return hg.BilevelProblem(
        init=lambda hp, key: linear_init(n_features, NUM_CLASSES, dtype),
        train_loss=train_loss,
        val_loss=val_loss,
        optimizer=hg.optim.sgd(lr),
    )


def train(problem: hg.BilevelProblem, weights, T: int, train_data):
    """The weights after T steps of training with per-example ``weights`` (no hypergradient)."""
    return plain_training(problem, {"weights": weights}, train_data, T).state.params


@jax.jit
def accuracy_of(params, x, y):
    """The softmax regression's accuracy on ``(x, y)``."""
    return accuracy(linear(params, x), y)


def mean_over(mask) -> np.ndarray:
    """Per-example weights that make the weighted mean loss the mean over the examples in ``mask``."""
    mask = np.asarray(mask, bool)
    return mask * (len(mask) / max(int(mask.sum()), 1))


def detection(weights, corrupted, threshold: float) -> dict[str, float]:
    """Precision, recall and F1 of "weight below threshold means corrupted"."""
    flagged = np.asarray(weights) < threshold
    corrupted = np.asarray(corrupted, bool)
    hits = int((flagged & corrupted).sum())
    precision = hits / flagged.sum() if flagged.any() else 0.0
    recall = hits / corrupted.sum() if corrupted.any() else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {"precision": float(precision), "recall": float(recall), "f1": float(f1), "flagged": int(flagged.sum())}


def load_data(config: Config):
    """The packaged split's first ``n_train`` / ``n_val`` / ``n_test`` images (clean labels), as device arrays."""
    return mnist(train=config.n_train, val=config.n_val, test=config.n_test, dtype=config.dtype)


# ----- the runs -----------------------------------------------------------------------------------------------


def setup(config: Config, n_features: int):
    """The problem, and one loop per budget (reverse mode, Adam, the exact projection onto the capped simplex),
    shared by the seeds: the compiled steps are cached on these objects' identity."""
    problem = make_problem(n_features, config.lr, np.dtype(config.dtype))
    loops = {
        budget: hg.HyperOptimizer(
            problem,
            method=hg.Reverse(),
            hyper_optimizer=optax.adam(config.hyper_lr),
            constraints={"weights": hg.constraints.capped_simplex(budget)},
        )
        for budget in config.budgets
    }
    return problem, loops


def run_one_seed(config: Config, data, problem, loops, seed: int, progress: bool, failures: FailureLog, callbacks=()):
    """Every budget on one seed's corrupted labels: the rows, and per budget the loop's history and the learned
    weights, and the mask of the corrupted examples.

    The methods recorded in ``failures`` when they raise are "baseline", "oracle" (their accuracy is then NaN in
    every row of the seed) and each budget, "R=<budget>" (that budget then has no row on the seed).
    """
    dtype = np.dtype(config.dtype)
    x_train, y_clean = data["train"]
    x_test, y_test = data["test"]

    def tested(weights, y_train):
        params = train(problem, jnp.asarray(weights, dtype), config.T, (x_train, y_train))
        return float(accuracy_of(params, x_test, y_test))

    noisy, mask = corrupt_labels(np.asarray(y_clean), config.n_corrupt, NUM_CLASSES, seed=seed)
    y_train = jnp.asarray(noisy)
    baseline = failures.attempt(seed, "baseline", tested, np.ones(config.n_train), y_train)
    oracle = failures.attempt(seed, "oracle", tested, mean_over(~mask), y_train)

    def one_budget(budget, loop):
        # The feasible start closest to "trust everyone": the projection of λ = 1, i.e. R/N everywhere.
        start = {"weights": jnp.full(config.n_train, min(1.0, budget / config.n_train), dtype)}
        started = time.perf_counter()
        result = loop.run(
            start,
            hyper_iterations=config.hyper_iterations,
            T=config.T,
            train_data=(x_train, y_train),
            val_data=data["val"],
            callbacks=callbacks,
            progress=progress,
        )
        weights = np.asarray(result.hparams["weights"])
        kept = weights >= config.threshold
        row = {
            "budget": float(budget),
            "seed": seed,
            "baseline_accuracy": np.nan if baseline is None else baseline,
            "oracle_accuracy": np.nan if oracle is None else oracle,
            "cleaned_accuracy": tested(mean_over(kept), y_train),
            "weighted_accuracy": tested(weights, y_train),
            **detection(weights, mask, config.threshold),
            "val_loss_start": float(result.history["val_loss"].iloc[0]),
            "val_loss_end": float(result.history["val_loss"].iloc[-1]),
            "seconds": time.perf_counter() - started,
        }
        return row, result.history, weights

    rows, histories, learned = [], {}, {}
    for budget, loop in loops.items():
        out = failures.attempt(seed, f"R={budget:g}", one_budget, budget, loop)
        if out is not None:
            rows.append(out[0])
            histories[float(budget)], learned[float(budget)] = out[1:]
    return pd.DataFrame(rows), histories, learned, mask


# ----- results ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Results:
    """One row per budget and seed (``table``); every run's loop history and learned weights (``histories``,
    ``weights``, keyed by ``(budget, seed)``) and each seed's corrupted examples (``corrupted``), for the figures;
    what failed (``failures``, :class:`~hgkit.experiments._report.RunFailure`): a budget that failed on a seed has
    no row there, a baseline or oracle that failed is NaN in its seed's rows."""

    config: Config
    table: pd.DataFrame
    histories: dict[tuple[float, int], pd.DataFrame]
    weights: dict[tuple[float, int], np.ndarray]
    corrupted: dict[int, np.ndarray]
    failures: tuple = ()

    def means(self) -> pd.DataFrame:
        """Mean ± std over seeds, one row per budget R in increasing order (accuracies in %).

        Taken with NumPy per budget, as the published tables were: pandas' grouped mean sums in another order, and
        a mean that falls on a tie of the displayed digits would then print one unit off.
        """
        rows = []
        if self.table.empty:
            return pd.DataFrame(rows)
        for budget, group in self.table.groupby("budget"):
            row = {"R": int(budget) if float(budget).is_integer() else budget, "seeds": len(group)}
            for col in ACCURACIES:
                row[col.replace("_accuracy", " acc. (%)")] = _pm(100 * group[col], 2)
            for col in DETECTION:
                row[col] = _pm(group[col], 3)
            rows.append(row)
        return pd.DataFrame(rows)

    def headline(self) -> tuple[float, int]:
        """The run the figure shows: the largest budget, on the last seed."""
        return max(self.weights)

    def summary(self) -> str:
        c = self.config
        head = (
            f"{c.n_corrupt} of {c.n_train} training labels corrupted; T={c.T}, lr={c.lr}, "
            f"{c.hyper_iterations} hyper-iterations of Adam({c.hyper_lr}); corrupted if λ < {c.threshold}"
        )
        return head + "\n\n" + self.means().to_string(index=False) + failures_note(self.failures)


def _pm(values, digits: int) -> str:
    """``mean ± std`` (sample standard deviation) of the seeds' values, or the value alone (one seed)."""
    values = np.asarray(values, float)
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{values.mean():.{digits}f} ± {values.std(ddof=1):.{digits}f}"


def run(config: Config = DEFAULT, progress: bool = True, callbacks=()) -> Results:
    """Every budget and seed of ``config``; see the module docstring for what is measured. One that raises is
    recorded in ``Results.failures`` and the others go on."""
    data = load_data(config)
    problem, loops = setup(config, data["train"][0].shape[1])
    failures = FailureLog()
    table, per_seed = over_seeds(
        config.seeds,
        lambda seed: run_one_seed(config, data, problem, loops, seed, progress, failures, callbacks),
        failures,
    )
    histories = {(b, s): h for s, (hs, _, _) in per_seed.items() for b, h in hs.items()}
    weights = {(b, s): w for s, (_, ws, _) in per_seed.items() for b, w in ws.items()}
    corrupted = {s: mask for s, (_, _, mask) in per_seed.items()}
    return Results(config, table, histories, weights, corrupted, tuple(failures.records))


def draw(fig, results: Results) -> dict:
    """The headline run's learned weights (clean against corrupted) and losses, and the test accuracies per budget
    (mean over seeds); panels without data (every budget failed) say so."""
    from .. import plot

    ax_w, ax_loss, ax_acc = fig.subplots(1, 3)
    if not results.weights:
        for ax in (ax_w, ax_loss, ax_acc):
            mark_missing(ax, "every budget failed")
        return {"weights": ax_w, "losses": ax_loss, "accuracy": ax_acc}
    budget, seed = results.headline()
    groups = {"groups": results.corrupted[seed], "names": {True: "corrupted", False: "clean"}}
    plot.example_weights(ax_w, results.weights[(budget, seed)], **groups)
    ax_w.set_title(f"learned weights (R = {budget:g}, seed {seed})")
    plot.losses(ax_loss, results.histories[(budget, seed)])
    ax_loss.set_title("validation and training loss")
    means = results.table.groupby("budget")[list(ACCURACIES)].mean()
    width = 0.2
    for i, col in enumerate(means.columns):
        ax_acc.bar(np.arange(len(means)) + (i - 1.5) * width, 100 * means[col], width, label=col.split("_")[0])
    ax_acc.set_xticks(np.arange(len(means)), [f"R={r:g}" for r in means.index])
    ax_acc.set_ylabel("test accuracy (%)")
    ax_acc.set_ylim(max(0, 100 * means.values.min() - 10), 100)
    ax_acc.legend(fontsize="small")
    return {"weights": ax_w, "losses": ax_loss, "accuracy": ax_acc}


def write_report(results: Results, out_dir) -> list[Path]:
    """``hyper-cleaning.md`` and ``.csv`` (every budget and seed; the Markdown adds the settings and the means over
    seeds) and ``hyper-cleaning.png``."""
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    settings = results.summary().splitlines()[0]
    notes = f"{settings}\n\n## Mean over seeds\n\n{markdown_table(results.means())}"
    paths = write_tables(results.table, out_dir, NAME, TITLE, notes, results.failures)
    fig = plt.figure(figsize=(12, 3.6), layout="constrained")
    draw(fig, results)
    paths.append(save_figure(fig, out_dir / f"{NAME}.png"))
    return paths
