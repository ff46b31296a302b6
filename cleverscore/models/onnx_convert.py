"""ONNX classifiers (PyTorch or any framework's exports) as differentiable TensorFlow functions.

`load_onnx_model(path_or_proto)` converts the graph once with onnx2tf, checks the result
against onnxruntime, and caches it as a SavedModel keyed by the file's SHA-256, so later runs
load in a second instead of importing the converter. The converted function takes NHWC input,
the layout of our data files and image folders, whatever the ONNX input's layout: an NCHW
(PyTorch) input is transposed inside the graph, so gradients and norms are those of the
user's NHWC input. A fixed batch dimension is freed before conversion; if the graph itself
fixes the batch size (a Reshape to a constant shape), the error says how to export it with a
dynamic batch axis.

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

CONVERTER_VERSION = "onnx2tf==1.28.8"
CACHE_FORMAT = 1  # bump when the cached SavedModel or meta.json changes meaning
LAYOUTS = ("auto", "nchw", "nhwc")
VERIFY_RTOL = 1e-3  # converted vs onnxruntime logits, relative to the largest |logit|
INSTALL_HINT = "pip install -r requirements-onnx.txt"
EXPORT_HINT = ("export it with a dynamic batch axis: torch.onnx.export(model, x, 'model.onnx', input_names=['input'], "
               "output_names=['logits'], dynamic_axes={'input': {0: 'batch'}, 'logits': {0: 'batch'}})")


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
    """

    fn: object
    image_shape: tuple[int, int, int]
    layout: str
    cache_path: Path
    converted_now: bool
    _module: object = None  # keeps the loaded SavedModel (and so its variables) alive

    def __call__(self, x):
        return self.fn(x)


