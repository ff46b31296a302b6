"""Max-pooling windows ordered over the ball (certify/dominance.py), against known truths: the exact minimum of
an affine difference over the ball, sampled points and projected descent on every difference proven positive,
sampled margins and gradients (with ReLU outputs tied at zero), and the same bounds without the order."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from cleverscore.certify import from_keras, lipschitz_upper_bounds
from cleverscore.certify.bounds import BoundPropagation
from cleverscore.certify.crown import _margin_lower, prepare
from cleverscore.certify.ops import Interval
from cleverscore.certify.ops.pooling import MaxPooling2D, WindowOrder
from cleverscore.norms import L1, L2, LINF
from test_certify_crown import sampled_gradient_norms
from test_certify_ops import predicted, random_input, sample_ball

layers = keras.layers
BUDGET = 1 << 28


def pooled_cnn(seed: int, bias: float = 0.0, hidden: str | None = "relu"):
    """conv 3x3 (hidden activation) -> max pool -> conv 2x2 relu -> max pool -> dense relu -> 3 logits, in float64;
    `bias` shifts the first convolution (negative: many ReLUs off, so windows tie at zero)."""
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((8, 8, 1)), layers.Conv2D(4, 3, activation=hidden), layers.MaxPooling2D(2),
                              layers.Conv2D(4, 2, activation="relu"), layers.MaxPooling2D(2), layers.Flatten(),
                              layers.Dense(6, activation="relu"), layers.Dense(3)])
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        weights = layer.get_weights()
        if weights:
            layer.set_weights([rng.normal(0, 1.5 / np.sqrt(np.prod(w.shape[:-1])) if w.ndim > 1 else 0.1, w.shape)
                               for w in weights])
    kernel, b = model.layers[0].get_weights()
    model.layers[0].set_weights([kernel, b + bias])
    graph = from_keras(model, dtype=tf.float64)
    x0 = random_input(rng, graph.input_shape)
    label = predicted(model, x0)
    return model, graph, x0, label, [j for j in range(3) if j != label]


def propagate(graph, x0, label, targets, radius: float, norm, order: bool = True) -> BoundPropagation:
    problem = prepare(graph, x0, label, targets)
    return BoundPropagation(graph, problem.x0, tf.constant([radius], graph.dtype), norm, problem.box, BUDGET,
                            order_windows=order)


def pool_nodes(graph) -> list[int]:
    return [i for i, node in enumerate(graph.nodes) if isinstance(node.op, MaxPooling2D)]


def interval_candidates(bp: BoundPropagation, i: int) -> np.ndarray:
    """(Ho, Wo, C, k) the entries interval bounds alone leave as candidates against the order's chosen entry."""
    op, order = bp.graph.nodes[i].op, bp.orders[i]
    unordered = WindowOrder(order.chosen, tf.zeros_like(order.dominated))
    return op._window_facts(bp.bounds[bp.graph.nodes[i].inputs[0]], unordered)[4].numpy()[0]


