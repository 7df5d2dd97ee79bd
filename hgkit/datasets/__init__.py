"""Data sets: the packaged MNIST split of the paper's hyper-cleaning experiment and its label corruption, full MNIST
and Fashion-MNIST from their mirrors (verified, cached) or from IDX files at hand."""

from .download import (
    FASHION_MNIST,
    MNIST,
    DownloadError,
    Manifest,
    RemoteFile,
    default_cache_dir,
    load_fashion_mnist,
    load_mnist,
    load_remote_dataset,
)
from .idx import ChecksumError, IdxFormatError, TrainTestArrays, encode_idx, load_idx_folder, parse_idx
from .mnist import Split, corrupt_labels, hyper_cleaning_mnist, make_hyper_cleaning_split

__all__ = [
    "FASHION_MNIST",
    "MNIST",
    "ChecksumError",
    "DownloadError",
    "IdxFormatError",
    "Manifest",
    "RemoteFile",
    "Split",
    "TrainTestArrays",
    "corrupt_labels",
    "default_cache_dir",
    "encode_idx",
    "hyper_cleaning_mnist",
    "load_fashion_mnist",
    "load_idx_folder",
    "load_mnist",
    "load_remote_dataset",
    "make_hyper_cleaning_split",
    "parse_idx",
]
