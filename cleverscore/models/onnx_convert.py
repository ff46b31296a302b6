"""ONNX classifiers (PyTorch or any framework's exports) as differentiable TensorFlow functions.

`load_onnx_model(path_or_proto)` converts the graph once with onnx2tf, checks the result
against onnxruntime, and caches it as a SavedModel keyed by the model's content (the graph
file and every external data file it names, onnx_source.py), so later runs load in a second
instead of importing the converter. Before conversion the graph is rewritten into an
equivalent one the converter handles (onnx_graph.py): it takes NHWC input, the layout of our
data files and image folders, whatever the ONNX input's layout (an NCHW input is transposed
inside the graph, so gradients and norms are those of the user's NHWC input), with a free
batch axis. If the graph still fixes the batch size, the error says how to export it.

Cache folder: `$CLEVER_CACHE_DIR/onnx`, else `$XDG_CACHE_HOME/clever/onnx`, else
`~/.cache/clever/onnx`. Entries can be deleted at any time.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cleverscore.errors import CleverError, UsageError
from cleverscore.models.onnx_graph import LAYOUTS, graph_input, prepare_graph
from cleverscore.models.onnx_source import OnnxSource, first_line, import_optional, read_onnx

CONVERTER_VERSION = "onnx2tf==1.28.8"
CACHE_FORMAT = 2  # bump when the cache key, the graph rewrites, the SavedModel or meta.json change meaning
VERIFY_RTOL = 1e-3  # converted vs onnxruntime logits, relative to the largest |logit|
# The export lines the README shows (tests/test_torch.py runs both).
EXPORT_LINE = ("torch.onnx.export(model.eval(), (x,), 'model.onnx', input_names=['input'], output_names=['logits'], "
               "dynamic_shapes=({0: torch.export.Dim('batch')},), external_data=False)")
LEGACY_EXPORT_LINE = ("torch.onnx.export(model.eval(), (x,), 'model.onnx', dynamo=False, input_names=['input'], "
                      "output_names=['logits'], dynamic_axes={'input': {0: 'batch'}, 'logits': {0: 'batch'}})")
EXPORT_HINT = f"export it with a dynamic batch axis: {EXPORT_LINE}"
# Keras wraps a failing layer's error in these lines; the cause is the text between them.
KERAS_WRAPPER = ("Exception encountered when calling layer", "Call arguments received by layer")


def is_onnx(model) -> bool:
    """Whether `model` is an ONNX file path or a loaded onnx.ModelProto (without importing onnx)."""
    if isinstance(model, (str, os.PathLike)):
        return str(model).lower().endswith(".onnx")
    return type(model).__name__ == "ModelProto" and type(model).__module__.startswith("onnx")


def cache_folder() -> Path:
    """Where converted models are kept (see the module docstring)."""
    if os.environ.get("CLEVER_CACHE_DIR"):
        return Path(os.environ["CLEVER_CACHE_DIR"]) / "onnx"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "clever" / "onnx"


@dataclass
class OnnxClassifier:
    """A converted ONNX model: call it on an NHWC float32 batch to get its first output.

    Attributes:
        image_shape: (H, W, C) of one input, in our (NHWC) layout.
        layout: the ONNX input's layout, 'nchw' or 'nhwc'.
        cache_path: the SavedModel folder it was loaded from.
        converted_now: True if this call converted the graph (False: loaded from the cache).
        content_key: SHA-256 of the graph and its external data (onnx_source.py).
    """

    fn: object
    image_shape: tuple[int, int, int]
    layout: str
    cache_path: Path
    converted_now: bool
    content_key: str = ""
    _module: object = None  # keeps the loaded SavedModel (and so its variables) alive

    def __call__(self, x):
        return self.fn(x)


def load_onnx_model(source, layout: str = "auto", image_shape: tuple[int, ...] | None = None,
                    cache_dir: str | os.PathLike | None = None) -> OnnxClassifier:
    """Convert (or load from the cache) an ONNX classifier.

    Args:
        source: a `.onnx` path (its external data files beside it) or an onnx.ModelProto.
        layout: the ONNX input's layout: 'nchw', 'nhwc', or 'auto' (read from its shape, with
            `image_shape` breaking ties).
        image_shape: (H, W, C) of the images it will see; fills dynamic spatial dimensions.
        cache_dir: overrides `cache_folder()`.
    """
    if layout not in LAYOUTS:
        raise UsageError(f"`input_layout` must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    found = read_onnx(source)
    shape = tuple(int(v) for v in image_shape) if image_shape is not None else None
    request = f"{layout}-{'x'.join(map(str, shape)) if shape else 'any'}-{CONVERTER_VERSION}-{CACHE_FORMAT}"
    entry = Path(cache_dir) / "onnx" if cache_dir else cache_folder()
    entry = entry / f"{found.key[:32]}-{hashlib.sha256(request.encode()).hexdigest()[:12]}"
    converted = False
    if not (entry / "meta.json").is_file():
        # up to half a minute, once per model: say so, or the run looks stuck before its first line
        print(f"[INFO] converting {found.name} to TensorFlow with onnx2tf (once per model; cached in "
              f"{entry.parent})", file=sys.stderr)
        _convert_into(found, layout, shape, entry)
        converted = True
    loaded = _load_entry(entry, converted)
    loaded.content_key = found.key
    return loaded


def _load_entry(entry: Path, converted: bool) -> OnnxClassifier:
    import tensorflow as tf

    meta = json.loads((entry / "meta.json").read_text())
    module = tf.saved_model.load(str(entry / "saved_model"))
    return OnnxClassifier(module.logits, tuple(meta["image_shape"]), meta["layout"], entry, converted,
                          _module=module)


def unsupported_ops(model) -> list[str]:
    """Operator types in the graph that the converter has no translation (onnx2tf/ops/<Op>.py) for."""
    import importlib.util

    spec = importlib.util.find_spec("onnx2tf")  # without importing it (and TensorFlow)
    if spec is None or not spec.submodule_search_locations:
        import_optional("onnx2tf")
    known = {p.stem for p in (Path(next(iter(spec.submodule_search_locations))) / "ops").glob("*.py")}
    return sorted({n.op_type for n in model.graph.node if n.op_type not in known})


def converter_cause(err: BaseException) -> str:
    """`Type: first line` of what made the converter fail, past Keras's wrapper text.

    A failing layer surfaces as 'Exception encountered when calling layer ...' with the real
    message (e.g. 'Dimensions must be equal ...') a paragraph below, and sometimes only in the
    exception it was raised from; the first line that is neither wrapper is the cause."""
    seen = []
    while err is not None and err not in seen and len(seen) < 8:
        seen.append(err)
        for line in str(err).splitlines():
            line = line.strip()
            if line.startswith(KERAS_WRAPPER[1]):
                break
            if line and not line.startswith(KERAS_WRAPPER[0]):
                return f"{type(err).__name__}: {line}"
        err = err.__cause__ or err.__context__
    return type(seen[0]).__name__ if seen else "unknown error"


def _run_converter(onnx2tf, model, input_name: str, workdir: str):
    log = io.StringIO()
    try:
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(io.StringIO()):
            return onnx2tf.convert(onnx_graph=model, output_folder_path=workdir, disable_model_save=True,
                                   non_verbose=True, not_use_onnxsim=True,
                                   keep_nwc_or_nhwc_or_ndhwc_input_names=[input_name])
    except Exception as err:  # noqa: BLE001 - the converter raises whatever the failing op raised
        node = getattr(err, "onnx_op_name", None)
        op = next((n.op_type for n in model.graph.node if n.name == node), None)
        where = f" at {op} node {node!r}" if op else ""
        raise CleverError(f"onnx2tf cannot convert the ONNX model{where}: {converter_cause(err)}") from None


def _wrap(tf_model, image_shape):
    """A tf.Module whose `logits` takes an NHWC (N, H, W, C) batch and returns the first output."""
    import tensorflow as tf

    h, w, ch = image_shape
    got = tuple(tf_model.inputs[0].shape[1:])
    if not all(d is None or d == e for d, e in zip(got, (h, w, ch))):
        raise CleverError(f"onnx2tf produced an input of shape {got}, expected {(h, w, ch)}")

    class Converted(tf.Module):
        def __init__(self):
            super().__init__()
            self.model = tf_model

        @tf.function(input_signature=[tf.TensorSpec([None, h, w, ch], tf.float32)])
        def logits(self, x):
            out = self.model(x, training=False)
            return out[0] if isinstance(out, (list, tuple)) else out

    return Converted()


def _session(ort, model, what: str):
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: its warnings (unused initializers, ...) are not the user's concern
    try:
        return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except Exception as err:  # noqa: BLE001 - onnxruntime raises its own types
        raise CleverError(f"onnxruntime cannot load {what}: {first_line(err)}") from None


def _check_batch(ort, model, original, image_shape, layout: str, batch: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Run onnxruntime on the rewritten graph with a batch of 3: the freed batch axis must hold.

    A fixed-batch export is also run as exported, on its own batch size: the rewritten graph
    must give its numbers (this checks the rewrites of onnx_graph.py). Returns (x, logits)."""
    rows = max(3, batch or 0)
    x = np.random.default_rng(0).uniform(0.0, 1.0, (rows, *image_shape)).astype(np.float32)
    session = _session(ort, model, "the ONNX model")
    input_name = graph_input(model)[0].name
    try:
        out = session.run(None, {input_name: x[:3]})[0]
    except Exception:  # noqa: BLE001 - a shape error inside the graph: the batch size may be baked in
        out = None
    if out is None or out.ndim != 2 or out.shape[0] != 3:
        try:
            session.run(None, {input_name: x[: batch or 1]})
        except Exception as err:  # noqa: BLE001 - not a batch problem: the graph fails on any input
            raise CleverError(f"onnxruntime cannot run the ONNX model: {first_line(err)}") from None
        raise UsageError(f"the ONNX model only runs with its fixed batch size{f' ({batch})' if batch else ''}; "
                         f"{EXPORT_HINT}")
    if batch:
        as_exported = x[:batch].transpose(0, 3, 1, 2) if layout == "nchw" else x[:batch]
        want = _session(ort, original, "the ONNX model as exported").run(
            None, {graph_input(original)[0].name: as_exported})[0]
        got = session.run(None, {input_name: x[:batch]})[0]
        if got.shape != want.shape or not np.allclose(got, want, rtol=1e-5, atol=1e-5 * max(np.abs(want).max(), 1)):
            raise UsageError(f"the ONNX model fixes its batch size ({batch}) in a way that cannot be undone; "
                             f"{EXPORT_HINT}")
    return x[:3], out


