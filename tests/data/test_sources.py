import gzip
import shutil
import struct

import numpy as np
import pytest

from vitlab.data.download import file_digest
from vitlab.data.sources import DATASETS, PACKAGED_MNIST, load_split, read_idx
from vitlab.errors import DataError


def test_packaged_mnist_matches_published_checksums():
    for name, digest in DATASETS["mnist"].sha256.items():
        assert file_digest(PACKAGED_MNIST / name, "sha256") == digest


def test_mnist_test_split_has_the_published_class_counts(mnist_test):
    assert mnist_test.images.shape == (10000, 1, 28, 28)
    assert mnist_test.images.dtype.is_floating_point is False
    counts = np.bincount(mnist_test.labels.numpy(), minlength=10).tolist()
    assert counts == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def _write_idx(path, array, compress=True):
    header = struct.pack(">HBB", 0, 8, array.ndim) + struct.pack(">" + "I" * array.ndim, *array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(payload) if compress else payload)


def test_idx_round_trip(tmp_path):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    _write_idx(tmp_path / "a.gz", array)
    _write_idx(tmp_path / "a.idx", array, compress=False)
    assert (read_idx(tmp_path / "a.gz") == array).all()
    assert (read_idx(tmp_path / "a.idx") == array).all()


def test_truncated_idx_is_refused(tmp_path):
    array = np.zeros((5, 28, 28), dtype=np.uint8)
    _write_idx(tmp_path / "full.idx", array, compress=False)
    (tmp_path / "short.idx").write_bytes((tmp_path / "full.idx").read_bytes()[:-100])
    with pytest.raises(DataError, match="header declares"):
        read_idx(tmp_path / "short.idx")


def test_truncated_gzip_is_refused(tmp_path):
    data = (PACKAGED_MNIST / "t10k-labels-idx1-ubyte.gz").read_bytes()
    (tmp_path / "cut.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="not a readable gzip"):
        read_idx(tmp_path / "cut.gz")


def test_wrong_magic_is_refused(tmp_path):
    (tmp_path / "bad.idx").write_bytes(b"\x12\x34\x08\x01" + b"\x00" * 20)
    with pytest.raises(DataError, match="magic"):
        read_idx(tmp_path / "bad.idx")
    (tmp_path / "text.gz").write_bytes(gzip.compress(b"hello, this is not an idx file"))
    with pytest.raises(DataError, match="magic"):
        read_idx(tmp_path / "text.gz")


def test_missing_or_corrupt_dataset_files_give_clear_errors(tmp_path):
    with pytest.raises(DataError, match="could not download t10k-images.*by hand"):
        load_split("fashion-mnist", "test", str(tmp_path))  # no server answers in tests
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        shutil.copy(PACKAGED_MNIST / name, tmp_path / name)
    # MNIST's files are real IDX files, but not Fashion-MNIST's: the checksum catches it.
    with pytest.raises(DataError, match="does not match the published checksum"):
        load_split("fashion-mnist", "test", str(tmp_path))
    with pytest.raises(DataError, match="unknown dataset"):
        load_split("imagenet", "test")
