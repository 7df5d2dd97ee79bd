"""Data hyper-cleaning as the authors' own code runs it: ``hgkit reproduce hyper-cleaning --protocol reference``.

The reference is ``rfho/examples/data_hypercleaner.py`` of github.com/lucfra/RFHO (last commit a818fb4, June 2017),
whose ``main`` "should replicate ICML experiment". What it does, and what this module does the same way:

* **the hyper-cleaner** (``data_hyper_cleaner``): softmax regression from zero weights, trained by T steps of
  gradient descent on the *mean* of the λ-weighted cross-entropies of the 5,000 training examples,
  ``L(w, λ) = (1/N) Σ_i λ_i CE_i(w)``, at the normalised learning rate ``lr · N / R`` (``main``:
  ``normalized_lr = lr * data.train.num_examples / R``), so that the starting weights λ = R/N give the step ``lr``;
  λ starts at R/N everywhere; each hyper-iteration retrains from zero, takes the reverse-mode hypergradient of the
  mean validation cross-entropy at w_T, one step of RFHO's Adam (step 0.005, "i think we used this one in the
  paper"; :func:`rfho_adam`) and the exact Euclidean projection onto {0 ≤ λ ≤ 1, Σλ ≤ R}
  (RFHO solves it as a QP with cvxopt; here :func:`hgkit.constraints.capped_simplex`);
* **the comparison models** (``baseline``), each trained by T steps of gradient descent on the training and
  validation sets stacked (``Dataset.stack(data.train, data.validation)``: 10,000 examples; the training labels
  corrupted), on the mean over the 10,000 of the weighted cross-entropies:

  - *Baseline*: every weight 1, learning rate ``lr``;
  - *Oracle*: the corrupted examples' weights 0, the other 7,500 weights 1, learning rate ``lr`` (the mean is still
    over 10,000, so the clean examples' mean loss is descended at 0.75 · lr);
  - *Final Round*, per R: the learned λ on the training examples and max(λ) on the validation examples, learning
    rate ``lr / max(λ)`` (so the validation examples count as in the Baseline);

* the loss is RFHO's ``cross_entropy_loss`` (``rfho/utils.py``): ``−log clip(softmax(z)_y, 10⁻⁵, 1 − 10⁻⁵)``, whose
  gradient is zero for an example predicted with probability outside [10⁻⁵, 1 − 10⁻⁵] (``Config.clip``; 0 gives the
  exact cross-entropy);
* reported: the test accuracy of each comparison model, and precision, recall and F1 of "λ < 10⁻³ means corrupted"
  (``_calc_pos_neg``, ``thr=1.e-3``), which RFHO records at every hyper-iteration; here the F1 of the weights each
  hyper-iteration trained with is the history's ``f1`` column, and the table has the learned weights' scores.

``main``'s settings (``FULL``): T = 2,000 steps at lr 0.1 for every model, R ∈ {1000, 1500, 2000, 2500}, and 500
hyper-iterations (``main`` does not pass ``hyper_iterations``, so ``data_hyper_cleaner``'s default 500 holds). The
earlier script ``rfho/experiments/mnist_data_hyper_cleaner.py`` (April 2017) used T = 128, 2,000 hyper-iterations,
R = 2,500 only, λ = 0.5 at the start, inner lr 0.1 without normalisation, a Baseline at lr 0.2 and an Oracle on the
7,500 clean examples' own mean.

What differs from the reference, by design: the data are hgkit's packaged split (5,000 / 5,000 training and
validation images drawn at random from the MNIST training set, the official 10,000 test images;
:func:`hgkit.datasets.hyper_cleaning_mnist`), where RFHO takes the first 20,000 of TensorFlow's MNIST training
images in order (train 5,000, validation 5,000, test 10,000, all from the MNIST training set); the corrupted labels
come from :func:`hgkit.datasets.corrupt_labels` (2,500 examples, each to a different class at random, as RFHO's
``load_std_data`` does with ``noise=.5``); and the seeds: RFHO's ``main`` runs once, unseeded.

The report is ``hyper-cleaning-reference.md`` and ``.csv`` (one row per budget and seed) and
``hyper-cleaning-reference.png``, beside the hgkit protocol's ``hyper-cleaning.*`` (:mod:`.hyper_cleaning`).

Example:
    >>> from hgkit.experiments import hyper_cleaning_reference as ref
    >>> config = ref.Config(n_train=200, n_val=200, n_test=200, n_corrupt=100, T=5, hyper_iterations=2,
    ...                     budgets=(100.0,), seeds=(0,))
    >>> results = ref.run(config, progress=False)
    >>> results.table[["budget", "inner_lr"]].to_dict("records")  # lr · N / R = 0.1 · 200 / 100
    [{'budget': 100.0, 'inner_lr': 0.2}]
    >>> {k: (v["weights"].shape, float(v["lr"])) for k, v in ref.comparison_hparams(
    ...     np.array([True, False]), n_val=3, lr=0.1, learned=np.array([0.0, 0.5])).items()}
    {'baseline': ((5,), 0.1), 'oracle': ((5,), 0.1), 'final_round': ((5,), 0.2)}
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

from ..datasets.mnist import corrupt_labels
from ._models import cross_entropies, linear, linear_init, plain_training
from ._report import FailureLog, failures_note, mark_missing, markdown_table, over_seeds, save_figure, write_tables
from .hyper_cleaning import NUM_CLASSES, _pm, accuracy_of, check_config, detection, load_data

NAME = "hyper-cleaning-reference"
TITLE = "Data hyper-cleaning on MNIST, the reference protocol (RFHO's data_hypercleaner.py)"
ACCURACIES = ("baseline_accuracy", "oracle_accuracy", "final_round_accuracy")
DETECTION = ("precision", "recall", "f1")
ADAM_EPS = 1e-14  # RFHO's HyperOptimizer sets its Adam's eps to 1e-14, which it adds inside the square root


@dataclasses.dataclass(frozen=True)
class Config:
    """The reference protocol's settings; the field defaults and ``FULL`` are ``main``'s.

    The sizes: at T = 2,000 one hyper-iteration (5,000 examples, 7,850 weights, reverse mode) took 25 s on one
    core of the 2-core machine (2.8 s at T = 250), so ``FULL`` (4 budgets × 500 hyper-iterations) is about 14 hours
    of one core per seed. ``DEFAULT`` keeps every setting of the reference but two: T = 250 (for the comparison
    models too) and 120 hyper-iterations, enough for Adam's steps of 0.005 to take a weight from its start R/N = 0.5
    down to 0 (the detection's F1 levels off from about the 100th); R = 2,500 on one seed, 6-9 minutes on one core.
    At T = 250 the comparison models are not trained out: the Oracle is 0.2 points above the Baseline there, 2.2 at
    T = 2,000.
    """

    seeds: tuple[int, ...] = (0,)  # the label corruption; the runs are deterministic given the seed
    budgets: tuple[float, ...] = (1000.0, 1500.0, 2000.0, 2500.0)  # R in Σλ ≤ R
    n_train: int = 5000
    n_val: int = 5000
    n_test: int = 10000
    n_corrupt: int = 2500
    T: int = 2000  # gradient-descent steps of every model
    lr: float = 0.1  # the comparison models' step; the hyper-cleaner's is lr · n_train / R
    hyper_iterations: int = 500
    hyper_lr: float = 0.005  # Adam on λ
    threshold: float = 1e-3  # λ below this: declared corrupted
    clip: float = 1e-5  # RFHO's cross-entropy clips the label's probability to [clip, 1 − clip]; 0: exact
    dtype: str = "float32"

    def __post_init__(self):
        check_config(self)
        if not 0 <= self.clip < 0.5:
            raise ValueError(f"Config.clip must be in [0, 0.5); got {self.clip!r}")
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"Config.dtype must be 'float32' or 'float64'; got {self.dtype!r}")


# Tests: seconds (a larger Adam step, so that a dozen hyper-iterations move the weights).
SMOKE = Config(n_train=500, n_val=500, n_test=1000, n_corrupt=250, T=30, hyper_iterations=12, hyper_lr=0.05,
               budgets=(250.0,), seeds=(0,))  # fmt: skip
DEFAULT = Config(T=250, hyper_iterations=120, budgets=(2500.0,))
FULL = Config()


# ----- the pieces ---------------------------------------------------------------------------------------------


def normalized_lr(lr: float, n_train: int, budget: float) -> float:
    """The hyper-cleaner's inner step ``lr · n_train / R`` (RFHO ``main``): with λ = R/N everywhere, as at the
    start, the weighted mean loss is then descended at ``lr``."""
    return lr * n_train / budget


def losses(clip: float):
    """RFHO's per-example cross-entropy ``−log clip(softmax(z)_y, clip, 1 − clip)``; the exact one for clip = 0."""
    if clip == 0:
        return cross_entropies

    def clipped(logits, labels):
        p = jnp.take_along_axis(jax.nn.softmax(logits), labels[:, None], axis=1)[:, 0]
        return -jnp.log(jnp.clip(p, clip, 1 - clip))

    return clipped


def make_problem(n_features: int, lr, clip: float, dtype) -> hg.BilevelProblem:
    """Softmax regression from zero weights, gradient descent at ``lr`` (a number, or ``"lr"``: the entry of the
    hyperparameters) on the mean of the ``hp["weights"]``-weighted losses; the outer loss the mean loss."""
    ce = losses(clip)

    def train_loss(w, hp, batch):
        x, y = batch
        return jnp.mean(hp["weights"] * ce(linear(w, x), y))

    def val_loss(w, hp, batch):
        x, y = batch
        return jnp.mean(ce(linear(w, x), y))

    return hg.BilevelProblem(
        init=lambda hp, key: linear_init(n_features, NUM_CLASSES, dtype),
        train_loss=train_loss,
        val_loss=val_loss,
        optimizer=hg.optim.sgd(lr),
    )


def stacked(data, noisy_labels):
    """The comparison models' training set: the training examples (with their corrupted labels), then the
    validation examples (``Dataset.stack(data.train, data.validation)``)."""
    (x_train, _), (x_val, y_val) = data["train"], data["val"]
    return jnp.concatenate([x_train, x_val]), jnp.concatenate([jnp.asarray(noisy_labels, y_val.dtype), y_val])


def comparison_hparams(corrupted, n_val: int, lr: float, learned=None) -> dict[str, dict[str, np.ndarray]]:
    """Per comparison model, its weights over the stacked examples (training first) and its learning rate.

    ``baseline``: every weight 1; ``oracle``: the ``corrupted`` training examples' weights 0; with ``learned`` (the
    hyper-cleaner's λ), ``final_round``: λ on the training examples, max(λ) on the validation examples, learning
    rate ``lr / max(λ)``.
    """
    corrupted = np.asarray(corrupted, bool)
    n = len(corrupted) + n_val
    oracle = np.ones(n)
    oracle[: len(corrupted)][corrupted] = 0.0
    out = {
        "baseline": {"weights": np.ones(n), "lr": np.float64(lr)},
        "oracle": {"weights": oracle, "lr": np.float64(lr)},
    }
    if learned is not None:
        learned = np.asarray(learned, np.float64)
        top = learned.max()
        if not top > 0:
            raise ValueError("every learned weight is 0: the final round's learning rate lr / max(λ) is undefined")
        out["final_round"] = {"weights": np.concatenate([learned, np.full(n_val, top)]), "lr": np.float64(lr / top)}
    return out


def rfho_adam(lr: float, b1: float = 0.9, b2: float = 0.999, eps: float = ADAM_EPS) -> optax.GradientTransformation:
    """RFHO's Adam (``rfho/optimizers.py``, ``AdamOptimizer.create``), as an optax transformation:

        m ← β₁ m + (1 − β₁) g,   v ← β₂ v + (1 − β₂) g²,   λ ← λ − lr · √(1 − β₂ᵗ)/(1 − β₁ᵗ) · m / √(v + ε).

    ε sits under the square root with the *uncorrected* v, which is ``optax.adam(lr, eps=0, eps_root=ε/(1 − β₂ᵗ))``:
    at the first step ε weighs as 10⁻¹¹ against g², which matters for per-example hypergradients of 10⁻⁵ or less.
    """

    def init(params):
        zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
        return {"count": jnp.zeros((), jnp.int32), "m": zeros, "v": zeros}

    def update(grads, state, params=None):
        t = state["count"] + 1
        m = jax.tree_util.tree_map(lambda m, g: b1 * m + (1 - b1) * g, state["m"], grads)
        v = jax.tree_util.tree_map(lambda v, g: b2 * v + (1 - b2) * g**2, state["v"], grads)
        scale = lr * jnp.sqrt(1 - b2**t) / (1 - b1**t)
        steps = jax.tree_util.tree_map(lambda m, v: (-scale * m / jnp.sqrt(v + eps)).astype(m.dtype), m, v)
        return steps, {"count": t, "m": m, "v": v}

    return optax.GradientTransformation(init, update)


def f1_metric(corrupted, threshold: float):
    """A loop metric: the F1 of "λ < threshold means corrupted" for the weights the iteration trained with."""
    corrupted = jnp.asarray(corrupted, bool)

    def f1(params, hp):
        flagged = hp["weights"] < threshold
        hits = jnp.sum(flagged & corrupted)
        return 2.0 * hits / jnp.maximum(jnp.sum(flagged) + jnp.sum(corrupted), 1)

    return f1


def hyper_cleaner(config: Config, n_features: int, budget: float, corrupted) -> hg.HyperOptimizer:
    """The loop of one budget: reverse mode, RFHO's Adam, the exact projection onto {0 ≤ λ ≤ 1, Σλ ≤ R}."""
    problem = make_problem(
        n_features, normalized_lr(config.lr, config.n_train, budget), config.clip, np.dtype(config.dtype)
    )
    return hg.HyperOptimizer(
        problem,
        method=hg.Reverse(),
        hyper_optimizer=rfho_adam(config.hyper_lr),
        constraints={"weights": hg.constraints.capped_simplex(budget)},
        metrics={"f1": f1_metric(corrupted, config.threshold)},
    )


# ----- the runs -----------------------------------------------------------------------------------------------


def run_one_seed(config: Config, data, comparison, seed: int, progress: bool, failures: FailureLog, callbacks=()):
    """Every budget on one seed's corrupted labels: the rows, per budget the loop's history and learned weights,
    and the mask of the corrupted examples. ``comparison`` is the problem the comparison models train.

    The methods recorded in ``failures`` when they raise are "baseline", "oracle" (their accuracy is then NaN in
    every row of the seed) and each budget, "R=<budget>" (that budget then has no row on the seed).
    """
    dtype = np.dtype(config.dtype)
    x_train, y_clean = data["train"]
    x_test, y_test = data["test"]
    noisy, mask = corrupt_labels(np.asarray(y_clean), config.n_corrupt, NUM_CLASSES, seed=seed)
    both = stacked(data, noisy)

    def tested(hparams):
        hp = {"weights": jnp.asarray(hparams["weights"], dtype), "lr": jnp.asarray(hparams["lr"], dtype)}
        params = plain_training(comparison, hp, both, config.T).state.params
        return float(accuracy_of(params, x_test, y_test))

    fixed = comparison_hparams(mask, config.n_val, config.lr)
    baseline = failures.attempt(seed, "baseline", tested, fixed["baseline"])
    oracle = failures.attempt(seed, "oracle", tested, fixed["oracle"])

    def one_budget(budget):
        loop = hyper_cleaner(config, x_train.shape[1], budget, mask)
        start = {"weights": jnp.full(config.n_train, budget / config.n_train, dtype)}  # RFHO: R · 1 / N
        started = time.perf_counter()
        result = loop.run(
            start,
            hyper_iterations=config.hyper_iterations,
            T=config.T,
            train_data=(x_train, jnp.asarray(noisy)),
            val_data=data["val"],
            callbacks=callbacks,
            progress=progress,
        )
        weights = np.asarray(result.hparams["weights"])
        final = comparison_hparams(mask, config.n_val, config.lr, learned=weights)["final_round"]
        row = {
            "budget": float(budget),
            "seed": seed,
            "inner_lr": normalized_lr(config.lr, config.n_train, budget),
            "baseline_accuracy": np.nan if baseline is None else baseline,
            "oracle_accuracy": np.nan if oracle is None else oracle,
            "final_round_accuracy": tested(final),
            "final_round_lr": float(final["lr"]),
            **detection(weights, mask, config.threshold),
            "weight_sum": float(weights.sum()),
            "val_loss_start": float(result.history["val_loss"].iloc[0]),
            "val_loss_end": float(result.history["val_loss"].iloc[-1]),
            "seconds": time.perf_counter() - started,
        }
        return row, result.history, weights

    rows, histories, learned = [], {}, {}
    for budget in config.budgets:
        out = failures.attempt(seed, f"R={budget:g}", one_budget, budget)
        if out is not None:
            rows.append(out[0])
            histories[float(budget)], learned[float(budget)] = out[1:]
    return pd.DataFrame(rows), histories, learned, mask


# ----- results ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Results:
    """One row per budget and seed (``table``); every run's loop history (with the ``f1`` column) and learned
    weights (``histories``, ``weights``, keyed by ``(budget, seed)``), each seed's corrupted examples
    (``corrupted``); what failed (``failures``), as in :class:`hgkit.experiments.hyper_cleaning.Results`."""

    config: Config
    table: pd.DataFrame
    histories: dict[tuple[float, int], pd.DataFrame]
    weights: dict[tuple[float, int], np.ndarray]
    corrupted: dict[int, np.ndarray]
    failures: tuple = ()

    def means(self) -> pd.DataFrame:
        """Mean ± std over seeds, one row per budget R in increasing order (accuracies in %)."""
        rows = []
        if self.table.empty:
            return pd.DataFrame(rows)
        for budget, group in self.table.groupby("budget"):
            row = {"R": int(budget) if float(budget).is_integer() else budget, "seeds": len(group)}
            for col in ACCURACIES:
                row[col.replace("_accuracy", "").replace("_", " ") + " acc. (%)"] = _pm(100 * group[col], 2)
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
            f"reference protocol (RFHO): {c.n_corrupt} of {c.n_train} training labels corrupted; T={c.T} for every "
            f"model; hyper-cleaner at lr·N/R (lr={c.lr}), {c.hyper_iterations} hyper-iterations of "
            f"Adam({c.hyper_lr}); comparison models on the {c.n_train + c.n_val} training and validation examples; "
            f"cross-entropy clipped at {c.clip:g}; corrupted if λ < {c.threshold}"
        )
        return head + "\n\n" + self.means().to_string(index=False) + failures_note(self.failures)


