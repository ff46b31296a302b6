"""Rewrites of an ONNX graph before onnx2tf converts it: each keeps what the graph computes.

onnx2tf 1.28.8 fails on (or, worse, mistranslates) some patterns that PyTorch's exporters write;
these passes turn them into equivalent graphs it handles:

- `constants_to_initializers`: Constant nodes become initializers. The older exporter gives
  ReduceMean its axes through a Constant node, and onnx2tf then reduces the wrong axes of its
  NHWC tensors (the Gemm after it fails); from an initializer it maps the axes.
- `shapes_to_int64`: a Cast to int64 after every Shape and Size. ONNX defines their output as
  int64; onnx2tf makes it int32, so `x.view(x.size(0), -1)` (Shape, Gather, Unsqueeze, Concat
  with an int64 -1) fails at the Concat.
- `free_constant_batch`: a Reshape to a constant shape whose first entry is the export's fixed
  batch size gets -1 there instead (and its other entries made explicit). The current exporter
  turns every flatten of a fixed-batch export into such a Reshape.
- `take_nhwc_input`: the graph takes an NHWC batch of any size (a Transpose in front for an NCHW
  input), so gradients and norms are those of the user's NHWC images.
"""

from __future__ import annotations

import numpy as np

from cleverscore.errors import UsageError

LAYOUTS = ("auto", "nchw", "nhwc")


def graph_input(model):
    """(the one non-initializer input, its dims with None for dynamic ones); UsageError otherwise."""
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
    if layout not in LAYOUTS:
        raise UsageError(f"`input_layout` must be one of {', '.join(LAYOUTS)}, got {layout!r}")
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


def _replace_nodes(graph, nodes) -> None:
    kept = list(nodes)
    del graph.node[:]
    graph.node.extend(kept)


def _constant_tensor(node):
    """The TensorProto a Constant node holds, or None for the kinds kept as nodes (sparse, strings)."""
    from onnx import helper, numpy_helper

    attr = node.attribute[0] if len(node.attribute) == 1 else None
    if attr is None:
        return None
    if attr.name == "value":
        tensor = type(attr.t)()
        tensor.CopyFrom(attr.t)
        return tensor
    values = {"value_float": np.float32, "value_floats": np.float32, "value_int": np.int64, "value_ints": np.int64}
    if attr.name not in values:
        return None
    return numpy_helper.from_array(np.asarray(helper.get_attribute_value(attr), values[attr.name]))


def constants_to_initializers(model) -> int:
    """Move the main graph's Constant nodes into initializers; returns how many moved."""
    graph = model.graph
    outputs = {o.name for o in graph.output}
    kept, moved = [], 0
    for node in graph.node:
        tensor = _constant_tensor(node) if node.op_type == "Constant" and node.domain in ("", "ai.onnx") else None
        if tensor is None or node.output[0] in outputs:
            kept.append(node)
            continue
        tensor.name = node.output[0]
        graph.initializer.append(tensor)
        moved += 1
    _replace_nodes(graph, kept)
    return moved


def _fresh_name(graph, base: str) -> str:
    used = {n for node in graph.node for n in (*node.input, *node.output)} | {t.name for t in graph.initializer}
    used |= {i.name for i in graph.input} | {o.name for o in graph.output}
    name = base
    while name in used:
        name += "_"
    return name


def shapes_to_int64(model) -> int:
    """Follow every Shape and Size node with a Cast to int64 (a no-op in ONNX); returns how many."""
    from onnx import TensorProto, helper

    graph = model.graph
    nodes, count = [], 0
    for node in graph.node:
        nodes.append(node)
        if node.op_type in ("Shape", "Size") and node.domain in ("", "ai.onnx"):
            value = node.output[0]
            raw = _fresh_name(graph, f"{value}_clever_raw")
            node.output[0] = raw
            nodes.append(helper.make_node("Cast", [raw], [value], to=TensorProto.INT64, name=f"{raw}_cast"))
            count += 1
    _replace_nodes(graph, nodes)
    return count


