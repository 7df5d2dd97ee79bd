"""Synthetic data sets: shapes, determinism per seed, exact label flips, recoverable ground truth."""

from __future__ import annotations

import numpy as np
import pytest

from hgkit.datasets import (
    curve_regression,
    gaussian_blobs,
    noisy_linear_regression,
    nonlinear_curve,
    ridge_solution,
)

GENERATORS = [
    (noisy_linear_regression, {"n_features": 4}),
    (gaussian_blobs, {"num_classes": 4, "n_features": 3, "flip_fraction": 0.3}),
    (curve_regression, {}),
]


def assert_same(a, b):
    for x, y in zip(a.split, b.split, strict=True):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("make, kwargs", GENERATORS, ids=lambda g: getattr(g, "__name__", ""))
def test_each_generator_is_a_pure_function_of_its_seed(make, kwargs):
    a, b, c = make(seed=3, **kwargs), make(seed=3, **kwargs), make(seed=4, **kwargs)
    assert_same(a, b)
    for x, y in zip(a[1:], b[1:], strict=True):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a.split.x_train, c.split.x_train)
    # Each part has its own stream: a larger test set leaves the training and validation sets as they were.
    bigger = make(seed=3, n_test=7, **kwargs)
    np.testing.assert_array_equal(bigger.split.x_train, a.split.x_train)
    np.testing.assert_array_equal(bigger.split.y_val, a.split.y_val)
    assert len(bigger.split.x_test) == 7


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_shapes_and_dtypes(dtype):
    lin = noisy_linear_regression(0, n_train=11, n_val=12, n_test=13, n_features=3, dtype=dtype).split
    assert [a.shape for a in lin] == [(11, 3), (11,), (12, 3), (12,), (13, 3), (13,)]
    assert all(a.dtype == dtype for a in lin)
    blobs = gaussian_blobs(0, n_train=11, n_val=12, n_test=13, num_classes=4, n_features=5, dtype=dtype)
    assert [a.shape for a in blobs.split] == [(11, 5), (11,), (12, 5), (12,), (13, 5), (13,)]
    assert blobs.split.x_train.dtype == dtype and blobs.split.y_train.dtype == np.int32
    assert blobs.centers.shape == (4, 5) and blobs.flipped.shape == (11,) and not blobs.flipped.any()
    curve = curve_regression(0, n_train=11, n_val=12, n_test=13, n_grid=50, dtype=dtype)
    assert [a.shape for a in curve.split] == [(11, 1), (11,), (12, 1), (12,), (13, 1), (13,)]
    assert curve.x_grid.shape == (50, 1) and curve.y_grid.shape == (50,) and curve.y_grid.dtype == dtype


