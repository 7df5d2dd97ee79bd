"""The IDX file format of MNIST and Fashion-MNIST: a strict parser, a writer, and a folder loader.

An IDX file is a 4-byte magic number ``00 00 <dtype code> <ndim>``, then ``ndim`` big-endian uint32 sizes, then
the array's elements, big-endian, in C order; nothing else. The parser checks every part of that (the two zero
bytes, a known dtype code, at least one dimension, a payload of exactly ``prod(sizes) * itemsize`` bytes), so a
truncated, padded or wrong file fails loudly with the file's name rather than giving a silently wrong array.

Example:
    >>> import gzip, tempfile
    >>> from pathlib import Path
    >>> import numpy as np
    >>> from hgkit.datasets import encode_idx, load_idx_folder, parse_idx
    >>> images = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28)
    >>> data = encode_idx(images)
    >>> data[:4].hex(), len(data)  # magic 00 00 08 (uint8) 03 (three dims), 3 sizes, then 1568 bytes
    ('00000803', 1584)
    >>> bool((parse_idx(data) == images).all())
    True
    >>> folder = Path(tempfile.mkdtemp())
    >>> for name, a in [("train-images-idx3-ubyte", images), ("train-labels-idx1-ubyte", np.uint8([3, 1])),
    ...                 ("t10k-images-idx3-ubyte", images[:1]), ("t10k-labels-idx1-ubyte", np.uint8([7]))]:
    ...     _ = (folder / f"{name}.gz").write_bytes(gzip.compress(encode_idx(a)))  # gzipped or not, both load
    >>> arrays = load_idx_folder(folder)
    >>> arrays.x_train.shape, arrays.y_train.tolist(), arrays.x_test.shape, arrays.y_test.tolist()
    ((2, 28, 28), [3, 1], (1, 28, 28), [7])
"""

from __future__ import annotations

import gzip
import hashlib
import os
import zlib
from pathlib import Path
from typing import NamedTuple

import numpy as np

# The IDX dtype codes (third byte of the magic number), each stored big-endian.
IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_CODES = {dt.newbyteorder("="): code for code, dt in IDX_DTYPES.items()}

# The four files of MNIST and Fashion-MNIST (the same names for both), keyed by the array each holds.
STANDARD_NAMES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}


class IdxFormatError(ValueError):
    """A file is not a valid IDX file, or not the IDX file that was expected."""


class ChecksumError(ValueError):
    """Bytes whose sha256 is not the one recorded for them."""


class TrainTestArrays(NamedTuple):
    """A data set as its four arrays, in the layout of ``mnist.npz``: images (n, 28, 28) uint8, labels (n,) uint8."""

    x_train: np.ndarray  # (n_train, 28, 28) uint8: the training images
    y_train: np.ndarray  # (n_train,) uint8: their labels
    x_test: np.ndarray  # (n_test, 28, 28) uint8: the test images
    y_test: np.ndarray  # (n_test,) uint8: their labels


def parse_idx(data: bytes, source: str = "<bytes>") -> np.ndarray:
    """The array an IDX file holds, in native byte order; :class:`IdxFormatError` naming ``source`` if malformed."""
    if len(data) < 4:
        raise IdxFormatError(f"{source}: an IDX file starts with a 4-byte magic number; got only {len(data)} bytes")
    zero, code, ndim = int.from_bytes(data[:2], "big"), data[2], data[3]
    if zero != 0:
        raise IdxFormatError(
            f"{source}: an IDX magic number starts with two zero bytes; got {data[:4].hex()} (not an IDX file,"
            " or still compressed)"
        )
    if code not in IDX_DTYPES:
        known = ", ".join(f"0x{c:02X} ({d.name})" for c, d in IDX_DTYPES.items())
        raise IdxFormatError(f"{source}: unknown IDX dtype code 0x{code:02X}; expected one of {known}")
    if ndim == 0:
        raise IdxFormatError(f"{source}: an IDX file has at least one dimension; the magic number says 0")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise IdxFormatError(f"{source}: the header of {ndim} dimensions needs {header} bytes; got {len(data)}")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = IDX_DTYPES[code]
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        raise IdxFormatError(
            f"{source}: an IDX array of shape {shape} and dtype {dtype.name} takes {expected} bytes with its header;"
            f" the file has {len(data)} ({'truncated' if len(data) < expected else 'trailing bytes'})"
        )
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def encode_idx(array) -> bytes:
    """The IDX bytes of ``array`` (uint8, int8, int16, int32, float32 or float64, at most 255 dimensions)."""
    array = np.asarray(array)
    native = array.dtype.newbyteorder("=")
    if native not in _CODES:
        raise IdxFormatError(f"encode_idx: IDX holds uint8, int8, int16, int32, float32 or float64; got {array.dtype}")
    if not 1 <= array.ndim <= 255:
        raise IdxFormatError(f"encode_idx: IDX holds 1 to 255 dimensions; got {array.ndim}")
    header = bytes([0, 0, _CODES[native], array.ndim]) + b"".join(n.to_bytes(4, "big") for n in array.shape)
    return header + np.ascontiguousarray(array, dtype=IDX_DTYPES[_CODES[native]]).tobytes()


