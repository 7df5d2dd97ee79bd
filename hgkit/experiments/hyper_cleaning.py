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

Example:
    >>> from hgkit.experiments import hyper_cleaning
    >>> config = hyper_cleaning.Config(n_train=200, n_val=200, n_test=200, n_corrupt=100, T=5,
    ...                                hyper_iterations=2, budgets=(100,), seeds=(0,))
    >>> results = hyper_cleaning.run(config, progress=False)
    >>> len(results.runs), sorted(results.runs.columns)[:3]
    (1, ['baseline_accuracy', 'budget', 'cleaned_accuracy'])
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pandas as pd

from .. import optim
from ..constraints import capped_simplex
from ..datasets.mnist import corrupt_labels, hyper_cleaning_mnist
from ..hypergrad import Reverse
from ..outer import HyperOptimizer
from ..problem import BilevelProblem, initial_state
from ._models import train_steps
from ._report import markdown_table

NAME = "hyper-cleaning"
TITLE = "Data hyper-cleaning on MNIST (Franceschi et al. 2017, §5.1)"
NUM_CLASSES = 10


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
        checks = {
            "n_train": self.n_train >= 1,
            "n_val": self.n_val >= 1,
            "n_test": self.n_test >= 1,
            "T": self.T >= 1,
            "hyper_iterations": self.hyper_iterations >= 1,
            "lr": self.lr > 0,
            "hyper_lr": self.hyper_lr > 0,
            "seeds": len(self.seeds) >= 1,
            "budgets": len(self.budgets) >= 1 and all(0 < r <= self.n_train for r in self.budgets),
            "n_corrupt": 0 <= self.n_corrupt < self.n_train,
            "threshold": 0 < self.threshold < 1,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ValueError(
                f"hyper_cleaning.Config: invalid {bad[0]}={getattr(self, bad[0])!r} (budgets must lie in "
                f"(0, n_train], n_corrupt in [0, n_train), threshold in (0, 1), sizes and steps positive)"
            )


# Tests: seconds. The README's main job: one seed, R = 2500, a shorter horizon (minutes on 2 cores).
SMOKE = Config(n_train=500, n_val=500, n_test=1000, n_corrupt=250, T=30, hyper_iterations=12, hyper_lr=0.1,
               budgets=(250.0,), seeds=(0,))  # fmt: skip
DEFAULT = Config(T=250, hyper_iterations=60, hyper_lr=0.02, budgets=(2500.0,), seeds=(0,))
# The paper's setting: T = 500 steps of learning rate 0.1, every budget, five seeds (hours on 2 cores).
FULL = Config(
    T=500, hyper_iterations=120, hyper_lr=0.005, budgets=(1000.0, 1500.0, 2000.0, 2500.0), seeds=(0, 1, 2, 3, 4)
)


# ----- the model ----------------------------------------------------------------------------------------------


def _logits(w, x):
    return x @ w["W"] + w["b"]


def _cross_entropy(w, x, y):
    return -jnp.take_along_axis(jax.nn.log_softmax(_logits(w, x)), y[:, None], axis=1)[:, 0]


def make_problem(n_features: int, lr: float, dtype) -> BilevelProblem:
    """Softmax regression from zero weights; the per-example weights ``hp["weights"]`` scale the training loss."""

    def init(hp, key):
        return {"W": jnp.zeros((n_features, NUM_CLASSES), dtype), "b": jnp.zeros(NUM_CLASSES, dtype)}

    def train_loss(w, hp, batch):
        x, y = batch
        return jnp.mean(hp["weights"] * _cross_entropy(w, x, y))

    def val_loss(w, hp, batch):
        return jnp.mean(_cross_entropy(w, *batch))

    return BilevelProblem(init=init, train_loss=train_loss, val_loss=val_loss, optimizer=optim.sgd(lr))


def train(problem: BilevelProblem, weights, T: int, train_data):
    """The weights after T steps of training with per-example ``weights`` (no hypergradient)."""
    hp = {"weights": weights}
    state, _ = train_steps(problem, initial_state(problem, hp, None), hp, jnp.int32(0), T, train_batch=train_data)
    return state.params


@jax.jit
def accuracy(params, x, y):
    return jnp.mean(jnp.argmax(_logits(params, x), axis=1) == y)


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


# ----- the experiment -----------------------------------------------------------------------------------------


@dataclasses.dataclass
class Results:
    """One row per (budget, seed) in ``runs``; the loop's histories and final weights for the figures."""

    config: Config
    runs: pd.DataFrame
    histories: dict[tuple[float, int], pd.DataFrame]
    weights: dict[tuple[float, int], np.ndarray]
    corrupted: dict[int, np.ndarray]

    def table(self) -> pd.DataFrame:
        """Mean ± std over seeds, one row per budget R (accuracies in %)."""
        rows = []
        for budget, group in self.runs.groupby("budget"):
            row: dict[str, Any] = {"R": int(budget) if float(budget).is_integer() else budget, "seeds": len(group)}
            for col in ("baseline_accuracy", "oracle_accuracy", "cleaned_accuracy", "weighted_accuracy"):
                values = 100 * group[col]
                row[col.replace("_accuracy", " acc. (%)")] = _pm(values)
            for col in ("precision", "recall", "f1"):
                row[col] = _pm(group[col], digits=3)
            rows.append(row)
        return pd.DataFrame(rows)

    def summary(self) -> str:
        c = self.config
        head = (
            f"{c.n_corrupt} of {c.n_train} training labels corrupted; T={c.T}, lr={c.lr}, "
            f"{c.hyper_iterations} hyper-iterations of Adam({c.hyper_lr}); corrupted if λ < {c.threshold}"
        )
        return head + "\n\n" + self.table().to_string(index=False)


def _pm(values, digits: int = 2) -> str:
    values = np.asarray(values, float)
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{values.mean():.{digits}f} ± {values.std(ddof=1):.{digits}f}"


def _data(config: Config):
    split = hyper_cleaning_mnist(np.dtype(config.dtype))
    return (
        (split.x_train[: config.n_train], split.y_train[: config.n_train]),
        (split.x_val[: config.n_val], split.y_val[: config.n_val]),
        (split.x_test[: config.n_test], split.y_test[: config.n_test]),
    )


def run(config: Config = DEFAULT, progress: bool = True, callbacks=()) -> Results:
    """Every budget and seed of ``config``; see the module docstring for what is measured."""
    (x_train, y_clean), (x_val, y_val), (x_test, y_test) = _data(config)
    dtype = np.dtype(config.dtype)
    problem = make_problem(x_train.shape[1], config.lr, dtype)
    val_data = (jnp.asarray(x_val), jnp.asarray(y_val))
    x_train, x_test, y_test = jnp.asarray(x_train), jnp.asarray(x_test), jnp.asarray(y_test)

    def test_accuracy(weights, y_train):
        params = train(problem, jnp.asarray(weights, dtype), config.T, (x_train, y_train))
        return float(accuracy(params, x_test, y_test))

    # One optimizer per budget, shared by the seeds: the compiled step is cached on these objects' identity.
    optimizers = {
        budget: HyperOptimizer(
            problem,
            method=Reverse(),
            hyper_optimizer=optax.adam(config.hyper_lr),
            constraints={"weights": capped_simplex(budget)},
        )
        for budget in config.budgets
    }
    rows, histories, learned, corrupted = [], {}, {}, {}
    for seed in config.seeds:
        noisy, mask = corrupt_labels(y_clean, config.n_corrupt, NUM_CLASSES, seed=seed)
        corrupted[seed] = mask
        y_train = jnp.asarray(noisy)
        baseline = test_accuracy(np.ones(config.n_train), y_train)
        oracle = test_accuracy(mean_over(~mask), y_train)
        for budget, optimizer in optimizers.items():
            # The feasible start closest to "trust everyone": the projection of λ = 1, i.e. R/N everywhere.
            start = {"weights": jnp.full(config.n_train, min(1.0, budget / config.n_train), dtype)}
            started = time.perf_counter()
            result = optimizer.run(
                start,
                hyper_iterations=config.hyper_iterations,
                T=config.T,
                train_data=(x_train, y_train),
                val_data=val_data,
                callbacks=callbacks,
                progress=progress,
            )
            weights = np.asarray(result.hparams["weights"])
            det = detection(weights, mask, config.threshold)
            kept = weights >= config.threshold
            rows.append(
                {
                    "budget": float(budget),
                    "seed": seed,
                    "baseline_accuracy": baseline,
                    "oracle_accuracy": oracle,
                    "cleaned_accuracy": test_accuracy(mean_over(kept), y_train),
                    "weighted_accuracy": test_accuracy(weights, y_train),
                    **det,
                    "val_loss_start": float(result.history["val_loss"].iloc[0]),
                    "val_loss_end": float(result.history["val_loss"].iloc[-1]),
                    "seconds": time.perf_counter() - started,
                }
            )
            histories[(float(budget), seed)] = result.history
            learned[(float(budget), seed)] = weights
    return Results(config, pd.DataFrame(rows), histories, learned, corrupted)


def write_report(results: Results, out_dir) -> list[Path]:
    """``results.md`` (the table), ``runs.csv`` (every run) and the figures as PNG."""
    from matplotlib.figure import Figure  # not pyplot: no backend is chosen or changed

    from .. import plot

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "results.md", out / "runs.csv"]
    paths[0].write_text(f"# {TITLE}\n\n{results.summary().splitlines()[0]}\n\n{markdown_table(results.table())}\n")
    results.runs.to_csv(paths[1], index=False)

    (budget, seed) = max(results.weights)  # the largest budget, last seed: the headline run
    fig = Figure(figsize=(12, 3.6), layout="constrained")
    ax_w, ax_loss, ax_acc = fig.subplots(1, 3)
    groups = {"groups": results.corrupted[seed], "names": {True: "corrupted", False: "clean"}}
    plot.example_weights(ax_w, results.weights[(budget, seed)], **groups)
    ax_w.set_title(f"learned weights (R = {budget:g}, seed {seed})")
    plot.losses(ax_loss, results.histories[(budget, seed)])
    ax_loss.set_title("validation and training loss")
    means = results.runs.groupby("budget")[
        ["baseline_accuracy", "oracle_accuracy", "cleaned_accuracy", "weighted_accuracy"]
    ].mean()
    width = 0.2
    for i, col in enumerate(means.columns):
        ax_acc.bar(np.arange(len(means)) + (i - 1.5) * width, 100 * means[col], width, label=col.split("_")[0])
    ax_acc.set_xticks(np.arange(len(means)), [f"R={r:g}" for r in means.index])
    ax_acc.set_ylabel("test accuracy (%)")
    ax_acc.set_ylim(max(0, 100 * means.values.min() - 10), 100)
    ax_acc.legend(fontsize="small")
    paths.append(out / "hyper_cleaning.png")
    fig.savefig(paths[-1], dpi=120)
    return paths
