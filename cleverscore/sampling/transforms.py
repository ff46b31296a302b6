"""Input transformations ("defences") evaluated with BPDA: only the transformations live here.

Each takes and returns float images in [0, 1], shape (H, W, C) or (N, H, W, C). The sampler
applies one to every clipped sample and evaluates the gradient at the transformed point, as if
the transformation were the identity in the backward pass (BPDA). These transformations add no
intrinsic robustness, so CLEVER scores with them stay close to those without.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np

JPEG_QUALITY = 75  # the quality used by the input-transformation defences CLEVER was tested on
REDUCE_BITS = 3


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(np.asarray(x, np.float32) * 255.0), 0, 255).astype(np.uint8)


def _batched(x: np.ndarray) -> tuple[np.ndarray, bool]:
    x = np.asarray(x)
    if x.ndim == 3:
        return x[np.newaxis], True
    if x.ndim != 4:
        raise ValueError(f"expected images (H, W, C) or (N, H, W, C), got shape {x.shape}")
    return x, False


def defend_reduce(x: np.ndarray, bits: int = REDUCE_BITS) -> np.ndarray:
    """Keep the top `bits` bits of each 8-bit pixel (colour-depth reduction)."""
    mask = np.uint8((0xFF << (8 - bits)) & 0xFF)
    return (_to_uint8(x) & mask).astype(np.float32) / 255.0


def _codec_roundtrip(x: np.ndarray, fmt: str, **options) -> np.ndarray:
    from PIL import Image

    batch, single = _batched(x)
    channels = batch.shape[-1]
    if channels not in (1, 3):
        raise ValueError(f"{fmt} encoding supports 1 or 3 channels, got {channels}")
    out = np.empty(batch.shape, np.float32)
    for i, img in enumerate(_to_uint8(batch)):
        buffer = io.BytesIO()
        Image.fromarray(img[..., 0] if channels == 1 else img).save(buffer, format=fmt, **options)
        buffer.seek(0)
        with Image.open(buffer) as decoded:
            out[i] = np.asarray(decoded, np.float32).reshape(img.shape) / 255.0
    return out[0] if single else out


def defend_jpeg(x: np.ndarray, quality: int = JPEG_QUALITY) -> np.ndarray:
    """JPEG encode and decode at `quality` (Pillow)."""
    return _codec_roundtrip(x, "JPEG", quality=quality)


def defend_png(x: np.ndarray) -> np.ndarray:
    """PNG encode and decode: lossless, so only the rounding to 8 bits remains."""
    return _codec_roundtrip(x, "PNG")


TRANSFORMS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "defend_reduce": defend_reduce,
    "defend_jpeg": defend_jpeg,
    "defend_png": defend_png,
}


def get_transform(name: str) -> Callable[[np.ndarray], np.ndarray]:
    """The transformation called `name`; only these named functions are ever run."""
    try:
        return TRANSFORMS[name]
    except KeyError:
        raise ValueError(f"unknown transform {name!r}; valid names: {', '.join(TRANSFORMS)}") from None
