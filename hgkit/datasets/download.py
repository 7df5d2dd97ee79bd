"""Full MNIST and Fashion-MNIST from their public mirrors, checked by sha256 and kept in a cache folder.

Each data set is a :class:`Manifest`: its mirrors, tried in order, and its four files, each with two sha256
digests — of the file as the mirrors serve it (``sha256``) and of the decompressed IDX bytes (``payload_sha256``).
A file is written into the cache only after both digests and its IDX header have been checked: it is downloaded
to a temporary file in the cache folder, verified, then renamed into place (an atomic rename), so an interrupted or
corrupt download never leaves a file that a later call would trust. A mirror that is unreachable, answers with an
HTTP error, or serves a file that fails a check is skipped for the next one; when every mirror fails,
:class:`DownloadError` lists what each one said. Files already in the cache are re-verified on every load (hashing
costs far less than decompressing) and fetched again if they no longer match.

Where the digests come from (checked again here where a copy was at hand):

- MNIST ``sha256`` (the .gz files): tensorflow-datasets, ``tensorflow_datasets/url_checksums/mnist.txt``
  (for the cvdf-datasets mirror). torchvision (``torchvision/datasets/mnist.py``) lists MD5s of the same files
  and serves them from ossci-datasets and yann.lecun.com; the IDX payload check below holds whichever mirror
  answers.
- MNIST ``payload_sha256`` (decompressed IDX): computed here from the classic MNIST arrays (``mnist.npz``, see
  ``tests/test_download.py``, which recomputes them): a 16- or 8-byte header then the raw uint8 array; the same
  values appear in independent public projects that hash the decompressed official files.
- Fashion-MNIST ``sha256`` (the .gz files): tensorflow-datasets, ``url_checksums/fashion_mnist.txt`` (the Zalando
  S3 bucket); the GitHub copies in zalandoresearch/fashion-mnist ``data/fashion`` are the same files.
- Fashion-MNIST ``payload_sha256``: computed here from the official IDX files as Debian ships them (package
  ``dataset-fashion-mnist``, MIT; Debian re-gzipped them, so only the decompressed digests can be compared).

The cache folder is, in order of precedence: the ``cache_dir`` argument, the ``HGKIT_CACHE_DIR`` environment
variable, ``$XDG_CACHE_HOME/hgkit``, ``~/.cache/hgkit``; each data set goes in a subfolder named after it.

Example (needs internet on first use, so not run here)::

    from hgkit.datasets import load_mnist, make_hyper_cleaning_split
    x_train, y_train, x_test, y_test = load_mnist()          # uint8 (60000, 28, 28), (60000,), ...
    split = make_hyper_cleaning_split(x_train, y_train, x_test, y_test)   # the packaged split, rebuilt
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import logging
import os
import tempfile
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from urllib.parse import quote

import numpy as np

from .idx import (
    ChecksumError,
    IdxFormatError,
    TrainTestArrays,
    check_images_and_labels,
    check_sha256,
    gunzip,
    parse_idx,
    sha256_hex,
)

log = logging.getLogger(__name__)

CACHE_ENV = "HGKIT_CACHE_DIR"
USER_AGENT = "hgkit-datasets/0.1 (Python urllib)"
_CHUNK = 1 << 20


class DownloadError(RuntimeError):
    """No mirror gave a verified copy of a file. ``attempts`` holds ``(url, what went wrong)`` per mirror."""

    def __init__(self, dataset: str, filename: str, attempts: list[tuple[str, str]]):
        self.dataset, self.filename, self.attempts = dataset, filename, attempts
        lines = "\n".join(f"  - {url}: {reason}" for url, reason in attempts)
        super().__init__(
            f"could not get {filename} of {dataset} from any of its {len(attempts)} mirror(s); nothing was written"
            f" to the cache. What each mirror gave:\n{lines}"
        )


@dataclass(frozen=True)
class RemoteFile:
    """One file of a data set as its mirrors serve it.

    ``name`` is the file name on every mirror (``.gz`` means gzip); ``sha256`` the digest of those bytes (``None``
    where no trustworthy value is known: then only the payload is checked); ``payload_sha256`` the digest of the
    IDX bytes after decompression; ``shape`` the array's shape.
    """

    name: str
    sha256: str | None
    payload_sha256: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class Manifest:
    """A data set of four IDX files, its mirrors (base URLs tried in order) and its cache subfolder ``name``."""

    name: str
    mirrors: tuple[str, ...]
    x_train: RemoteFile
    y_train: RemoteFile
    x_test: RemoteFile
    y_test: RemoteFile

    def files(self) -> dict[str, RemoteFile]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("name", "mirrors")}

    def payload_sha256(self) -> dict[str, str]:
        """``{"x_train": digest, ...}`` of the decompressed IDX files, for :func:`load_idx_folder`."""
        return {key: f.payload_sha256 for key, f in self.files().items()}


MNIST = Manifest(
    name="mnist",
    mirrors=(
        "https://ossci-datasets.s3.amazonaws.com/mnist/",  # PyTorch's copy (torchvision's mirror list)
        "https://storage.googleapis.com/cvdf-datasets/mnist/",  # CVDF's copy (tensorflow-datasets' source)
        "http://yann.lecun.com/exdb/mnist/",  # the original site; often refuses scripted downloads now
    ),
    x_train=RemoteFile(
        "train-images-idx3-ubyte.gz",
        "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
        "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        (60000, 28, 28),
    ),
    y_train=RemoteFile(
        "train-labels-idx1-ubyte.gz",
        "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
        "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        (60000,),
    ),
    x_test=RemoteFile(
        "t10k-images-idx3-ubyte.gz",
        "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
        "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        (10000, 28, 28),
    ),
    y_test=RemoteFile(
        "t10k-labels-idx1-ubyte.gz",
        "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
        "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
        (10000,),
    ),
)

FASHION_MNIST = Manifest(
    name="fashion-mnist",
    mirrors=(
        # Zalando's S3 website endpoint speaks plain HTTP only; the sha256 checks make that safe.
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
    ),
    x_train=RemoteFile(
        "train-images-idx3-ubyte.gz",
        "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
        "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        (60000, 28, 28),
    ),
    y_train=RemoteFile(
        "train-labels-idx1-ubyte.gz",
        "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
        "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        (60000,),
    ),
    x_test=RemoteFile(
        "t10k-images-idx3-ubyte.gz",
        "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
        "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        (10000, 28, 28),
    ),
    y_test=RemoteFile(
        "t10k-labels-idx1-ubyte.gz",
        "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
        "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
        (10000,),
    ),
)


def default_cache_dir() -> Path:
    """``$HGKIT_CACHE_DIR``, else ``$XDG_CACHE_HOME/hgkit``, else ``~/.cache/hgkit``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "hgkit"