def pair_rows(op: MaxPooling2D, chosen: np.ndarray, ho: int, wo: int, c: int, k: int) -> tuple[tuple, tuple]:
    """Map positions (row, column, channel) of a window's chosen entry and of its entry k."""
    ph, pw = op.pool
    s = int(chosen[ho, wo, c])
    return (ho * ph + s // pw, wo * pw + s % pw, c), (ho * ph + k // pw, wo * pw + k % pw, c)


@pytest.mark.parametrize("norm", [LINF, L2, L1])
def test_on_an_affine_map_an_entry_is_dominated_exactly_when_the_difference_stays_positive_over_the_ball(norm):
    """A max pooling right after a convolution of the input: each difference is affine, its minimum over a ball
    inside the box is c - r ||a||_dual, and CROWN is exact on it. Positive kernels, as smooth image filters are:
    neighbours share most of their inputs, so their difference has a far smaller norm than either."""
    radius = {LINF.p: 0.01, L2.p: 0.05, L1.p: 0.1}[norm.p]
    proven = open_pairs = 0
    for seed in range(4):
        keras.utils.set_random_seed(seed)
        model = keras.Sequential([keras.Input((6, 6, 1)), layers.Conv2D(3, 3), layers.MaxPooling2D(2),
                                  layers.Flatten(), layers.Dense(3)])
        rng = np.random.default_rng(seed)
        kernel, bias = model.layers[0].get_weights()
        model.layers[0].set_weights([rng.uniform(0.5, 1.5, kernel.shape), bias])
        graph = from_keras(model, dtype=tf.float64)
        x0 = random_input(rng, graph.input_shape, spread=0.05)     # the ball stays inside the box
        label = predicted(model, x0)
        bp = propagate(graph, x0, label, [(label + 1) % 3], radius, norm)
        pool = pool_nodes(graph)[0]
        conv = graph.nodes[pool].inputs[0]
        op, order = graph.nodes[pool].op, bp.orders[pool]
        chosen, dominated = order.chosen.numpy(), order.dominated.numpy()[0]
        x = tf.constant(x0[None])
        with tf.GradientTape() as tape:
            tape.watch(x)
            z = graph.forward_all(x)[conv][0]
        jacobian = tape.jacobian(z, x).numpy()
        z = z.numpy()
        for ho, wo, c, k in np.argwhere(interval_candidates(bp, pool)):
            s_at, k_at = pair_rows(op, chosen, ho, wo, c, k)
            a = (jacobian[s_at] - jacobian[k_at]).ravel()
            exact = float(z[s_at] - z[k_at]) - radius * np.linalg.norm(a, ord=norm.dual)
            if abs(exact) < 1e-7:
                continue
            assert dominated[ho, wo, c, k] == (exact > 0), (seed, ho, wo, c, k, exact)
            proven += exact > 0
            open_pairs += exact < 0
    assert proven >= 3 and open_pairs >= 3, (proven, open_pairs)


def descended_minimum(graph, node: int, x0, radius: float, s_at, k_at, rng, starts: int = 8, steps: int = 60) -> float:
    """The smallest z_s - z_k that projected sign-gradient descent finds in the Linf ball within the box."""
    lo, hi = np.maximum(x0 - radius, -0.5), np.minimum(x0 + radius, 0.5)
    x = tf.Variable(rng.uniform(lo, hi, (starts, *x0.shape)))
    for _ in range(steps):
        with tf.GradientTape() as tape:
            z = graph.forward_all(x)[node]
            difference = z[(slice(None), *s_at)] - z[(slice(None), *k_at)]
        x.assign(tf.clip_by_value(x - radius / 10 * tf.sign(tape.gradient(difference, x)), lo, hi))
    z = graph.forward_all(tf.constant(x))[node]
    return float(tf.reduce_min(z[(slice(None), *s_at)] - z[(slice(None), *k_at)]))


def test_every_entry_proven_dominated_stays_below_the_chosen_one_at_sampled_points_and_under_descent():
    rng = np.random.default_rng(5)
    proven = 0
    for seed in range(3):
        _, graph, x0, label, targets = pooled_cnn(seed)
        for norm, radius in ((LINF, 0.03), (L2, 0.3), (L1, 1.0)):
            bp = propagate(graph, x0, label, targets, radius, norm)
            points = tf.constant(sample_ball(rng, x0, radius, norm, 2000))
            values = graph.forward_all(points)
            for pool in pool_nodes(graph):
                relu = graph.nodes[pool].inputs[0]
                compared = graph.nodes[relu].inputs[0]
                op, order = graph.nodes[pool].op, bp.orders[pool]
                chosen = order.chosen.numpy()
                pairs = np.argwhere(order.dominated.numpy()[0])
                proven += len(pairs)
                for n, (ho, wo, c, k) in enumerate(pairs):
                    s_at, k_at = pair_rows(op, chosen, ho, wo, c, k)
                    z = values[compared]
                    assert float(tf.reduce_min(z[(slice(None), *s_at)] - z[(slice(None), *k_at)])) >= -1e-12
                    if norm is LINF and n < 10:
                        assert descended_minimum(graph, compared, x0, radius, s_at, k_at, rng) >= -1e-12
    assert proven >= 20, proven


def test_the_order_holds_every_sampled_margin_and_raises_the_bound_over_interval_facts_alone():
    higher = cases = 0
    rng = np.random.default_rng(8)
    for seed in range(6):
        _, graph, x0, label, targets = pooled_cnn(seed)
        problem = prepare(graph, x0, label, targets)
        for norm, radius in ((LINF, 0.02), (LINF, 0.05), (L2, 0.4)):
            ordered = _margin_lower(propagate(graph, x0, label, targets, radius, norm), problem.spec[None])[0]
            plain = _margin_lower(propagate(graph, x0, label, targets, radius, norm, order=False),
                                  problem.spec[None])[0]
            logits = graph.forward(tf.constant(sample_ball(rng, x0, radius, norm, 2000))).numpy()
            sampled = np.array([np.min(logits[:, label] - logits[:, t]) for t in targets])
            assert np.all(ordered <= sampled + 1e-9)
            cases += len(targets)
            higher += int(np.sum(ordered > plain + 1e-9))
    assert higher >= cases // 3, (higher, cases)


def test_gradient_bounds_hold_where_windows_tie_at_zero():
    """With the first convolution pushed down, many ReLU outputs are 0 and windows tie there: the gradient TF
    routes to the first of the tied entries is 0, as the order's chosen entry's ReLU allows."""
    rng = np.random.default_rng(2)
    ties = 0
    for seed in range(3):
        _, graph, x0, label, targets = pooled_cnn(seed, bias=-0.3)
        for norm, radius in ((LINF, 0.05), (L2, 0.5)):
            points = sample_ball(rng, x0, radius, norm, 1500)
            relu = graph.nodes[pool_nodes(graph)[0]].inputs[0]
            y = graph.forward_all(tf.constant(points))[relu].numpy()
            windows = y[:, :6, :6].reshape(len(points), 3, 2, 3, 2, -1).transpose(0, 1, 3, 5, 2, 4).reshape(
                len(points), 3, 3, -1, 4)
            ties += int(np.sum(windows.max(-1) == 0))
            result = lipschitz_upper_bounds(graph, x0, label, targets, radius, norm)
            found = sampled_gradient_norms(graph, points, label, targets)
            assert np.all(result.values >= found * (1 - 1e-9)), (seed, norm.name)
    assert ties > 100, ties


def test_a_window_tied_at_zero_is_stable_on_the_entry_that_can_reach_highest():
    op = MaxPooling2D("mp", (2, 2), "valid", (2, 4, 1))
    # Left window: ReLU outputs all at least 0, only the third can exceed 0. Right window: the first is at least 1,
    # the third may exceed it, the second reaches 1 only (a tie, never above).
    lo = tf.constant([[[[0.0], [0.0], [1.0], [0.0]], [[0.0], [0.0], [0.0], [0.0]]]])
    hi = tf.constant([[[[0.0], [0.0], [2.0], [1.0]], [[3.0], [0.0], [3.0], [1.0]]]])
    bounds = Interval(lo, hi)
    d = op.gradient_multipliers(bounds)
    np.testing.assert_array_equal(d.lo.numpy()[0, :, :, 0], [[0, 0, 0, 0], [1, 0, 0, 0]])
    np.testing.assert_array_equal(d.hi.numpy()[0, :, :, 0], [[0, 0, 1, 0], [1, 0, 1, 0]])
    np.testing.assert_array_equal(op.interval(bounds).hi.numpy()[0, :, :, 0], [[3, 3]])
    # Proven that the chosen entry of the right window stays above its rival: both windows are stable.
    order = WindowOrder(tf.constant([[[2], [0]]]), tf.constant([[[[[False] * 4], [[False, False, True, False]]]]]))
    d = op.gradient_multipliers(bounds, order)
    np.testing.assert_array_equal(d.lo.numpy()[0, :, :, 0], [[0, 0, 1, 0], [1, 0, 0, 0]])
    np.testing.assert_array_equal(d.hi.numpy()[0, :, :, 0], [[0, 0, 1, 0], [1, 0, 0, 0]])
    np.testing.assert_array_equal(op.interval(bounds, order).hi.numpy()[0, :, :, 0], [[3, 2]])
    chosen, weights, constant = op.relax(bounds, order)
    np.testing.assert_array_equal(weights.numpy(), chosen.numpy())     # y = x_s
    assert np.all(constant.numpy() == 0)


def test_one_candidate_with_a_bounded_gap_gets_the_chord_of_its_relu_which_holds_wherever_the_gap_does():
    """y = max(x_s, x_k) = x_s + relu(x_k - x_s): with x_k - x_s in [g_lo, g_hi] the upper bound is that ReLU's
    chord, exact at both ends of the gap and above max(x_s, x_k) at every point of the box that keeps the gap."""
    op = MaxPooling2D("mp", (1, 2), "valid", (1, 2, 1))
    bounds = Interval(tf.constant([[[[1.0], [0.0]]]]), tf.constant([[[[3.0], [4.0]]]]))
    g_lo, g_hi = -1.5, 0.5                                   # tighter than the intervals' [-3, 3]
    order = WindowOrder(tf.constant([[[0]]]), tf.constant([[[[[False, False]]]]]),
                        tf.constant([[[[[0.0, g_lo]]]]]), tf.constant([[[[[0.0, g_hi]]]]]))
    chosen, weights, constant = (t.numpy().ravel() for t in op.relax(bounds, order))
    lam = g_hi / (g_hi - g_lo)
    np.testing.assert_allclose(weights, [1 - lam, lam])
    np.testing.assert_allclose(constant, [-lam * g_lo])
    np.testing.assert_array_equal(chosen, [1, 0])
    grid = np.array([(s, k) for s in np.linspace(1, 3, 41) for k in np.linspace(0, 4, 81) if g_lo <= k - s <= g_hi])
    upper = grid @ weights + constant[0]
    assert np.all(upper >= grid.max(axis=1) - 1e-12)
    on_ends = np.isclose(grid[:, 1] - grid[:, 0], g_lo) | np.isclose(grid[:, 1] - grid[:, 0], g_hi)
    np.testing.assert_allclose(upper[on_ends], grid[on_ends].max(axis=1), atol=1e-12)
    # Without gaps the window keeps the constant upper bound, the largest upper bound of its entries.
    chosen, weights, constant = (t.numpy().ravel() for t in op.relax(bounds, order._replace(gap_lo=None)))
    np.testing.assert_array_equal(weights, [0, 0])
    np.testing.assert_array_equal(constant, [4])


def test_an_order_proven_over_a_larger_ball_carries_into_a_smaller_one_and_its_bounds_still_hold():
    rng = np.random.default_rng(3)
    _, graph, x0, label, targets = pooled_cnn(1)
    problem = prepare(graph, x0, label, targets)
    outer = propagate(graph, x0, label, targets, 0.04, LINF)
    inner = BoundPropagation(graph, problem.x0, tf.constant([0.03], graph.dtype), LINF, problem.box, BUDGET,
                             within=outer.bounds, within_orders=outer.orders)
    alone = propagate(graph, x0, label, targets, 0.03, LINF)
    for pool in pool_nodes(graph):
        carried, own, fresh = outer.orders[pool], inner.orders[pool], alone.orders[pool]
        assert np.all(own.dominated.numpy() >= carried.dominated.numpy())
        assert np.all(own.gap_hi.numpy() <= carried.gap_hi.numpy()) and np.all(own.gap_lo.numpy() >= carried.gap_lo.numpy())
        assert np.all(own.dominated.numpy() >= fresh.dominated.numpy())
    assert sum(int(np.sum(outer.orders[p].dominated.numpy())) for p in pool_nodes(graph)) > 0
    logits = graph.forward(tf.constant(sample_ball(rng, x0, 0.03, LINF, 2000))).numpy()
    sampled = np.array([np.min(logits[:, label] - logits[:, t]) for t in targets])
    assert np.all(_margin_lower(inner, problem.spec[None])[0] <= sampled + 1e-9)
