"""The packaged MNIST split and the label corruption of the hyper-cleaning experiment."""

from __future__ import annotations

import numpy as np
import pytest
from shared_data import SHARED_MNIST

from hgkit.datasets import corrupt_labels, hyper_cleaning_mnist, make_hyper_cleaning_split
from hgkit.datasets.mnist import packaged_split_arrays


def test_packaged_split_has_the_papers_sizes_and_is_disjoint():
    raw = packaged_split_arrays()
    assert raw["x_train"].shape == (5000, 28, 28) and raw["x_train"].dtype == np.uint8
    assert raw["x_val"].shape == (5000, 28, 28) and raw["x_test"].shape == (10000, 28, 28)
    assert not set(raw["train_index"]) & set(raw["val_index"])
    # Every digit is present in each part, in roughly MNIST's proportions (no class is under 7%).
    for y in (raw["y_train"], raw["y_val"], raw["y_test"]):
        counts = np.bincount(y, minlength=10)
        assert counts.min() > 0.07 * len(y) and counts.max() < 0.13 * len(y)


def test_loader_scales_and_flattens():
    split = hyper_cleaning_mnist(np.float64)
    assert split.x_train.shape == (5000, 784) and split.x_train.dtype == np.float64
    assert split.x_train.min() == 0.0 and split.x_train.max() == 1.0
    assert split.y_test.dtype == np.int32 and set(np.unique(split.y_test)) == set(range(10))


@pytest.mark.skipif(not SHARED_MNIST.exists(), reason=f"the full MNIST source {SHARED_MNIST} is not beside the project")
def test_packaged_split_is_reproducible_from_the_full_mnist():
    with np.load(SHARED_MNIST) as d:
        rebuilt = make_hyper_cleaning_split(d["x_train"], d["y_train"], d["x_test"], d["y_test"])
    packaged = packaged_split_arrays()
    assert set(rebuilt) == set(packaged)
    for k in packaged:
        np.testing.assert_array_equal(rebuilt[k], packaged[k], err_msg=k)


def test_corrupt_labels_changes_exactly_the_chosen_ones_to_other_classes():
    y = np.random.default_rng(1).integers(0, 10, size=1000)
    noisy, mask = corrupt_labels(y, n_corrupt=400, num_classes=10, seed=3)
    assert mask.sum() == 400
    assert (noisy[mask] != y[mask]).all() and (noisy[~mask] == y[~mask]).all()
    assert set(np.unique(noisy)) <= set(range(10))
    # The new classes are spread over all the other classes, not a fixed shift.
    assert len(np.unique((noisy[mask] - y[mask]) % 10)) == 9
    again, _ = corrupt_labels(y, n_corrupt=400, num_classes=10, seed=3)
    np.testing.assert_array_equal(noisy, again)
    with pytest.raises(ValueError, match="n_corrupt must be between 0 and 1000"):
        corrupt_labels(y, n_corrupt=1001, num_classes=10, seed=0)