def gunzip(data: bytes, source: str) -> bytes:
    """Decompressed gzip bytes; a clear :class:`IdxFormatError` naming ``source`` if truncated or not gzip."""
    try:
        return gzip.decompress(data)
    except EOFError as e:
        raise IdxFormatError(f"{source}: truncated gzip file ({len(data)} bytes; {e})") from None
    except (gzip.BadGzipFile, zlib.error) as e:
        raise IdxFormatError(f"{source}: not a valid gzip file ({e})") from None


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_sha256(actual: str, expected: str, source: str, what: str) -> None:
    """:class:`ChecksumError` naming ``source``, ``what`` was hashed, and both digests, unless they agree."""
    if actual != expected:
        raise ChecksumError(
            f"{source}: sha256 of {what} is {actual}, expected {expected} (corrupt, truncated or a different file)"
        )


def read_idx_file(path: str | os.PathLike) -> tuple[np.ndarray, str]:
    """The array of an IDX file (gunzipped first if its name ends in ``.gz``) and the sha256 of its IDX bytes."""
    path = Path(path)
    data = path.read_bytes()
    if path.suffix == ".gz":
        data = gunzip(data, str(path))
    return parse_idx(data, str(path)), sha256_hex(data)


def check_images_and_labels(arrays: TrainTestArrays, source: str) -> TrainTestArrays:
    """Images are (n, h, w) uint8, labels (n,) uint8, as many labels as images in each part."""
    for part in ("train", "test"):
        x, y = getattr(arrays, f"x_{part}"), getattr(arrays, f"y_{part}")
        if x.ndim != 3 or x.dtype != np.uint8 or y.ndim != 1 or y.dtype != np.uint8:
            raise IdxFormatError(
                f"{source}: expected {part} images of shape (n, h, w) and labels of shape (n,), both uint8; got"
                f" images {x.shape} {x.dtype} and labels {y.shape} {y.dtype}"
            )
        if len(x) != len(y):
            raise IdxFormatError(f"{source}: {len(x)} {part} images but {len(y)} {part} labels")
    return arrays


def load_idx_folder(path: str | os.PathLike, expected_sha256: dict[str, str] | None = None) -> TrainTestArrays:
    """The four standard IDX files of a folder, each gzipped (``name.gz``) or not (``name``).

    Args:
        path: a folder holding ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
            ``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte``, each possibly with ``.gz``: MNIST or
            Fashion-MNIST as their sites distribute them.
        expected_sha256: optionally, ``{"x_train": sha256, ...}`` of the *decompressed* IDX bytes of each file
            (e.g. ``MNIST.payload_sha256()``), checked before anything is returned.

    Returns:
        :class:`TrainTestArrays` of uint8 arrays.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"load_idx_folder: path must be a folder of IDX files; {folder} is not a folder")
    found = {}
    for key, name in STANDARD_NAMES.items():  # all four located before any is read: a missing one fails fast
        found[key] = next((p for p in (folder / name, folder / f"{name}.gz") if p.is_file()), None)
        if found[key] is None:
            present = sorted(p.name for p in folder.iterdir())
            raise FileNotFoundError(
                f"load_idx_folder: {folder} has neither {name} nor {name}.gz; it holds {present or 'nothing'}"
            )
    arrays = {}
    for key, file in found.items():
        arrays[key], digest = read_idx_file(file)
        if expected_sha256 is not None:
            check_sha256(digest, expected_sha256[key], str(file), "the decompressed IDX bytes")
    return check_images_and_labels(TrainTestArrays(**arrays), str(folder))
