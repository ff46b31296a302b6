"""A user's own classifier (`--model_path`) and inputs (`--data_path`), checked before any work.

Models: a Keras file (`.keras`, `.h5`) loaded in safe mode unless `--unsafe_load`, a
TensorFlow SavedModel folder (its serving signature), or an ONNX file (models/onnx_convert.py).
`--input_mean/--input_std` normalise inside the model function, so that sampling radii and
gradients stay in input units. Data: an `.npz` with `x` (N, H, W, C) and
`y` (labels or one-hot), or a folder of images named `<label>.<anything>.<ext>`. Floating-point
`x` must already lie in the model's `--input_range`; uint8 `x` and image files are mapped from
[0, 255] onto it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cleverscore.errors import UsageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


def _labels(y: np.ndarray, n: int, path) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim == 2:
        y = np.argmax(y, axis=1)
    if y.ndim != 1 or len(y) != n:
        raise UsageError(f"{path}: y must hold {n} labels (or one-hot rows), got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        if not np.all(np.equal(np.mod(y, 1), 0)):
            raise UsageError(f"{path}: labels must be integers")
        y = y.astype(np.int64)
    return y.astype(np.int64)


def _scale_uint8(x: np.ndarray, input_range: tuple[float, float]) -> np.ndarray:
    lo, hi = input_range
    return (x.astype(np.float32) / 255.0 * (hi - lo) + lo).astype(np.float32)


def looks_nchw(shape: tuple[int, ...]) -> bool:
    """(N, C, H, W) with C in {1, 3} and a last axis too long to be channels: NCHW data given as NHWC."""
    return len(shape) == 4 and shape[1] in (1, 3) and shape[3] not in (1, 2, 3, 4) and shape[2] > 4


def load_npz(path: Path, input_range: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as f:
            if "x" not in f or "y" not in f:
                raise UsageError(f"{path} must hold arrays 'x' and 'y', found {sorted(f.files)}")
            x, y = f["x"], f["y"]
    except (OSError, ValueError) as err:
        raise UsageError(f"cannot read {path}: {err}") from None
    if x.ndim == 3:
        x = x[..., np.newaxis]
    if x.ndim != 4 or len(x) == 0:
        raise UsageError(f"{path}: x must have shape (N, H, W, C), got {x.shape}")
    if looks_nchw(x.shape):
        raise UsageError(f"{path}: x has shape {x.shape}, which looks like (N, C, H, W), PyTorch's layout; the data "
                         f"must be (N, H, W, C): save x.transpose(0, 2, 3, 1) instead (an NCHW ONNX model is "
                         "transposed for you, see `input_layout`)")
    if x.dtype == np.uint8:
        x = _scale_uint8(x, input_range)
    else:
        x = x.astype(np.float32)
        lo, hi = input_range
        if not np.all(np.isfinite(x)) or x.min() < lo - 1e-6 or x.max() > hi + 1e-6:
            raise UsageError(f"{path}: x spans [{x.min():.4g}, {x.max():.4g}], outside `input_range` {lo:g},{hi:g}")
    return x, _labels(y, len(x), path)


def load_image_folder(path: Path, input_range: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image

    files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise UsageError(f"{path} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    images, labels = [], []
    for f in files:
        head = f.name.split(".", 1)[0]
        if not head.isdigit():
            raise UsageError(f"image {f.name} is not named <label>.<anything>{f.suffix}")
        with Image.open(f) as img:
            images.append(np.asarray(img.convert("RGB" if img.mode not in ("L", "1") else "L")))
        labels.append(int(head))
    shapes = {im.shape for im in images}
    if len(shapes) != 1:
        raise UsageError(f"images in {path} differ in size: {sorted(shapes)}")
    x = np.stack(images)
    if x.ndim == 3:
        x = x[..., np.newaxis]
    return _scale_uint8(x, input_range), np.asarray(labels, np.int64)


def load_user_data(path: str, input_range: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """(x in input_range, integer labels) from an .npz or an image folder."""
    p = Path(path)
    if not p.exists():
        raise UsageError(f"`data_path` {path} does not exist")
    return load_image_folder(p, input_range) if p.is_dir() else load_npz(p, input_range)


