"""A user's own classifier (`--model_path`) and inputs (`--data_path`), checked before any work.

Models: a Keras file (`.keras`, `.h5`) loaded in safe mode unless `--unsafe_load`, a
TensorFlow SavedModel folder (its serving signature), or an ONNX file (`onnx_model.py`).
`--input_mean/--input_std` normalise inside the model function, so that sampling radii and
gradients stay in input units. Data: an `.npz` with `x` (N, H, W, C) and
`y` (labels or one-hot), or a folder of images named `<label>.<anything>.<ext>`. Floating-point
`x` must already lie in the model's `--input_range`; uint8 `x` and image files are mapped from
[0, 255] onto it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

from cleverscore.errors import CleverError, UsageError

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


def add_user_model_flags(p) -> None:
    """The flags for a user's own model and data (collect_gradients.py and attacks.py)."""
    p.add_argument("--model_path", default="",
                   help="your own model: a Keras file (.keras, .h5), a SavedModel folder or an ONNX file (.onnx)")
    p.add_argument("--data_path", default="", help="your own inputs: an .npz with x and y, or a folder of "
                   "<label>.<name>.png/jpg images")
    p.add_argument("--input_range", default="-0.5,0.5", help="LO,HI: the input range the model expects")
    p.add_argument("--input_mean", default="", help="per-channel mean M1,M2,.. the model subtracts from its input "
                   "(applied inside the model function: (x - mean) / std)")
    p.add_argument("--input_std", default="", help="per-channel standard deviations S1,S2,.. (with --input_mean)")
    p.add_argument("--input_layout", choices=["auto", "nchw", "nhwc"], default="auto",
                   help="ONNX models: the layout of the model's input (auto: read from its shape); data stay NHWC")
    p.add_argument("--output", choices=["logits", "probs"], default="logits",
                   help="what the model returns; probs are turned into log-probabilities")
    p.add_argument("--unsafe_load", action="store_true", help="allow Keras models with custom Lambda code")


def parse_channel_values(text: str, flag: str, positive: bool = False) -> tuple[float, ...] | None:
    """'V' or 'V1,V2,..' -> floats (None for an empty flag)."""
    if not text:
        return None
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise UsageError(f"{flag} must be one number or one per channel, e.g. 0.485,0.456,0.406; got {text!r}") from None
    if not all(np.isfinite(values)) or (positive and min(values) <= 0):
        raise UsageError(f"{flag} values must be finite{' and positive' if positive else ''}, got {text!r}")
    return values


def channel_normalisation(args) -> tuple[tuple[float, ...] | None, tuple[float, ...] | None]:
    """(mean, std) from --input_mean/--input_std (None where not given)."""
    return (parse_channel_values(args.input_mean, "--input_mean"),
            parse_channel_values(args.input_std, "--input_std", positive=True))


def check_user_model_flags(args) -> None:
    """--input_mean/--input_std and --input_layout are valid and only apply to --model_path, and an
    --input_range (parsed into args.range) other than the built-in one comes with --data_path."""
    if args.range != (-0.5, 0.5) and not args.data_path:
        raise UsageError("--input_range other than -0.5,0.5 needs --data_path (the built-in data is in [-0.5, 0.5])")
    mean, std = channel_normalisation(args)
    if (mean or std) and not args.model_path:
        raise UsageError("--input_mean/--input_std apply to your own model (--model_path)")
    if args.input_layout != "auto" and not str(args.model_path).lower().endswith(".onnx"):
        raise UsageError("--input_layout applies to ONNX models (--model_path model.onnx)")


def normalized(model, mean: tuple[float, ...] | None, std: tuple[float, ...] | None, channels: int):
    """`model((x - mean) / std)` per channel (last axis), inside the differentiated function."""
    if mean is None and std is None:
        return model
    for flag, values in (("--input_mean", mean), ("--input_std", std)):
        if values is not None and len(values) != 1 and channels and len(values) != channels:
            raise UsageError(f"{flag} has {len(values)} values; the images have {channels} channel(s)")
    if std is not None and min(std) <= 0:
        raise UsageError(f"--input_std values must be positive, got {std}")
    import tensorflow as tf

    shift = tf.constant(mean or (0.0,), tf.float32)
    scale = tf.constant(std or (1.0,), tf.float32)

    def normalized_model(x, training=False):
        z = (x - shift) / scale
        return model(z, training=training) if hasattr(model, "layers") else model(z)

    return normalized_model


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


def load_user_model(path, unsafe: bool = False, layout: str = "auto", image_shape: tuple[int, ...] | None = None):
    """A Keras model file, a SavedModel folder or an ONNX file (or onnx.ModelProto), as a callable.

    `layout` and `image_shape` (H, W, C) only matter for ONNX models (see onnx_model.py)."""
    from onnx_model import is_onnx, load_onnx_model

    if is_onnx(path):
        return load_onnx_model(path, layout, image_shape)
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


def user_model_from_args(args, image_shape: tuple[int, ...]):
    """The --model_path model with --input_mean/--input_std and --output applied, and its folder name."""
    model = load_user_model(args.model_path, args.unsafe_load, args.input_layout, image_shape)
    channels = int(image_shape[-1]) if image_shape is not None else 0
    model = normalized(model, *channel_normalisation(args), channels)
    return as_logits(model, args.output), model_label(args.model_path)


def model_label(path: str) -> str:
    """The folder name part for a user model: its file or folder name without suffixes."""
    return Path(os.path.normpath(path)).name.split(".")[0] or "model"