def _convert_into(found: OnnxSource, layout: str, image_shape, entry: Path) -> None:
    # onnx is light; the converter imports TensorFlow and takes seconds, so bad files fail first.
    onnx = import_optional("onnx")
    model = found.load_weights()
    try:
        onnx.checker.check_model(model)
    except Exception as err:  # noqa: BLE001 - the checker raises many types
        raise UsageError(f"{found.name} is not a valid ONNX model: {first_line(err)}") from None
    original = type(model)()
    original.CopyFrom(model)
    layout, shape, batch = prepare_graph(model, layout, image_shape)
    missing = unsupported_ops(model)
    if missing:
        raise UsageError(f"the ONNX model uses {', '.join(missing)}, which the converter ({CONVERTER_VERSION}) "
                         "cannot translate")
    ort = import_optional("onnxruntime")
    x, reference = _check_batch(ort, model, original, shape, layout, batch)
    del original
    onnx2tf = import_optional("onnx2tf")
    import_optional("tf_keras")  # onnx2tf imports it; installed apart (requirements-onnx-nodeps.txt)
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", dir=entry.parent))
    except OSError as err:
        raise CleverError(f"cannot write the ONNX cache folder {entry.parent}: {err.strerror}; "
                          "point CLEVER_CACHE_DIR at a writable folder") from None
    try:
        module = _wrap(_run_converter(onnx2tf, model, graph_input(model)[0].name, str(work / "onnx2tf")), shape)
        got = module.logits(x).numpy()
        error = float(np.max(np.abs(got - reference)) / max(float(np.max(np.abs(reference))), 1e-6))
        if got.shape != reference.shape or not error <= VERIFY_RTOL:
            raise CleverError(f"the converted model differs from onnxruntime (relative error {error:.3g} on the "
                              f"same inputs)")
        import tensorflow as tf

        tf.saved_model.save(module, str(work / "saved_model"))
        meta = {"image_shape": list(shape), "layout": layout, "converter": CONVERTER_VERSION,
                "verify_relative_error": error, "source": found.name, "content_key": found.key,
                "external_data": [p.name for p in found.external]}
        (work / "meta.json").write_text(json.dumps(meta, indent=1))
        shutil.rmtree(work / "onnx2tf", ignore_errors=True)
        _publish(work, entry)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _publish(work: Path, entry: Path) -> None:
    """Move a finished entry into place; a concurrent run that finished first wins."""
    try:
        os.replace(work, entry)
    except OSError:
        if not (entry / "meta.json").is_file():
            raise
        print(f"[INFO] another run cached {entry.name} first; using its copy", file=sys.stderr)
