"""A user's own classifier: a Keras file, a TensorFlow SavedModel folder or an ONNX file, as a callable.

Keras files load in safe mode unless `unsafe` is set. `normalized` puts a per-channel
`(x - mean) / std` inside the model function, so that sampling radii and gradients stay in
input units; `as_logits` turns a probability output into log-probabilities.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

from cleverscore.errors import CleverError, UsageError
from cleverscore.settings import ModelSettings


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
        spec = self._fn.structured_input_signature[1][self._input]
        self.image_shape = tuple(spec.shape)[1:] if spec.shape.rank == 4 else None

    def __call__(self, x):
        out = self._fn(**{self._input: x})
        return next(iter(out.values())) if isinstance(out, dict) else out


TORCH_SUFFIXES = (".pt", ".pth", ".ckpt")


def refuse_torch_file(path) -> None:
    """UsageError for a PyTorch checkpoint: it holds weights (or pickled code), not a graph we can run.

    Without this, Keras answers that it "only supports V3 .keras files", which says nothing
    about what to do."""
    if str(path).lower().endswith(TORCH_SUFFIXES):
        from cleverscore.models.onnx_convert import EXPORT_LINE

        raise UsageError(f"`model_path` {path} is a PyTorch file; export the model to ONNX first, with a "
                         f"dynamic batch axis and the weights inside (pip install onnx onnxscript): {EXPORT_LINE} "
                         "with x = torch.zeros(2, C, H, W); then pass model.onnx (from Python, clever_scores "
                         "takes the nn.Module itself)")


def load_user_model(path, unsafe: bool = False, layout: str = "auto", image_shape: tuple[int, ...] | None = None):
    """A Keras model file, a SavedModel folder or an ONNX file (or onnx.ModelProto), as a callable.

    `layout` and `image_shape` (H, W, C) only matter for ONNX models (see onnx_convert.py)."""
    from cleverscore.models.onnx_convert import is_onnx, load_onnx_model

    if isinstance(path, (str, os.PathLike)):
        refuse_torch_file(path)
    if is_onnx(path):
        return load_onnx_model(path, layout, image_shape)
    p = Path(path)
    if not p.exists():
        raise UsageError(f"`model_path` {path} does not exist")
    if p.is_dir():
        if not (p / "saved_model.pb").is_file():
            raise UsageError(f"{path} is a folder but not a TensorFlow SavedModel (no saved_model.pb)")
        return SavedModelClassifier(str(p))
    check_keras_file(p)
    import keras

    try:
        return keras.saving.load_model(str(p), compile=False, safe_mode=not unsafe)
    except Exception as err:  # noqa: BLE001 - Keras raises many types; each becomes one line
        text = str(err).strip()
        if isinstance(err, ValueError) and ("safe_mode" in text or "Lambda" in text or "unsafe" in text):
            raise UsageError(f"{path} contains custom code (a Lambda layer); load it only if you trust it, "
                             "with `unsafe_load`") from None
        first = next((ln.strip() for ln in text.splitlines() if ln.strip()), type(err).__name__)
        raise CleverError(f"cannot load model {path}: {type(err).__name__}: {first}") from None


def check_keras_file(path: Path) -> None:
    """A `.keras` file must be a zip archive and an `.h5` file HDF5: else say so (Keras says "File not found")."""
    import zipfile

    suffix = path.suffix.lower()
    if suffix == ".keras" and not zipfile.is_zipfile(path):
        raise UsageError(f"{path} is not a Keras archive: a .keras file is a zip archive (save it with model.save)")
    if suffix in (".h5", ".hdf5"):
        import h5py

        if not h5py.is_hdf5(path):
            raise UsageError(f"{path} is not an HDF5 file: a Keras .h5 model is one (save it with model.save)")


def normalized(model, mean: tuple[float, ...] | None, std: tuple[float, ...] | None, channels: int):
    """`model((x - mean) / std)` per channel (last axis), inside the differentiated function."""
    if mean is None and std is None:
        return model
    for param, values in (("input_mean", mean), ("input_std", std)):
        if values is not None and len(values) != 1 and channels and len(values) != channels:
            raise UsageError(f"`{param}` has {len(values)} values; the images have {channels} channel(s)")
    if std is not None and min(std) <= 0:
        raise UsageError(f"`input_std` values must be positive, got {std}")
    import tensorflow as tf

    shift = tf.constant(mean or (0.0,), tf.float32)
    scale = tf.constant(std or (1.0,), tf.float32)

    def normalized_model(x, training=False):
        z = (x - shift) / scale
        return model(z, training=training) if hasattr(model, "layers") else model(z)

    normalized_model.wrapped_model = model
    normalized_model.input_mean, normalized_model.input_std = mean, std
    return normalized_model


def as_logits(model, output: str):
    """Wrap a probability-output model so that it returns log-probabilities (logits up to a shift)."""
    if output == "logits":
        return model
    import tensorflow as tf

    def log_probs(x, training=False):
        probs = model(x, training=training) if hasattr(model, "layers") else model(x)
        return tf.math.log(tf.maximum(probs, 1e-30))

    print("[WARNING] --output probs: scores refer to margins of log-probabilities, not of logits", file=sys.stderr)
    log_probs.wrapped_model = model
    return log_probs


def unwrapped(model):
    """The model under the normalisation and log-probability wrappers of this module."""
    while hasattr(model, "wrapped_model"):
        model = model.wrapped_model
    return model


def expected_image_shape(model) -> tuple | None:
    """(H, W, C) a model takes, with None for a free dimension; None when the model does not say."""
    inner = unwrapped(model)
    shape = getattr(inner, "image_shape", None)  # ONNX and SavedModel classifiers record it
    if shape is None:
        try:
            shape = tuple(inner.input_shape)[1:]  # a Keras model: (batch, H, W, C)
        except (AttributeError, TypeError, ValueError):
            return None
    return tuple(None if d is None else int(d) for d in shape) or None


def check_image_shape(model, image_shape: tuple[int, ...]) -> None:
    """UsageError naming both shapes when the images do not fit the model's input."""
    expected = expected_image_shape(model)
    if expected is None:
        return
    fits = len(expected) == len(image_shape) and all(e is None or e == a for e, a in zip(expected, image_shape))
    if not fits:
        shown = lambda shape: "x".join("?" if d is None else str(d) for d in shape)  # noqa: E731
        hint = ""
        if len(image_shape) == 3 and image_shape[0] in (1, 3) and image_shape[-1] not in (1, 3):
            hint = " (the images look channels-first, NCHW: the data must be NHWC)"
        raise UsageError(f"images are {shown(image_shape)}, the model expects {shown(expected)}{hint}")


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


def prepared_user_model(settings: ModelSettings, image_shape: tuple[int, ...] | None):
    """The user's model (`settings.model_path`) with its normalisation and output conversion applied."""
    model = load_user_model(str(settings.model_path), settings.unsafe_load, settings.input_layout, image_shape)
    channels = int(image_shape[-1]) if image_shape is not None else 0
    return as_logits(normalized(model, settings.input_mean, settings.input_std, channels), settings.output)
