"""A user's own classifier (`--model_path`) and inputs (`--data_path`), checked before any work.

Models: a Keras file (`.keras`, `.h5`) loaded in safe mode unless `--unsafe_load`, or a
TensorFlow SavedModel folder (its serving signature). Data: an `.npz` with `x` (N, H, W, C) and
`y` (labels or one-hot), or a folder of images named `<label>.<anything>.<ext>`. Floating-point
`x` must already lie in the model's `--input_range`; uint8 `x` and image files are mapped from
[0, 255] onto it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

from errors import CleverError, UsageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


def parse_input_range(text: str) -> tuple[float, float]:
    """'LO,HI' -> (LO, HI) with LO < HI."""
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise UsageError(f"--input_range must be LO,HI (e.g. -0.5,0.5), got {text!r}") from None
    if not lo < hi:
        raise UsageError(f"--input_range needs LO < HI, got {text!r}")
    return lo, hi


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
    if x.dtype == np.uint8:
        x = _scale_uint8(x, input_range)
    else:
        x = x.astype(np.float32)
        lo, hi = input_range
        if not np.all(np.isfinite(x)) or x.min() < lo - 1e-6 or x.max() > hi + 1e-6:
            raise UsageError(f"{path}: x spans [{x.min():.4g}, {x.max():.4g}], outside --input_range {lo:g},{hi:g}")
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
        raise UsageError(f"--data_path {path} does not exist")
    return load_image_folder(p, input_range) if p.is_dir() else load_npz(p, input_range)


class SavedModelClassifier:
    """A SavedModel's serving signature as a callable returning one (N, classes) tensor."""

    def __init__(self, path: str):
        import tensorflow as tf

        self._loaded = tf.saved_model.load(path)
        signatures = getattr(self._loaded, "signatures", {})
        if "serving_default" not in signatures:
            raise UsageError(f"SavedModel {path} has no serving_default signature")
        self._fn = signatures["serving_default"]
        self._input = next(iter(self._fn.structured_input_signature[1]))

    def __call__(self, x):
        out = self._fn(**{self._input: x})
        return next(iter(out.values())) if isinstance(out, dict) else out


def load_user_model(path: str, unsafe: bool = False):
    """A Keras model file or a SavedModel folder, as something that maps inputs to outputs."""
    p = Path(path)
    if not p.exists():
        raise UsageError(f"--model_path {path} does not exist")
    if p.is_dir():
        if not (p / "saved_model.pb").is_file():
            raise UsageError(f"{path} is a folder but not a TensorFlow SavedModel (no saved_model.pb)")
        return SavedModelClassifier(str(p))
    import keras

    try:
        return keras.saving.load_model(str(p), compile=False, safe_mode=not unsafe)
    except Exception as err:  # noqa: BLE001 - Keras raises many types; each becomes one line
        text = str(err).strip()
        if isinstance(err, ValueError) and ("safe_mode" in text or "Lambda" in text or "unsafe" in text):
            raise UsageError(f"{path} contains custom code (a Lambda layer); load it only if you trust it, "
                             "with --unsafe_load") from None
        first = next((ln.strip() for ln in text.splitlines() if ln.strip()), type(err).__name__)
        raise CleverError(f"cannot load model {path}: {type(err).__name__}: {first}") from None


def as_logits(model, output: str):
    """Wrap a probability-output model so that it returns log-probabilities (logits up to a shift)."""
    if output == "logits":
        return model
    import tensorflow as tf

    def log_probs(x, training=False):
        probs = model(x, training=training) if hasattr(model, "layers") else model(x)
        return tf.math.log(tf.maximum(probs, 1e-30))

    print("[WARNING] --output probs: scores refer to margins of log-probabilities, not of logits", file=sys.stderr)
    return log_probs


def check_outputs(logits: np.ndarray, num_classes: int | None, output: str) -> None:
    """The model's output must be (N, classes); warn if it looks like probabilities.

    Non-finite rows are left to the caller, which skips those images."""
    if logits.ndim != 2 or (num_classes is not None and logits.shape[1] != num_classes):
        want = f"(N, {num_classes})" if num_classes else "(N, classes)"
        raise CleverError(f"the model's output has shape {logits.shape}, expected {want}")
    rows = logits[np.all(np.isfinite(logits), axis=1)]
    looks_like_probs = len(rows) > 0 and np.all(rows >= 0) and np.allclose(rows.sum(1), 1.0, atol=1e-3)
    if output == "logits" and looks_like_probs:
        print("[WARNING] the model's outputs sum to 1: they look like probabilities; "
              "pass --output probs to score log-probability margins", file=sys.stderr)


def model_label(path: str) -> str:
    """The folder name part for a user model: its file or folder name without suffixes."""
    return Path(os.path.normpath(path)).name.split(".")[0] or "model"
