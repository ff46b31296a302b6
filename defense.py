"""The original's module name for the input transformations evaluated through BPDA (`--transform`).

The implementation lives in `cleverscore.sampling.transforms`.
"""

from cleverscore.sampling.transforms import TRANSFORMS, defend_jpeg, defend_png, defend_reduce, get_transform

__all__ = ["TRANSFORMS", "defend_jpeg", "defend_png", "defend_reduce", "get_transform"]
