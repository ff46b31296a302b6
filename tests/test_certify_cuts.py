"""Split ReLUs as cuts of the input (certify/cuts.py), against known truths: the linear program's minimum over
the ball, the box and the cuts (HiGHS), and the network's values at sampled points of a split part."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from scipy.optimize import linprog

from cleverscore.certify.concretize import concretize_lower, feasible_offsets
from cleverscore.certify.crown import prepare
from cleverscore.certify.cuts import Cuts, cut_lower, cuts_from_linear_bounds
from cleverscore.certify.jacobian import GradientPropagation, _batched_multipliers, _clamped_forward, default_multipliers
from cleverscore.certify.ops import Interval
from cleverscore.certify.ops.activation import ReLU
from cleverscore.norms import L1, L2, LINF
from test_certify_jacobian import first_relu_layer, relu_case

BOX = (-0.5, 0.5)


def lp_minimum(a: np.ndarray, x0: np.ndarray, radius: float, norm, lam: np.ndarray, e: np.ndarray) -> float:
    """min a . x over {||x - x0|| <= radius} within the box and lam x <= e (Linf or L1 ball), by HiGHS."""
    d = x0.size
    lo, hi = np.maximum(x0 - radius, BOX[0]), np.minimum(x0 + radius, BOX[1])
    if norm is LINF:
        result = linprog(a, A_ub=lam, b_ub=e, bounds=list(zip(lo, hi)), method="highs")
        return result.fun if result.status == 0 else np.inf
    # L1: x = x0 + p - q with p, q >= 0 and sum(p + q) <= radius.
    cost = np.concatenate([a, -a])
    rows = np.vstack([np.hstack([lam, -lam]), np.ones((1, 2 * d))])
    rhs = np.concatenate([e - lam @ x0, [radius]])
    bounds = [(0, h - c) for h, c in zip(hi, x0)] + [(0, c - low) for low, c in zip(lo, x0)]
    result = linprog(cost, A_ub=rows, b_ub=rhs, bounds=bounds, method="highs")
    return a @ x0 + result.fun if result.status == 0 else np.inf


def random_cut_problem(rng, d: int = 40, cuts: int = 4, rows: int = 6):
    x0 = rng.uniform(-0.4, 0.4, d)
    lam = rng.normal(size=(cuts, d))
    lam /= np.linalg.norm(lam, axis=1, keepdims=True)
    e = lam @ x0 + rng.uniform(-0.03, 0.08, cuts)   # some cuts pass near x0 and bite, none empties the ball
    return x0, lam, e, rng.normal(size=(rows, d))


def bounds_with_cuts(a, x0, radius, norm, lam, e, steps):
    x = tf.constant(x0)
    offsets = feasible_offsets(x, tf.constant([radius], tf.float64), Interval(tf.constant(BOX[0], tf.float64),
                                                                                 tf.constant(BOX[1], tf.float64)))
    cuts = Cuts(tf.constant(lam[None]), tf.constant(e[None]))
    got = cut_lower(tf.constant(a[None]), x, offsets, tf.constant([radius], tf.float64), norm, cuts, steps)
    plain = concretize_lower(tf.constant(a[None]), x, offsets, tf.constant([radius], tf.float64), norm)
    return got.numpy()[0], plain.numpy()[0]


@pytest.mark.parametrize("norm,radius", [(LINF, 0.1), (L1, 0.6)])
def test_cut_bounds_are_never_above_the_linear_programs_minimum_and_come_close_to_it(norm, radius):
    rng = np.random.default_rng(3)
    closed, checked = [], 0
    for _ in range(6):
        x0, lam, e, a = random_cut_problem(rng)
        exact = np.array([lp_minimum(row, x0, radius, norm, lam, e) for row in a])
        uncut, plain = bounds_with_cuts(a, x0, radius, norm, lam, e, 0)
        np.testing.assert_allclose(uncut, plain, rtol=1e-9, atol=1e-9)       # no steps: the uncut bound
        got, _ = bounds_with_cuts(a, x0, radius, norm, lam, e, 100)
        assert np.all(got <= exact + 1e-7)                                     # sound: weak duality
        assert np.all(got >= plain - 1e-9)                                     # never looser than without cuts
        bite = exact - plain > 1e-3
        checked += bite.sum()
        closed += list((got - plain)[bite] / (exact - plain)[bite])
    assert checked >= 10, checked
    assert np.median(closed) >= 0.95 and np.min(closed) >= 0.5, closed


def test_a_row_whose_end_is_infinite_holds_no_cut():
    lam = tf.constant(np.arange(12, dtype=np.float64).reshape(1, 3, 4) - 5.0)
    constant = tf.constant([[0.5, 1.0, -2.0]], tf.float64)
    cuts = cuts_from_linear_bounds(lam, constant, tf.constant([[np.inf, 3.0, np.inf]], tf.float64))
    # Rows without a finite end become the empty cut 0 >= 0: zero, so no multiplier can move the bound.
    for r in (0, 2):
        assert not np.any(cuts.lam.numpy()[0, r]) and cuts.e.numpy()[0, r] == 0
    row = lam.numpy()[0, 1]
    np.testing.assert_allclose(cuts.lam.numpy()[0, 1], row / np.linalg.norm(row))
    np.testing.assert_allclose(cuts.e.numpy()[0, 1], (3.0 - 1.0) / np.linalg.norm(row))
    assert cuts_from_linear_bounds(lam, constant, tf.constant([[np.inf] * 3], tf.float64)) is None


def split_points(graph, x0: np.ndarray, radius: float, fixings: dict, nodes: dict, n: int = 40000):
    """Sampled points of the Linf ball (vertices and interior) and which of them keep every fixed ReLU on its side."""
    rng = np.random.default_rng(1)
    delta = rng.uniform(-radius, radius, (n, x0.size))
    delta[: n // 2] = np.sign(delta[: n // 2]) * radius
    points = np.clip(x0 + delta, *BOX)
    values = [v.numpy().reshape(n, -1) for v in graph.forward_all(tf.constant(points))]
    keep = np.ones(n, bool)
    for (relu, index), (side, _) in fixings.items():
        z = values[nodes[relu]][:, index]
        keep &= (z >= 0) if side > 0 else (z <= 0)
    return values, keep


def test_cut_forward_bounds_hold_on_every_sampled_point_of_the_part_and_are_never_looser_than_clamping():
    graph, x0, radius, forward, relu, z, (lo, hi) = first_relu_layer(radius=0.25)
    relus = [m for m, node in enumerate(graph.nodes) if isinstance(node.op, ReLU)]
    nodes = {m: graph.nodes[m].inputs[0] for m in relus}
    unstable = np.flatnonzero((lo < 0) & (hi > 0))
    second = nodes[relus[1]]
    lo2, hi2 = (t.numpy().ravel() for t in forward.bounds[second])
    unstable2 = np.flatnonzero((lo2 < 0) & (hi2 > 0))
    assert len(unstable) >= 3 and len(unstable2) >= 1
    a, b, c = (int(i) for i in unstable[:3])
    parts = [{(relu, a): (1.0, 1.0), (relu, b): (0.0, 0.0)},
             {(relu, a): (0.0, 0.0), (relu, c): (1.0, 1.0)},
             {(relu, b): (1.0, 1.0), (relus[1], int(unstable2[0])): (1.0, 1.0)}]
    clamped = _clamped_forward(forward, parts, nodes, 1 << 28)
    cut = _clamped_forward(forward, parts, nodes, 1 << 28, cut_steps=50)
    tighter = 0
    for k, fixings in enumerate(parts):
        values, keep = split_points(graph, x0, radius, fixings, nodes)
        assert keep.sum() > 100
        for i in range(1, len(graph.nodes)):
            lo_k, hi_k = (t.numpy()[k].ravel() for t in cut.bounds[i])
            assert np.all(values[i][keep] >= lo_k - 1e-9) and np.all(values[i][keep] <= hi_k + 1e-9)
            outer_lo, outer_hi = (t.numpy()[k].ravel() for t in clamped.bounds[i])
            assert np.all(lo_k >= outer_lo - 1e-9) and np.all(hi_k <= outer_hi + 1e-9)
            tighter += np.sum(hi_k - lo_k < (outer_hi - outer_lo) * (1 - 1e-6))
    assert tighter >= 3, tighter


def test_a_part_bounded_with_cuts_never_has_a_looser_gradient_bound_and_often_a_tighter_one():
    tighter, parts_checked = 0, 0
    for seed in range(4):
        _, graph, _, x0, label, target, radius = relu_case(seed, radius=0.2)
        problem = prepare(graph, x0, label, [target])
        forward = problem.propagate(np.array([radius]), LINF, 1 << 28)
        relus = [m for m, node in enumerate(graph.nodes) if isinstance(node.op, ReLU)]
        nodes = {m: graph.nodes[m].inputs[0] for m in relus}
        lo, hi = (t.numpy().ravel() for t in forward.bounds[nodes[relus[0]]])
        unstable = [int(i) for i in np.flatnonzero((lo < 0) & (hi > 0))]
        if len(unstable) < 2:
            continue
        rng = np.random.default_rng(seed)
        parts = [{(relus[0], i): (float(s), float(s)) for i, s in zip(unstable[:3], rng.integers(0, 2, 3))}
                 for _ in range(6)]
        bounds = []
        for steps in (0, 50):
            split = _clamped_forward(forward, parts, nodes, 1 << 28, cut_steps=steps)
            multipliers, _ = _batched_multipliers(default_multipliers(split), parts)
            spec = tf.repeat(problem.spec, len(parts), axis=0)
            bounds.append(GradientPropagation(forward, spec, 1 << 28, multipliers).norm_bounds()[:, 2])
        assert np.all(bounds[1] <= bounds[0] * (1 + 1e-9))
        tighter += np.sum(bounds[1] < bounds[0] * (1 - 1e-6))
        parts_checked += len(parts)
    assert parts_checked >= 12 and tighter >= 2, (parts_checked, tighter)


def test_cut_bounds_on_an_l2_ball_are_never_above_any_sampled_point_that_keeps_the_cuts():
    from test_certify_ops import sample_ball

    rng = np.random.default_rng(5)
    radius = 0.3
    for _ in range(4):
        x0, lam, e, a = random_cut_problem(rng, d=12, cuts=3)
        points = sample_ball(rng, x0, radius, L2, 200000).reshape(200000, -1)
        kept = points[np.all(points @ lam.T <= e, axis=1)]
        assert len(kept) > 1000
        got, plain = bounds_with_cuts(a, x0, radius, L2, lam, e, 100)
        assert np.all(got <= (kept @ a.T).min(axis=0) + 1e-9)     # sound: below every point of the part
        assert np.all(got >= plain - 1e-9)
        assert np.any(got > plain + 1e-3)                          # and the cuts do bite
