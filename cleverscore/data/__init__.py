"""Data: the standard datasets (MNIST, CIFAR-10, ImageNet folders) and a user's own inputs, in the model's range."""

from __future__ import annotations

import os

from cleverscore.data.cifar import CIFAR
from cleverscore.data.datasets import Dataset
from cleverscore.data.mnist import MNIST
from cleverscore.errors import CleverError

__all__ = ["CIFAR", "MNIST", "Dataset", "load_dataset"]


def load_dataset(name: str, data_dir: str | os.PathLike | None = None) -> Dataset:
    """The dataset called `name` ('mnist' or 'cifar')."""
    if name == "mnist":
        return MNIST(data_dir)
    if name == "cifar":
        return CIFAR(data_dir)
    raise CleverError(f"unknown dataset {name!r}; choose mnist or cifar")
