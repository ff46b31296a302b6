"""The bound-propagation graph: a DAG of operators built from a Keras 3 model.

`from_keras` walks the model backward from its output through each tensor's Keras history,
so Sequential models, functional models with Add merges and nested models all give the same
kind of graph. Nodes are stored in topological order; node 0 is the raw input and the last
node is the model's output (the logits). One Keras layer can give several nodes: a Dense or
Conv2D with an activation becomes a linear node followed by an activation node, so that the
pre-activation bounds have a node to live on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import tensorflow as tf

from cleverscore.errors import UsageError

from . import ops

SUPPORTED_LAYERS = (
    "InputLayer, Dense, Conv2D, MaxPooling2D, AveragePooling2D, GlobalAveragePooling2D, Flatten, Reshape, "
    "BatchNormalization, Add, Dropout, Identity, Activation, ReLU and nested models of these"
)
SUPPORTED_ACTIVATIONS = ("linear", "relu", "brelu", "tanh", "sigmoid", "softplus", "softplus10", "elu")


@dataclass(frozen=True)
class Node:
    """One operator application: `op` on the outputs of the nodes `inputs`, giving `shape` (no batch axis)."""

    op: ops.Operator | None
    inputs: tuple[int, ...]
    shape: tuple[int, ...]

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    @property
    def name(self) -> str:
        return "input" if self.op is None else self.op.name


@dataclass(frozen=True)
class Graph:
    """Operators in topological order; node 0 is the input (op None), the last node the output."""

    nodes: tuple[Node, ...]
    dtype: tf.DType
    consumers: tuple[tuple[int, ...], ...] = field(init=False, repr=False)

    def __post_init__(self):
        users: list[list[int]] = [[] for _ in self.nodes]
        for i, node in enumerate(self.nodes):
            for j in node.inputs:
                users[j].append(i)
        object.__setattr__(self, "consumers", tuple(tuple(u) for u in users))

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.nodes[0].shape

    @property
    def num_outputs(self) -> int:
        return self.nodes[-1].size

    def needs_bounds(self, i: int) -> bool:
        """Whether node i feeds a nonlinear operator, whose relaxation needs node i's bounds."""
        return any(self.nodes[j].op.nonlinear for j in self.consumers[i])

    def forward_all(self, x: tf.Tensor, last: int | None = None) -> list[tf.Tensor]:
        """The value of every node (up to node `last`, default all) for a batch of inputs (N, *input_shape)."""
        values = [tf.convert_to_tensor(x, self.dtype)]
        for node in self.nodes[1:None if last is None else last + 1]:
            values.append(node.op.forward(*[values[j] for j in node.inputs]))
        return values

    def forward(self, x: tf.Tensor) -> tf.Tensor:
        """The logits (N, num_outputs) for a batch of inputs."""
        return tf.reshape(self.forward_all(x)[-1], (-1, self.num_outputs))


class _Builder:
    def __init__(self, dtype: tf.DType):
        self.dtype = dtype
        self.nodes: list[Node] = []

    def add(self, op: ops.Operator | None, inputs: Sequence[int], shape: tuple[int, ...] | None = None) -> int:
        if shape is None:
            shape = op.output_shape(*[self.nodes[j].shape for j in inputs])
        self.nodes.append(Node(op, tuple(inputs), tuple(int(s) for s in shape)))
        return len(self.nodes) - 1

    def shape(self, i: int) -> tuple[int, ...]:
        return self.nodes[i].shape


def _refuse(layer, why: str = "") -> UsageError:
    detail = f" ({why})" if why else ""
    kind = type(layer).__name__
    return UsageError(f"cannot certify layer {layer.name} ({kind}){detail}: supported are {SUPPORTED_LAYERS}")


def _activation_op(layer, fn: Callable) -> ops.Operator | None:
    """The operator for an activation callable, recognised by its __name__ (None for linear)."""
    name = getattr(fn, "__name__", type(fn).__name__)
    label = f"{layer.name}/{name}"
    table: dict[str, Callable[[], ops.Operator | None]] = {
        "linear": lambda: None,
        "relu": lambda: ops.ReLU(label),
        "brelu": lambda: ops.BoundedReLU(label, 1.0),
        "tanh": lambda: ops.Tanh(label),
        "sigmoid": lambda: ops.Sigmoid(label),
        "softplus": lambda: ops.Softplus(label, 1.0),
        "softplus10": lambda: ops.Softplus(label, 10.0),
        "elu": lambda: ops.ELU(label),
    }
    if name not in table:
        raise UsageError(f"cannot certify layer {layer.name} ({type(layer).__name__}) with activation {name}: "
                         f"supported activations are {', '.join(SUPPORTED_ACTIVATIONS)}")
    return table[name]()


