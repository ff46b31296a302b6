"""Certify, per operator: every relaxation and every layer's bounds hold on brute-force samples.

All checks run in float64 on tiny models; each bound is tested against sampled values of the
function it bounds, never against another bound.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

import keras
from keras import layers

from cleverscore.certify import from_keras, margin_lower_bounds
from cleverscore.certify import ops
from cleverscore.certify.concretize import min_linear
from cleverscore.certify.crown import prepare
from cleverscore.certify.ops import Interval
from cleverscore.errors import UsageError
from cleverscore.norms import L1, L2, LINF

NORMS = (L1, L2, LINF)
TOL = 1e-9


def brelu(x):
    return keras.ops.clip(x, 0.0, 1.0)


def softplus10(x):
    return keras.ops.softplus(10.0 * x) / 10.0


def _unit_ball(rng: np.random.Generator, norm, n: int, d: int) -> np.ndarray:
    """n points of the unit ball, half of them on its boundary (vertices and corners included)."""
    if norm is LINF:
        u = rng.uniform(-1, 1, (n, d))
        u[: n // 2] = np.sign(u[: n // 2])
        return u
    if norm is L2:
        g = rng.normal(size=(n, d))
        g /= np.linalg.norm(g, axis=1, keepdims=True)
        return g * np.where(np.arange(n) < n // 2, 1.0, rng.uniform(0, 1, n) ** (1 / d))[:, None]
    e = rng.exponential(size=(n, d)) * rng.choice([-1.0, 1.0], (n, d))
    e /= np.abs(e).sum(axis=1, keepdims=True)
    e *= rng.uniform(0, 1, n)[:, None] ** (1 / d)
    vertices = np.zeros((n // 2, d))
    vertices[np.arange(n // 2), rng.integers(0, d, n // 2)] = rng.choice([-1.0, 1.0], n // 2)
    e[: n // 2] = vertices
    return e


def sample_ball(rng, x0: np.ndarray, radius: float, norm, n: int, box=(-0.5, 0.5)) -> np.ndarray:
    """n points of {||x - x0|| <= radius} within the box: clipping moves each coordinate towards x0."""
    delta = radius * _unit_ball(rng, norm, n, x0.size).reshape(n, *x0.shape)
    return np.clip(x0[None] + delta, *box)


def random_input(rng, shape, spread: float = 0.4) -> np.ndarray:
    return rng.uniform(-spread, spread, shape)


def predicted(model, x0: np.ndarray) -> int:
    return int(np.argmax(model(x0[None].astype(np.float32)).numpy()))


def scale_weights(model, factor: float, seed: int) -> None:
    """Random non-default weights (larger than the initialiser's) so that every regime of every layer occurs."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        weights = layer.get_weights()
        if isinstance(layer, layers.BatchNormalization):
            c = weights[0].shape[0]
            layer.set_weights([rng.uniform(-1.5, 1.5, c), rng.normal(size=c) * 0.3, rng.normal(size=c) * 0.3,
                               rng.uniform(0.2, 2.0, c)])
        elif weights:
            layer.set_weights([w * factor + (rng.normal(size=w.shape) * 0.2 if w.ndim == 1 else 0) for w in weights])


# ---------------------------------------------------------------------------------------------
# Activation relaxations, checked on a dense grid of each interval.

ACTIVATIONS = {
    "relu": ops.ReLU("a"),
    "brelu": ops.BoundedReLU("a", 1.0),
    "relu6ish": ops.BoundedReLU("a", 2.5),
    "tanh": ops.Tanh("a"),
    "sigmoid": ops.Sigmoid("a"),
    "softplus": ops.Softplus("a", 1.0),
    "softplus10": ops.Softplus("a", 10.0),
    "elu": ops.ELU("a"),
}


def random_intervals(rng, n: int) -> tuple[np.ndarray, np.ndarray]:
    centre = rng.normal(size=n) * rng.choice([0.3, 1.0, 3.0, 8.0], n)
    width = rng.exponential(size=n) * rng.choice([1e-9, 1e-4, 0.1, 1.0, 5.0, 20.0], n)
    lo, hi = centre - width * rng.uniform(0, 1, n), centre + width * rng.uniform(0, 1, n)
    lo[:20], hi[:20] = -np.linspace(0, 3, 20), np.linspace(0, 3, 20)[::-1]   # around 0 and the caps
    lo[20:30] = hi[20:30] = rng.normal(size=10)                              # degenerate
    lo[30:40], hi[30:40] = 0.9, 1.1 + np.arange(10)
    return lo, hi


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_activation_relaxation_and_derivative_range_hold_on_the_interval(name):
    op = ACTIVATIONS[name]
    rng = np.random.default_rng(len(name))
    lo, hi = random_intervals(rng, 600)
    t = np.linspace(0, 1, 201)
    x = lo[:, None] + (hi - lo)[:, None] * t[None]
    a_l, b_l, a_u, b_u = (v.numpy() for v in op.linear_bounds(tf.constant(lo[:, None]), tf.constant(hi[:, None])))
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        fx = op.fn(xt)
    grad = tape.gradient(fx, xt).numpy()
    f = fx.numpy()
    scale = TOL * (1 + np.abs(f))
    assert np.all(a_l * x + b_l <= f + scale), name
    assert np.all(f <= a_u * x + b_u + scale), name
    d = op.derivative_range(tf.constant(lo[:, None]), tf.constant(hi[:, None]))
    assert np.all(d.lo.numpy() - TOL <= grad) and np.all(grad <= d.hi.numpy() + TOL), name
    iv = op.interval(Interval(tf.constant(lo), tf.constant(hi)))
    assert np.all(iv.lo.numpy()[:, None] <= f + scale) and np.all(f <= iv.hi.numpy()[:, None] + scale)


def test_relaxations_are_exact_where_the_activation_is_linear():
    lo, hi = tf.constant([[0.2], [-3.0], [0.1]], tf.float64), tf.constant([[0.9], [-1.0], [0.8]], tf.float64)
    a_l, b_l, a_u, b_u = (v.numpy() for v in ACTIVATIONS["brelu"].linear_bounds(lo, hi))
    np.testing.assert_array_equal(a_l, a_u)
    np.testing.assert_array_equal(b_l, b_u)
    np.testing.assert_array_equal(a_l.ravel(), [1, 0, 1])


# ---------------------------------------------------------------------------------------------
# Layers: the graph reproduces the model, and every node's bounds hold on samples of the ball.

def _seq(shape, *stack):
    return keras.Sequential([keras.Input(shape), *stack])


def _residual(shape):
    inp = keras.Input(shape)
    x = layers.Conv2D(3, 3, padding="same", activation="relu")(inp)
    y = layers.Conv2D(3, 3, padding="same")(x)
    z = layers.Add()([x, y])
    z = layers.ReLU()(z)
    return keras.Model(inp, layers.Dense(3)(layers.Flatten()(z)))


def _nested(shape):
    inner = keras.Sequential([keras.Input((18,)), layers.Dense(5, activation="tanh"), layers.Dense(4)])
    inp = keras.Input(shape)
    x = layers.Flatten()(inp)
    z = layers.Add()([inner(x), layers.Dense(4)(x)])
    return keras.Model(inp, layers.Dense(3)(layers.ReLU()(z)))


LAYER_MODELS = {
    **{f"dense_{a}": (lambda a=a: _seq((3, 3, 2), layers.Flatten(), layers.Dense(6, activation=a), layers.Dense(3)))
       for a in ("relu", "tanh", "sigmoid", "softplus", "elu")},
    "dense_brelu": lambda: _seq((3, 3, 2), layers.Flatten(), layers.Dense(6, activation=brelu), layers.Dense(3)),
    "dense_softplus10": lambda: _seq((3, 3, 2), layers.Flatten(), layers.Dense(6, activation=softplus10),
                                     layers.Dense(3)),
    "activation_layer": lambda: _seq((3, 3, 2), layers.Flatten(), layers.Dense(6), layers.Activation("tanh"),
                                     layers.Dense(3)),
    "relu_max_value": lambda: _seq((3, 3, 2), layers.Flatten(), layers.Dense(6), layers.ReLU(max_value=0.3),
                                   layers.Dense(3)),
    "conv_valid": lambda: _seq((5, 5, 2), layers.Conv2D(3, 3, activation="relu"), layers.Flatten(), layers.Dense(3)),
    "conv_same_stride2": lambda: _seq((5, 5, 2), layers.Conv2D(3, 3, strides=2, padding="same", activation="sigmoid"),
                                      layers.Flatten(), layers.Dense(3)),
    "maxpool_valid_odd": lambda: _seq((6, 6, 1), layers.Conv2D(2, 2), layers.MaxPooling2D(2), layers.Flatten(),
                                      layers.Dense(3)),
    "maxpool_same": lambda: _seq((5, 5, 2), layers.MaxPooling2D(2, padding="same"), layers.Flatten(),
                                 layers.Dense(3)),
    "avgpool_valid": lambda: _seq((5, 5, 2), layers.Conv2D(2, 2, activation="relu"),
                                  layers.AveragePooling2D(2, strides=1), layers.Flatten(), layers.Dense(3)),
    "avgpool_same": lambda: _seq((5, 5, 2), layers.AveragePooling2D(3, strides=2, padding="same"),
                                 layers.Flatten(), layers.Dense(3, activation="relu"), layers.Dense(3)),
    "gap": lambda: _seq((4, 4, 2), layers.Conv2D(3, 2, activation="elu"), layers.GlobalAveragePooling2D(),
                        layers.Dense(3)),
    "gap_keepdims": lambda: _seq((4, 4, 2), layers.Conv2D(3, 2, activation="relu"),
                                 layers.GlobalAveragePooling2D(keepdims=True), layers.Flatten(), layers.Dense(3)),
    "reshape_dense_on_axis": lambda: _seq((3, 3, 2), layers.Reshape((6, 3)), layers.Dense(4, activation="relu"),
                                          layers.Flatten(), layers.Dense(3)),
    "batch_norm": lambda: _seq((4, 4, 2), layers.Conv2D(3, 2), layers.BatchNormalization(), layers.ReLU(),
                               layers.Flatten(), layers.Dense(3)),
    "dropout": lambda: _seq((3, 3, 2), layers.Flatten(), layers.Dense(6, activation="relu"), layers.Dropout(0.5),
                            layers.Dense(3)),
    "add_residual": lambda: _residual((4, 4, 2)),
    "nested_model": lambda: _nested((3, 3, 2)),
}


def build(name: str, seed: int = 0):
    keras.utils.set_random_seed(seed)
    model = LAYER_MODELS[name]()
    scale_weights(model, 2.0, seed)
    return model


def assert_node_bounds_hold(graph, x0, radius, norm, rng, crown: bool, n: int = 400) -> None:
    label = int(np.argmax(graph.forward(x0[None]).numpy()))
    problem = prepare(graph, x0, label, [j for j in range(graph.num_outputs) if j != label])
    bp = problem.propagate(np.array([radius]), norm, 1 << 30, crown=crown)
    samples = sample_ball(rng, x0, radius, norm, n)
    for i, value in enumerate(graph.forward_all(samples)):
        v = value.numpy()
        lo, hi = bp.bounds[i].lo.numpy(), bp.bounds[i].hi.numpy()
        slack = TOL * (1 + np.abs(v))
        assert np.all(lo <= v + slack) and np.all(v <= hi + slack), (graph.nodes[i].name, crown, norm.label)


@pytest.mark.parametrize("name", sorted(LAYER_MODELS))
def test_layer_graph_matches_keras_and_its_bounds_hold_on_samples(name):
    model = build(name)
    graph = from_keras(model, dtype=tf.float64)
    rng = np.random.default_rng(7)
    x = rng.uniform(-0.5, 0.5, (8, *graph.input_shape))
    np.testing.assert_allclose(graph.forward(x).numpy(), model(x.astype(np.float32)).numpy(), rtol=1e-4, atol=1e-5)
    x0 = random_input(rng, graph.input_shape)
    for norm, radius in zip(NORMS, (0.6, 0.25, 0.08)):
        for crown in (True, False):
            assert_node_bounds_hold(graph, x0, radius, norm, rng, crown)
        label = predicted(model, x0)
        targets = [j for j in range(3) if j != label]
        logits = graph.forward(sample_ball(rng, x0, radius, norm, 400)).numpy()
        bound = margin_lower_bounds(graph, x0, label, targets, radius, norm).lower
        assert np.all(bound <= (logits[:, [label]] - logits[:, targets]).min(axis=0) + TOL), norm.label


def test_input_normalisation_is_part_of_the_graph():
    model = build("conv_valid")
    mean, std = np.array([0.1, -0.2]), np.array([0.3, 0.5])
    graph = from_keras(model, input_mean=mean, input_std=std, dtype=tf.float64)
    rng = np.random.default_rng(3)
    x = rng.uniform(-0.5, 0.5, (4, *graph.input_shape))
    expected = model(((x - mean) / std).astype(np.float32)).numpy()
    np.testing.assert_allclose(graph.forward(x).numpy(), expected, rtol=1e-4, atol=1e-4)
    assert_node_bounds_hold(graph, random_input(rng, graph.input_shape), 0.05, LINF, rng, crown=True)


@pytest.mark.parametrize("name", ["conv_valid", "conv_same_stride2", "dense_relu", "reshape_dense_on_axis"])
def test_rows_of_a_linear_layer_built_directly_equal_one_hot_rows_pushed_through_its_transpose(name):
    graph = from_keras(build(name), dtype=tf.float64)
    node = next(n for n in graph.nodes if isinstance(n.op, (ops.Conv2D, ops.Dense)))
    rows = np.random.default_rng(1).choice(node.size, min(9, node.size), replace=False).astype(np.int32)
    unit, offset = node.op.unit_rows(rows, node.shape, tf.float64)
    eye = tf.reshape(tf.one_hot(rows, node.size, dtype=tf.float64), (1, len(rows), *node.shape))
    np.testing.assert_allclose(unit.numpy(), node.op.transpose(eye)[0].numpy(), atol=1e-12)
    np.testing.assert_allclose(offset.numpy(), node.op.bias_term(eye)[0].numpy(), atol=1e-12)


# ---------------------------------------------------------------------------------------------
# Concretisation over the ball intersected with the box: the exact optimum of a small program.

def reference_min(a: np.ndarray, lo: np.ndarray, hi: np.ndarray, r: float, norm) -> float:
    """The optimum by other means: a linear program for L1, bisection on the KKT multiplier for L2."""
    from scipy.optimize import linprog

    lo, hi = np.maximum(lo, -r), np.minimum(hi, r)
    if norm is LINF:
        return float(np.minimum(a * lo, a * hi).sum())
    d = a.size
    if norm is L1:   # delta = p - q with p, q >= 0
        res = linprog(np.concatenate([a, -a]), A_ub=np.ones((1, 2 * d)), b_ub=[r],
                      bounds=[(0, h) for h in hi] + [(0, -v) for v in lo])
        return float(res.fun)
    # delta_i = clip(-a_i t, lo_i, hi_i) with the largest t keeping ||delta|| <= r: a feasible point.
    t_lo, t_hi = 0.0, 1e9
    for _ in range(200):
        t = (t_lo + t_hi) / 2
        t_lo, t_hi = (t, t_hi) if np.linalg.norm(np.clip(-a * t, lo, hi)) <= r else (t_lo, t)
    return float(a @ np.clip(-a * t_lo, lo, hi))


@pytest.mark.parametrize("norm", NORMS, ids=lambda n: n.label)
def test_ball_and_box_minimum_is_the_exact_optimum(norm):
    rng = np.random.default_rng(11)
    b, s, d = 3, 4, 7
    a = rng.normal(size=(b, s, d))
    a[0, 0, :3] = 0.0
    lo, hi = -rng.uniform(0, 0.6, (b, d)), rng.uniform(0, 0.6, (b, d))
    lo[1, :2] = 0.0                        # x0 on the box's face, as for MNIST's black pixels
    r = np.array([0.1, 0.5, 3.0])          # the ball binds, both bind, the box binds
    got = min_linear(tf.constant(a), Interval(tf.constant(lo), tf.constant(hi)), tf.constant(r), norm).numpy()
    ref = np.array([[reference_min(a[i, j], lo[i], hi[i], r[i], norm) for j in range(s)] for i in range(b)])
    assert np.all(got <= ref + 1e-12)      # sound: never above the value at a feasible point
    np.testing.assert_allclose(got, ref, atol=1e-9)   # and exact


# ---------------------------------------------------------------------------------------------
# Refusals: one line naming the layer.

@pytest.mark.parametrize("stack,needle", [
    ([layers.Flatten(), layers.Dense(4), layers.LayerNormalization(name="ln"), layers.Dense(3)],
     "ln (LayerNormalization)"),
    ([layers.Flatten(), layers.Dense(4, activation="selu", name="d_selu"), layers.Dense(3)], "d_selu (Dense)"),
    ([layers.MaxPooling2D(2, strides=1, name="mp"), layers.Flatten(), layers.Dense(3)], "mp (MaxPooling2D)"),
    ([layers.Flatten(), layers.Dense(4), layers.LeakyReLU(name="leaky"), layers.Dense(3)], "leaky (LeakyReLU)"),
])
def test_an_unsupported_layer_is_a_one_line_usage_error_naming_it(stack, needle):
    model = _seq((4, 4, 1), *stack)
    with pytest.raises(UsageError) as err:
        from_keras(model)
    message = str(err.value)
    assert "\n" not in message and needle in message and message.startswith("cannot certify layer")


@pytest.mark.parametrize("name", ["conv_valid", "conv_same_stride2", "maxpool_valid_odd", "maxpool_same", "batch_norm",
                                  "add_residual", "gap"])
def test_windowed_coefficients_give_the_same_bounds_as_dense_ones(name):
    graph = from_keras(build(name), dtype=tf.float64)
    rng = np.random.default_rng(2)
    x0 = random_input(rng, graph.input_shape)
    problem = prepare(graph, x0, 0, [1, 2])
    for norm in NORMS:
        radius = np.array([0.05, 0.2])
        windowed = problem.propagate(radius, norm, 1 << 30)
        dense = problem.propagate(radius, norm, 1 << 30, patches=False)
        assert all(w.crown_bytes <= d.crown_bytes for w, d in zip(windowed.reports, dense.reports))
        for a, b in zip(windowed.bounds, dense.bounds):
            np.testing.assert_allclose(a.lo.numpy(), b.lo.numpy(), atol=1e-10)
            np.testing.assert_allclose(a.hi.numpy(), b.hi.numpy(), atol=1e-10)
