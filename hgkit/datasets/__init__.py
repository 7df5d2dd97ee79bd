"""Data sets: the packaged MNIST split of the paper's hyper-cleaning experiment and its label corruption, full MNIST
and Fashion-MNIST from their mirrors (verified, cached) or from IDX files at hand, and small synthetic sets."""

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
from .synthetic import (
    BlobsData,
    CurveData,
    LinearRegressionData,
    curve_regression,
    gaussian_blobs,
    noisy_linear_regression,
    nonlinear_curve,
    ridge_solution,
)

__all__ = [
    "FASHION_MNIST",
    "MNIST",
    "BlobsData",
    "ChecksumError",
    "CurveData",
    "DownloadError",
    "IdxFormatError",
    "LinearRegressionData",
    "Manifest",
    "RemoteFile",
    "Split",
    "TrainTestArrays",
    "corrupt_labels",
    "curve_regression",
    "default_cache_dir",
    "encode_idx",
    "gaussian_blobs",
    "hyper_cleaning_mnist",
    "load_fashion_mnist",
    "load_idx_folder",
    "load_mnist",
    "load_remote_dataset",
    "make_hyper_cleaning_split",
    "noisy_linear_regression",
    "nonlinear_curve",
    "parse_idx",
    "ridge_solution",
]
