"""The original's module name for CIFAR-10: `CIFAR(data_dir)` and the zoo's `CIFARModel(name)`.

The implementation lives in `cleverscore.data.cifar` and `cleverscore.models.zoo`.
"""

from __future__ import annotations

from cleverscore.data.cifar import CIFAR
from cleverscore.models.zoo import load_zoo_model

__all__ = ["CIFAR", "CIFARModel"]


def CIFARModel(model_name: str = "normal", activation: str = "relu", models_dir: str | None = None):
    """A trained CIFAR model from the zoo, returning logits."""
    return load_zoo_model("cifar", model_name, activation, models_dir)
