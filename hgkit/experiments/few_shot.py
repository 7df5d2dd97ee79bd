"""Few-shot learning on Omniglot (Franceschi et al., ICML 2018, §4): a meta-learned hyper-representation against
MAML, iMAML, a transfer baseline and nearest neighbour on pixels.

Episodes are N-way K-shot: a support set of K drawings of each of N characters to adapt on, and a query set of
other drawings of the same characters to be scored on. Meta-training draws them from the 185 characters of six
background alphabets; meta-validation from the 57 of Korean and Tagalog (:func:`hgkit.datasets.omniglot_split`),
so the scores measure transfer to unseen scripts. Lake's 20 within-alphabet 20-way one-shot runs (evaluation
alphabets, other drawers) are scored too.

The meta-learners run ``hg.HyperOptimizer(problem, method=...).run(..., tasks=sample)`` on the bilevel problem of
one task (:func:`meta_learners`): Adam on the mean query loss over a meta-batch of training episodes. All methods
share the conv-4 embedding φ (``._few_shot_models``) and its L2-normalised features at a fixed scale s:

* **hyper-representation**: λ = the embedding's weights. Each task fits a linear head from zero by T steps of
  gradient descent on its support cross-entropy; the meta-objective is the mean query cross-entropy over a
  meta-batch, with its exact hypergradient by reverse mode (``hg.Reverse()``) through the T head steps;
* **MAML**: λ = θ, the whole network's initial weights (embedding and output layer); each task takes a few SGD
  steps on all of them; exact second-order hypergradient (``hg.Reverse()``);
* **iMAML**: each task minimises ``CE + (λ_reg/2)‖w − θ‖²`` from θ; the hypergradient by implicit differentiation
  (``hg.Implicit(solver="cg")``);
* **transfer**: the embedding trained by ordinary classification of the meta-training characters' drawings (185
  classes, or 740 with the quarter turns; a cosine classifier at the same scale), then each episode's linear head
  fitted as the hyper-representation's;
* **pixel NN**: the query image's nearest support image in pixel space (squared Euclidean distance).

Every method is scored on the same episodes of each seed (5-way 1-shot and 5-way 5-shot, ``eval_episodes`` each)
and on Lake's runs: mean query accuracy and its 95 % interval (``._few_shot_eval``). The meta-learners are
meta-trained once, on 1-shot episodes, and scored in both settings.

This module owns the config, the meta-training of each method, the table and the figures (``few-shot.md``,
``.csv``, ``few-shot.png``: meta-training curves; ``few-shot-episode.png``: one meta-validation episode with the
hyper-representation's predictions).

Example:
    >>> from hgkit.experiments import few_shot
    >>> [(c.blocks, c.filters) for c in (few_shot.SMOKE, few_shot.DEFAULT, few_shot.FULL)]
    [(1, 4), (4, 32), (4, 64)]
    >>> few_shot.Config(meta_batch=0)
    Traceback (most recent call last):
    ...
    ValueError: Config.meta_batch must be a positive int; got 0
    >>> few_shot.Config(train_shots=5, train_queries=16)
    Traceback (most recent call last):
    ...
    ValueError: Config.train_shots + Config.train_queries must be at most 20 (the drawings of a character); got 5 + 16
"""

from __future__ import annotations

import dataclasses
import functools
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pandas as pd

import hgkit as hg

from ..datasets import episodes, omniglot, omniglot_split
from . import _few_shot_eval as ev
from . import _few_shot_models as nets
from ._config import check_positive_ints, check_positive_numbers, check_seeds
from ._models import cross_entropy
from ._report import FailureLog, failures_note, mark_missing, markdown_table, over_seeds, save_figure, write_tables

NAME = "few-shot"
TITLE = "Few-shot learning on Omniglot: hyper-representation, MAML, iMAML and two baselines (Franceschi et al. 2018)"

METHODS = ("hyper-representation", "MAML", "iMAML", "transfer", "pixel NN")
META_LEARNERS = METHODS[:3]
SETTINGS = ("5-way 1-shot", "5-way 5-shot", "Lake 20-way 1-shot")
METHOD_COLORS = {"hyper-representation": "tab:red", "MAML": "tab:blue", "iMAML": "tab:green"}
DRAWINGS = 20  # drawings of each character
PUBLISHED_LAKE_ERRORS = {"people": 0.045, "Bayesian program learning": 0.033}
"""Error rates on Lake's 20 runs published by Lake, Salakhutdinov and Tenenbaum (Science, 2015)."""


