"""Reading an ONNX model: its graph file, the external data files its weights may live in, and a key for both.

PyTorch's current exporter writes `model.onnx` plus `model.onnx.data`: the graph file only names
the data file (and offsets into it). So the content key hashes the graph bytes *and* every data
file the graph refers to: a re-export with new weights but the same graph bytes gets a new key.
Data files are found relative to the graph file, never the working folder.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cleverscore.errors import UsageError

INSTALL_HINT = "pip install -r requirements-onnx.txt"
CHUNK = 1 << 20


@dataclass
class OnnxSource:
    """A parsed ONNX model whose weights may still be in external files.

    Attributes:
        model: the onnx.ModelProto (external tensors not yet read: see `load_weights`).
        key: SHA-256 (hex) of the graph and of every external data file, in a fixed order.
        name: how messages name it (the path, or "the ONNX model").
        base: the folder external data locations are relative to (None for a ModelProto).
        external: the external data files, as found.
    """

    model: object
    key: str
    name: str
    base: Path | None
    external: tuple[Path, ...] = ()

    def load_weights(self):
        """The model with its external tensors read in (a self-contained ModelProto)."""
        if self.external:
            from onnx.external_data_helper import load_external_data_for_model

            load_external_data_for_model(self.model, str(self.base))
        return self.model


def import_optional(name: str):
    """An optional package, or a one-line error saying how to install it."""
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError as err:
        missing = err.name or name
        hint = "pip install --no-deps -r requirements-onnx-nodeps.txt" if missing == "tf_keras" else INSTALL_HINT
        raise UsageError(f"ONNX models need the packages of requirements-onnx.txt ({missing} is missing): "
                         f"{hint}") from None


def first_line(err: BaseException) -> str:
    return next((ln.strip() for ln in str(err).splitlines() if ln.strip()), type(err).__name__)


def _tensors(graph) -> Iterator[object]:
    """Every TensorProto of a graph: initializers and node attributes, subgraphs included."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _tensors(attr.g)
            for sub in attr.graphs:
                yield from _tensors(sub)


def external_locations(model) -> list[str]:
    """The external data files (as written in the graph) that the model's tensors are stored in, sorted."""
    from onnx import TensorProto

    found = set()
    for tensor in _tensors(model.graph):
        if tensor.data_location == TensorProto.EXTERNAL:
            found.update(e.value for e in tensor.external_data if e.key == "location")
    return sorted(found)


def _hash_file(digest, path: Path) -> None:
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            digest.update(block)


def read_onnx(source) -> OnnxSource:
    """Parse a `.onnx` path (finding its external data beside it) or take an onnx.ModelProto.

    UsageError for a missing or invalid file, a missing data file, or a ModelProto whose
    weights are still in files (its bytes alone would not say which weights it holds)."""
    onnx = import_optional("onnx")
    if not isinstance(source, (str, os.PathLike)):
        locations = external_locations(source)
        if locations:
            raise UsageError(f"the onnx.ModelProto keeps its weights in external files ({', '.join(locations)}); "
                             "pass the .onnx path instead, or load it with onnx.load(path), which reads them")
        data = source.SerializeToString()
        # a copy: the conversion rewrites the graph, and the caller's proto must stay as it was
        return OnnxSource(onnx.load_model_from_string(data), hashlib.sha256(data).hexdigest(), "the ONNX model", None)
    path = Path(source)
    if not path.is_file():
        raise UsageError(f"`model_path` {source} does not exist")
    data = path.read_bytes()
    try:
        model = onnx.load_model_from_string(data)
    except Exception as err:  # noqa: BLE001 - protobuf raises many types
        raise UsageError(f"{source} is not a valid ONNX model: {first_line(err)}") from None
    digest = hashlib.sha256(data)
    files = []
    for location in external_locations(model):
        file = path.parent / location
        if Path(location).is_absolute() or ".." in Path(location).parts:
            raise UsageError(f"{source} names the external data file {location!r} outside its own folder")
        if not file.is_file():
            raise UsageError(f"{source} keeps its weights in {location}, which is not in {path.parent}; "
                             "keep the data file beside the .onnx file (or export with external_data=False)")
        digest.update(f"\0{location}\0".encode())  # the name too: two files swapped are another model
        _hash_file(digest, file)
        files.append(file)
    return OnnxSource(model, digest.hexdigest(), str(source), path.parent, tuple(files))


def onnx_content_key(source) -> str:
    """SHA-256 (hex) of an ONNX model's graph and external data (see the module docstring)."""
    return read_onnx(source).key
