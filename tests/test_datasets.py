"""The loaders read the standard files (plain or gzipped), scale to [-0.5, 0.5], split, and fail clearly."""

from __future__ import annotations

import gzip
import shutil

import numpy as np
import pytest

from conftest import BUILTIN_MNIST, shared_dataset
from cleverscore.errors import CleverError
from cleverscore.data.cifar import CIFAR
from cleverscore.data.mnist import MNIST


def test_shipped_mnist_test_set_loads_in_range():
    data = MNIST(BUILTIN_MNIST)
    assert data.test_data.shape == (10000, 28, 28, 1) and data.test_data.dtype == np.float32
    assert data.test_data.min() == -0.5 and data.test_data.max() == 0.5
    assert data.test_labels.shape == (10000, 10)
    assert list(np.bincount(data.test_labels.argmax(1))) == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_mnist_training_split_holds_out_5000_validation_images():
    data = MNIST(shared_dataset("mnist"))
    assert data.train_data.shape == (55000, 28, 28, 1)
    assert data.validation_data.shape == (5000, 28, 28, 1)
    assert not np.array_equal(data.validation_data[0], data.train_data[0])


def test_parent_folder_with_a_dataset_subfolder_is_accepted(monkeypatch):
    monkeypatch.setenv("CLEVER_DATA_DIR", str(BUILTIN_MNIST.parent))
    assert MNIST().test_data.shape[0] == 10000


def test_uncompressed_idx_files_are_read(tmp_path):
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        with gzip.open(BUILTIN_MNIST / f"{name}.gz") as src, open(tmp_path / name, "wb") as dst:
            shutil.copyfileobj(src, dst)
    np.testing.assert_array_equal(MNIST(tmp_path).test_data, MNIST(BUILTIN_MNIST).test_data)


def test_cifar_binary_test_batch_loads():
    data = CIFAR(shared_dataset("cifar10"))
    assert data.test_data.shape == (10000, 32, 32, 3)
    assert list(data.test_labels[:10].argmax(1)) == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]
    assert -0.5 <= data.test_data.min() and data.test_data.max() <= 0.5


def test_missing_files_give_a_one_line_error_naming_them(tmp_path):
    import dataclasses

    from cleverscore.data import mnist as setup_mnist
    from cleverscore.data.datasets import Dataset

    def offline(folder):
        raise OSError("network is unreachable")

    spec = dataclasses.replace(setup_mnist.SPEC, download=offline)
    with pytest.raises(CleverError) as err:
        _ = Dataset(spec, tmp_path / "empty").test_data
    message = str(err.value)
    assert "t10k-images-idx3-ubyte" in message and "t10k-labels-idx1-ubyte" in message
    assert str(tmp_path / "empty") in message and "\n" not in message


def test_truncated_file_is_reported(tmp_path):
    with gzip.open(BUILTIN_MNIST / "t10k-images-idx3-ubyte.gz") as f:
        raw = f.read()
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(raw[:5000])
    shutil.copy(BUILTIN_MNIST / "t10k-labels-idx1-ubyte.gz", tmp_path)
    with pytest.raises(CleverError, match="truncated"):
        _ = MNIST(tmp_path).test_data