@dataclasses.dataclass(frozen=True)
class Config:
    """Sizes and settings.

    Attributes:
        filters, blocks: the embedding's filters per block and its blocks (four: 2·2·filters features; fewer only
            to make the smoke test quick); scale: s, the features' fixed scale.
        ways, train_shots, train_queries: the meta-training episodes (queries per class).
        meta_batch: tasks per hyper-iteration of the hyper-representation; hyper_lr: Adam's step for every
            meta-learner (and for the transfer baseline's training).
        repr_iterations, head_steps, head_lr: the hyper-representation's hyper-iterations, and T and η of its
            inner problem (also how the transfer baseline's heads are fitted).
        maml_iterations, maml_meta_batch, maml_steps, maml_lr: MAML's hyper-iterations, tasks per iteration, inner
            SGD steps and their learning rate (iMAML uses the same meta-batch).
        imaml_iterations, imaml_steps, imaml_lr, imaml_reg, imaml_cg, imaml_tol: iMAML's hyper-iterations, inner
            steps on the proximal loss and their learning rate, λ_reg, and its conjugate-gradient solve's most
            iterations and relative-residual tolerance.
        transfer_steps, transfer_batch: the transfer baseline's Adam steps and minibatch size.
        eval_episodes, eval_queries: episodes per setting and query drawings per class when scoring.
        rotations: meta-train (and pre-train the transfer baseline) with the four quarter turns of every
            character as classes of their own (scoring never turns).
        seeds: one repetition per seed (initial weights, meta-training episodes, scored episodes).
    """

    filters: int = 32
    blocks: int = 4
    scale: float = 10.0
    ways: int = 5
    train_shots: int = 1
    train_queries: int = 5
    meta_batch: int = 8
    hyper_lr: float = 1e-3
    repr_iterations: int = 1200
    head_steps: int = 5
    head_lr: float = 0.1
    maml_iterations: int = 600
    maml_meta_batch: int = 4
    maml_steps: int = 2
    maml_lr: float = 0.1
    imaml_iterations: int = 300
    imaml_steps: int = 10
    imaml_lr: float = 0.03
    imaml_reg: float = 20.0
    imaml_cg: int = 15
    imaml_tol: float = 0.1
    transfer_steps: int = 1000
    transfer_batch: int = 64
    eval_episodes: int = 600
    eval_queries: int = 15
    rotations: bool = True
    seeds: tuple[int, ...] = (0,)

    def __post_init__(self):
        check_positive_ints(
            self,
            (
                "filters", "blocks", "ways", "train_shots", "train_queries", "meta_batch", "repr_iterations",
                "head_steps", "maml_iterations", "maml_meta_batch", "maml_steps", "imaml_iterations", "imaml_steps",
                "imaml_cg",
                "transfer_steps", "transfer_batch", "eval_episodes", "eval_queries",
            ),
        )  # fmt: skip
        check_positive_numbers(self, ("scale", "hyper_lr", "head_lr", "maml_lr", "imaml_lr", "imaml_reg", "imaml_tol"))
        if self.train_shots + self.train_queries > DRAWINGS:
            raise ValueError(
                f"Config.train_shots + Config.train_queries must be at most {DRAWINGS} (the drawings of a character); "
                f"got {self.train_shots} + {self.train_queries}"
            )
        if 5 + self.eval_queries > DRAWINGS:
            raise ValueError(
                f"Config.eval_queries must be at most {DRAWINGS - 5} (5-shot episodes use 5 of each character's "
                f"{DRAWINGS} drawings for support); got {self.eval_queries}"
            )
        if self.eval_episodes < 2:
            raise ValueError(
                f"Config.eval_episodes must be at least 2 (an interval needs a spread); got {self.eval_episodes}"
            )
        check_seeds(self)


SMOKE = Config(
    filters=4, blocks=1, train_queries=2, meta_batch=2, repr_iterations=4, head_steps=2, maml_iterations=2,
    maml_meta_batch=2, maml_steps=1, imaml_iterations=2, imaml_steps=2, imaml_cg=3, imaml_tol=0.9,
    transfer_steps=4, transfer_batch=16, eval_episodes=6, eval_queries=2,
)  # fmt: skip
DEFAULT = Config()
FULL = Config(
    filters=64, train_queries=15, meta_batch=32, repr_iterations=30_000, maml_iterations=30_000,
    maml_meta_batch=32, maml_steps=5, imaml_iterations=30_000, imaml_steps=20, imaml_cg=20,
    transfer_steps=20_000, transfer_batch=256, rotations=True, seeds=(0, 1, 2),
)  # fmt: skip


