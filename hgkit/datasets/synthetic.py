"""Small synthetic data sets for tests and classroom demos, each a pure function of an explicit seed.

Every generator returns a :class:`~hgkit.datasets.Split` (train / validation / test, inputs as rows) with what
generated it, so a test can compare against the truth:

- :func:`noisy_linear_regression`: ``y = x w + σ ε``, with :func:`ridge_solution` the exact minimiser of the
  ridge objective (the closed form a hypergradient of the L2 penalty can be checked against);
- :func:`gaussian_blobs`: classes as Gaussian clouds, optionally with a chosen fraction of training labels flipped
  to another class (the hyper-cleaning setting in miniature), returning which ones;
- :func:`curve_regression`: noisy samples of the 1-D curve :func:`nonlinear_curve`, with a dense noiseless grid
  for plots.

The seed is split with ``numpy.random.SeedSequence`` into one stream per part (truth, train, validation, test), so
each part depends only on the seed and its own size: asking for a larger test set leaves the training set as it was.

Example:
    >>> import numpy as np
    >>> from hgkit.datasets import gaussian_blobs, noisy_linear_regression, ridge_solution
    >>> data = noisy_linear_regression(seed=0, n_train=200, n_features=3, noise=0.0, dtype=np.float64)
    >>> bool(np.allclose(ridge_solution(data.split.x_train, data.split.y_train, l2=0.0), data.weights))
    True
    >>> blobs = gaussian_blobs(seed=0, n_train=100, flip_fraction=0.2)
    >>> blobs.split.x_train.shape, int(blobs.flipped.sum())
    ((100, 2), 20)
"""

from __future__ import annotations

from numbers import Integral, Real
from typing import NamedTuple

import numpy as np

from .mnist import Split, corrupt_labels


class LinearRegressionData(NamedTuple):
    """The split, the true weights ``w`` (n_features,) and the noise scale ``σ`` of ``y = x w + σ ε``."""

    split: Split  # the train / validation / test split
    weights: np.ndarray  # (n_features,): the true weights w
    noise: float  # σ, the noise scale


class BlobsData(NamedTuple):
    """The split, the class centres (num_classes, n_features), and the mask of flipped training labels."""

    split: Split  # the train / validation / test split
    centers: np.ndarray  # (num_classes, n_features): the class centres
    flipped: np.ndarray  # (n_train,) bool: which training labels were flipped


class CurveData(NamedTuple):
    """The split (x as (n, 1) columns, y as (n,)) and the noiseless curve on an evenly spaced grid, for plots."""

    split: Split  # the train / validation / test split (x as (n, 1) columns, y as (n,))
    x_grid: np.ndarray  # an evenly spaced grid of inputs, for plots
    y_grid: np.ndarray  # the noiseless curve on that grid


def _streams(seed, fn: str, n: int) -> list[np.random.Generator]:
    if isinstance(seed, bool) or not isinstance(seed, Integral) or seed < 0:
        raise ValueError(f"{fn}: seed must be a non-negative int; got {seed!r}")
    return [np.random.default_rng(s) for s in np.random.SeedSequence(int(seed)).spawn(n)]


def _split(draw, streams, sizes) -> Split:
    """The three parts, each ``draw(rng, n) -> (x, y)`` from its own stream."""
    (xt, yt), (xv, yv), (xs, ys) = (draw(rng, n) for rng, n in zip(streams, sizes, strict=True))
    return Split(xt, yt, xv, yv, xs, ys)


def _check(fn: str, **sizes) -> None:
    for name, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
            raise ValueError(f"{fn}: {name} must be a positive int; got {value!r}")


def _check_nonnegative(fn: str, name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, Real) or not value >= 0:
        raise ValueError(f"{fn}: {name} must be a non-negative number; got {value!r}")


def noisy_linear_regression(
    seed: int,
    n_train: int = 50,
    n_val: int = 50,
    n_test: int = 200,
    n_features: int = 5,
    noise: float = 0.1,
    dtype=np.float32,
) -> LinearRegressionData:
    """Linear regression ``y = x w + σ ε`` with ``x, w, ε`` standard normal: a ridge problem with a closed form.

    Returns:
        :class:`LinearRegressionData` with ``x_*`` of shape (n, n_features) and ``y_*`` of shape (n,), in ``dtype``.
    """
    fn = "noisy_linear_regression"
    _check(fn, n_train=n_train, n_val=n_val, n_test=n_test, n_features=n_features)
    _check_nonnegative(fn, "noise", noise)
    truth, *parts = _streams(seed, fn, 4)
    w = truth.standard_normal(n_features)

    def draw(rng, n):
        x = rng.standard_normal((n, n_features))
        return x.astype(dtype), (x @ w + noise * rng.standard_normal(n)).astype(dtype)

    return LinearRegressionData(_split(draw, parts, (n_train, n_val, n_test)), w.astype(dtype), float(noise))