def verified_array(data: bytes, file: RemoteFile, source: str, actual_sha256: str | None = None) -> np.ndarray:
    """The array in ``data`` (the bytes of ``file`` as served) after every check; raises naming ``source``."""
    if file.sha256 is not None:
        check_sha256(actual_sha256 or sha256_hex(data), file.sha256, source, "the file")
    payload = gunzip(data, source) if file.name.endswith(".gz") else data
    check_sha256(sha256_hex(payload), file.payload_sha256, source, "the decompressed IDX bytes")
    array = parse_idx(payload, source)
    if array.shape != tuple(file.shape):
        raise IdxFormatError(f"{source}: expected an array of shape {tuple(file.shape)}; the file holds {array.shape}")
    return array


def download_to(url: str, folder: Path, timeout: float) -> tuple[Path, str]:
    """Stream ``url`` into a new temporary file in ``folder``; its path and sha256. The caller owns the file."""
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".download-", suffix=".part")
    try:
        digest, received = hashlib.sha256(), 0
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(request, timeout=timeout) as response:
            expected = response.headers.get("Content-Length")
            while chunk := response.read(_CHUNK):
                out.write(chunk)
                digest.update(chunk)
                received += len(chunk)
        if expected is not None and received != int(expected):
            raise ChecksumError(f"the transfer ended after {received} of {expected} bytes")
        return Path(tmp), digest.hexdigest()
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def failure_reason(error: BaseException) -> str:
    """A one-line account of why a mirror failed."""
    if isinstance(error, urllib.error.HTTPError):
        return f"HTTP {error.code} {error.reason}"
    if isinstance(error, urllib.error.URLError):
        return f"unreachable ({error.reason})"
    if isinstance(error, TimeoutError):
        return f"timed out ({error})"
    if isinstance(error, ChecksumError | IdxFormatError):
        return str(error)
    return f"{type(error).__name__}: {error}"


