"""How the few-shot experiment scores a method: one episode at a time (adapt on the support set, classify the
query set), over many sampled episodes or Lake's 20 one-shot runs, with a 95 % interval.

An episode's accuracy is the fraction of its query images classified correctly. Over n episodes the table reports
the mean and the half-width of its normal 95 % interval, ``1.96 · sd / √n`` (sd: the sample standard deviation of
the episodes' accuracies); on Lake's runs, n = 20 runs of 20 test images each.

The scorers (``fn(params, episode) -> accuracy``):

* :func:`representation_accuracy`: the features at the fixed scale, a linear head fitted by the inner problem
  (:func:`~._few_shot_models.head_problem`); the hyper-representation and the transfer baseline;
* :func:`network_accuracy`: the whole network adapted from θ by a problem's inner steps (MAML, iMAML);
* :func:`pixel_nn_accuracy`: nearest neighbour on pixels, squared Euclidean distance ``‖x_q − x_s‖²``.

Example (nearest neighbour on a two-way episode whose queries are their classes' support images turned dark):
    >>> import jax.numpy as jnp
    >>> from hgkit.datasets import Episode
    >>> x = jnp.stack([jnp.zeros((28, 28, 1)), jnp.ones((28, 28, 1))])
    >>> ep = Episode({"x": x, "y": jnp.arange(2)}, {"x": 0.4 * x, "y": jnp.arange(2)})
    >>> float(pixel_nn_accuracy(None, ep))  # ‖0.4·1 − 0‖² < ‖0.4·1 − 1‖²: the bright query goes to class 0
    0.5
    >>> accuracy, half_width = mean_and_interval(jnp.array([1.0, 0.5, 0.5, 1.0]))
    >>> round(accuracy, 3), round(half_width, 3)  # 1.96 · 0.2887 / 2
    (0.75, 0.283)
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ..datasets import Episode, OneShotRuns
from ._few_shot_models import adapt, features, head_logits, head_problem, network_logits
from ._models import accuracy


def mean_and_interval(accuracies) -> tuple[float, float]:
    """The mean of per-episode accuracies and the half-width of its 95 % interval, ``1.96 · sd / √n``."""
    a = np.asarray(accuracies, dtype=np.float64)
    return float(a.mean()), float(1.96 * a.std(ddof=1) / np.sqrt(len(a))) if len(a) > 1 else float("nan")


def representation_accuracy(blocks, episode: Episode, *, ways: int, steps: int, head_lr: float, scale: float):
    """Query accuracy of a linear head fitted on the support features by ``steps`` steps of gradient descent from
    zero (the hyper-representation's inner problem)."""
    f = {"support": features(blocks, episode.support["x"], scale), "query": features(blocks, episode.query["x"], scale)}
    head = adapt(head_problem(ways=ways, head_lr=head_lr), f, episode.support["y"], steps)
    return accuracy(head_logits(head, f["query"]), episode.query["y"])


def network_accuracy(theta, episode: Episode, *, problem, steps: int, scale: float):
    """Query accuracy of the whole network after ``steps`` inner steps of ``problem`` from ``θ`` on the support set
    (MAML's or iMAML's adaptation)."""
    w = adapt(problem, {"theta": theta}, episode.support, steps)
    return accuracy(network_logits(w, episode.query["x"], scale), episode.query["y"])


def pixel_nn_accuracy(params, episode: Episode):
    """Query accuracy of the nearest support image in pixel space (squared Euclidean distance; ``params`` unused)."""
    s = episode.support["x"].reshape(episode.support["x"].shape[0], -1)
    q = episode.query["x"].reshape(episode.query["x"].shape[0], -1)
    d = jnp.sum(q**2, 1)[:, None] - 2 * q @ s.T + jnp.sum(s**2, 1)[None, :]
    return jnp.mean(episode.support["y"][jnp.argmin(d, axis=1)] == episode.query["y"])


@functools.partial(jax.jit, static_argnames=("scorer", "sampler", "chunk"))
def _sampled(scorer, sampler, params, keys, chunk):
    return lax.map(lambda k: scorer(params, sampler(k)), keys, batch_size=chunk)


def sampled_accuracies(scorer, params, sampler, key, episodes: int, chunk: int = 25) -> np.ndarray:
    """``scorer(params, episode)`` on ``episodes`` episodes drawn by ``sampler`` with ``jax.random.split(key,
    episodes)`` (so every method with the same key sees the same episodes), ``chunk`` of them vmapped at a time."""
    keys = jax.random.split(key, episodes)
    return np.asarray(_sampled(scorer, sampler, params, keys, min(chunk, episodes)))


def lake_episodes(runs: OneShotRuns) -> Episode:
    """Lake's 20 runs as 20 twenty-way one-shot episodes (leading axis: the run): support = the run's 20 training
    images labelled 0..19, query = its 20 test images labelled by ``runs.label``; images in [0, 1], (28, 28, 1)."""

    def images(a):
        return jnp.asarray(a, jnp.float32)[..., None] / 255.0

    support = {"x": images(runs.train), "y": jnp.tile(jnp.arange(runs.train.shape[1], dtype=jnp.int32), (20, 1))}
    return Episode(support, {"x": images(runs.test), "y": jnp.asarray(runs.label, jnp.int32)})


@functools.partial(jax.jit, static_argnames=("scorer",))
def _each(scorer, params, episodes):
    return jax.vmap(lambda ep: scorer(params, ep))(episodes)


def run_accuracies(scorer, params, episodes: Episode) -> np.ndarray:
    """``scorer(params, episode)`` on each episode of a batch (a leading axis), e.g. :func:`lake_episodes`."""
    return np.asarray(_each(scorer, params, episodes))