def test_linear_regression_ground_truth_is_recovered():
    exact = noisy_linear_regression(1, n_train=20, n_features=6, noise=0.0, dtype=np.float64)
    s = exact.split
    np.testing.assert_allclose(ridge_solution(s.x_train, s.y_train, 0.0), exact.weights, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(s.x_test @ exact.weights, s.y_test, rtol=1e-12, atol=1e-12)
    # With noise σ the least-squares error is about σ sqrt(d / n) per coordinate: 0.5 sqrt(1/4000) ≈ 0.008.
    noisy = noisy_linear_regression(1, n_train=4000, n_features=6, noise=0.5, dtype=np.float64)
    w = ridge_solution(noisy.split.x_train, noisy.split.y_train, 0.0)
    assert np.abs(w - noisy.weights).max() < 0.04
    residual = noisy.split.y_train - noisy.split.x_train @ noisy.weights
    assert 0.48 < residual.std() < 0.52  # 4000 draws: the std of the std is about 0.006


def test_ridge_solution_is_the_minimiser_and_its_derivative_the_closed_form():
    s = noisy_linear_regression(2, n_train=30, n_features=4, noise=0.3, dtype=np.float64).split
    x, y, n, l2 = s.x_train, s.y_train, len(s.x_train), 0.7
    w = ridge_solution(x, y, l2)
    gradient = x.T @ (x @ w - y) / n + l2 * w  # of (1/2n)|xw - y|^2 + (l2/2)|w|^2
    assert np.abs(gradient).max() < 1e-12
    # The documented derivative in the penalty against central differences.
    h = 1e-5
    numeric = (ridge_solution(x, y, l2 + h) - ridge_solution(x, y, l2 - h)) / (2 * h)
    closed = -np.linalg.solve(x.T @ x / n + l2 * np.eye(4), w)
    np.testing.assert_allclose(numeric, closed, rtol=1e-7)
    with pytest.raises(
        ValueError, match=r"expected x of shape \(n, d\) and y of shape \(n,\); got \(30, 4\) and \(29,\)"
    ):
        ridge_solution(x, y[:-1], l2)
    with pytest.raises(ValueError, match="l2 must be a non-negative number; got -1"):
        ridge_solution(x, y, -1)


@pytest.mark.parametrize("fraction, expected", [(0.0, 0), (0.25, 50), (0.333, 67), (1.0, 200)])
def test_blob_label_flips_are_exact_and_only_where_the_mask_says(fraction, expected):
    clean = gaussian_blobs(5, n_train=200, num_classes=3)
    noisy = gaussian_blobs(5, n_train=200, num_classes=3, flip_fraction=fraction)
    np.testing.assert_array_equal(noisy.split.x_train, clean.split.x_train)
    mask = noisy.flipped
    assert mask.dtype == bool and mask.sum() == expected
    assert (noisy.split.y_train[mask] != clean.split.y_train[mask]).all()
    np.testing.assert_array_equal(noisy.split.y_train[~mask], clean.split.y_train[~mask])
    np.testing.assert_array_equal(noisy.split.y_val, clean.split.y_val)  # only training labels are touched


def test_blobs_are_balanced_and_centred_where_reported():
    data = gaussian_blobs(6, n_train=3000, n_val=10, n_test=10, num_classes=3, n_features=4, separation=5.0)
    s = data.split
    assert np.bincount(s.y_train).tolist() == [1000, 1000, 1000]
    for c in range(3):
        np.testing.assert_allclose(s.x_train[s.y_train == c].mean(0), data.centers[c], atol=0.15)
    assert np.allclose(np.linalg.norm(data.centers, axis=1), 5.0, rtol=1e-6) and not data.centers[:, 2:].any()
    # Neighbours on the circle are 2 R sin(pi / k) apart.
    gaps = np.linalg.norm(data.centers - np.roll(data.centers, 1, axis=0), axis=1)
    np.testing.assert_allclose(gaps, 2 * 5.0 * np.sin(np.pi / 3), rtol=1e-6)


def test_curve_data_follow_the_curve_with_the_stated_noise():
    data = curve_regression(7, n_train=2000, noise=0.2, x_range=(-2.0, 4.0), dtype=np.float64)
    s = data.split
    assert s.x_train.min() >= -2.0 and s.x_train.max() <= 4.0
    residual = s.y_train - nonlinear_curve(s.x_train[:, 0])
    assert abs(residual.mean()) < 0.02 and 0.19 < residual.std() < 0.21
    np.testing.assert_allclose(data.x_grid[[0, -1], 0], [-2.0, 4.0])
    np.testing.assert_allclose(data.y_grid, np.sin(1.5 * data.x_grid[:, 0]) + 0.3 * data.x_grid[:, 0])


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: noisy_linear_regression(1.5), "noisy_linear_regression: seed must be a non-negative int; got 1.5"),
        (lambda: noisy_linear_regression(0, n_train=0), "n_train must be a positive int; got 0"),
        (lambda: noisy_linear_regression(0, noise=-0.1), "noise must be a non-negative number; got -0.1"),
        (lambda: gaussian_blobs(0, flip_fraction=1.5), r"flip_fraction must be a number in \[0, 1\]; got 1.5"),
        (lambda: gaussian_blobs(0, num_classes=1), "num_classes and n_features must be at least 2; got 1 and 2"),
        (lambda: gaussian_blobs(True), "seed must be a non-negative int; got True"),
        (lambda: curve_regression(0, x_range=(1.0, 1.0)), r"x_range must be \(low, high\) with low < high"),
    ],
)
def test_bad_arguments_are_named(call, message):
    with pytest.raises(ValueError, match=message):
        call()
