"""Data sets: the packaged MNIST split of the paper's hyper-cleaning experiment, and its label corruption."""

from .mnist import Split, corrupt_labels, hyper_cleaning_mnist, make_hyper_cleaning_split

__all__ = ["Split", "corrupt_labels", "hyper_cleaning_mnist", "make_hyper_cleaning_split"]