# ----- data -----------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4)
def samplers(config: Config) -> dict:
    """The episode samplers (made once per config: compiled functions are cached on their identity): meta-training
    episodes (``"train"``), and the meta-validation settings' (``"5-way 1-shot"``, ``"5-way 5-shot"``)."""
    data = omniglot()
    train_classes, val_classes = omniglot_split(data)
    shape = dict(ways=config.ways, shots=config.train_shots, queries=config.train_queries)
    return {
        "train": episodes(data, train_classes, **shape, rotations=config.rotations),
        "5-way 1-shot": episodes(data, val_classes, ways=5, shots=1, queries=config.eval_queries),
        "5-way 5-shot": episodes(data, val_classes, ways=5, shots=5, queries=config.eval_queries),
    }


def meta_batches(sampler, size: int):
    """``key -> (support sets, query sets)`` of ``size`` episodes: the ``tasks=`` of ``hg.HyperOptimizer.run``."""
    return lambda key: tuple(sampler.batch(key, size))


def classification_set(config: Config):
    """The transfer baseline's training set: every drawing of the meta-training characters (with their quarter
    turns as classes of their own if ``config.rotations``), images (n, 28, 28, 1) in [0, 1] and labels."""
    pool = np.asarray(samplers(config)["train"].pool)  # (characters, drawings, 28, 28) uint8
    if config.rotations:
        pool = np.concatenate([np.rot90(pool, r, axes=(-2, -1)) for r in range(4)])
    classes, drawings = pool.shape[:2]
    x = pool.reshape(classes * drawings, 28, 28, 1).astype(np.float32) / 255.0
    return x, np.repeat(np.arange(classes, dtype=np.int32), drawings)


# ----- the meta-learners ----------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Trained:
    """A trained method: its parameters (λ, θ or the embedding), the meta-training history (one row per
    hyper-iteration: iteration, val_loss = the mean query loss, accuracy = the mean query accuracy, grad_norm,
    wall_time; None for the baselines) and the wall time of training, compilation included."""

    params: object
    history: pd.DataFrame | None
    seconds: float


@dataclasses.dataclass(frozen=True)
class MetaLearner:
    """How one meta-learner is meta-trained: its one-task ``problem``, the ``loop`` (an ``hg.HyperOptimizer``
    with its method), the inner steps ``T``, the hyper-iterations, the tasks per hyper-iteration and
    ``init(key)``, the starting hyperparameters."""

    problem: hg.BilevelProblem
    loop: hg.HyperOptimizer
    T: int
    iterations: int
    meta_batch: int
    init: object


@functools.lru_cache(maxsize=4)
def meta_learners(config: Config) -> dict[str, MetaLearner]:
    """The three meta-learners, made once per config (the loops' compiled steps are cached on these objects'
    identity, so seeds share them). Every loop is Adam at ``hyper_lr`` with the mean query accuracy as a metric."""
    tx = _adam(config.hyper_lr)
    ways, scale = config.ways, config.scale
    rep = nets.hyper_representation_problem(ways=ways, head_lr=config.head_lr, scale=scale)
    maml = nets.maml_problem(inner_lr=config.maml_lr, scale=scale)
    imaml = nets.imaml_problem(inner_lr=config.imaml_lr, reg=config.imaml_reg, scale=scale)
    implicit = hg.Implicit(solver="cg", iterations=config.imaml_cg, tol=config.imaml_tol)

    def loop(problem, method, accuracy_metric):
        return hg.HyperOptimizer(problem, method=method, hyper_optimizer=tx, metrics={"accuracy": accuracy_metric})

    network = nets.network_accuracy(scale)
    return {
        "hyper-representation": MetaLearner(
            rep,
            loop(rep, hg.Reverse(), nets.head_accuracy(scale)),
            config.head_steps,
            config.repr_iterations,
            config.meta_batch,
            lambda key: nets.conv4_init(key, config.filters, config.blocks),
        ),
        "MAML": MetaLearner(
            maml,
            loop(maml, hg.Reverse(), network),
            config.maml_steps,
            config.maml_iterations,
            config.maml_meta_batch,
            lambda key: {"theta": nets.network_init(key, config.filters, ways, config.blocks)},
        ),
        "iMAML": MetaLearner(
            imaml,
            loop(imaml, implicit, network),
            config.imaml_steps,
            config.imaml_iterations,
            config.maml_meta_batch,
            lambda key: {"theta": nets.network_init(key, config.filters, ways, config.blocks)},
        ),
    }


