"""Which model made a result: a content hash, recorded in every `.mat` as `model_id`.

Two models with one file name (`runs/exp1/model.onnx`, `runs/exp2/model.onnx`) or one file
re-exported with new weights are different models; a file name cannot tell them apart, their
bytes can. The id hashes what the scored function is made of:

- the model's files: a Keras file, every file of a SavedModel folder, an ONNX graph with its
  external data (onnx_source.py), a zoo model's weights file, or an ImageNet `--weights` file
  (else the Keras application's name and weights name);
- the normalisation and output flags applied around it (`input_mean`, `input_std`, `output`),
  which change the function whose gradients are sampled.

Paths are not part of it: a copied or moved file keeps its id.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from cleverscore.errors import UsageError
from cleverscore.settings import ModelSettings

ID_LENGTH = 16  # hex digits kept (64 bits): collisions are out of reach for any folder of results
CHUNK = 1 << 20


def _update_with_file(digest, path: Path) -> None:
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            digest.update(block)


def files_digest(path: str | Path) -> str:
    """SHA-256 (hex) of a file, or of a folder's files (relative names and contents, in sorted order)."""
    path = Path(path)
    digest = hashlib.sha256()
    if path.is_dir():
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            digest.update(f"\0{file.relative_to(path).as_posix()}\0".encode())
            _update_with_file(digest, file)
    else:
        _update_with_file(digest, path)
    return digest.hexdigest()


def _content(settings: ModelSettings, seed: int | None) -> str:
    if settings.model_path:
        from cleverscore.models.onnx_convert import is_onnx

        path = Path(settings.model_path)
        if not path.exists():
            raise UsageError(f"`model_path` {path} does not exist")
        if is_onnx(path):
            from cleverscore.models.onnx_source import onnx_content_key

            return f"onnx:{onnx_content_key(path)}"
        return f"files:{files_digest(path)}"
    if settings.dataset == "imagenet":
        if settings.weights not in ("imagenet", "random") and Path(settings.weights).is_file():
            return f"imagenet:{settings.model_name}:{files_digest(settings.weights)}"
        seeded = f":{seed}" if settings.weights == "random" else ""  # random weights are drawn from the seed
        return f"imagenet:{settings.model_name}:{settings.weights}{seeded}"
    from cleverscore.models.zoo import parse_model_name, weights_path

    weights = weights_path(parse_model_name(settings.dataset, settings.model_name, settings.activation))
    return f"zoo:{weights.name}:{files_digest(weights) if weights.is_file() else 'missing'}"


def model_id(settings: ModelSettings, seed: int | None = None) -> str:
    """The model's identity (ID_LENGTH hex digits; see the module docstring).

    `seed` matters only for ImageNet's `--weights random`. UsageError if `model_path` does not exist."""
    parts = [_content(settings, seed)]
    if settings.input_mean is not None or settings.input_std is not None:
        parts.append(f"mean={settings.input_mean} std={settings.input_std}")
    if settings.output != "logits":
        parts.append(f"output={settings.output}")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:ID_LENGTH]
