"""What the MNIST experiments share: the packaged split (:func:`hgkit.datasets.hyper_cleaning_mnist`) cut to the
rows an experiment uses, as device arrays, and the sizes a config may ask for.

Each of the three sets is either its first ``n`` images or the rows a function of its labels picks (drawn per
seed, e.g. so many images of each digit); the sets are cut in the order train, validation, test, so a picker that
draws from one random generator draws the same rows every time.

Example:
    >>> data = mnist(train=100, val=50, test=20)
    >>> {name: (x.shape, x.dtype.name, y.dtype.name) for name, (x, y) in data.items()}  # doctest: +NORMALIZE_WHITESPACE
    {'train': ((100, 784), 'float32', 'int32'), 'val': ((50, 784), 'float32', 'int32'),
     'test': ((20, 784), 'float32', 'int32')}
    >>> zeros = mnist(train=lambda y: (y == 0).nonzero()[0][:3], val=1, test=1)["train"]
    >>> zeros[1].tolist()
    [0, 0, 0]
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from ..datasets.mnist import N_TRAIN, N_VAL, hyper_cleaning_mnist

SIZES = {"n_train": N_TRAIN, "n_val": N_VAL, "n_test": 10000}
"""The packaged split's sizes, by the config field that asks for a number of them."""

Rows = int | Callable[[np.ndarray], np.ndarray]


def mnist(train: Rows, val: Rows, test: Rows, dtype="float32") -> dict[str, tuple[jax.Array, jax.Array]]:
    """``{"train": (x, y), "val": (x, y), "test": (x, y)}``: images as rows of ``dtype`` in [0, 1], int32 labels.

    Each argument is a number of images (the set's first ones) or ``labels -> indices``, the rows to keep.
    """
    split = hyper_cleaning_mnist(np.dtype(dtype))
    sets = {
        "train": (split.x_train, split.y_train, train),
        "val": (split.x_val, split.y_val, val),
        "test": (split.x_test, split.y_test, test),
    }
    out = {}
    for name, (x, y, rows) in sets.items():
        index = rows(y) if callable(rows) else slice(rows)
        out[name] = (jnp.asarray(x[index]), jnp.asarray(y[index]))
    return out


def minibatch_fn(x: jax.Array, y: jax.Array, batch_size: int, steps: int, rng: np.random.Generator) -> Callable:
    """The minibatch function ``step -> (x, y)`` of a run of ``steps`` steps: epochs of fresh permutations of the
    rows (drawn from ``rng``), each cut into minibatches of ``batch_size`` (a last partial one dropped).

    Example:
        >>> batch = minibatch_fn(jnp.arange(10.0), jnp.arange(10), 4, 5, np.random.default_rng(0))
        >>> xs = [batch(step)[0] for step in range(4)]
        >>> [x.shape for x in xs[:2]], len(set(np.concatenate(xs[:2]).tolist()))  # one epoch: 8 distinct rows
        ([(4,), (4,)], 8)
    """
    n = len(x)
    per_epoch = n // batch_size
    epochs = -(-steps // per_epoch)
    order = np.concatenate([rng.permutation(n)[: per_epoch * batch_size] for _ in range(epochs)])
    order = jnp.asarray(order.reshape(-1, batch_size)[:steps].astype(np.int32))

    def batch(step):
        idx = order[step]
        return x[idx], y[idx]

    return batch