def _then_activation(b: _Builder, layer, index: int) -> int:
    act = _activation_op(layer, layer.activation)
    return index if act is None else b.add(act, [index])


def _weights(variable, dtype: tf.DType) -> np.ndarray:
    return np.asarray(variable.numpy() if hasattr(variable, "numpy") else variable, dtype=dtype.as_numpy_dtype)


def _check_channels_last(layer) -> None:
    if getattr(layer, "data_format", "channels_last") != "channels_last":
        raise _refuse(layer, "only channels_last data is supported")


def _dense(b: _Builder, layer, inputs: list[int], out_shape) -> int:
    bias = _weights(layer.bias, b.dtype) if layer.use_bias else None
    i = b.add(ops.Dense(layer.name, _weights(layer.kernel, b.dtype), bias, b.dtype), inputs)
    return _then_activation(b, layer, i)


def _conv2d(b: _Builder, layer, inputs: list[int], out_shape) -> int:
    _check_channels_last(layer)
    if tuple(layer.dilation_rate) != (1, 1) or layer.groups != 1:
        raise _refuse(layer, "dilated or grouped convolutions are not supported")
    bias = _weights(layer.bias, b.dtype) if layer.use_bias else None
    op = ops.Conv2D(layer.name, _weights(layer.kernel, b.dtype), bias, tuple(layer.strides), layer.padding,
                    b.shape(inputs[0]), b.dtype)
    return _then_activation(b, layer, b.add(op, inputs))


def _max_pool(b: _Builder, layer, inputs: list[int], out_shape) -> int:
    _check_channels_last(layer)
    if tuple(layer.strides) != tuple(layer.pool_size):
        raise _refuse(layer, "max pooling needs strides equal to the pool size")
    return b.add(ops.MaxPooling2D(layer.name, tuple(layer.pool_size), layer.padding, b.shape(inputs[0])), inputs)


def _avg_pool(b: _Builder, layer, inputs: list[int], out_shape) -> int:
    _check_channels_last(layer)
    op = ops.AveragePooling2D(layer.name, tuple(layer.pool_size), tuple(layer.strides), layer.padding,
                              b.shape(inputs[0]))
    return b.add(op, inputs)


def _global_avg_pool(b: _Builder, layer, inputs: list[int], out_shape) -> int:
    _check_channels_last(layer)
    return b.add(ops.GlobalAveragePooling2D(layer.name, b.shape(inputs[0]), bool(layer.keepdims)), inputs)


def _reshape(b: _Builder, layer, inputs: list[int], out_shape) -> int:
    target = tuple(int(s) for s in out_shape[1:])
    return b.add(ops.Reshape(layer.name, b.shape(inputs[0]), target), inputs)


def _batch_norm(b: _Builder, layer, inputs: list[int], out_shape) -> int:
    rank = len(b.shape(inputs[0]))
    axis = layer.axis[0] if isinstance(layer.axis, list | tuple) else layer.axis
    if axis not in (-1, rank):
        raise _refuse(layer, "only normalisation over the last axis is supported")
    np_dtype = b.dtype.as_numpy_dtype
    mean = _weights(layer.moving_mean, tf.float64)
    var = _weights(layer.moving_variance, tf.float64)
    gamma = _weights(layer.gamma, tf.float64) if layer.scale else np.ones_like(mean)
    beta = _weights(layer.beta, tf.float64) if layer.center else np.zeros_like(mean)
    # Inference mode: y = gamma (x - mean) / sqrt(var + eps) + beta, one affine map per channel.
    scale = gamma / np.sqrt(var + layer.epsilon)
    shift = beta - mean * scale
    return b.add(ops.ChannelAffine(layer.name, scale.astype(np_dtype), shift.astype(np_dtype), b.dtype), inputs)


def _add(b: _Builder, layer, inputs: list[int], out_shape) -> int:
    shapes = {b.shape(i) for i in inputs}
    if len(shapes) != 1:
        raise _refuse(layer, "Add with broadcasting is not supported")
    return b.add(ops.Add(layer.name, len(inputs)), inputs)


def _identity(b: _Builder, layer, inputs: list[int], out_shape) -> int:
    return inputs[0]


def _activation_layer(b: _Builder, layer, inputs: list[int], out_shape) -> int:
    return _then_activation(b, layer, inputs[0])