def fetch(file: RemoteFile, mirrors: Sequence[str], folder: Path, dataset: str, timeout: float) -> np.ndarray:
    """The verified array of ``file``: from ``folder`` if a good copy is there, else from the first good mirror."""
    target = folder / file.name
    if target.is_file():
        try:
            return verified_array(target.read_bytes(), file, str(target))
        except (ChecksumError, IdxFormatError) as e:
            log.warning("discarding the cached %s, which no longer verifies (%s); downloading it again", target, e)
            target.unlink(missing_ok=True)
    folder.mkdir(parents=True, exist_ok=True)
    attempts = []
    for mirror in mirrors:
        url = (mirror if mirror.endswith("/") else mirror + "/") + quote(file.name)
        log.info("downloading %s", url)
        tmp = None
        try:
            tmp, digest = download_to(url, folder, timeout)
            array = verified_array(tmp.read_bytes(), file, file.name, actual_sha256=digest)
            os.replace(tmp, target)  # atomic: the cache holds the whole verified file or nothing
            tmp = None
            return array
        except (OSError, http.client.HTTPException, ChecksumError, IdxFormatError) as e:
            reason = failure_reason(e)
            if isinstance(e, urllib.error.HTTPError):
                e.close()  # it holds the error page's open response
            log.info("%s failed: %s", url, reason)
            attempts.append((url, reason))
        finally:
            if tmp is not None:
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()
    raise DownloadError(dataset, file.name, attempts)


def load_remote_dataset(
    manifest: Manifest,
    cache_dir: str | os.PathLike | None = None,
    *,
    mirrors: Sequence[str] | None = None,
    timeout: float = 60.0,
) -> TrainTestArrays:
    """The four arrays of ``manifest``, downloaded once into ``cache_dir/manifest.name`` and verified.

    Args:
        manifest: the files and their digests (:data:`MNIST`, :data:`FASHION_MNIST`, or your own).
        cache_dir: the cache root (default: :func:`default_cache_dir`).
        mirrors: base URLs to try in order instead of ``manifest.mirrors``.
        timeout: seconds to wait on a mirror's connection or its next bytes.

    Raises:
        DownloadError: no mirror gave a verified copy of some file; it lists what each mirror said.
    """
    if not isinstance(manifest, Manifest):
        raise TypeError(f"manifest must be a hgkit.datasets.Manifest; got {type(manifest).__name__}")
    mirrors = manifest.mirrors if mirrors is None else mirrors
    if isinstance(mirrors, str | bytes) or not mirrors or not all(isinstance(m, str) for m in mirrors):
        raise ValueError(f"mirrors must be a non-empty sequence of base URLs (str); got {mirrors!r}")
    if not timeout > 0:
        raise ValueError(f"timeout must be a positive number of seconds; got {timeout!r}")
    folder = Path(default_cache_dir() if cache_dir is None else cache_dir).expanduser() / manifest.name
    arrays = {key: fetch(file, mirrors, folder, manifest.name, timeout) for key, file in manifest.files().items()}
    return check_images_and_labels(TrainTestArrays(**arrays), str(folder))


def load_mnist(cache_dir=None, *, mirrors=None, timeout: float = 60.0) -> TrainTestArrays:
    """The full MNIST (60,000 + 10,000 images, uint8 28×28, uint8 labels), as in ``mnist.npz``.

    Downloaded on first use (about 11 MB) from :data:`MNIST`'s mirrors, then read from the cache. Already have the
    files? ``load_idx_folder(path, MNIST.payload_sha256())``. See :func:`load_remote_dataset` for the arguments.
    """
    return load_remote_dataset(MNIST, cache_dir, mirrors=mirrors, timeout=timeout)


def load_fashion_mnist(cache_dir=None, *, mirrors=None, timeout: float = 60.0) -> TrainTestArrays:
    """The full Fashion-MNIST (60,000 + 10,000 images, uint8 28×28, labels 0–9), downloaded once (about 30 MB).

    Debian's ``dataset-fashion-mnist`` package installs the files offline:
    ``load_idx_folder("/usr/share/datasets/fashion-mnist", FASHION_MNIST.payload_sha256())``.
    """
    return load_remote_dataset(FASHION_MNIST, cache_dir, mirrors=mirrors, timeout=timeout)