@functools.lru_cache(maxsize=8)
def _tasks(config: Config, size: int):
    return meta_batches(samplers(config)["train"], size)  # one object per size: part of the compiled step's key


def meta_train(config: Config, method: str, key, progress: bool = False) -> Trained:
    """Meta-train ``method`` (one of :data:`META_LEARNERS`) from ``init(key)`` with ``hg.HyperOptimizer.run(
    tasks=...)``: hyper-iteration i draws its meta-batch of 1-shot training episodes with ``fold_in(key, i)``.
    The parameters returned are the blocks of the embedding (hyper-representation) or θ (MAML, iMAML)."""
    start = time.perf_counter()
    learner = meta_learners(config)[method]
    init_key, task_key = jax.random.split(key)
    result = learner.loop.run(
        learner.init(init_key),
        learner.iterations,
        learner.T,
        tasks=_tasks(config, learner.meta_batch),
        key=task_key,
        progress=progress,
    )
    history = result.history[["iteration", "val_loss", "accuracy", "train_loss", "grad_norm", "wall_time"]]
    params = result.hparams if method == "hyper-representation" else result.hparams["theta"]
    return Trained(params, history.reset_index(drop=True), time.perf_counter() - start)


def _progress(total: int, label: str, progress: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=label, disable=not progress, leave=False)


# ----- the transfer baseline ------------------------------------------------------------------------------------


def train_transfer(config: Config, key, progress: bool = False) -> Trained:
    """The embedding and a cosine classifier (the features at scale s, a linear layer) trained by Adam on
    minibatches of :func:`classification_set` (``transfer_steps`` steps); returns the embedding's blocks."""
    start = time.perf_counter()
    x, y = classification_set(config)
    init_key, order_key = jax.random.split(key)
    blocks = nets.conv4_init(init_key, config.filters, config.blocks)
    classes = int(y.max()) + 1
    params = {"embed": blocks, "head": hg.linear_head(nets.feature_size(blocks), classes)}
    tx = _adam(config.hyper_lr)
    order = jax.random.randint(order_key, (config.transfer_steps, config.transfer_batch), 0, len(y))
    chunk = 100  # steps per compiled call (the progress bar moves between them)
    state, x, y = (params, tx.init(params)), jnp.asarray(x), jnp.asarray(y)
    with _progress(config.transfer_steps, "transfer", progress) as bar:
        for first in range(0, config.transfer_steps, chunk):
            state, _ = _classifier_steps(state, x, y, order[first : first + chunk], tx, config.scale)
            bar.update(min(chunk, config.transfer_steps - first))
    jax.block_until_ready(state)
    return Trained(state[0]["embed"], None, time.perf_counter() - start)


@functools.lru_cache(maxsize=4)
def _adam(lr: float):
    return optax.adam(lr)  # one object per rate: the compiled steps are cached on its identity


@functools.partial(jax.jit, static_argnames=("tx", "scale"))
def _classifier_steps(state, x, y, order, tx, scale):
    """Adam steps on the cosine classifier's cross-entropy, one per row of minibatch indices ``order``."""

    def loss(params, idx):
        features = nets.features(
            params["embed"], x[idx], scale, nets.conv3x3_matmul
        )  # inside a scan: see conv3x3_matmul
        logits = nets.head_logits(params["head"], features)
        return cross_entropy(logits, y[idx])

    def one(carry, idx):
        params, opt_state = carry
        value, grads = jax.value_and_grad(loss)(params, idx)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), value

    return jax.lax.scan(one, state, order)


# ----- scoring --------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4)
def scorers(config: Config) -> dict:
    """``{method: (scorer, scorer for Lake's 20-way runs)}``, ``scorer(params, episode) -> accuracy`` (made once
    per config, so that methods sharing a scorer share its compilation)."""
    learners = meta_learners(config)

    def representation(ways):
        return functools.partial(
            ev.representation_accuracy, ways=ways, steps=config.head_steps, head_lr=config.head_lr, scale=config.scale
        )

    def network(method, ways):
        learner = learners[method]
        score = functools.partial(ev.network_accuracy, problem=learner.problem, steps=learner.T, scale=config.scale)
        if ways == config.ways:
            return score
        return functools.partial(_with_zero_head, score=score, ways=ways)

    rep5, rep20 = representation(5), representation(20)
    out = {"hyper-representation": (rep5, rep20), "transfer": (rep5, rep20)}
    for method in ("MAML", "iMAML"):
        out[method] = (network(method, 5), network(method, 20))
    out["pixel NN"] = (ev.pixel_nn_accuracy, ev.pixel_nn_accuracy)
    return out


