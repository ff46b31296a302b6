"""The original's module name for MNIST: `MNIST(data_dir)` and the zoo's `MNISTModel(name)`.

The implementation lives in `cleverscore.data.mnist` and `cleverscore.models.zoo`.
"""

from __future__ import annotations

from cleverscore.data.mnist import MNIST
from cleverscore.models.zoo import load_zoo_model

__all__ = ["MNIST", "MNISTModel"]


def MNISTModel(model_name: str = "normal", activation: str = "relu", models_dir: str | None = None):
    """A trained MNIST model from the zoo, returning logits."""
    return load_zoo_model("mnist", model_name, activation, models_dir)
