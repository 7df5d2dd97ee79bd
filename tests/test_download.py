"""The MNIST / Fashion-MNIST loader against a real HTTP server on 127.0.0.1, and the IDX parser.

The files served are small but genuine IDX files (gzipped) cut from the packaged hyper-cleaning split, described
by a manifest with their real digests; nothing here reaches the internet.
"""

from __future__ import annotations

import gzip
import http.server
import socket
import threading
from pathlib import Path

import numpy as np
import pytest
from shared_data import SHARED_MNIST

from hgkit.datasets import (
    FASHION_MNIST,
    MNIST,
    ChecksumError,
    DownloadError,
    IdxFormatError,
    Manifest,
    RemoteFile,
    default_cache_dir,
    encode_idx,
    load_idx_folder,
    load_remote_dataset,
    parse_idx,
)
from hgkit.datasets.idx import STANDARD_NAMES, sha256_hex
from hgkit.datasets.mnist import packaged_split_arrays

DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")
KEYS = ("x_train", "y_train", "x_test", "y_test")


# ---------------------------------------------------------------------------------------------------- fixtures
class Handler(http.server.BaseHTTPRequestHandler):
    """Serves ``server.files[path]``; 404 otherwise. ``server.declared`` can announce more bytes than are sent."""

    def do_GET(self):
        self.server.requests.append(self.path)
        body = self.server.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(self.server.declared.get(self.path, len(body))))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):  # keep pytest's output clean
        pass


@pytest.fixture(scope="module")
def arrays():
    """Small genuine MNIST arrays (uint8) from the packaged split."""
    raw = packaged_split_arrays()
    return {"x_train": raw["x_train"][:64], "y_train": raw["y_train"][:64], "x_test": raw["x_test"][:32],
            "y_test": raw["y_test"][:32]}  # fmt: skip


@pytest.fixture(scope="module")
def gz_files(arrays):
    """``{file name: gzipped IDX bytes}`` under the standard MNIST names."""
    return {f"{STANDARD_NAMES[k]}.gz": gzip.compress(encode_idx(arrays[k]), mtime=0) for k in KEYS}


def manifest_for(arrays, gz_files, mirrors=(), *, file_digests=True) -> Manifest:
    files = {}
    for k in KEYS:
        name = f"{STANDARD_NAMES[k]}.gz"
        digest = sha256_hex(gz_files[name]) if file_digests else None
        files[k] = RemoteFile(name, digest, sha256_hex(encode_idx(arrays[k])), arrays[k].shape)
    return Manifest(name="tiny-mnist", mirrors=tuple(mirrors), **files)


@pytest.fixture
def server(gz_files):
    """A real HTTP server on an ephemeral port of 127.0.0.1, serving the test files under several folders."""
    before = set(threading.enumerate())
    httpd = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    httpd.requests, httpd.declared = [], {}
    httpd.files = {}
    for name, data in gz_files.items():
        httpd.files[f"/good/{name}"] = data
        middle = len(data) // 2
        httpd.files[f"/corrupt/{name}"] = data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1 :]
        httpd.files[f"/truncated/{name}"] = data[: len(data) // 2]
        httpd.files[f"/short/{name}"] = data[: len(data) // 2]
        httpd.declared[f"/short/{name}"] = len(data)  # announces the whole file, sends half, hangs up
    httpd.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, name="test-http-server")
    thread.start()
    try:
        yield httpd
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)
    assert not thread.is_alive() and set(threading.enumerate()) <= before, "the test server left a thread running"