def _with_zero_head(theta, episode, *, score, ways):
    return score(nets.with_zero_head(theta, ways), episode)


def score(config: Config, method: str, params, key) -> list[dict]:
    """``method``'s rows for every setting: accuracy, 95 % interval, episodes, and the seconds the scoring took."""
    five, twenty = scorers(config)[method]
    rows = []
    for i, setting in enumerate(SETTINGS[:2]):
        start = time.perf_counter()
        acc = ev.sampled_accuracies(
            five, params, samplers(config)[setting], jax.random.fold_in(key, i), config.eval_episodes
        )
        rows.append(_row(method, setting, acc, time.perf_counter() - start))
    start = time.perf_counter()
    acc = ev.run_accuracies(twenty, params, ev.lake_episodes(omniglot().runs))
    rows.append(_row(method, SETTINGS[2], acc, time.perf_counter() - start))
    return rows


def _row(method, setting, accuracies, seconds) -> dict:
    mean, half = ev.mean_and_interval(accuracies)
    return dict(method=method, setting=setting, accuracy=mean, ci95=half, episodes=len(accuracies), eval_s=seconds)


# ----- the runs -------------------------------------------------------------------------------------------------


def training_cost(config: Config, method: str) -> dict:
    """What training ``method`` computes: ``inner_steps`` (hyper-iterations × tasks × inner steps) and
    ``image_passes`` (images through the embedding, forward and backward, counting each use: the support once per
    inner step for MAML, and once per inner step and conjugate-gradient iteration, at most, for iMAML)."""
    support = config.ways * config.train_shots
    query = config.ways * config.train_queries
    if method == "hyper-representation":
        tasks = config.repr_iterations * config.meta_batch
        return dict(inner_steps=tasks * config.head_steps, image_passes=tasks * (support + query))
    if method == "MAML":
        tasks = config.maml_iterations * config.maml_meta_batch
        return dict(inner_steps=tasks * config.maml_steps, image_passes=tasks * (config.maml_steps * support + query))
    if method == "iMAML":
        tasks = config.imaml_iterations * config.maml_meta_batch
        passes = tasks * ((config.imaml_steps + config.imaml_cg) * support + query)
        return dict(inner_steps=tasks * config.imaml_steps, image_passes=passes)
    if method == "transfer":
        return dict(inner_steps=0, image_passes=config.transfer_steps * config.transfer_batch)
    return dict(inner_steps=0, image_passes=0)


def run_one_seed(config: Config, seed: int, progress: bool, failures: FailureLog):
    """Train every method on ``seed`` and score it: the rows, the histories and the example episode.

    A method whose training or scoring raises is recorded in ``failures`` and has no rows; the others go on.
    """
    key = jax.random.key(seed)
    train_key, score_key = jax.random.split(key)
    keys = dict(zip(METHODS, jax.random.split(train_key, len(METHODS)), strict=True))
    trainers = {
        "hyper-representation": lambda: meta_train(
            config, "hyper-representation", keys["hyper-representation"], progress
        ),
        "MAML": lambda: meta_train(config, "MAML", keys["MAML"], progress),
        "iMAML": lambda: meta_train(config, "iMAML", keys["iMAML"], progress),
        "transfer": lambda: train_transfer(config, keys["transfer"], progress),
        "pixel NN": lambda: Trained(None, None, 0.0),
    }
    rows, trained = [], {}
    for method in METHODS:
        done = failures.attempt(seed, method, trainers[method])
        if done is None:
            continue
        trained[method] = done
        scored = failures.attempt(seed, method, score, config, method, done.params, score_key)
        for row in scored or []:
            rows.append(dict(seed=seed, **row, train_s=done.seconds, **training_cost(config, method)))
    histories = {m: t.history for m, t in trained.items() if t.history is not None}
    for method in META_LEARNERS:
        if method not in histories and failures.partial(seed, method) is not None:
            histories[method] = failures.partial(seed, method).history
    example = None
    if "hyper-representation" in trained:
        example = example_episode(config, trained["hyper-representation"].params, score_key)
    columns = [
        "seed",
        "method",
        "setting",
        "accuracy",
        "ci95",
        "episodes",
        "train_s",
        "eval_s",
        "inner_steps",
        "image_passes",
    ]
    return pd.DataFrame(rows, columns=columns), histories, example


