"""MNIST: the IDX file reader and the dataset entry point (shared code in datasets.py)."""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cleverscore.data.datasets import Dataset, DatasetSpec, download_files, open_maybe_gzip

MNIST_URL = "https://storage.googleapis.com/cvdf-datasets/mnist/"
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped) into a uint8 array of the shape its header gives."""
    with open_maybe_gzip(path) as f:
        zero, dtype_code, ndim = struct.unpack(">HBB", f.read(4))
        if zero != 0 or dtype_code != 0x08:
            raise ValueError(f"{path} is not a uint8 IDX file")
        shape = struct.unpack(">" + "I" * ndim, f.read(4 * ndim))
        data = np.frombuffer(f.read(), dtype=np.uint8)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path} is truncated: {data.size} values for shape {shape}")
    return data.reshape(shape)


def _read(paths: Sequence[Path], split: str) -> tuple[np.ndarray, np.ndarray]:
    images = read_idx(paths[0])[..., np.newaxis]
    labels = read_idx(paths[1]).astype(np.int64)
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    return images, labels


def _download(folder: Path) -> None:
    download_files({n + ".gz": MNIST_URL + n + ".gz" for names in FILES.values() for n in names}, folder)


SPEC = DatasetSpec(
    name="mnist",
    folders=("mnist",),
    image_shape=(28, 28, 1),
    num_classes=10,
    files=FILES,
    read=_read,
    download=_download,
)


def MNIST(data_dir: str | os.PathLike | None = None) -> Dataset:
    """The MNIST dataset in [-0.5, 0.5] with a 5000-image validation split."""
    return Dataset(SPEC, data_dir)
