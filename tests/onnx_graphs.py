"""ONNX graphs written with `onnx.helper` for the tests and the benchmark (no PyTorch needed).

Each builder returns an `onnx.ModelProto` laid out like a PyTorch export: NCHW input, OIHW
convolution weights, Gemm with transB=1, and a dynamic batch axis unless `batch` is given.
"""

from __future__ import annotations

import numpy as np

OPSET = 17


def _model(nodes, inputs, outputs, weights: dict[str, np.ndarray], opset: int = OPSET):
    import onnx
    from onnx import helper, numpy_helper

    graph = helper.make_graph(nodes, "clever_test", inputs, outputs,
                              [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in weights.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="clever-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _io(name: str, shape):
    from onnx import TensorProto, helper

    return helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape))


def keras_cnn_as_onnx(model, batch: int | str = "batch"):
    """A Keras Sequential of Conv2D/MaxPooling2D/Flatten/Dense (ReLU or no activation) as an NCHW ONNX graph.

    Convolution kernels go from HWIO to OIHW, and the first Dense layer's rows are permuted
    from Keras' HWC flattening order to the CHW order of a PyTorch Flatten, so the ONNX
    graph computes the same function on the transposed input.
    """
    from onnx import helper

    h, w, c = model.input_shape[1:]
    nodes, weights, cur, spatial, flattened = [], {}, "input", (h, w, c), False
    for k, layer in enumerate(model.layers):
        kind, out = type(layer).__name__, f"t{k}"
        if kind == "Conv2D":
            kernel, bias = layer.get_weights()
            weights[f"w{k}"], weights[f"b{k}"] = kernel.transpose(3, 2, 0, 1), bias
            nodes.append(helper.make_node("Conv", [cur, f"w{k}", f"b{k}"], [out], kernel_shape=list(kernel.shape[:2])))
            spatial = (spatial[0] - kernel.shape[0] + 1, spatial[1] - kernel.shape[1] + 1, kernel.shape[3])
        elif kind == "MaxPooling2D":
            nodes.append(helper.make_node("MaxPool", [cur], [out], kernel_shape=[2, 2], strides=[2, 2]))
            spatial = (spatial[0] // 2, spatial[1] // 2, spatial[2])
        elif kind == "Flatten":
            nodes.append(helper.make_node("Flatten", [cur], [out], axis=1))
        elif kind == "Dense":
            kernel, bias = layer.get_weights()
            if not flattened:  # Keras flattened H, W, C; the NCHW graph flattens C, H, W
                kernel = kernel.reshape(*spatial, -1).transpose(2, 0, 1, 3).reshape(kernel.shape)
                flattened = True
            weights[f"w{k}"], weights[f"b{k}"] = kernel.T, bias
            nodes.append(helper.make_node("Gemm", [cur, f"w{k}", f"b{k}"], [out], transB=1))
        elif kind == "Dropout":
            continue
        else:
            raise ValueError(f"layer {kind} is not supported by this test exporter")
        cur = out
        act = getattr(getattr(layer, "activation", None), "__name__", "linear")
        if act == "relu":
            nodes.append(helper.make_node("Relu", [cur], [f"{cur}_relu"]))
            cur = f"{cur}_relu"
        elif act != "linear":
            raise ValueError(f"activation {act} is not supported by this test exporter")
    nodes.append(helper.make_node("Identity", [cur], ["logits"]))
    classes = model.output_shape[-1]
    return _model(nodes, [_io("input", [batch, c, h, w])], [_io("logits", [batch, classes])], weights)


def affine_nchw(weights: np.ndarray, bias: np.ndarray, chw: tuple[int, int, int], batch: int | str = "batch"):
    """logits = W^T flatten_CHW(x) + b on an NCHW input (W: (C*H*W, classes))."""
    from onnx import helper

    nodes = [helper.make_node("Flatten", ["input"], ["flat"], axis=1),
             helper.make_node("Gemm", ["flat", "w", "b"], ["logits"], transB=1)]
    return _model(nodes, [_io("input", [batch, *chw])], [_io("logits", [batch, weights.shape[1]])],
                  {"w": weights.T, "b": bias})


def residual_cnn(seed: int = 0, classes: int = 10):
    """Conv-BN-ReLU, a residual block (Conv-BN-ReLU-Conv-BN + skip, Add, ReLU), GlobalAveragePool, Gemm.

    Input (batch, 3, 32, 32)."""
    from onnx import helper

    rng = np.random.default_rng(seed)
    ch = 8
    weights: dict[str, np.ndarray] = {}
    nodes = []

    def conv_bn(name, src, cin, relu):
        weights[f"{name}_w"] = rng.normal(0, np.sqrt(2 / (9 * cin)), (ch, cin, 3, 3))
        weights[f"{name}_scale"] = rng.uniform(0.5, 1.5, ch)
        weights[f"{name}_shift"] = rng.normal(0, 0.1, ch)
        weights[f"{name}_mean"] = rng.normal(0, 0.1, ch)
        weights[f"{name}_var"] = rng.uniform(0.5, 2.0, ch)
        nodes.append(helper.make_node("Conv", [src, f"{name}_w"], [f"{name}_c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]))
        nodes.append(helper.make_node("BatchNormalization", [f"{name}_c", f"{name}_scale", f"{name}_shift",
                                                             f"{name}_mean", f"{name}_var"], [f"{name}_bn"], epsilon=1e-5))
        if not relu:
            return f"{name}_bn"
        nodes.append(helper.make_node("Relu", [f"{name}_bn"], [f"{name}_r"]))
        return f"{name}_r"

    stem = conv_bn("stem", "input", 3, True)
    branch = conv_bn("res2", conv_bn("res1", stem, ch, True), ch, False)
    nodes.append(helper.make_node("Add", [stem, branch], ["sum"]))
    nodes.append(helper.make_node("Relu", ["sum"], ["block"]))
    nodes.append(helper.make_node("GlobalAveragePool", ["block"], ["pooled"]))
    nodes.append(helper.make_node("Flatten", ["pooled"], ["flat"], axis=1))
    weights["fc_w"], weights["fc_b"] = rng.normal(0, 0.5, (classes, ch)), rng.normal(0, 0.1, classes)
    nodes.append(helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], transB=1))
    return _model(nodes, [_io("input", ["batch", 3, 32, 32])], [_io("logits", ["batch", classes])], weights)


def _constant(name: str, values, dtype=np.int64):
    """A Constant node, as PyTorch's older exporter writes shape arithmetic."""
    from onnx import helper, numpy_helper

    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.asarray(values, dtype), name))