def example_episode(config: Config, blocks, key) -> dict:
    """The first 5-way 1-shot meta-validation episode scored (the same key as the table's) with the
    hyper-representation's query predictions: ``{"support", "query", "predicted"}`` as numpy arrays."""
    episode = samplers(config)["5-way 1-shot"](jax.random.split(jax.random.fold_in(key, 0), config.eval_episodes)[0])
    f = {k: nets.features(blocks, getattr(episode, k)["x"], config.scale) for k in ("support", "query")}
    head = nets.adapt(nets.head_problem(ways=5, head_lr=config.head_lr), f, episode.support["y"], config.head_steps)
    predicted = jnp.argmax(nets.head_logits(head, f["query"]), axis=1)
    as_numpy = jax.tree_util.tree_map(np.asarray, {"support": episode.support, "query": episode.query})
    return {**as_numpy, "predicted": np.asarray(predicted)}


@dataclasses.dataclass(frozen=True)
class Results:
    """Per seed, method and setting the accuracy, its 95 % interval and the costs (``table``); the first seed's
    meta-training histories (``histories``, by method) and example episode (``example``); what failed
    (``failures``), whose rows the table lacks."""

    config: Config
    table: pd.DataFrame
    histories: dict
    example: dict | None
    failures: tuple = ()

    def accuracies(self) -> pd.DataFrame:
        """Method × setting: the mean accuracy over seeds, formatted ``"acc ± ci95"`` in percent (the interval is
        the first seed's when there are several)."""
        if self.table.empty:
            return pd.DataFrame(columns=["method", *SETTINGS])
        mean = self.table.groupby(["method", "setting"], sort=False)[["accuracy", "ci95"]].mean()
        cell = mean.apply(lambda r: f"{100 * r['accuracy']:.1f} ± {100 * r['ci95']:.1f}", axis=1)
        out = cell.unstack("setting").reindex(columns=list(SETTINGS))
        return out.reindex([m for m in METHODS if m in out.index]).reset_index()

    def costs(self) -> pd.DataFrame:
        """Per method the mean over seeds of the training wall time, the scoring time of all settings, and the
        compute units (:func:`training_cost`)."""
        if self.table.empty:
            return pd.DataFrame(columns=["method", "train_s", "eval_s", "inner_steps", "image_passes"])
        per_seed = self.table.groupby(["method", "seed"], sort=False).agg(
            train_s=("train_s", "first"), eval_s=("eval_s", "sum"), inner_steps=("inner_steps", "first"),
            image_passes=("image_passes", "first"),
        )  # fmt: skip
        return per_seed.groupby("method", sort=False).mean().reset_index()

    def summary(self) -> str:
        c = self.config
        return (
            f"{TITLE}\nconv-4 with {c.filters} filters; hyper-representation {c.repr_iterations} hyper-iterations, "
            f"MAML {c.maml_iterations}, iMAML {c.imaml_iterations}; {c.eval_episodes} episodes per setting; "
            f"seeds {list(c.seeds)}\n" + markdown_table(self.accuracies()) + "\n\n" + markdown_table(self.costs())
        ) + failures_note(self.failures)


def run(config: Config = DEFAULT, progress: bool = True) -> Results:
    """Every method on every seed; one that raises is recorded in ``Results.failures`` and the others go on."""
    failures = FailureLog()
    table, per_seed = over_seeds(config.seeds, lambda seed: run_one_seed(config, seed, progress, failures), failures)
    histories, example = per_seed.get(config.seeds[0], ({}, None))
    return Results(config, table, histories, example, tuple(failures.records))


# ----- the report -----------------------------------------------------------------------------------------------

