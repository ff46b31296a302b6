"""CIFAR-10: the binary/python batch reader and the dataset entry point."""

from __future__ import annotations

import os
import pickle
import tempfile
import urllib.request
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cleverscore.data.datasets import DOWNLOAD_TIMEOUT_S, Dataset, DatasetSpec, extract_tar_members, open_maybe_gzip

CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
RECORD_BYTES = 1 + 32 * 32 * 3


def _binary_or_python(names: Sequence[str]) -> tuple[str, ...]:
    return tuple(n + ".bin" for n in names)


FILES = {"train": _binary_or_python(TRAIN_BATCHES), "test": _binary_or_python(("test_batch",))}
PY_FILES = {"train": TRAIN_BATCHES, "test": ("test_batch",)}


def read_binary_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 binary batch: records of a label byte then the R, G, B 32x32 planes."""
    with open_maybe_gzip(path) as f:
        raw = np.frombuffer(f.read(), dtype=np.uint8)
    if raw.size == 0 or raw.size % RECORD_BYTES:
        raise ValueError(f"{path} is not a whole number of CIFAR-10 records")
    records = raw.reshape(-1, RECORD_BYTES)
    images = records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return images, records[:, 0].astype(np.int64)


def read_python_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 python-version batch (a pickle with b'data' and b'labels')."""
    with open_maybe_gzip(path) as f:
        batch = pickle.load(f, encoding="bytes")  # the official format; only read local dataset files
    images = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return images, np.asarray(batch[b"labels"], dtype=np.int64)


def _read(paths: Sequence[Path], split: str) -> tuple[np.ndarray, np.ndarray]:
    reader = read_binary_batch if ".bin" in paths[0].name else read_python_batch
    parts = [reader(p) for p in paths]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _download(folder: Path) -> None:
    with tempfile.NamedTemporaryFile(dir=folder, suffix=".tar.gz") as tmp:
        with urllib.request.urlopen(CIFAR_URL, timeout=DOWNLOAD_TIMEOUT_S) as response:
            tmp.write(response.read())
        tmp.flush()
        extract_tar_members(Path(tmp.name), folder, FILES["train"] + FILES["test"])


SPEC = DatasetSpec(
    name="cifar",
    folders=("cifar10", "cifar"),
    image_shape=(32, 32, 3),
    num_classes=10,
    files=FILES,
    read=_read,
    download=_download,
    subfolders=("cifar-10-batches-bin",),
)
PY_SPEC = DatasetSpec(
    name="cifar",
    folders=("cifar10", "cifar"),
    image_shape=(32, 32, 3),
    num_classes=10,
    files=PY_FILES,
    read=_read,
    download=_download,
    subfolders=("cifar-10-batches-py",),
)


def CIFAR(data_dir: str | os.PathLike | None = None) -> Dataset:
    """CIFAR-10 in [-0.5, 0.5] (binary or python batches, gzipped or not), 5000 validation images."""
    from cleverscore.data.datasets import data_roots, locate

    for root in data_roots(data_dir):
        if locate(PY_SPEC, root, PY_FILES["test"]) and not locate(SPEC, root, FILES["test"]):
            return Dataset(PY_SPEC, data_dir)
    return Dataset(SPEC, data_dir)
