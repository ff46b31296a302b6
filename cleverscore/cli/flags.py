"""Flags shared by the command lines that take a user's model and data, and their checks."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from cleverscore.errors import UsageError
from cleverscore.settings import BUILTIN_RANGE, DataSettings, ModelSettings


def parse_input_range(text: str) -> tuple[float, float]:
    """'LO,HI' -> (LO, HI) with LO < HI."""
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise UsageError(f"--input_range must be LO,HI (e.g. -0.5,0.5), got {text!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise UsageError(f"--input_range must be two finite numbers, got {text!r}")
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
    --input_range other than the built-in one comes with --data_path."""
    if parse_input_range(args.input_range) != BUILTIN_RANGE and not args.data_path:
        raise UsageError("--input_range other than -0.5,0.5 needs --data_path (the built-in data is in [-0.5, 0.5])")
    mean, std = channel_normalisation(args)
    if (mean or std) and not args.model_path:
        raise UsageError("--input_mean/--input_std apply to your own model (--model_path)")
    if args.input_layout != "auto" and not str(args.model_path).lower().endswith(".onnx"):
        raise UsageError("--input_layout applies to ONNX models (--model_path model.onnx)")
    if args.model_path:
        from cleverscore.models.user import refuse_torch_file

        refuse_torch_file(args.model_path)


# Flags that only mean something for a built-in model or dataset: a user's model or data makes them noise.
BUILTIN_MODEL_FLAGS = ("model_name", "activation", "weights")
BUILTIN_DATA_FLAGS = ("dataset", "data_dir", "labels")


def check_transform(name: str) -> None:
    """Refuse an unknown `--transform` in one line (collect_gradients.py and attacks.py share the flag)."""
    from cleverscore.sampling.transforms import TRANSFORMS

    if name and name not in TRANSFORMS:
        raise UsageError(f"unknown --transform {name!r}; valid names: {', '.join(TRANSFORMS)}")


def described_flags(args) -> dict:
    """The flags as printed and recorded in each `.mat` (`args`): without the built-in defaults that
    do not apply (`'dataset': 'mnist'` next to a CIFAR `--data_path`, `'model_name': 'normal'` next to
    a `--model_path`)."""
    flags = vars(args)
    unused = ((BUILTIN_MODEL_FLAGS if flags.get("model_path") else ())
              + (BUILTIN_DATA_FLAGS if flags.get("data_path") else ()))
    return {k: v for k, v in flags.items() if k not in unused}


def optional_path(text: str | None) -> Path | None:
    """A flag naming a file: its Path, or None when not given."""
    return Path(text) if text else None


def model_settings(args) -> ModelSettings:
    """The model flags (built-in model, --model_path and its input flags, --weights) as one object."""
    mean, std = channel_normalisation(args)
    return ModelSettings(
        dataset=args.dataset, model_name=args.model_name, activation=args.activation,
        model_path=optional_path(args.model_path), input_range=parse_input_range(args.input_range),
        input_mean=mean, input_std=std, input_layout=args.input_layout, output=args.output,
        unsafe_load=args.unsafe_load, weights=getattr(args, "weights", "imagenet"))


def data_settings(args) -> DataSettings:
    """The image and target flags as one object."""
    return DataSettings(
        data_path=optional_path(args.data_path), data_dir=optional_path(args.data_dir),
        labels=optional_path(getattr(args, "labels", "")), numimg=args.numimg, firstimg=args.firstimg,
        ids=optional_path(args.ids), target_type=args.target_type)
