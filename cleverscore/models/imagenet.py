"""ImageNet: a registry of keras.applications models that take [-0.5, 0.5] RGB and return logits,
and a loader for folders of test images (spec section 9).

Each model applies its own Keras preprocessing inside the differentiable graph, so CLEVER's
gradients and radii are in the [-0.5, 0.5] space like every other dataset here. Weights come
from `--weights PATH`, the Keras cache (~/.keras/models) or a download; `--weights random` builds
untrained models for testing, and nothing else ever silently falls back to random weights.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cleverscore.errors import CleverError, UsageError

NUM_CLASSES = 1000
DEFAULT_BATCH_SIZE = 32
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".JPEG", ".JPG", ".PNG")


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
                         "or pass --weights PATH (or --weights random for an untrained model)") from None
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
            raise UsageError(f"--weights {weights} does not exist")
        base = constructor(weights=None, **kwargs)
        try:
            base.load_weights(weights)
        except (ValueError, OSError, KeyError) as err:
            raise CleverError(f"weights file {weights} does not match {entry.constructor}: "
                              f"{str(err).splitlines()[0] if str(err) else type(err).__name__}") from None
    inputs = keras.Input((entry.size, entry.size, 3))
    return keras.Model(inputs, base(preprocess(inputs, entry.mode)), name=f"imagenet_{name}")


def resize_and_crop(image, size: int) -> np.ndarray:
    """Resize so the short side is `size` (keeping the aspect ratio), crop the centre, force RGB."""
    from PIL import Image

    image = image.convert("RGB")
    w, h = image.size
    scale = size / min(w, h)
    new = (max(size, round(w * scale)), max(size, round(h * scale)))
    image = image.resize(new, Image.BILINEAR)
    left, top = (new[0] - size) // 2, (new[1] - size) // 2
    return np.asarray(image.crop((left, top, left + size, top + size)), dtype=np.uint8)


def read_label_file(path: Path) -> dict[str, int]:
    """`name index` per line (0-based Keras class index), as Caffe's val.txt."""
    labels = {}
    try:
        lines = path.read_text().splitlines()
    except OSError as err:
        raise UsageError(f"cannot read --labels {path}: {err.strerror or err}") from None
    for n, line in enumerate(lines, start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or not parts[1].isdigit():
            raise UsageError(f"--labels {path} line {n} is not '<file name> <class index>'")
        labels[parts[0]] = int(parts[1])
    return labels


def find_image_folder(data_dir: str | None) -> tuple[Path, Path | None]:
    """The image folder (from --data_dir, CLEVER_DATA_DIR or ./data) and the label file to use:
    a val.txt beside it when the files are not named `<label>.<anything>`, else None."""
    from datasets import data_roots

    for root in data_roots(data_dir):
        for folder in (root, root / "val_images", root / "imagenet" / "val_images", root / "imagenet"):
            if folder.is_dir() and any(p.suffix in IMAGE_SUFFIXES for p in folder.iterdir()):
                if _named_by_label(folder):
                    return folder, None
                return folder, next((c for c in (folder / "val.txt", folder.parent / "val.txt") if c.is_file()), None)
    raise UsageError("no ImageNet images found: pass --data_dir FOLDER with <label>.<name>.jpg files, or "
                     "images plus --labels val.txt (see README, ImageNet)")


def _label_in_name(name: str) -> int | None:
    """The 1-based label of a `<label>.<anything>.jpg` name, or None if the name has none."""
    head = name.split(".", 1)[0]
    return int(head) if head.isdigit() and 1 <= int(head) <= NUM_CLASSES else None


def _named_by_label(folder: Path) -> bool:
    return all(_label_in_name(p.name) is not None for p in folder.iterdir() if p.suffix in IMAGE_SUFFIXES)


def list_labelled_images(folder: Path, labels_file: Path | None) -> list[tuple[Path, int]]:
    """(image path, 0-based class) pairs: from `--labels`, or from `<label>.<anything>.jpg` names
    whose label counts the background class (1-based: label 1 is Keras class 0)."""
    if not folder.is_dir():
        raise UsageError(f"ImageNet image folder {folder} does not exist")
    files = sorted(p for p in folder.iterdir() if p.suffix in IMAGE_SUFFIXES)
    if not files:
        raise UsageError(f"{folder} holds no JPEG/PNG images")
    if labels_file:
        table = read_label_file(labels_file)
        missing = [p.name for p in files if p.name not in table]
        if missing:
            raise UsageError(f"--labels {labels_file} has no label for {missing[0]} (and {len(missing) - 1} more)")
        return [(p, table[p.name]) for p in files]
    pairs = []
    for p in files:
        label = _label_in_name(p.name)
        if label is None:
            raise UsageError(f"{p.name} is not named <label 1..1000>.<anything>{p.suffix}; or pass --labels FILE")
        pairs.append((p, label - 1))
    return pairs


def load_imagenet(folder: str | os.PathLike, size: int, numimg: int, firstimg: int = 0, seed: int = 1215,
                  labels_file: str | None = None, workers: int = 8) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(images in [-0.5, 0.5], 0-based labels, file names) for `numimg` images from `firstimg`,
    after a shuffle seeded by `seed`; images are decoded in parallel threads."""
    from PIL import Image

    pairs = list_labelled_images(Path(folder), Path(labels_file) if labels_file else None)
    order = np.random.default_rng(seed).permutation(len(pairs))
    if firstimg >= len(pairs):
        raise UsageError(f"--firstimg {firstimg} is past the end of the {len(pairs)} images in {folder}")
    chosen = [pairs[i] for i in order[firstimg : firstimg + numimg]]

    def load(path: Path) -> np.ndarray:
        try:
            with Image.open(path) as img:
                return resize_and_crop(img, size)
        except OSError as err:
            raise CleverError(f"cannot read image {path}: {err}") from None

    with ThreadPoolExecutor(workers) as pool:
        images = list(pool.map(load, [p for p, _ in chosen]))
    x = np.stack(images).astype(np.float32) / 255.0 - 0.5
    return x, np.array([label for _, label in chosen], np.int64), [p.name for p, _ in chosen]


def class_names(path: str | os.PathLike | None = None) -> list[str] | None:
    """Human-readable names from synset_words.txt ('n01440764 tench, Tinca tinca'), if found."""
    candidates = [Path(path)] if path else [Path(__file__).resolve().parent / "data" / "imagenet" / "synset_words.txt"]
    for candidate in candidates:
        if candidate.is_file():
            names = [ln.split(" ", 1)[1].split(",")[0] for ln in candidate.read_text().splitlines() if " " in ln]
            if len(names) == NUM_CLASSES:
                return names
    return None
