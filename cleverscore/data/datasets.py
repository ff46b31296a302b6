"""Finding, downloading and splitting the standard image datasets (shared by mnist.py and cifar.py).

A dataset folder is found in this order: the `--data_dir` flag, the `CLEVER_DATA_DIR`
environment variable, then `./data`, and last the package's built-in `cleverscore/builtin/data/` (the
MNIST test files, found from any working directory and in an installed copy). Each may point at the folder holding the
dataset's files or at a parent holding a `<dataset>` subfolder (so
`CLEVER_DATA_DIR=../shared/data` serves both MNIST and CIFAR-10). Missing files are downloaded
when a network is there; otherwise a one-line error names the files and where to put them.
"""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cleverscore.errors import CleverError
from cleverscore.locations import SHIPPED_DATA

VALIDATION_SIZE = 5000  # the first training images held out for validation, as the original
DOWNLOAD_TIMEOUT_S = 20


@dataclass(frozen=True)
class DatasetSpec:
    """What distinguishes one dataset from another: names, shapes, files and their reader.

    `files[split]` lists the file names a split needs; each may also be found gzip-compressed
    (name + ".gz") or inside one of `subfolders`. `read(paths, split)` returns uint8 images
    (N, H, W, C) and integer labels (N,).
    """

    name: str
    folders: tuple[str, ...]
    image_shape: tuple[int, int, int]
    num_classes: int
    files: dict[str, tuple[str, ...]]
    read: Callable[[Sequence[Path], str], tuple[np.ndarray, np.ndarray]]
    download: Callable[[Path], None]
    subfolders: tuple[str, ...] = field(default=())




def data_roots(data_dir: str | os.PathLike | None) -> list[Path]:
    """The candidate folders, in the documented order of precedence.

    Without --data_dir or CLEVER_DATA_DIR: ./data, then the package's built-in data folder.
    """
    if data_dir:
        return [Path(data_dir)]
    env = os.environ.get("CLEVER_DATA_DIR")
    if env:
        return [Path(env)]
    roots = [Path("data")]
    if Path("data").resolve() != SHIPPED_DATA:
        roots.append(SHIPPED_DATA)
    return roots


def _find(folder: Path, name: str, subfolders: Sequence[str]) -> Path | None:
    for sub in ("", *subfolders):
        for candidate in (name, name + ".gz"):
            path = folder / sub / candidate
            if path.is_file():
                return path
    return None


def locate(spec: DatasetSpec, root: Path, names: Sequence[str]) -> list[Path] | None:
    for folder in (root, *(root / f for f in spec.folders)):
        found = [_find(folder, n, spec.subfolders) for n in names]
        if all(found):
            return found  # type: ignore[return-value]
    return None


def open_maybe_gzip(path: Path):
    """Open a file for binary reading, decompressing it if it ends in .gz."""
    import gzip

    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def _missing_message(spec: DatasetSpec, root: Path, names: Sequence[str]) -> str:
    target = root / spec.folders[0] if root == Path("data") else root
    return (
        f"{spec.name} files not found and could not be downloaded: put "
        f"{', '.join(names)} (optionally .gz) in {target} or pass --data_dir / set CLEVER_DATA_DIR"
    )


def locate_split(spec: DatasetSpec, split: str, data_dir: str | os.PathLike | None) -> list[Path]:
    """Paths of a split's files, downloading them into the default folder if needed."""
    names = spec.files[split]
    roots = data_roots(data_dir)
    for root in roots:
        found = locate(spec, root, names)
        if found:
            return found
    root = roots[0]
    target = root / spec.folders[0] if not data_dir and not os.environ.get("CLEVER_DATA_DIR") else root
    try:
        target.mkdir(parents=True, exist_ok=True)
        spec.download(target)
    except (OSError, tarfile.TarError) as err:
        raise CleverError(_missing_message(spec, root, names) + f" ({type(err).__name__})") from err
    found = locate(spec, target, names)
    if not found:
        raise CleverError(_missing_message(spec, root, names))
    return found


def download_files(urls: dict[str, str], folder: Path) -> None:
    """Download each url to folder/name atomically (a temporary name, then a rename)."""
    for name, url in urls.items():
        dest = folder / name
        if dest.exists():
            continue
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
            with tempfile.NamedTemporaryFile(dir=folder, delete=False, suffix=".part") as tmp:
                shutil.copyfileobj(response, tmp)
        os.replace(tmp.name, dest)


def to_model_range(images: np.ndarray) -> np.ndarray:
    """uint8 pixels -> float32 in [-0.5, 0.5], the range every model here takes."""
    return images.astype(np.float32) / 255.0 - 0.5


def one_hot(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Integer labels -> float32 one-hot rows."""
    return np.eye(num_classes, dtype=np.float32)[labels]


class Dataset:
    """A dataset's splits, loaded on first use and scaled to [-0.5, 0.5].

    Attributes (each loaded lazily, so the default run needs only the test files):
        train_data, train_labels: the training set without the validation images.
        validation_data, validation_labels: the first 5000 training images.
        test_data, test_labels: the standard test set. Labels are one-hot float32.
    """

    def __init__(self, spec: DatasetSpec, data_dir: str | os.PathLike | None = None):
        self.spec = spec
        self.data_dir = data_dir
        self._splits: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    @property
    def num_classes(self) -> int:
        return self.spec.num_classes

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.spec.image_shape

    def _split(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        if split not in self._splits:
            paths = locate_split(self.spec, split, self.data_dir)
            try:
                images, labels = self.spec.read(paths, split)
            except (OSError, EOFError, ValueError) as err:
                raise CleverError(f"cannot read {self.spec.name} {split} files {[str(p) for p in paths]}: {err}") from err
            self._splits[split] = (to_model_range(images), one_hot(labels, self.num_classes))
        return self._splits[split]

    @property
    def test_data(self) -> np.ndarray:
        return self._split("test")[0]

    @property
    def test_labels(self) -> np.ndarray:
        return self._split("test")[1]

    @property
    def train_data(self) -> np.ndarray:
        return self._split("train")[0][VALIDATION_SIZE:]

    @property
    def train_labels(self) -> np.ndarray:
        return self._split("train")[1][VALIDATION_SIZE:]

    @property
    def validation_data(self) -> np.ndarray:
        return self._split("train")[0][:VALIDATION_SIZE]

    @property
    def validation_labels(self) -> np.ndarray:
        return self._split("train")[1][:VALIDATION_SIZE]

    def __repr__(self) -> str:
        return f"Dataset({self.spec.name!r}, data_dir={self.data_dir!r})"


def extract_tar_members(archive: Path, folder: Path, wanted: Sequence[str]) -> None:
    """Extract the members whose base name is in `wanted` into `folder` (flat, no paths)."""
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            base = os.path.basename(member.name)
            if member.isfile() and base in wanted:
                source = tar.extractfile(member)
                assert source is not None
                with open(folder / base, "wb") as out:
                    shutil.copyfileobj(source, out)