PUBLISHED = """Published Omniglot accuracies (5-way 1-shot / 5-shot, as the papers report them): MAML 98.7 ± 0.4 /
99.9 ± 0.1 (Finn et al. 2017), hyper-representation 98.6 / 99.5 (Franceschi et al. 2018), iMAML 99.5 ± 0.3 /
99.7 ± 0.1 (Rajeswaran et al. 2019), prototypical networks 98.8 / 99.7 (Snell et al. 2017); nearest neighbour on
pixels (cosine) 41.7 / 63.2 (Vinyals et al. 2016). They are not comparable with the table above: those models
meta-train on a full background set, 964 characters of 30 alphabets (Lake's split) or 1,200 characters (Vinyals et
al.'s split, 4,800 classes with the quarter turns), for tens of thousands of hyper-iterations on a GPU, and score
episodes of characters drawn at random from all the others, so that an episode's five classes usually come from
five different alphabets. These files hold 185 meta-training characters of 6 alphabets (740 classes with the
turns); the meta-validation episodes take their five characters from two held-out alphabets (Korean and Tagalog),
so they often share a script, a finer discrimination; and the budget is minutes on 2 CPU cores. The packaged data
cannot reproduce the published protocol.

On Lake's 20 within-alphabet 20-way one-shot runs (evaluation alphabets, images downsampled here to 28×28), the
published error rates are 4.5 % for people and 3.3 % for Bayesian program learning (Lake, Salakhutdinov and
Tenenbaum, Science 2015), i.e. 95.5 % and 96.7 % accuracy."""


def notes(results: Results) -> str:
    """The Markdown after the table: accuracies by method and setting, costs, the choices made, published figures."""
    c = results.config
    turns = "with the 3 quarter turns of each" if c.rotations else "without quarter turns"
    classes = 185 * (4 if c.rotations else 1)
    features = nets.feature_size(nets.conv4_init(jax.random.key(0), c.filters, c.blocks))
    choices = f"""## Settings

- Meta-validation: {c.eval_episodes} episodes per setting from the 57 characters of Korean and Tagalog (never
  turned), {c.eval_queries} query drawings per class; the same episodes for every method of a seed. Intervals:
  1.96·sd/√n over episodes (over the 20 runs on Lake's). Meta-training episodes: {c.ways}-way {c.train_shots}-shot,
  {c.train_queries} queries per class, from the 185 characters of the six other alphabets, {turns} as classes of
  their own ({classes} classes); every meta-learner is meta-trained once, on these 1-shot episodes, and scored in
  both settings.
- Embedding: {c.blocks} blocks of {c.filters} filters (3×3 conv, instance norm, ReLU, 2×2 max-pool), {features}
  features, L2-normalised and multiplied by a fixed scale s = {c.scale:g}. Not learned: in a trial without turns, a
  learned s grew from 10 to 16 in 600 hyper-iterations, which sharpened the 1-shot heads but made 5 GD steps on 25
  support images oscillate (5-shot accuracy fell from 93 % to 91 %).
- Hyper-representation: λ = the embedding; a linear head from zero, T = {c.head_steps} GD steps at η = {c.head_lr:g}
  (fixed) on the support cross-entropy; meta-batch {c.meta_batch}, Adam {c.hyper_lr:g}, {c.repr_iterations}
  hyper-iterations by hg.HyperOptimizer(tasks=...), exact reverse mode (hg.Reverse()) through the head's steps.
- MAML: θ = the whole network (embedding, and an output layer that starts at zero as the hyper-representation's
  head), {c.maml_steps} SGD steps at {c.maml_lr:g} on all weights, exact second-order hypergradient (hg.Reverse()),
  meta-batch {c.maml_meta_batch}, {c.maml_iterations} hyper-iterations by hg.HyperOptimizer(tasks=...). On Lake's
  20-way runs its 5-way output layer is replaced by a 20-way one at zero (equal columns: θ's own layer averaged
  over its classes) before adapting.
- iMAML: θ as MAML's; {c.imaml_steps} GD steps at {c.imaml_lr:g} on CE + (λ_reg/2)‖w − θ‖², λ_reg = {c.imaml_reg:g},
  hypergradient by hg.Implicit(solver="cg", iterations={c.imaml_cg}, tol={c.imaml_tol:g}) (a solve whose relative
  residual stays above the tolerance stops the run), meta-batch {c.maml_meta_batch}, {c.imaml_iterations}
  hyper-iterations. λ_reg is ten times the published 2 because conjugate gradients needs ∇²CE + λ_reg·I positive
  definite, and the cross-entropy's Hessian at the initial θ has eigenvalues down to about −13 on a 1-shot episode
  (down to −76 with a random output layer); at λ_reg = 2 the solve diverged.
- Transfer: the embedding and a {classes}-way cosine classifier (the same scaled features) trained by Adam
  ({c.hyper_lr:g}, {c.transfer_steps} steps of {c.transfer_batch} images) on the meta-training characters' drawings;
  each episode's head then fitted as the hyper-representation's (T = {c.head_steps} GD steps from zero).
- Pixel NN: the nearest support image by squared Euclidean distance on pixels in [0, 1].
- Costs: train_s is the wall time of (meta-)training with compilation, eval_s that of scoring all three settings;
  inner_steps = hyper-iterations × tasks × inner steps; image_passes = images through the embedding forward and
  backward during training, each use counted (iMAML: an upper bound, the solve may stop early)."""
    return "\n\n".join(
        [
            "## Accuracy (%, mean ± 95 % interval)\n\n" + markdown_table(results.accuracies()),
            "## Cost\n\n" + markdown_table(results.costs()),
            choices,
            "## Published figures\n\n" + PUBLISHED,
        ]
    )