def free_constant_batch(model, batch: int) -> int:
    """Rewrite Reshapes to a constant shape [batch, ...] as [-1, ...] (see the module docstring).

    Only where shape inference on the fixed-batch graph shows the batch on both sides (data
    and result have `batch` rows) and the result's other dimensions are known; returns how many.
    """
    import onnx
    from onnx import numpy_helper

    graph = model.graph
    try:
        inferred = onnx.shape_inference.infer_shapes(model).graph
    except Exception:  # noqa: BLE001 - without shapes nothing is rewritten; the batch check reports the rest
        return 0
    shapes = {}
    for info in (*inferred.value_info, *inferred.input, *inferred.output):
        dims = info.type.tensor_type.shape.dim
        shapes[info.name] = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    constants = {t.name: t for t in graph.initializer}
    count, replaced = 0, set()
    for node in graph.node:
        if node.op_type != "Reshape" or len(node.input) < 2 or node.input[1] not in constants:
            continue
        target = numpy_helper.to_array(constants[node.input[1]])
        data, result = shapes.get(node.input[0]), shapes.get(node.output[0])
        if (target.ndim != 1 or not len(target) or int(target[0]) != batch or not data or not result
                or data[0] != batch or result[0] != batch or None in result[1:]):
            continue
        old, name = node.input[1], _fresh_name(graph, f"{node.input[1]}_any_batch")
        graph.initializer.append(numpy_helper.from_array(np.array([-1, *result[1:]], np.int64), name))
        node.input[1] = name
        replaced.add(old)
        count += 1
    # onnxruntime warns about initializers nothing reads; drop the shapes no Reshape reads any more
    used = {n for node in graph.node for n in node.input} | {o.name for o in graph.output}
    for tensor in [t for t in graph.initializer if t.name in replaced and t.name not in used]:
        graph.initializer.remove(tensor)
        for listed in [i for i in graph.input if i.name == tensor.name]:  # older IRs list initializers as inputs
            graph.input.remove(listed)
    return count


def take_nhwc_input(model, layout: str, image_shape) -> tuple[str, tuple[int, int, int]]:
    """Make the graph take NHWC input with a free batch axis; returns (the input's layout, (H, W, C)).

    An NCHW input gets a Transpose in front, so that the graph itself takes our layout: the
    converter then never has to guess how to carry NCHW through (onnx2tf 1.28.8 fails on a
    Flatten or Reshape applied directly to an NCHW input)."""
    from onnx import TensorProto, helper

    original, dims = graph_input(model)
    layout, (h, w, ch) = resolve_layout(dims, layout, image_shape)
    name = original.name
    if layout == "nchw":
        name = _fresh_name(model.graph, f"{original.name}_nhwc")
        model.graph.node.insert(0, helper.make_node("Transpose", [name], [original.name], perm=[0, 3, 1, 2],
                                                    name="clever_nhwc_to_nchw"))
    position = list(model.graph.input).index(original)
    model.graph.input.remove(original)
    model.graph.input.insert(position, helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", h, w, ch]))
    for out in model.graph.output:
        out_dims = out.type.tensor_type.shape.dim
        if len(out_dims):
            out_dims[0].Clear()
            out_dims[0].dim_param = "batch"
    del model.graph.value_info[:]  # stale shapes with the old batch size would mislead the converter
    return layout, (h, w, ch)


def prepare_graph(model, layout: str, image_shape) -> tuple[str, tuple[int, int, int], int | None]:
    """Apply every pass in place; returns (the input's layout, (H, W, C), the export's fixed batch or None)."""
    batch = graph_input(model)[1][0]
    constants_to_initializers(model)
    if batch:
        free_constant_batch(model, batch)
    shapes_to_int64(model)
    layout, shape = take_nhwc_input(model, layout, image_shape)
    return layout, shape, batch
