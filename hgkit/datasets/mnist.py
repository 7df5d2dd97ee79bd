"""MNIST for the paper's data hyper-cleaning experiment, packaged so it runs offline.

The package carries the split of Franceschi et al. (2017, §5.1): 5,000 training and 5,000 validation images
drawn without replacement from the 60,000 MNIST training images with ``numpy.random.default_rng(0)``, and the
10,000 test images, as compressed uint8 (``data/mnist_hyper_cleaning.npz``; licence and attribution in
``data/ATTRIBUTION.md``). :func:`make_hyper_cleaning_split` rebuilds it from a full MNIST file.

Example:
    >>> from hgkit.datasets import hyper_cleaning_mnist, corrupt_labels
    >>> split = hyper_cleaning_mnist()
    >>> split.x_train.shape, split.x_val.shape, split.x_test.shape
    ((5000, 784), (5000, 784), (10000, 784))
    >>> noisy, corrupted = corrupt_labels(split.y_train, n_corrupt=2500, num_classes=10, seed=0)
    >>> int(corrupted.sum()), bool((noisy[corrupted] != split.y_train[corrupted]).all())
    (2500, True)
"""

from __future__ import annotations

from importlib import resources
from typing import NamedTuple

import numpy as np

PACKAGED = "mnist_hyper_cleaning.npz"
SPLIT_SEED = 0
N_TRAIN = N_VAL = 5000


class Split(NamedTuple):
    """A train / validation / test split, inputs as rows (MNIST: images as rows of floats in [0, 1], int32 labels)."""

    x_train: np.ndarray  # (n_train, d): the training inputs, one per row
    y_train: np.ndarray  # (n_train,): their labels (or targets)
    x_val: np.ndarray  # (n_val, d): the validation inputs
    y_val: np.ndarray  # (n_val,): their labels
    x_test: np.ndarray  # (n_test, d): the test inputs
    y_test: np.ndarray  # (n_test,): their labels


def make_hyper_cleaning_split(x_train, y_train, x_test, y_test, seed: int = SPLIT_SEED) -> dict[str, np.ndarray]:
    """The paper's split from the full MNIST arrays (uint8 images): what the packaged file holds.

    The training and validation sets are disjoint draws from the 60,000 training images; the test set is the
    official one. ``train_index`` and ``val_index`` record where each image came from.
    """
    order = np.random.default_rng(seed).permutation(len(x_train))
    train_index, val_index = np.sort(order[:N_TRAIN]), np.sort(order[N_TRAIN : N_TRAIN + N_VAL])
    return {
        "x_train": x_train[train_index],
        "y_train": y_train[train_index],
        "x_val": x_train[val_index],
        "y_val": y_train[val_index],
        "x_test": x_test,
        "y_test": y_test,
        "train_index": train_index.astype(np.int32),
        "val_index": val_index.astype(np.int32),
    }


def packaged_split_arrays() -> dict[str, np.ndarray]:
    """The packaged file's arrays as stored (uint8 images 28×28, uint8 labels, int32 indices)."""
    with resources.files(__package__).joinpath("data", PACKAGED).open("rb") as f, np.load(f) as data:
        return {k: data[k] for k in data.files}


def hyper_cleaning_mnist(dtype=np.float32) -> Split:
    """The packaged 5,000 / 5,000 / 10,000 MNIST split, images as rows of ``dtype`` in [0, 1]."""
    raw = packaged_split_arrays()

    def images(x):
        return (x.reshape(len(x), -1) / np.asarray(255, dtype)).astype(dtype)

    return Split(
        images(raw["x_train"]),
        raw["y_train"].astype(np.int32),
        images(raw["x_val"]),
        raw["y_val"].astype(np.int32),
        images(raw["x_test"]),
        raw["y_test"].astype(np.int32),
    )


def corrupt_labels(labels, n_corrupt: int, num_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Change ``n_corrupt`` labels, chosen at random, each to a random *different* class.

    Returns the noisy labels and the boolean mask of the corrupted examples.
    """
    labels = np.asarray(labels)
    if not 0 <= n_corrupt <= len(labels):
        raise ValueError(f"n_corrupt must be between 0 and {len(labels)}; got {n_corrupt}")
    rng = np.random.default_rng(seed)
    which = rng.choice(len(labels), size=n_corrupt, replace=False)
    noisy = labels.copy()
    # An offset in 1..num_classes-1 added modulo num_classes never gives back the true class.
    noisy[which] = (labels[which] + rng.integers(1, num_classes, size=n_corrupt)) % num_classes
    mask = np.zeros(len(labels), dtype=bool)
    mask[which] = True
    return noisy, mask