def _smoothed(values, window: int):
    return pd.Series(values).rolling(window, min_periods=1).mean().to_numpy()


def draw_curves(fig, results: Results) -> dict:
    """The mean query loss and query accuracy of each meta-learner's meta-batches against hyper-iterations (faint:
    every iteration; solid: a running mean)."""
    loss_ax, acc_ax = fig.subplots(1, 2)
    drawn = False
    for method in META_LEARNERS:
        h = results.histories.get(method)
        if h is None or not len(h):
            continue
        window = max(1, len(h) // 25)
        for ax, column in ((loss_ax, "val_loss"), (acc_ax, "accuracy")):
            ax.plot(h["iteration"], h[column], color=METHOD_COLORS[method], alpha=0.25, lw=0.8)
            ax.plot(h["iteration"], _smoothed(h[column], window), color=METHOD_COLORS[method], label=method)
        drawn = True
    loss_ax.set_ylabel("mean query cross-entropy")
    acc_ax.set_ylabel("mean query accuracy")
    for ax in (loss_ax, acc_ax):
        ax.set_xlabel("hyper-iteration")
    if drawn:
        acc_ax.legend()
    else:
        mark_missing(loss_ax, "every meta-learner failed")
    fig.suptitle("Meta-training on 1-shot episodes of the meta-training alphabets")
    return {"loss": loss_ax, "accuracy": acc_ax}


def draw_episode(fig, example: dict | None, ways: int = 5) -> list:
    """One 5-way 1-shot meta-validation episode: per row a class, its support image first, then its query images
    framed green (the hyper-representation classed it right) or red (wrong, with the class it chose)."""
    if example is None:
        mark_missing(fig.subplots(), "the hyper-representation failed")
        return []
    queries = len(example["query"]["y"]) // ways
    axes = fig.subplots(ways, queries + 1, squeeze=False)
    for c in range(ways):
        axes[c, 0].imshow(example["support"]["x"][c, ..., 0], cmap="gray_r")
        axes[c, 0].set_ylabel(f"class {c}", rotation=0, labelpad=18)
        for j in range(queries):
            k = c * queries + j
            ax = axes[c, j + 1]
            ax.imshow(example["query"]["x"][k, ..., 0], cmap="gray_r")
            right = example["predicted"][k] == c
            for spine in ax.spines.values():
                spine.set_edgecolor("tab:green" if right else "tab:red")
                spine.set_linewidth(2.5)
            if not right:
                ax.set_title(f"→{example['predicted'][k]}", color="tab:red", fontsize=7, pad=1)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0, 0].set_title("support", fontsize=8)
    right = float(np.mean(example["predicted"] == example["query"]["y"]))
    fig.suptitle(f"5-way 1-shot meta-validation episode: hyper-representation {right:.0%} right", fontsize=10)
    return list(axes.flat)


def write_report(results: Results, out_dir) -> list[Path]:
    """``few-shot.md`` and ``.csv`` (every seed, method and setting), ``few-shot.png`` (meta-training curves) and
    ``few-shot-episode.png`` (an episode and the hyper-representation's predictions)."""
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    paths = write_tables(results.table, out_dir, NAME, TITLE, notes(results), results.failures)
    fig = plt.figure(figsize=(11, 4.2), layout="constrained")
    draw_curves(fig, results)
    paths.append(save_figure(fig, out_dir / f"{NAME}.png"))
    queries = 0 if results.example is None else len(results.example["query"]["y"]) // 5
    fig = plt.figure(figsize=(max(5.0, 1.2 + 0.7 * (queries + 1)), 4.2), layout="constrained")
    draw_episode(fig, results.example)
    paths.append(save_figure(fig, out_dir / f"{NAME}-episode.png"))
    return paths