def _relu_layer(b: _Builder, layer, inputs: list[int], out_shape) -> int:
    if float(layer.negative_slope) != 0.0 or float(layer.threshold) != 0.0:
        raise _refuse(layer, "ReLU with a negative slope or a threshold is not supported")
    cap = layer.max_value
    op = ops.ReLU(layer.name) if cap is None else ops.BoundedReLU(layer.name, float(cap))
    return b.add(op, inputs)


def _converters() -> dict[type, Callable]:
    from keras import layers

    return {
        layers.Dense: _dense,
        layers.Conv2D: _conv2d,
        layers.MaxPooling2D: _max_pool,
        layers.AveragePooling2D: _avg_pool,
        layers.GlobalAveragePooling2D: _global_avg_pool,
        layers.Flatten: _reshape,
        layers.Reshape: _reshape,
        layers.BatchNormalization: _batch_norm,
        layers.Add: _add,
        layers.Dropout: _identity,
        layers.Identity: _identity,
        layers.Activation: _activation_layer,
        layers.ReLU: _relu_layer,
    }


def _history_key(tensor) -> tuple[int, int, int]:
    op, node_index, tensor_index = tensor._keras_history
    return id(op), node_index, tensor_index


class _Walker:
    """Converts a Keras model tensor by tensor, depth first from the output (which yields topological order)."""

    def __init__(self, builder: _Builder):
        import keras

        self.b = builder
        self.keras = keras
        self.converters = _converters()
        self.done: dict[tuple, int] = {}

    def tensor(self, t, env: dict[tuple, int]) -> int:
        key = (id(env), *_history_key(t))
        if key in self.done:
            return self.done[key]
        bound = env.get(_history_key(t))
        if bound is None:
            bound = self._layer_output(t, env)
        self.done[key] = bound
        return bound

    def _layer_output(self, t, env: dict[tuple, int]) -> int:
        layer, node_index, _ = t._keras_history
        if isinstance(layer, self.keras.layers.InputLayer):
            raise UsageError(f"cannot certify: the model has a second input {layer.name}; only one input is supported")
        node = layer._inbound_nodes[node_index]
        inputs = [self.tensor(x, env) for x in node.input_tensors]
        if isinstance(layer, self.keras.Model):
            return self.model(layer, inputs)
        converter = self.converters.get(type(layer))
        if converter is None:
            raise _refuse(layer)
        return converter(self.b, layer, inputs, tuple(t.shape))

    def model(self, model, inputs: list[int]) -> int:
        if len(model.inputs) != 1 or len(model.outputs) != 1 or len(inputs) != 1:
            raise UsageError(f"cannot certify model {model.name}: it needs exactly one input and one output")
        env = {_history_key(model.inputs[0]): inputs[0]}
        return self.tensor(model.outputs[0], env)


def _input_normalisation(mean, std, channels: int, dtype: tf.DType) -> ops.ChannelAffine:
    np_dtype = dtype.as_numpy_dtype
    mean = np.broadcast_to(np.asarray(0.0 if mean is None else mean, np.float64), (channels,))
    std = np.broadcast_to(np.asarray(1.0 if std is None else std, np.float64), (channels,))
    if not np.all(std > 0):
        raise UsageError("input_std must be positive")
    return ops.ChannelAffine("input_normalisation", (1.0 / std).astype(np_dtype), (-mean / std).astype(np_dtype), dtype)


def from_keras(model, input_mean: float | Sequence[float] | None = None, input_std: float | Sequence[float] | None = None,
               dtype: tf.DType = tf.float32) -> Graph:
    """The bound-propagation graph of a Keras 3 model with one input and one (logit) output.

    Args:
        model: a Sequential or functional Keras model, built (with a known input shape).
        input_mean, input_std: optional per-channel (or scalar) normalisation applied before the
            model, so that bounds are in the caller's input space: the model sees (x - mean) / std.
        dtype: the precision of all bound computations (float32, or float64 for tests).

    Raises:
        UsageError: for a layer or activation the certifier does not support, naming it.
    """
    if not getattr(model, "inputs", None) or not getattr(model, "outputs", None):
        raise UsageError(f"cannot certify model {model.name}: build it with a known input shape first")
    b = _Builder(tf.as_dtype(dtype))
    shape = tuple(int(s) for s in model.inputs[0].shape[1:])
    index = b.add(None, [], shape)
    if input_mean is not None or input_std is not None:
        index = b.add(_input_normalisation(input_mean, input_std, shape[-1], b.dtype), [index], shape)
    out = _Walker(b).model(model, [index])
    if out != len(b.nodes) - 1 or out == 0:
        raise UsageError(f"cannot certify model {model.name}: its output is not computed from its input by layers")
    return Graph(tuple(b.nodes), b.dtype)
