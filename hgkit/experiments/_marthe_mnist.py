"""The pieces of MARTHE's MNIST comparison (``lucfra/Marthe-TF``) that the reference protocol
(:mod:`.lr_schedules_reference`) runs its methods on: the early-stopping rule, TF's split of full MNIST, the
reference's two networks, the minibatch tables, and the bilevel problem whose E reads a minibatch by a step counter.

A ``config`` here is a :class:`.lr_schedules_reference.Config` (its fields ``data``, ``mnist_dir``, the sizes,
``model``, ``mlp``, ``width``), read by field and not imported: that module imports this one.

Example:
    >>> early_stopping([0.1, 0.3, 0.2, 0.4, 0.4, 0.1, 0.9], patience=2)  # a tie is no improvement
    (3, 5)
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

import hgkit as hg

from ._data import mnist
from ._models import cross_entropy, mlp, mlp_init

# ----- early stopping ------------------------------------------------------------------------------------------


class EarlyStopping:
    """The reference's rule (``marthe/utils.py``, ``early_stopping``): a check whose value is strictly above the
    best so far is accepted and resets the patience; any other costs one; training stops at the check that
    leaves none."""

    def __init__(self, patience: int):
        self.patience, self.left = patience, patience
        self.best, self.accepted, self.checks = None, None, 0

    def update(self, value: float, **at) -> bool:
        """One check; True: stop here. ``at`` (step, test accuracy, ...) is kept with an accepted check."""
        if self.best is None or value > self.best:
            self.best, self.left, self.accepted = value, self.patience, dict(check=self.checks, value=value, **at)
        else:
            self.left -= 1
        self.checks += 1
        return self.left == 0


def early_stopping(values, patience: int) -> tuple[int, int]:
    """``(accepted, last)``: the index of the accepted check and of the last one made, for a sequence of checks."""
    rule = EarlyStopping(patience)
    for k, value in enumerate(values):
        if rule.update(value):
            return rule.accepted["check"], k
    return rule.accepted["check"], len(values) - 1


# ----- data and networks ---------------------------------------------------------------------------------------


def load_data(config) -> dict:
    """``{"train", "val", "test"}``: TF's split of full MNIST (validation = the first 5,000 training images), cut to
    size, images as float32 rows in [0, 1] (× 1/255), int32 labels; with ``data="packaged"`` the packaged split's
    first images instead."""
    if config.data == "packaged":
        return mnist(config.n_train, config.n_val, config.n_test)
    arrays = _full_mnist(config.mnist_dir)
    x = arrays.x_train.reshape(len(arrays.x_train), -1).astype(np.float32) * np.float32(1 / 255)
    xt = arrays.x_test.reshape(len(arrays.x_test), -1).astype(np.float32) * np.float32(1 / 255)
    y, yt = arrays.y_train.astype(np.int32), arrays.y_test.astype(np.int32)
    sets = {
        "train": (x[5000 : 5000 + config.n_train], y[5000 : 5000 + config.n_train]),
        "val": (x[: config.n_val], y[: config.n_val]),
        "test": (xt[: config.n_test], yt[: config.n_test]),
    }
    return {k: (jnp.asarray(a), jnp.asarray(b)) for k, (a, b) in sets.items()}


def _full_mnist(folder: str):
    from ..datasets import MNIST, DownloadError, load_idx_folder, load_mnist

    if folder:
        return load_idx_folder(folder, MNIST.payload_sha256())
    try:
        return load_mnist()
    except DownloadError as error:
        raise RuntimeError(
            "this experiment needs the full MNIST (70,000 images), and it is neither in hgkit's cache nor "
            f"downloadable ({error}). Put the four IDX files (train-images-idx3-ubyte[.gz], ...) in a folder and "
            "pass it: --set mnist_dir=PATH (Config.mnist_dir), or set HGKIT_CACHE_DIR to a cache that holds them"
        ) from error


def _glorot(key, shape, fan_in: int, fan_out: int):
    limit = math.sqrt(6 / (fan_in + fan_out))
    return jax.random.uniform(key, shape, jnp.float32, -limit, limit)


def network(config):
    """``(init(key) -> params, apply(params, x) -> logits)`` of the reference's ``ffnn`` or ``cnn``; with
    ``config.mlp == "hgkit"`` the FFNN is hgkit's own MLP instead (``_models.mlp``: tanh, weights N(0, 1/fan_in),
    as :mod:`.lr_schedules` trains it)."""
    if config.model == "ffnn" and config.mlp == "hgkit":  # hgkit's own MLP: tanh, weights N(0, 1/fan_in)
        return (lambda key: mlp_init(key, 784, config.width, 10)), mlp
    if config.model == "ffnn":

        def init(key):
            k1, k2 = jax.random.split(key)
            w = config.width
            return {"w1": _glorot(k1, (784, w), 784, w), "b1": jnp.zeros(w), "w2": _glorot(k2, (w, 10), w, 10),
                    "b2": jnp.zeros(10)}  # fmt: skip

        def apply(p, x):
            return jax.nn.relu(x @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]

        return init, apply

    def init(key):
        k = jax.random.split(key, 4)
        return {
            "c1": _glorot(k[0], (5, 5, 1, 32), 25, 25 * 32), "d1": jnp.zeros(32),
            "c2": _glorot(k[1], (5, 5, 32, 64), 25 * 32, 25 * 64), "d2": jnp.zeros(64),
            "w1": _glorot(k[2], (3136, 1024), 3136, 1024), "b1": jnp.zeros(1024),
            "w2": _glorot(k[3], (1024, 10), 1024, 10), "b2": jnp.zeros(10),
        }  # fmt: skip

    def conv(x, w, b):
        dims = ("NHWC", "HWIO", "NHWC")
        return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=dims) + b

    def pool(x):
        return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "SAME")

    def apply(p, x):
        h = pool(conv(x.reshape(-1, 28, 28, 1), p["c1"], p["d1"]))  # no activation, as the reference
        h = pool(jax.nn.relu(conv(h, p["c2"], p["d2"])))
        h = jax.nn.relu(h.reshape(len(h), -1) @ p["w1"] + p["b1"])
        return h @ p["w2"] + p["b2"]

    return init, apply


def batch_order(n: int, batch_size: int, steps: int, rng: np.random.Generator) -> jax.Array:
    """``(steps, batch_size)`` row indices: epochs of fresh permutations cut into minibatches."""
    per_epoch = n // batch_size
    epochs = -(-steps // per_epoch)
    order = np.concatenate([rng.permutation(n)[: per_epoch * batch_size] for _ in range(epochs)])
    return jnp.asarray(order.reshape(-1, batch_size)[:steps].astype(np.int32))


def accuracy_fn(apply, x, y, chunk: int = 1000):
    """``params -> accuracy`` on ``(x, y)``, in chunks (a CNN on 10,000 images at once takes gigabytes)."""
    n = len(x)
    size = chunk if n % chunk == 0 else n

    def accuracy(params):
        xs, ys = x.reshape(n // size, size, -1), y.reshape(n // size, size)
        hits = jax.lax.map(lambda b: jnp.sum(jnp.argmax(apply(params, b[0]), -1) == b[1]), (xs, ys))
        return jnp.sum(hits) / n

    return accuracy


def counting(inner: hg.optim.Optimizer) -> hg.optim.Optimizer:
    """``inner`` on ``params["net"]``, and ``params["t"]`` counting the steps (how E finds its minibatch)."""

    def init(params, hparams):
        return inner.init(params["net"], hparams)

    def update(grads, state, params, hparams, step):
        net, state = inner.update(grads["net"], state, params["net"], hparams, step)
        return {"net": net, "t": params["t"] + 1}, state

    return hg.optim.Optimizer(init, update)


def make_problem(config, apply, init, inner) -> hg.BilevelProblem:
    """Training on ``train_data(step)``; E the cross-entropy on ``val_data = (x, y, order)``'s minibatch number
    ``params["t"]`` (the steps done)."""

    def train_loss(p, hp, batch):
        return cross_entropy(apply(p["net"], batch[0]), batch[1])

    def val_loss(p, hp, val):
        x, y, order = val
        rows = order[jax.lax.stop_gradient(p["t"]).astype(jnp.int32)]
        return cross_entropy(apply(p["net"], x[rows]), y[rows])

    return hg.BilevelProblem(
        init=lambda hp, key: {"net": init(key), "t": jnp.zeros((), jnp.float32)},
        train_loss=train_loss,
        val_loss=val_loss,
        optimizer=counting(inner),
    )
