"""ImageNet test images: folders of JPEGs named `<label>.<id>.jpg` (or with a label file), resized
and centre-cropped to a model's size (spec section 9), and the class names."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from cleverscore.errors import CleverError, UsageError
from cleverscore.locations import SHIPPED_DATA

NUM_CLASSES = 1000
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".JPEG", ".JPG", ".PNG")


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
        raise UsageError(f"cannot read `labels` {path}: {err.strerror or err}") from None
    for n, line in enumerate(lines, start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or not parts[1].isdigit():
            raise UsageError(f"`labels` {path} line {n} is not '<file name> <class index>'")
        labels[parts[0]] = int(parts[1])
    return labels


def find_image_folder(data_dir: str | None) -> tuple[Path, Path | None]:
    """The image folder (from --data_dir, CLEVER_DATA_DIR or ./data) and the label file to use:
    a val.txt beside it when the files are not named `<label>.<anything>`, else None."""
    from cleverscore.data.datasets import data_roots

    for root in data_roots(data_dir):
        for folder in (root, root / "val_images", root / "imagenet" / "val_images", root / "imagenet"):
            if folder.is_dir() and any(p.suffix in IMAGE_SUFFIXES for p in folder.iterdir()):
                if _named_by_label(folder):
                    return folder, None
                return folder, next((c for c in (folder / "val.txt", folder.parent / "val.txt") if c.is_file()), None)
    raise UsageError("no ImageNet images found: pass `data_dir` FOLDER with <label>.<name>.jpg files, or "
                     "images plus `labels` val.txt (see README, ImageNet)")


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
            raise UsageError(f"`labels` {labels_file} has no label for {missing[0]} (and {len(missing) - 1} more)")
        return [(p, table[p.name]) for p in files]
    pairs = []
    for p in files:
        label = _label_in_name(p.name)
        if label is None:
            raise UsageError(f"{p.name} is not named <label 1..1000>.<anything>{p.suffix}; or pass `labels` FILE")
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
        raise UsageError(f"`firstimg` {firstimg} is past the end of the {len(pairs)} images in {folder}")
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
    candidates = [Path(path)] if path else [SHIPPED_DATA / "imagenet" / "synset_words.txt"]
    for candidate in candidates:
        if candidate.is_file():
            names = [ln.split(" ", 1)[1].split(",")[0] for ln in candidate.read_text().splitlines() if " " in ln]
            if len(names) == NUM_CLASSES:
                return names
    return None
