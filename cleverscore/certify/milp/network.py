"""Piecewise-linear networks for the exact MILP answers: validation, Keras import, forward pass.

A network is a list of dense affine layers `[(W1, b1), ..., (WL, bL)]`, W of shape (out, in),
with a ReLU after every layer but the last; its input is the image flattened in C order (NHWC
for Keras models). Everything here is NumPy float64, so the solver and the checks of its answers
see the same arithmetic.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cleverscore.errors import UsageError

Layers = list[tuple[np.ndarray, np.ndarray]]

# Measured with scipy's HiGHS on MNIST MLPs (60 s limit, two busy cores): 784-32-32-10 and
# 784-64-64-10 answer most Linf problems of radius 0.02 in seconds. At 512 hidden ReLUs
# (784-256-256-10) LP tightening alone takes over 30 s and the Lipschitz MILP stays far from
# closing its gap in 60 s; wider networks are refused up front.
MAX_HIDDEN_RELUS = 512

_NOT_PIECEWISE_LINEAR = "exact answers need a piecewise-linear network of Dense+ReLU layers"


def check_network(net: Sequence[tuple[np.ndarray, np.ndarray]]) -> Layers:
    """The layers as float64 arrays, after checking shapes and the size limit."""
    if len(net) == 0:
        raise UsageError("the network has no layers; give a list of (W, b) dense layers")
    layers: Layers = []
    width = None
    for index, (weight, bias) in enumerate(net):
        w = np.asarray(weight, dtype=np.float64)
        b = np.asarray(bias, dtype=np.float64).reshape(-1)
        if w.ndim != 2 or b.shape != (w.shape[0],) or (width is not None and w.shape[1] != width):
            raise UsageError(f"layer {index + 1} of the network has W of shape {w.shape} and b of shape {b.shape}, "
                             f"which do not chain (W must be (out, in) with in = {width})")
        if not (np.all(np.isfinite(w)) and np.all(np.isfinite(b))):
            raise UsageError(f"layer {index + 1} of the network has non-finite weights")
        layers.append((w, b))
        width = w.shape[0]
    check_size(layers)
    return layers


def check_size(layers: Layers) -> None:
    """Refuse networks whose MILPs are out of reach (a one-line UsageError)."""
    relus = hidden_relus(layers)
    if relus > MAX_HIDDEN_RELUS:
        raise UsageError(f"exact answers are limited to networks of at most {MAX_HIDDEN_RELUS} hidden ReLUs "
                         f"(this one has {relus}); use the sampled CLEVER score or a bound instead")


def hidden_relus(layers: Layers) -> int:
    """The number of ReLUs: every unit of every layer but the last."""
    return int(sum(w.shape[0] for w, _ in layers[:-1]))


def forward(layers: Layers, x: np.ndarray) -> list[np.ndarray]:
    """Pre-activations of every layer at the flat input(s) `x` of shape (..., in); the last are the logits."""
    pre = []
    a = np.asarray(x, dtype=np.float64)
    for index, (w, b) in enumerate(layers):
        z = a @ w.T + b
        pre.append(z)
        if index < len(layers) - 1:
            a = np.maximum(z, 0.0)
    return pre


def logits(layers: Layers, x: np.ndarray) -> np.ndarray:
    """The logits at flat input(s) `x`."""
    return forward(layers, x)[-1]


def margin_gradient(layers: Layers, pattern: Sequence[np.ndarray], true_label: int, target: int) -> np.ndarray:
    """The gradient of g = f_true - f_target with respect to the flat input, for fixed activation pattern(s).

    `pattern[i]` holds 0/1 (or booleans) for hidden layer i, shape (n_i,) or (batch, n_i).
    """
    w_last = layers[-1][0]
    y = w_last[true_label] - w_last[target]
    for (w, _), on in zip(reversed(layers[:-1]), reversed(pattern)):
        y = (np.asarray(on, dtype=np.float64) * y) @ w
    return y


def activation_pattern(layers: Layers, x: np.ndarray) -> list[np.ndarray]:
    """Which ReLUs pass their input at `x`, with ReLU'(0) = 0 as in TensorFlow."""
    return [z > 0.0 for z in forward(layers, x)[:-1]]


def input_gradient(layers: Layers, x: np.ndarray, true_label: int, target: int) -> np.ndarray:
    """The gradient of g = f_true - f_target at flat input(s) `x`, taking ReLU'(0) = 0."""
    return margin_gradient(layers, activation_pattern(layers, x), true_label, target)


