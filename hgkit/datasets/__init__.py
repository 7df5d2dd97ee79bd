"""Data sets: the packaged MNIST split of the paper's hyper-cleaning experiment and its label corruption, full MNIST
and Fashion-MNIST from their mirrors (verified, cached) or from IDX files at hand, small synthetic sets, and the
packaged Omniglot subset with its split by alphabet, a jittable few-shot episode sampler and Lake's one-shot runs."""

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
from .omniglot_episodes import (
    OMNIGLOT_VALIDATION,
    Episode,
    EpisodeSampler,
    Omniglot,
    OneShotRuns,
    build_omniglot,
    episodes,
    omniglot,
    omniglot_split,
)
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
    "OMNIGLOT_VALIDATION",
    "BlobsData",
    "ChecksumError",
    "CurveData",
    "DownloadError",
    "Episode",
    "EpisodeSampler",
    "IdxFormatError",
    "LinearRegressionData",
    "Manifest",
    "Omniglot",
    "OneShotRuns",
    "RemoteFile",
    "Split",
    "TrainTestArrays",
    "build_omniglot",
    "corrupt_labels",
    "curve_regression",
    "default_cache_dir",
    "encode_idx",
    "episodes",
    "gaussian_blobs",
    "hyper_cleaning_mnist",
    "load_fashion_mnist",
    "load_idx_folder",
    "load_mnist",
    "load_remote_dataset",
    "make_hyper_cleaning_split",
    "noisy_linear_regression",
    "nonlinear_curve",
    "omniglot",
    "omniglot_split",
    "parse_idx",
    "ridge_solution",
]