def ridge_solution(x, y, l2) -> np.ndarray:
    r"""The exact minimiser of the ridge objective with a mean squared error.

    .. math::
        w^\star(\lambda) = \arg\min_w \frac{1}{2n}\lVert x w - y\rVert^2 + \frac{\lambda}{2}\lVert w\rVert^2
        = \Big(\frac{x^\top x}{n} + \lambda I\Big)^{-1} \frac{x^\top y}{n},

    and :math:`\partial w^\star/\partial\lambda = -(x^\top x/n + \lambda I)^{-1} w^\star` (differentiating the
    normal equations), the closed form a hypergradient of the penalty can be checked against.
    Computed in ``x``'s dtype (NumPy), by a linear solve.
    """
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim != 2 or y.shape != (x.shape[0],):
        raise ValueError(f"ridge_solution: expected x of shape (n, d) and y of shape (n,); got {x.shape} and {y.shape}")
    _check_nonnegative("ridge_solution", "l2", l2)
    n, d = x.shape
    return np.linalg.solve(x.T @ x / n + l2 * np.eye(d, dtype=x.dtype), x.T @ y / n)


def gaussian_blobs(
    seed: int,
    n_train: int = 200,
    n_val: int = 200,
    n_test: int = 500,
    num_classes: int = 3,
    n_features: int = 2,
    separation: float = 3.0,
    spread: float = 1.0,
    flip_fraction: float = 0.0,
    dtype=np.float32,
) -> BlobsData:
    """Classification: ``num_classes`` Gaussian clouds of standard deviation ``spread``.

    The centres lie evenly on a circle of radius ``separation`` in the first two coordinates (at a seeded random
    phase; the other coordinates are 0), so neighbouring classes are ``2 separation sin(π / num_classes)`` apart.
    Each part has the classes in equal shares (up to one example), in random order. With ``flip_fraction > 0``,
    exactly ``round(flip_fraction * n_train)`` training labels are changed, each to a random *different* class
    (:func:`~hgkit.datasets.corrupt_labels`); validation and test labels stay clean.

    Returns:
        :class:`BlobsData`: ``x_*`` (n, n_features) in ``dtype``, int32 labels, the centres, and ``flipped``
        (n_train,) bool, True where a training label was changed.
    """
    fn = "gaussian_blobs"
    _check(fn, n_train=n_train, n_val=n_val, n_test=n_test, num_classes=num_classes, n_features=n_features)
    if num_classes < 2 or n_features < 2:
        raise ValueError(f"{fn}: num_classes and n_features must be at least 2; got {num_classes} and {n_features}")
    _check_nonnegative(fn, "separation", separation)
    _check_nonnegative(fn, "spread", spread)
    if isinstance(flip_fraction, bool) or not isinstance(flip_fraction, Real) or not 0 <= flip_fraction <= 1:
        raise ValueError(f"{fn}: flip_fraction must be a number in [0, 1]; got {flip_fraction!r}")
    truth, flips, *parts = _streams(seed, fn, 5)
    angles = truth.uniform(0, 2 * np.pi) + 2 * np.pi * np.arange(num_classes) / num_classes
    centers = np.zeros((num_classes, n_features))
    centers[:, 0], centers[:, 1] = separation * np.cos(angles), separation * np.sin(angles)

    def draw(rng, n):
        y = rng.permutation(np.arange(n) % num_classes)
        x = centers[y] + spread * rng.standard_normal((n, n_features))
        return x.astype(dtype), y.astype(np.int32)

    split = _split(draw, parts, (n_train, n_val, n_test))
    n_flip = int(round(flip_fraction * n_train))
    y_train, flipped = corrupt_labels(split.y_train, n_flip, num_classes, seed=int(flips.integers(2**63)))
    return BlobsData(split._replace(y_train=y_train), centers.astype(dtype), flipped)


def nonlinear_curve(x) -> np.ndarray:
    """The curve of :func:`curve_regression`: ``sin(1.5 x) + 0.3 x``, elementwise."""
    x = np.asarray(x)
    return np.sin(1.5 * x) + 0.3 * x


def curve_regression(
    seed: int,
    n_train: int = 30,
    n_val: int = 30,
    n_test: int = 200,
    noise: float = 0.2,
    x_range: tuple[float, float] = (-3.0, 3.0),
    n_grid: int = 200,
    dtype=np.float32,
) -> CurveData:
    """1-D nonlinear regression for classroom plots: ``y = nonlinear_curve(x) + noise ε``, x uniform in ``x_range``.

    Few noisy training points and a smooth curve make over- and under-fitting visible, e.g. for tuning a
    regularisation strength by hypergradient on the validation points.

    Returns:
        :class:`CurveData`: ``x_*`` of shape (n, 1) and ``y_*`` of shape (n,) in ``dtype``, and the noiseless
        curve on ``n_grid`` evenly spaced points of ``x_range`` (``x_grid`` (n_grid, 1), ``y_grid`` (n_grid,)).
    """
    fn = "curve_regression"
    _check(fn, n_train=n_train, n_val=n_val, n_test=n_test, n_grid=n_grid)
    _check_nonnegative(fn, "noise", noise)
    low, high = x_range
    if not low < high:
        raise ValueError(f"{fn}: x_range must be (low, high) with low < high; got {x_range!r}")
    parts = _streams(seed, fn, 3)

    def draw(rng, n):
        x = rng.uniform(low, high, size=(n, 1))
        return x.astype(dtype), (nonlinear_curve(x[:, 0]) + noise * rng.standard_normal(n)).astype(dtype)

    grid = np.linspace(low, high, n_grid)
    split = _split(draw, parts, (n_train, n_val, n_test))
    return CurveData(split, grid[:, None].astype(dtype), nonlinear_curve(grid).astype(dtype))