def relu_network_from_keras(model) -> Layers:
    """The (W, b) layers of a Keras Sequential model of Flatten/Dense(relu or linear)/ReLU/Dropout layers.

    Consecutive affine layers are merged and a network that ends in a ReLU gets an identity output
    layer, so the result always alternates affine maps and ReLUs. Anything else (other
    activations, convolutions, pooling) is refused with a one-line UsageError.
    """
    import keras

    if not isinstance(model, keras.Sequential):
        # model.layers of a functional model need not be a chain, so reading it in order could
        # silently build another network.
        raise UsageError(f"{_NOT_PIECEWISE_LINEAR} in a keras.Sequential model; got a {type(model).__name__}")
    try:
        input_shape = tuple(model.input_shape)
    except (AttributeError, ValueError) as err:
        raise UsageError("the Keras model has no input shape yet; build it (keras.Input first) "
                         "before asking for exact answers") from err
    ops: list[object] = []
    flat = len(input_shape) == 2
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer | keras.layers.Dropout):
            continue
        if isinstance(layer, keras.layers.Flatten):
            flat = True
            continue
        if isinstance(layer, keras.layers.Dense):
            if not flat:
                raise UsageError(f"{_NOT_PIECEWISE_LINEAR} on flat inputs; Dense layer {layer.name!r} "
                                 "acts on an unflattened image (add a Flatten layer first)")
            ops.append(_dense_affine(layer))
            if _activation_kind(layer.activation, layer) == "relu":
                ops.append("relu")
            continue
        if isinstance(layer, keras.layers.ReLU):
            _check_plain_relu(layer)
            ops.append("relu")
            continue
        if isinstance(layer, keras.layers.Activation):
            if _activation_kind(layer.activation, layer) == "relu":
                ops.append("relu")
            continue
        raise UsageError(f"{_NOT_PIECEWISE_LINEAR}; layer {layer.name!r} is a {type(layer).__name__}")
    layers = _alternate(ops, int(np.prod(input_shape[1:])))
    check_size(layers)
    return layers


def _dense_affine(layer) -> tuple[np.ndarray, np.ndarray]:
    weights = layer.get_weights()
    kernel = np.asarray(weights[0], dtype=np.float64)
    bias = np.asarray(weights[1], dtype=np.float64) if len(weights) > 1 else np.zeros(kernel.shape[1])
    return kernel.T.copy(), bias


def _activation_kind(activation, layer) -> str:
    import keras

    if activation is keras.activations.relu:
        return "relu"
    if activation is keras.activations.linear or activation is None:
        return "linear"
    name = getattr(activation, "__name__", type(activation).__name__)
    raise UsageError(f"{_NOT_PIECEWISE_LINEAR}; layer {layer.name!r} has activation {name!r}")


def _check_plain_relu(layer) -> None:
    # A capped or leaky ReLU layer is still piecewise linear, but the MILP encodes only max(z, 0).
    config = layer.get_config()
    plain = config.get("max_value") is None and not config.get("negative_slope") and not config.get("threshold")
    if not plain:
        raise UsageError(f"{_NOT_PIECEWISE_LINEAR}; ReLU layer {layer.name!r} is capped, leaky or shifted")


def _alternate(ops: list[object], input_width: int) -> Layers:
    """Merge runs of affine maps, collapse repeated ReLUs and pad so affine maps and ReLUs alternate."""
    affines: Layers = []
    pending: tuple[np.ndarray, np.ndarray] | None = None
    for op in ops:
        if isinstance(op, tuple):
            pending = op if pending is None else (op[0] @ pending[0], op[0] @ pending[1] + op[1])
            continue
        if pending is None:
            if not affines:
                # A ReLU straight on the input: an identity layer in front keeps the encoding uniform.
                affines.append((np.eye(input_width), np.zeros(input_width)))
            continue
        affines.append(pending)
        pending = None
    if pending is not None:
        affines.append(pending)
    elif affines:
        # Ends in a ReLU: an identity output layer makes the rectified values the logits.
        width = affines[-1][0].shape[0]
        affines.append((np.eye(width), np.zeros(width)))
    if not affines:
        raise UsageError(f"{_NOT_PIECEWISE_LINEAR}; the model has no Dense layer")
    return affines