@pytest.fixture
def refused():
    """A URL on 127.0.0.1 where nothing listens (a port just freed): the connection is refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


def cache_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# ---------------------------------------------------------------------------------------------------- downloads
def test_good_download_lands_in_the_cache_and_the_second_load_makes_no_request(server, arrays, gz_files, tmp_path):
    manifest = manifest_for(arrays, gz_files, [f"{server.base}/good/"])
    loaded = load_remote_dataset(manifest, tmp_path, timeout=5)
    for k in KEYS:
        np.testing.assert_array_equal(getattr(loaded, k), arrays[k], err_msg=k)
        assert getattr(loaded, k).dtype == np.uint8
    folder = tmp_path / "tiny-mnist"
    assert cache_files(folder) == sorted(gz_files)  # the four files and no temporary leftovers
    assert all((folder / n).read_bytes() == data for n, data in gz_files.items())
    assert sorted(server.requests) == sorted(f"/good/{n}" for n in gz_files)

    again = load_remote_dataset(manifest, tmp_path, timeout=5)
    assert len(server.requests) == 4, "the second load went to the network"
    for k in KEYS:
        np.testing.assert_array_equal(getattr(again, k), arrays[k])


def test_corrupt_download_is_a_clear_error_and_leaves_nothing_in_the_cache(server, arrays, gz_files, tmp_path):
    manifest = manifest_for(arrays, gz_files, [f"{server.base}/corrupt/"])
    name = manifest.x_train.name
    with pytest.raises(DownloadError) as info:
        load_remote_dataset(manifest, tmp_path, timeout=5)
    message = str(info.value)
    actual = sha256_hex(server.files[f"/corrupt/{name}"])
    assert name in message and f"{server.base}/corrupt/{name}" in message
    assert f"is {actual}, expected {manifest.x_train.sha256}" in message
    assert "nothing was written to the cache" in message
    assert info.value.filename == name and len(info.value.attempts) == 1
    assert cache_files(tmp_path / "tiny-mnist") == []


def test_a_corrupt_mirror_is_skipped_for_the_next(server, arrays, gz_files, tmp_path):
    manifest = manifest_for(arrays, gz_files, [f"{server.base}/corrupt/", f"{server.base}/good/"])
    loaded = load_remote_dataset(manifest, tmp_path, timeout=5)
    np.testing.assert_array_equal(loaded.x_train, arrays["x_train"])
    folder = tmp_path / "tiny-mnist"
    assert all(sha256_hex((folder / n).read_bytes()) == sha256_hex(d) for n, d in gz_files.items())


def test_missing_and_refused_mirrors_fall_through_to_the_next(server, refused, arrays, gz_files, tmp_path):
    manifest = manifest_for(arrays, gz_files, [refused, f"{server.base}/missing/", f"{server.base}/good/"])
    loaded = load_remote_dataset(manifest, tmp_path, timeout=5)
    np.testing.assert_array_equal(loaded.y_test, arrays["y_test"])
    name = manifest.x_train.name
    assert server.requests[:2] == [f"/missing/{name}", f"/good/{name}"]  # the 404, then the next mirror


def test_all_mirrors_bad_gives_one_error_listing_each(server, refused, arrays, gz_files, tmp_path):
    mirrors = [refused, f"{server.base}/missing/", f"{server.base}/corrupt/", f"{server.base}/short/"]
    manifest = manifest_for(arrays, gz_files, mirrors)
    with pytest.raises(DownloadError) as info:
        load_remote_dataset(manifest, tmp_path, timeout=5)
    name = manifest.x_train.name
    urls = [url for url, _ in info.value.attempts]
    assert urls == [m + name for m in mirrors]
    reasons = [reason for _, reason in info.value.attempts]
    assert reasons[0].startswith("unreachable (") and "refused" in reasons[0].lower()
    assert reasons[1] == "HTTP 404 Not Found"
    assert f"expected {manifest.x_train.sha256}" in reasons[2]
    assert f"the transfer ended after {len(gz_files[name]) // 2} of {len(gz_files[name])} bytes" == reasons[3]
    message = str(info.value)
    assert "any of its 4 mirror(s)" in message and all(f"  - {u}: {r}" in message for u, r in info.value.attempts)
    assert cache_files(tmp_path / "tiny-mnist") == []


def test_truncated_gzip_is_named_as_such(server, arrays, gz_files, tmp_path):
    # Without a digest of the compressed file, the gzip stream itself must notice the truncation.
    manifest = manifest_for(arrays, gz_files, [f"{server.base}/truncated/"], file_digests=False)
    with pytest.raises(DownloadError, match=r"truncated gzip file") as info:
        load_remote_dataset(manifest, tmp_path, timeout=5)
    name = manifest.x_train.name
    assert f"  - {server.base}/truncated/{name}: {name}: truncated gzip file" in str(info.value)
    assert cache_files(tmp_path / "tiny-mnist") == []
    # With it, the digest check speaks first.
    manifest = manifest_for(arrays, gz_files, [f"{server.base}/truncated/"])
    with pytest.raises(DownloadError, match=r"sha256 of the file is [0-9a-f]{64}, expected"):
        load_remote_dataset(manifest, tmp_path, timeout=5)


def test_payload_digest_is_checked_when_the_file_digest_is_unknown(server, arrays, gz_files, tmp_path):
    manifest = manifest_for(arrays, gz_files, [f"{server.base}/good/"], file_digests=False)
    wrong = RemoteFile(manifest.y_test.name, None, "0" * 64, manifest.y_test.shape)
    bad = Manifest(manifest.name, manifest.mirrors, manifest.x_train, manifest.y_train, manifest.x_test, wrong)
    with pytest.raises(DownloadError, match="sha256 of the decompressed IDX bytes is [0-9a-f]{64}, expected 0{64}"):
        load_remote_dataset(bad, tmp_path, timeout=5)
    assert manifest.y_test.name not in cache_files(tmp_path / "tiny-mnist")
    assert len(load_remote_dataset(manifest, tmp_path, timeout=5).y_test) == 32


def test_a_cached_file_that_no_longer_verifies_is_fetched_again(server, arrays, gz_files, tmp_path):
    manifest = manifest_for(arrays, gz_files, [f"{server.base}/good/"])
    load_remote_dataset(manifest, tmp_path, timeout=5)
    cached = tmp_path / "tiny-mnist" / manifest.x_test.name
    cached.write_bytes(b"damaged on disk")
    loaded = load_remote_dataset(manifest, tmp_path, timeout=5)
    np.testing.assert_array_equal(loaded.x_test, arrays["x_test"])
    assert server.requests[4:] == [f"/good/{manifest.x_test.name}"] and cached.read_bytes() == gz_files[cached.name]


def test_cache_folder_comes_from_the_argument_the_environment_or_home(server, arrays, gz_files, tmp_path, monkeypatch):
    monkeypatch.delenv("HGKIT_CACHE_DIR", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "hgkit"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "hgkit"
    monkeypatch.setenv("HGKIT_CACHE_DIR", str(tmp_path / "env"))
    assert default_cache_dir() == tmp_path / "env"
    manifest = manifest_for(arrays, gz_files, [f"{server.base}/good/"])
    load_remote_dataset(manifest, timeout=5)
    assert cache_files(tmp_path / "env" / "tiny-mnist") == sorted(gz_files)
    load_remote_dataset(manifest, tmp_path / "arg", timeout=5)  # the argument wins over the environment
    assert cache_files(tmp_path / "arg" / "tiny-mnist") == sorted(gz_files)


def test_bad_arguments_are_refused_before_any_request(arrays, gz_files, tmp_path):
    manifest = manifest_for(arrays, gz_files, ["http://127.0.0.1:9/"])
    with pytest.raises(ValueError, match="mirrors must be a non-empty sequence of base URLs"):
        load_remote_dataset(manifest, tmp_path, mirrors="http://127.0.0.1:9/")
    with pytest.raises(ValueError, match="mirrors must be a non-empty sequence"):
        load_remote_dataset(manifest, tmp_path, mirrors=[])
    with pytest.raises(ValueError, match="timeout must be a positive number of seconds; got 0"):
        load_remote_dataset(manifest, tmp_path, timeout=0)
    with pytest.raises(TypeError, match="manifest must be a hgkit.datasets.Manifest; got dict"):
        load_remote_dataset({}, tmp_path)
    assert not (tmp_path / "tiny-mnist").exists()


# ---------------------------------------------------------------------------------------------------- IDX folders
@pytest.mark.parametrize("compressed", [True, False], ids=["gz", "raw"])
def test_load_idx_folder_reads_gzipped_and_raw_files(arrays, tmp_path, compressed):
    for k in KEYS:
        data = encode_idx(arrays[k])
        name = STANDARD_NAMES[k] + (".gz" if compressed else "")
        (tmp_path / name).write_bytes(gzip.compress(data) if compressed else data)
    digests = {k: sha256_hex(encode_idx(arrays[k])) for k in KEYS}
    loaded = load_idx_folder(tmp_path, digests)
    for k in KEYS:
        np.testing.assert_array_equal(getattr(loaded, k), arrays[k], err_msg=k)
    with pytest.raises(ChecksumError, match=f"train-labels-idx1-ubyte.*is {digests['y_train']}, expected 1{{64}}"):
        load_idx_folder(tmp_path, {**digests, "y_train": "1" * 64})


def test_load_idx_folder_errors_name_the_file(arrays, tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        load_idx_folder(tmp_path / "nowhere")
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(encode_idx(arrays["x_train"]))[:-20])
    with pytest.raises(FileNotFoundError, match=r"has neither train-labels-idx1-ubyte nor .*holds \['train-images"):
        load_idx_folder(tmp_path)
    for k in KEYS[1:]:
        (tmp_path / STANDARD_NAMES[k]).write_bytes(encode_idx(arrays[k]))
    with pytest.raises(IdxFormatError, match=r"train-images-idx3-ubyte.gz: truncated gzip file"):
        load_idx_folder(tmp_path)
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(encode_idx(arrays["x_train"][:10])))
    with pytest.raises(IdxFormatError, match="10 train images but 64 train labels"):
        load_idx_folder(tmp_path)
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(b"<html>not found</html>")
    with pytest.raises(IdxFormatError, match="not a valid gzip file"):
        load_idx_folder(tmp_path)


# ---------------------------------------------------------------------------------------------------- IDX format
IDX_CODES = {np.uint8: 0x08, np.int8: 0x09, np.int16: 0x0B, np.int32: 0x0C, np.float32: 0x0D, np.float64: 0x0E}


@pytest.mark.parametrize("dtype", list(IDX_CODES), ids=lambda d: d.__name__)
def test_idx_round_trip_in_every_dtype(dtype):
    a = ((np.arange(2 * 3 * 5) - 7) * 3).astype(dtype).reshape(2, 3, 5)
    data = encode_idx(a)
    assert data[:4] == bytes([0, 0, IDX_CODES[dtype], 3]) and len(data) == 4 + 3 * 4 + a.nbytes
    b = parse_idx(data)
    assert b.dtype == a.dtype and b.dtype.isnative and b.shape == a.shape
    np.testing.assert_array_equal(a, b)
    if dtype is np.int32:  # big-endian on disk: the first element, -21, is ff ff ff eb
        assert data[16:20] == bytes.fromhex("ffffffeb")


def test_idx_validation_errors():
    good = encode_idx(np.zeros((3, 4), np.uint8))  # 00 00 08 02 | 3 | 4 | 12 bytes
    cases = [
        (b"\x00\x00", "an IDX file starts with a 4-byte magic number; got only 2 bytes"),
        (b"\x1f\x8b" + good[2:], r"starts with two zero bytes; got 1f8b0802 \(not an IDX file, or still compressed\)"),
        (good[:2] + b"\x07" + good[3:], r"unknown IDX dtype code 0x07; expected one of 0x08 \(uint8\)"),
        (good[:3] + b"\x00" + good[4:], "has at least one dimension; the magic number says 0"),
        (good[:10], "the header of 2 dimensions needs 12 bytes; got 10"),
        (good[:-1], r"shape \(3, 4\) and dtype uint8 takes 24 bytes with its header; the file has 23 \(truncated\)"),
        (good + b"\x00", r"the file has 25 \(trailing bytes\)"),
    ]
    for data, message in cases:
        with pytest.raises(IdxFormatError, match=r"^labels\.idx: .*" + message):
            parse_idx(data, "labels.idx")
    with pytest.raises(IdxFormatError, match="IDX holds uint8, int8, int16, int32, float32 or float64; got int64"):
        encode_idx(np.zeros(3, np.int64))


# ---------------------------------------------------------------------------------------------------- real digests
@pytest.mark.skipif(not SHARED_MNIST.exists(), reason=f"the full MNIST source {SHARED_MNIST} is not beside the project")
def test_mnist_manifest_payload_digests_match_the_real_mnist():
    with np.load(SHARED_MNIST) as d:
        for k in KEYS:
            file = getattr(MNIST, k)
            assert d[k].shape == file.shape
            assert sha256_hex(encode_idx(d[k])) == file.payload_sha256, k


@pytest.mark.skipif(
    not DEBIAN_FASHION.is_dir(), reason=f"Debian's dataset-fashion-mnist package is not installed ({DEBIAN_FASHION})"
)
def test_fashion_mnist_manifest_payload_digests_match_the_official_files():
    loaded = load_idx_folder(DEBIAN_FASHION, FASHION_MNIST.payload_sha256())
    for k in KEYS:
        assert getattr(loaded, k).shape == getattr(FASHION_MNIST, k).shape
    assert np.bincount(loaded.y_train).tolist() == [6000] * 10 and np.bincount(loaded.y_test).tolist() == [1000] * 10
