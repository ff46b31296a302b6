"""The LP check of the split search's leaves (certify/leaves.py), against known truths: patterns met at
sampled points of the ball are never found empty (and are found met: on L2 balls through the L1 ball
inside them), a pattern
that contradicts a neuron's sign over the whole ball is found empty, and the dense layers read from the
graph give the model's logits."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from cleverscore.certify import from_keras
from cleverscore.certify.leaves import Leaf, leaf_checker
from cleverscore.certify.milp import relu_network_from_keras
from cleverscore.certify.milp.bounds import interval_bounds
from cleverscore.certify.milp.network import activation_pattern, logits
from cleverscore.norms import L1, L2, LINF
from test_certify_ops import build, sample_ball
from test_certify_jacobian import tiny_relu_mlp

RADII = {LINF: 0.05, L1: 0.3, L2: 0.1}
BOX = (-0.5, 0.5)


@pytest.fixture(scope="module")
def mlp():
    model = tiny_relu_mlp(3, hidden=(8, 8))
    x0 = np.random.default_rng(3).uniform(-0.3, 0.3, 10)
    return model, from_keras(model, dtype=tf.float64), relu_network_from_keras(model), x0


def checker_for(graph, x0, norm, radius=None):
    r = RADII[norm] if radius is None else radius
    return leaf_checker(graph, x0, np.full(x0.size, BOX[0]), np.full(x0.size, BOX[1]), r, norm.p)


def as_multipliers(pattern):
    return [(on.astype(float), on.astype(float)) for on in pattern]


@pytest.mark.parametrize("norm", [LINF, L1, L2], ids=lambda n: n.label)
def test_patterns_met_in_the_ball_are_never_found_empty_and_are_found_met_where_the_lp_is_the_ball(mlp, norm):
    model, graph, net, x0 = mlp
    checker = checker_for(graph, x0, norm)
    points = sample_ball(np.random.default_rng(0), x0, RADII[norm], norm, 300)
    patterns = {tuple(np.concatenate(activation_pattern(net, p))): activation_pattern(net, p) for p in points}
    assert len(patterns) >= 3  # the ball crosses switching hyperplanes
    verdicts = [checker.check(as_multipliers(p)) for p in patterns.values()]
    assert Leaf.EMPTY not in verdicts
    for pattern, verdict in zip(patterns.values(), verdicts):
        if verdict is Leaf.ATTAINED:  # its witness is a point of the ball (and the box) with the pattern
            assert_witness(checker, net, x0, norm, pattern)
    if norm is not L2:
        assert verdicts.count(Leaf.ATTAINED) >= 0.8 * len(verdicts), verdicts
        return
    # On an L2 ball a pattern is found met through the L1 ball of the same radius, which lies inside it.
    near = sample_ball(np.random.default_rng(4), x0, RADII[L2], L1, 300)
    met = {tuple(np.concatenate(activation_pattern(net, p))): activation_pattern(net, p) for p in near}
    found = [checker.check(as_multipliers(p)) for p in met.values()]
    assert len(met) >= 2 and found.count(Leaf.ATTAINED) >= 0.8 * len(found), found
    for pattern in met.values():
        assert_witness(checker, net, x0, norm, pattern)


def assert_witness(checker, net, x0, norm, pattern):
    w = checker.witness(pattern)
    assert w is not None
    assert np.linalg.norm(w - x0, ord=norm.p) <= RADII[norm] * (1 + 1e-6) + 1e-9
    assert np.all(w >= BOX[0] - 1e-9) and np.all(w <= BOX[1] + 1e-9)
    assert all(np.array_equal(a, b) for a, b in zip(activation_pattern(net, w), pattern))


@pytest.mark.parametrize("norm", [LINF, L1, L2], ids=lambda n: n.label)
def test_a_pattern_against_a_sign_the_neuron_keeps_over_the_ball_is_found_empty(mlp, norm):
    model, graph, net, x0 = mlp
    r = 0.05  # small enough for neurons whose sign the interval bounds fix over the ball's Linf box
    checker = checker_for(graph, x0, norm, r)
    bounds = interval_bounds(net, np.clip(x0 - r, *BOX), np.clip(x0 + r, *BOX))  # over the Linf box holding the ball
    pattern = activation_pattern(net, x0)
    flipped = 0
    for layer, (lo, hi) in enumerate(bounds):
        for unit in np.flatnonzero((lo > 1e-3) | (hi < -1e-3)):
            wrong = [on.copy() for on in pattern]
            wrong[layer][unit] = not wrong[layer][unit]
            assert checker.check(as_multipliers(wrong)) is Leaf.EMPTY, (layer, unit)
            flipped += 1
    assert flipped >= 3
    assert checker.check(as_multipliers(pattern)) is not Leaf.EMPTY


def test_a_pattern_with_a_free_relu_gets_no_verdict(mlp):
    model, graph, net, x0 = mlp
    multipliers = as_multipliers(activation_pattern(net, x0))
    multipliers[1][0][0], multipliers[1][1][0] = 0.0, 1.0
    assert checker_for(graph, x0, LINF).check(multipliers) is Leaf.OPEN


def test_the_dense_layers_read_from_the_graph_give_the_models_logits_and_other_networks_get_no_checker(mlp):
    model, graph, net, x0 = mlp
    checker = checker_for(graph, x0, LINF)
    points = sample_ball(np.random.default_rng(1), x0, 0.3, LINF, 20)
    expected = model(points.astype(np.float32)).numpy()
    got = np.stack([logits(checker.layers, p) for p in points])
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    assert len(checker.relu_nodes) == 2
    flattened = build("dense_relu")  # a Flatten of an image first: NHWC read in C order
    x = np.random.default_rng(2).uniform(-0.4, 0.4, (4, 3, 3, 2))
    reader = leaf_checker(from_keras(flattened, dtype=tf.float64), x[0], x[0] - 0.5, x[0] + 0.5, 0.1, np.inf)
    np.testing.assert_allclose(np.stack([logits(reader.layers, p.reshape(-1)) for p in x]),
                               flattened(x.astype(np.float32)).numpy(), rtol=1e-5, atol=1e-5)
    for name in ("conv_valid", "dense_tanh", "relu_max_value", "reshape_dense_on_axis"):
        other = from_keras(build(name), dtype=tf.float64)
        x = np.zeros(other.input_shape)
        assert leaf_checker(other, x, x - 0.5, x + 0.5, 0.1, np.inf) is None, name