def run(config: Config = DEFAULT, progress: bool = True, callbacks=()) -> Results:
    """Every budget and seed of ``config``; see the module docstring for what is measured. One that raises is
    recorded in ``Results.failures`` and the others go on."""
    data = load_data(config)
    comparison = make_problem(data["train"][0].shape[1], "lr", config.clip, np.dtype(config.dtype))
    failures = FailureLog()
    table, per_seed = over_seeds(
        config.seeds,
        lambda seed: run_one_seed(config, data, comparison, seed, progress, failures, callbacks),
        failures,
    )
    histories = {(b, s): h for s, (hs, _, _) in per_seed.items() for b, h in hs.items()}
    weights = {(b, s): w for s, (_, ws, _) in per_seed.items() for b, w in ws.items()}
    corrupted = {s: mask for s, (_, _, mask) in per_seed.items()}
    return Results(config, table, histories, weights, corrupted, tuple(failures.records))


def draw(fig, results: Results) -> dict:
    """The headline run's learned weights (clean against corrupted), its validation loss and detection F1 over
    the hyper-iterations, and the test accuracies per budget (mean over seeds)."""
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
    history = results.histories[(budget, seed)]
    lines = plot.losses(ax_loss, history)
    ax_f1 = ax_loss.twinx()
    lines += ax_f1.plot(history["iteration"], history["f1"], color="tab:green", label="F1 of the detection")
    ax_f1.set_ylim(0, 1)
    ax_f1.set_ylabel("F1")
    ax_loss.legend(handles=lines, fontsize="small", loc="center left")
    ax_loss.set_title("validation loss and F1")
    means = 100 * results.table.groupby("budget")[list(ACCURACIES)].mean()
    width = 0.25
    for i, col in enumerate(means.columns):
        label = col.replace("_accuracy", "").replace("_", " ")
        ax_acc.bar(np.arange(len(means)) + (i - 1) * width, means[col], width, label=label)
    ax_acc.set_xticks(np.arange(len(means)), [f"R={r:g}" for r in means.index])
    ax_acc.set_ylabel("test accuracy (%)")
    if np.isfinite(means.values).any():  # the models are within a point or two of each other: zoom in
        ax_acc.set_ylim(max(0, np.floor(np.nanmin(means.values)) - 2), min(100, np.ceil(np.nanmax(means.values)) + 1))
    ax_acc.legend(fontsize="small", loc="upper left")
    return {"weights": ax_w, "losses": ax_loss, "f1": ax_f1, "accuracy": ax_acc}


def write_report(results: Results, out_dir) -> list[Path]:
    """``hyper-cleaning-reference.md`` and ``.csv`` (every budget and seed; the Markdown adds the settings and the
    means over seeds) and ``hyper-cleaning-reference.png``."""
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    settings = results.summary().splitlines()[0]
    notes = f"{settings}\n\n## Mean over seeds\n\n{markdown_table(results.means())}"
    paths = write_tables(results.table, out_dir, NAME, TITLE, notes, results.failures)
    fig = plt.figure(figsize=(12, 3.6), layout="constrained")
    draw(fig, results)
    paths.append(save_figure(fig, out_dir / f"{NAME}.png"))
    return paths