def load_onnx_model(source, layout: str = "auto", image_shape: tuple[int, ...] | None = None,
                    cache_dir: str | os.PathLike | None = None) -> OnnxClassifier:
    """Convert (or load from the cache) an ONNX classifier.

    Args:
        source: a `.onnx` path or an onnx.ModelProto.
        layout: the ONNX input's layout: 'nchw', 'nhwc', or 'auto' (read from its shape, with
            `image_shape` breaking ties).
        image_shape: (H, W, C) of the images it will see; fills dynamic spatial dimensions.
        cache_dir: overrides `cache_folder()`.
    """
    if layout not in LAYOUTS:
        raise UsageError(f"`input_layout` must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    data, name = _read_bytes(source)
    shape = tuple(int(v) for v in image_shape) if image_shape is not None else None
    key = hashlib.sha256(data).hexdigest()[:32]
    request = f"{layout}-{'x'.join(map(str, shape)) if shape else 'any'}-{CONVERTER_VERSION}-{CACHE_FORMAT}"
    entry = Path(cache_dir) / "onnx" if cache_dir else cache_folder()
    entry = entry / f"{key}-{hashlib.sha256(request.encode()).hexdigest()[:12]}"
    converted = False
    if not (entry / "meta.json").is_file():
        _convert_into(data, name, layout, shape, entry)
        converted = True
    return _load_entry(entry, converted)


def _read_bytes(source) -> tuple[bytes, str]:
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise UsageError(f"`model_path` {source} does not exist")
        return path.read_bytes(), str(source)
    return source.SerializeToString(), "the ONNX model"


def _load_entry(entry: Path, converted: bool) -> OnnxClassifier:
    import tensorflow as tf

    meta = json.loads((entry / "meta.json").read_text())
    module = tf.saved_model.load(str(entry / "saved_model"))
    return OnnxClassifier(module.logits, tuple(meta["image_shape"]), meta["layout"], entry, converted, module)


# ------------------------------------------------------------------------------------------------
def _import(name: str):
    """An optional package, or a one-line error saying how to install it."""
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError as err:
        raise UsageError(f"ONNX models need the packages of requirements-onnx.txt ({err.name or name} is missing): "
                         f"{INSTALL_HINT}") from None


def _parse(onnx, data: bytes, name: str):
    try:
        model = onnx.load_model_from_string(data)
        onnx.checker.check_model(model)
    except Exception as err:  # noqa: BLE001 - protobuf and the checker raise many types
        first = next((ln.strip() for ln in str(err).splitlines() if ln.strip()), type(err).__name__)
        raise UsageError(f"{name} is not a valid ONNX model: {first}") from None
    return model


def _graph_input(model):
    initializers = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise UsageError(f"the ONNX model must take one input (a batch of images), it takes {len(inputs)}")
    tensor = inputs[0].type.tensor_type
    if tensor.elem_type != 1:  # TensorProto.FLOAT
        raise UsageError(f"the ONNX model's input {inputs[0].name!r} must be float32")
    dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
    if len(dims) != 4:
        raise UsageError(f"the ONNX model's input must be an image batch (N, C, H, W) or (N, H, W, C), "
                         f"got rank {len(dims)}")
    return inputs[0], dims


def _fits(dims, want) -> bool:
    return all(d is None or d == w for d, w in zip(dims, want))


def resolve_layout(dims: list, layout: str, image_shape: tuple[int, int, int] | None) -> tuple[str, tuple]:
    """('nchw' or 'nhwc', (H, W, C)) for the ONNX input dims [N, a, b, c]."""
    a, b, c = dims[1:]
    if image_shape is not None:
        h, w, ch = image_shape
        fits = {"nchw": _fits((a, b, c), (ch, h, w)), "nhwc": _fits((a, b, c), (h, w, ch))}
        if layout == "auto":
            layout = "nchw" if fits["nchw"] else "nhwc" if fits["nhwc"] else ""
        if not layout or not fits[layout]:
            shown = ", ".join("?" if d is None else str(d) for d in dims[1:])
            raise UsageError(f"the ONNX model takes ({shown}) per image but the images are {h}x{w}x{ch} (H, W, C)"
                             f"{'' if layout else ' in either layout'}")
        return layout, (h, w, ch)
    if layout == "auto":
        channels_last = c in (1, 3, 4) and a not in (1, 3, 4)
        layout = "nhwc" if channels_last else "nchw"  # PyTorch exports are NCHW
    shape = (b, c, a) if layout == "nchw" else (a, b, c)
    if None in shape:
        raise UsageError("the ONNX model's input has dynamic image dimensions; give the images (`data_path`) "
                         "so that they can be fixed")
    return layout, shape


def _prepare(model, layout: str, image_shape):
    """The graph as one taking NHWC input with a free batch axis; returns (model, layout, (H, W, C)).

    An NCHW input gets a Transpose in front, so that the graph itself takes our layout: the
    converter then never has to guess how to carry NCHW through (onnx2tf 1.28.8 fails on a
    Flatten or Reshape applied directly to an NCHW input)."""
    from onnx import TensorProto, helper

    graph_input, dims = _graph_input(model)
    layout, (h, w, ch) = resolve_layout(dims, layout, image_shape)
    name = graph_input.name
    if layout == "nchw":
        name = f"{graph_input.name}_nhwc"
        while any(name in (*n.input, *n.output) for n in model.graph.node):
            name += "_"
        model.graph.node.insert(0, helper.make_node("Transpose", [name], [graph_input.name], perm=[0, 3, 1, 2],
                                                    name="clever_nhwc_to_nchw"))
    position = list(model.graph.input).index(graph_input)
    model.graph.input.remove(graph_input)
    model.graph.input.insert(position, helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", h, w, ch]))
    for out in model.graph.output:
        out_dims = out.type.tensor_type.shape.dim
        if len(out_dims):
            out_dims[0].Clear()
            out_dims[0].dim_param = "batch"
    del model.graph.value_info[:]  # stale shapes with the old batch size would mislead the converter
    return model, layout, (h, w, ch)


def unsupported_ops(model) -> list[str]:
    """Operator types in the graph that the converter has no translation (onnx2tf/ops/<Op>.py) for."""
    import importlib.util

    spec = importlib.util.find_spec("onnx2tf")  # without importing it (and TensorFlow)
    if spec is None or not spec.submodule_search_locations:
        _import("onnx2tf")
    known = {p.stem for p in (Path(next(iter(spec.submodule_search_locations))) / "ops").glob("*.py")}
    return sorted({n.op_type for n in model.graph.node if n.op_type not in known})


def _run_converter(onnx2tf, model, input_name: str, workdir: str):
    log = io.StringIO()
    try:
        with contextlib.redirect_stdout(log):
            return onnx2tf.convert(onnx_graph=model, output_folder_path=workdir, disable_model_save=True,
                                   non_verbose=True, not_use_onnxsim=True,
                                   keep_nwc_or_nhwc_or_ndhwc_input_names=[input_name])
    except Exception as err:  # noqa: BLE001 - the converter raises whatever the failing op raised
        node = getattr(err, "onnx_op_name", None)
        op = next((n.op_type for n in model.graph.node if n.name == node), None)
        where = f" at {op} node {node!r}" if op else ""
        first = next((ln.strip() for ln in str(err).splitlines() if ln.strip()), type(err).__name__)
        raise CleverError(f"onnx2tf cannot convert the ONNX model{where}: {type(err).__name__}: {first}") from None


def _wrap(tf_model, image_shape):
    """A tf.Module whose `logits` takes an NHWC (N, H, W, C) batch and returns the first output."""
    import tensorflow as tf

    h, w, ch = image_shape
    got = tuple(tf_model.inputs[0].shape[1:])
    if not _fits(got, (h, w, ch)):
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


def _check_batch(ort, model, input_name: str, image_shape) -> tuple[object, np.ndarray, np.ndarray]:
    """Run onnxruntime on a batch of 3; the freed batch axis must hold. Returns (session, x, logits)."""
    x = np.random.default_rng(0).uniform(0.0, 1.0, (3, *image_shape)).astype(np.float32)
    try:
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    except Exception as err:  # noqa: BLE001
        first = next((ln.strip() for ln in str(err).splitlines() if ln.strip()), type(err).__name__)
        raise CleverError(f"onnxruntime cannot load the ONNX model: {first}") from None
    try:
        out = session.run(None, {input_name: x})[0]
    except Exception:  # noqa: BLE001 - a shape error inside the graph: the batch size may be baked in
        out = None
    if out is None or out.ndim != 2 or out.shape[0] != 3:
        try:
            session.run(None, {input_name: x[:1]})
        except Exception as err:  # noqa: BLE001 - not a batch problem: the graph fails on any input
            first = next((ln.strip() for ln in str(err).splitlines() if ln.strip()), type(err).__name__)
            raise CleverError(f"onnxruntime cannot run the ONNX model: {first}") from None
        raise UsageError(f"the ONNX model only runs with its fixed batch size; {EXPORT_HINT}")
    return session, x, out


def _convert_into(data: bytes, name: str, layout: str, image_shape, entry: Path) -> None:
    # onnx is light; the converter imports TensorFlow and takes seconds, so bad files fail first.
    model, layout, shape = _prepare(_parse(_import("onnx"), data, name), layout, image_shape)
    missing = unsupported_ops(model)
    if missing:
        raise UsageError(f"the ONNX model uses {', '.join(missing)}, which the converter ({CONVERTER_VERSION}) "
                         "cannot translate")
    ort = _import("onnxruntime")
    onnx2tf = _import("onnx2tf")
    input_name = _graph_input(model)[0].name
    _, x, reference = _check_batch(ort, model, input_name, shape)
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", dir=entry.parent))
    except OSError as err:
        raise CleverError(f"cannot write the ONNX cache folder {entry.parent}: {err.strerror}; "
                          "point CLEVER_CACHE_DIR at a writable folder") from None
    try:
        module = _wrap(_run_converter(onnx2tf, model, input_name, str(work / "onnx2tf")), shape)
        got = module.logits(x).numpy()
        error = float(np.max(np.abs(got - reference)) / max(float(np.max(np.abs(reference))), 1e-6))
        if got.shape != reference.shape or not error <= VERIFY_RTOL:
            raise CleverError(f"the converted model differs from onnxruntime (relative error {error:.3g} on the "
                              f"same inputs)")
        import tensorflow as tf

        tf.saved_model.save(module, str(work / "saved_model"))
        meta = {"image_shape": list(shape), "layout": layout, "converter": CONVERTER_VERSION,
                "verify_relative_error": error, "source": name}
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