def view_flatten_affine(weights: np.ndarray, bias: np.ndarray, chw: tuple[int, int, int]):
    """The affine model of `affine_nchw` with `x.view(x.size(0), -1)` as the older exporter writes it:
    Shape, Gather(0), Unsqueeze, Concat with a constant -1 (all int64 in ONNX), Reshape."""
    from onnx import helper

    nodes = [helper.make_node("Shape", ["input"], ["shape"]),
             _constant("zero", 0),
             helper.make_node("Gather", ["shape", "zero"], ["n"], axis=0),
             _constant("axes", [0]),
             helper.make_node("Unsqueeze", ["n", "axes"], ["n1"]),
             _constant("minus_one", [-1]),
             helper.make_node("Concat", ["n1", "minus_one"], ["flat_shape"], axis=0),
             helper.make_node("Reshape", ["input", "flat_shape"], ["flat"]),
             helper.make_node("Gemm", ["flat", "w", "b"], ["logits"], transB=1)]
    return _model(nodes, [_io("input", ["batch", *chw])], [_io("logits", ["batch", weights.shape[1]])],
                  {"w": weights.T, "b": bias})


def constant_reshape_affine(weights: np.ndarray, bias: np.ndarray, chw: tuple[int, int, int], batch: int,
                            shape: list[int], through_identity: bool = False):
    """The affine model with a fixed batch and its flatten a Reshape to the constant `shape`, as torch's
    current exporter writes a fixed-batch export ([batch, C*H*W] or [batch, -1]). `through_identity`
    hides the constant behind an Identity node, which no rewrite looks through."""
    from onnx import helper

    source = "shape_raw" if through_identity else "shape"
    nodes = [_constant(source, shape)]
    if through_identity:
        nodes.append(helper.make_node("Identity", ["shape_raw"], ["shape"]))
    nodes += [helper.make_node("Reshape", ["input", "shape"], ["flat"], allowzero=1),
              helper.make_node("Gemm", ["flat", "w", "b"], ["logits"], transB=1)]
    return _model(nodes, [_io("input", [batch, *chw])], [_io("logits", [batch, weights.shape[1]])],
                  {"w": weights.T, "b": bias})


def conv_mean_head(seed: int = 0, classes: int = 5):
    """Conv, then ReduceMean over H and W with its axes from a Constant node (opset 18), then Gemm:
    the global average pool `h.mean((2, 3))` of the older exporter. Input (batch, 3, 6, 8)."""
    from onnx import helper

    rng = np.random.default_rng(seed)
    weights = {"cw": rng.normal(0, 0.5, (4, 3, 3, 3)), "cb": rng.normal(0, 0.1, 4),
               "fw": rng.normal(0, 0.5, (classes, 4)), "fb": rng.normal(0, 0.1, classes)}
    nodes = [helper.make_node("Conv", ["input", "cw", "cb"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             _constant("mean_axes", [2, 3]),
             helper.make_node("ReduceMean", ["r", "mean_axes"], ["pooled"], keepdims=0),
             helper.make_node("Gemm", ["pooled", "fw", "fb"], ["logits"], transB=1)]
    return _model(nodes, [_io("input", ["batch", 3, 6, 8])], [_io("logits", ["batch", classes])], weights, opset=18)
