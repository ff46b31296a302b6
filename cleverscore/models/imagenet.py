"""ImageNet: a registry of keras.applications models that take [-0.5, 0.5] RGB and return logits,
and a loader for folders of test images (spec section 9).

Each model applies its own Keras preprocessing inside the differentiable graph, so CLEVER's
gradients and radii are in the [-0.5, 0.5] space like every other dataset here. Weights come
from `--weights PATH`, the Keras cache (~/.keras/models) or a download; `--weights random` builds
untrained models for testing, and nothing else ever silently falls back to random weights.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cleverscore.errors import CleverError, UsageError

DEFAULT_BATCH_SIZE = 32


@dataclass(frozen=True)
class ImageNetEntry:
    """A registry entry: the keras.applications constructor, its arguments, size and preprocessing.

    `mode` is Keras' preprocessing: 'tf' ([-1, 1]), 'caffe' (BGR, ImageNet means subtracted),
    'torch' ([0, 1], ImageNet mean/std), or 'raw' (the model rescales [0, 255] itself).
    """

    constructor: str
    size: int
    mode: str
    kwargs: tuple = ()


REGISTRY: dict[str, ImageNetEntry] = {
    "resnet_v2_50": ImageNetEntry("ResNet50V2", 224, "tf"),
    "resnet_v2_101": ImageNetEntry("ResNet101V2", 224, "tf"),
    "resnet_v2_152": ImageNetEntry("ResNet152V2", 224, "tf"),
    "inception_v3": ImageNetEntry("InceptionV3", 299, "tf"),
    "inception_resnet_v2": ImageNetEntry("InceptionResNetV2", 299, "tf"),
    "vgg_16": ImageNetEntry("VGG16", 224, "caffe"),
    "vgg_19": ImageNetEntry("VGG19", 224, "caffe"),
    "mobilenet_v1_025": ImageNetEntry("MobileNet", 224, "tf", (("alpha", 0.25),)),
    "mobilenet_v1_050": ImageNetEntry("MobileNet", 224, "tf", (("alpha", 0.5),)),
    "mobilenet_v1_100": ImageNetEntry("MobileNet", 224, "tf", (("alpha", 1.0),)),
    "densenet121_k32": ImageNetEntry("DenseNet121", 224, "torch"),
    "densenet169_k32": ImageNetEntry("DenseNet169", 224, "torch"),
    "nasnet_large": ImageNetEntry("NASNetLarge", 331, "tf"),
    "mobilenet_v2": ImageNetEntry("MobileNetV2", 224, "tf"),
    "efficientnet_b0": ImageNetEntry("EfficientNetB0", 224, "raw"),
    "convnext_tiny": ImageNetEntry("ConvNeXtTiny", 224, "raw"),
}
ALIASES = {"densenet121": "densenet121_k32", "densenet169": "densenet169_k32"}
NO_KERAS_EQUIVALENT = ("inception_v1", "inception_v2", "inception_v4", "alexnet", "densenet161_k48")
_MEAN = {"caffe": (103.939, 116.779, 123.68), "torch": (0.485, 0.456, 0.406)}
_STD = (0.229, 0.224, 0.225)


def registry_entry(name: str) -> ImageNetEntry:
    """The entry for a model name; a one-line error for unknown or unavailable names."""
    name = ALIASES.get(name, name)
    if name in NO_KERAS_EQUIVALENT:
        raise UsageError(f"ImageNet model {name!r} of the original release has no keras.applications "
                         f"equivalent; choose one of {', '.join(REGISTRY)}")
    if name not in REGISTRY:
        raise UsageError(f"unknown ImageNet model {name!r}; choose one of {', '.join(REGISTRY)}")
    return REGISTRY[name]


def preprocess(x, mode: str):
    """[-0.5, 0.5] RGB -> the input the Keras model was trained on, differentiably."""
    from keras import ops

    pixels = (x + 0.5) * 255.0
    if mode == "tf":
        return pixels / 127.5 - 1.0
    if mode == "raw":
        return pixels
    if mode == "caffe":
        return pixels[..., ::-1] - ops.convert_to_tensor(_MEAN["caffe"], dtype=x.dtype)
    if mode == "torch":
        return (pixels / 255.0 - ops.convert_to_tensor(_MEAN["torch"], dtype=x.dtype)) / ops.convert_to_tensor(
            _STD, dtype=x.dtype)
    raise ValueError(f"unknown preprocessing mode {mode!r}")


def _capture_weights_file(build):
    """Run `build`, recording the file name Keras asks `get_file` for (for the offline message)."""
    import keras.src.utils.file_utils as file_utils

    asked: list[str] = []
    original = file_utils.get_file

    def recording(fname=None, origin=None, *args, **kwargs):
        asked.append(fname or os.path.basename(origin or ""))
        return original(fname, origin, *args, **kwargs)

    file_utils.get_file = recording  # keras.applications call it through the module attribute
    try:
        return build(), asked
    except Exception as err:  # noqa: BLE001 - a failed download surfaces as many exception types
        name = asked[-1] if asked else "the ImageNet weights file"
        cache = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "models"
        raise UsageError(f"cannot get ImageNet weights ({type(err).__name__}): put {name} in {cache} "
                         "or pass `weights` PATH (or `weights` random for an untrained model)") from None
    finally:
        file_utils.get_file = original


def build_imagenet_model(name: str, weights: str = "imagenet", seed: int = 1215):
    """A Keras model: [-0.5, 0.5] RGB (size x size x 3) in, 1000 logits out.

    Args:
        weights: 'imagenet' (Keras cache or download), 'random' (untrained, for tests), or the
            path of a weights file for the keras.applications model.
        seed: seeds the random weights, so that `--weights random` runs repeat.
    """
    import keras

    entry = registry_entry(name)
    constructor = getattr(keras.applications, entry.constructor)
    kwargs = dict(entry.kwargs, input_shape=(entry.size, entry.size, 3), classifier_activation=None)
    if weights == "random":
        keras.utils.set_random_seed(seed)
        base = constructor(weights=None, **kwargs)
    elif weights == "imagenet":
        base, _ = _capture_weights_file(lambda: constructor(weights="imagenet", **kwargs))
    else:
        if not Path(weights).is_file():
            raise UsageError(f"`weights` {weights} does not exist")
        base = constructor(weights=None, **kwargs)
        try:
            base.load_weights(weights)
        except (ValueError, OSError, KeyError) as err:
            raise CleverError(f"weights file {weights} does not match {entry.constructor}: "
                              f"{str(err).splitlines()[0] if str(err) else type(err).__name__}") from None
    inputs = keras.Input((entry.size, entry.size, 3))
    return keras.Model(inputs, base(preprocess(inputs, entry.mode)), name=f"imagenet_{name}")


