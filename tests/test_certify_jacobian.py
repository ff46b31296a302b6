"""The certified Lipschitz bound through the backward pass (certify/jacobian.py), against known truths only:
gradients sampled in the ball (every layer type), the MILP's exact constant on tiny ReLU networks, gradient
ascent on smooth networks, every vertex of the ball of a tiny max-pooling network, and the MILP's exact
minimal distortion for the radius the bound proves."""

from __future__ import annotations

import heapq

import numpy as np
import pytest
import tensorflow as tf

from cleverscore.certify import from_keras, jacobian, lipschitz_upper_bounds
from cleverscore.certify.crown import prepare
from cleverscore.certify.jacobian import (GradientPropagation, _best_splits, _clamped_forward, _crossed, _Part,
                                         _worst_parts, gradient_norm_bounds)
from cleverscore.certify.ops.activation import ReLU
from cleverscore.certify.ops.base import product_chord
from cleverscore.certify.milp import local_lipschitz, minimal_distortion, relu_network_from_keras
from cleverscore.certify.ops import Interval
from cleverscore.norms import L1, L2, LINF, NORMS
from cleverscore.running.bounds import lipschitz_radius
from test_certify_crown import sampled_gradient_norms
from test_certify_ops import LAYER_MODELS, build, predicted, random_input, sample_ball

TOL = 1e-9


def test_the_product_chord_lies_below_every_product_and_is_exact_where_the_gradient_keeps_its_sign():
    rng = np.random.default_rng(0)
    a = tf.constant(rng.normal(size=(1, 1, 500)))
    d = Interval(*(tf.constant(v) for v in np.sort(rng.uniform(0, 1, (2, 1, 1, 500)), axis=0)))
    t = Interval(*(tf.constant(v) for v in np.sort(rng.normal(size=(2, 1, 1, 500)), axis=0)))
    slope, constant = (v.numpy() for v in product_chord(a, d, t))
    for s in np.linspace(0, 1, 11):
        for u in np.linspace(0, 1, 11):
            dv, tv = d.lo + s * (d.hi - d.lo), t.lo + u * (t.hi - t.lo)
            assert np.all(slope * tv.numpy() + constant <= (a * dv * tv).numpy() + TOL)
    same_sign = ((t.lo.numpy() >= 0) | (t.hi.numpy() <= 0))
    worst = tf.minimum(a * d.lo * t.lo, a * d.hi * t.lo).numpy()  # at t = t.lo the bound is the min over d
    np.testing.assert_allclose((slope * t.lo.numpy() + constant)[same_sign], worst[same_sign], atol=1e-12)


def layer_case(name: str, seed: int):
    """A layer model of test_certify_ops in float64, a random input, its label and the other two classes."""
    model = build(name)
    graph = from_keras(model, dtype=tf.float64)
    rng = np.random.default_rng(seed)
    x0 = random_input(rng, graph.input_shape)
    label = predicted(model, x0)
    return graph, rng, x0, label, [j for j in range(3) if j != label]


@pytest.mark.parametrize("name", sorted(LAYER_MODELS))
def test_the_bound_holds_every_sampled_gradient_and_is_never_above_the_interval_bound(name):
    graph, rng, x0, label, targets = layer_case(name, seed=11)
    for norm, radius in zip(NORMS, (0.6, 0.25, 0.08)):
        result = lipschitz_upper_bounds(graph, x0, label, targets, radius, norm)
        sampled = sampled_gradient_norms(graph, sample_ball(rng, x0, radius, norm, 400), label, targets)
        assert np.all(result.values >= sampled * (1 - 1e-9)), (name, norm.label)
        assert np.all(result.values <= result.interval * (1 + 1e-12)), (name, norm.label)


def tiny_relu_mlp(seed: int, hidden: tuple[int, ...] = (6, 6)):
    import keras

    keras.utils.set_random_seed(seed)
    stack = [keras.Input((10,)), *(keras.layers.Dense(h, activation="relu") for h in hidden), keras.layers.Dense(3)]
    return keras.Sequential(stack)


def relu_case(seed: int, radius: float = 0.1):
    model = tiny_relu_mlp(seed)
    x0 = np.random.default_rng(seed).uniform(-0.3, 0.3, 10)
    label = int(np.argmax(model(x0[None].astype(np.float32)).numpy()))
    target = (label + 1) % 3
    return model, from_keras(model, dtype=tf.float64), relu_network_from_keras(model), x0, label, target, radius


@pytest.fixture(scope="module")
def relu_cases():
    """Eight tiny ReLU networks with the MILP's exact L1-gradient constant over an Linf ball."""
    cases = []
    for seed in range(8):
        model, graph, net, x0, label, target, radius = relu_case(seed)
        exact = local_lipschitz(net, x0, label, target, radius, time_limit=30)
        assert exact.exact
        cases.append((graph, x0, label, target, radius, exact.value))
    return cases


def test_never_below_the_exact_constant_and_tighter_than_the_interval_bound_on_most(relu_cases):
    tighter = 0
    for graph, x0, label, target, radius, exact in relu_cases:
        result = lipschitz_upper_bounds(graph, x0, label, [target], radius, LINF)
        bound, interval = result.for_norm(LINF)[0], result.interval[0, 2]
        assert bound >= exact * (1 - 1e-9)
        tighter += bound < interval * (1 - 1e-6)
    assert tighter >= 6, tighter


@pytest.mark.parametrize("clamp,cut_steps", [(True, 2), (True, 0), (False, 0)])
def test_the_split_search_stays_sound_never_ends_above_one_pass_and_closes_most_of_the_gap(relu_cases, clamp,
                                                                                          cut_steps):
    closed = []
    for graph, x0, label, target, radius, exact in relu_cases:
        problem = prepare(graph, x0, label, [target])
        forward = problem.propagate(np.array([radius]), LINF, 1 << 28)
        one_pass, _ = gradient_norm_bounds(forward, problem.spec, 1 << 28)
        split, report = gradient_norm_bounds(forward, problem.spec, 1 << 28, objective=2, time_budget=1.0,
                                             clamp=clamp, cut_steps=cut_steps)
        assert np.all(split <= one_pass * (1 + 1e-12))
        assert split[0, 2] >= exact * (1 - 1e-9) and report["parts"] >= 1
        if one_pass[0, 2] > exact * (1 + 1e-6):
            closed.append((one_pass[0, 2] - split[0, 2]) / (one_pass[0, 2] - exact))
    assert closed and np.median(closed) >= 0.5, closed


def test_a_search_checking_its_leaves_ends_at_the_exact_constant_and_says_so(relu_cases, monkeypatch):
    # Without the LP check of leaves (leaves.py) a search can run out of parts above the exact constant:
    # its worst leaves hold no point of the ball.
    attained, closed = 0, 0
    for graph, x0, label, target, radius, exact in relu_cases:
        problem = prepare(graph, x0, label, [target])
        forward = problem.propagate(np.array([radius]), LINF, 1 << 28)
        checked, report = gradient_norm_bounds(forward, problem.spec, 1 << 28, objective=2, time_budget=4.0)
        assert checked[0, 2] >= exact * (1 - 1e-9)
        if report["attained"][0]:
            assert checked[0, 2] == pytest.approx(exact, rel=1e-6)
            attained += 1
        with monkeypatch.context() as patch:
            patch.setattr(jacobian, "_leaf_checker", lambda forward: None)
            unchecked, plain = gradient_norm_bounds(forward, problem.spec, 1 << 28, objective=2, time_budget=4.0)
        assert not plain["attained"][0] and plain["empty_leaves"] == 0
        closed += report["attained"][0] and unchecked[0, 2] > 1.01 * exact
    assert attained >= 5 and closed >= 2, (attained, closed)


def test_one_search_over_several_targets_bounds_each_one_soundly_and_tightly():
    # 20 ReLUs and two targets: many parts per batch, batches that grow, each target's heap its own.
    model = tiny_relu_mlp(11, hidden=(10, 10))
    graph, net = from_keras(model, dtype=tf.float64), relu_network_from_keras(model)
    x0 = np.random.default_rng(11).uniform(-0.3, 0.3, 10)
    label = int(np.argmax(model(x0[None].astype(np.float32)).numpy()))
    targets = [(label + 1) % 3, (label + 2) % 3]
    exact = []
    for t in targets:
        answer = local_lipschitz(net, x0, label, t, 0.15, time_limit=60)
        assert answer.exact
        exact.append(answer.value)
    problem = prepare(graph, x0, label, targets)
    forward = problem.propagate(np.array([0.15]), LINF, 1 << 28)
    one_pass, _ = gradient_norm_bounds(forward, problem.spec, 1 << 28)
    split, report = gradient_norm_bounds(forward, problem.spec, 1 << 28, objective=2, time_budget=2.0)
    assert report["parts"] > 2 * len(targets)
    for k, value in enumerate(exact):
        assert value * (1 - 1e-9) <= split[k, 2] <= one_pass[k, 2] * (1 + 1e-12)
        if one_pass[k, 2] > value * (1 + 1e-6):
            assert (one_pass[k, 2] - split[k, 2]) / (one_pass[k, 2] - value) >= 0.5


def test_batches_take_each_targets_worst_splittable_parts_in_turn():
    def part(target, bound, splittable=True):
        return _Part(-bound, int(bound), target, {}, np.array([0.0, 0.0, bound]),
                     (0, 0, True, 0.0, 1.0) if splittable else None)

    heaps = [[part(0, 9), part(0, 7), part(0, 5)], [part(1, 8), part(1, 6)], [part(2, 10, splittable=False)]]
    for heap in heaps:
        heapq.heapify(heap)
    batch = _worst_parts(heaps, 4)
    # Target 2's worst part cannot be split, so nothing can lower that target's bound: it gives none.
    assert [(p.target, p.bounds[2]) for p in batch] == [(0, 9), (1, 8), (0, 7), (1, 6)]
    assert [len(h) for h in heaps] == [1, 0, 1]
    assert [p.bounds[2] for p in _worst_parts(heaps, 4)] == [5]


def test_each_problem_splits_its_splittable_multiplier_of_largest_reach():
    lo = {3: np.array([[0.0, 0.0, 1.0], [0.0, 0.0, 0.0]]), 5: np.array([[0.2, 0.5], [0.5, 0.5]])}
    hi = {3: np.array([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]]), 5: np.array([[0.4, 0.5], [0.5, 0.5]])}
    reach = {3: np.array([[1.0, 2.0, 9.0], [5.0, 5.0, 5.0]]), 5: np.array([[3.0, 8.0], [1.0, 1.0]])}
    multipliers = {m: (lo[m], hi[m]) for m in lo}
    choices = _best_splits(multipliers, reach, binary={3}, problems=2)
    # Problem 0: node 3's index 2 and node 5's index 1 are fixed; node 5's index 0 (reach 3) beats node 3's 2.
    assert choices[0] == (5, 0, False, 0.2, 0.4)
    assert choices[1] is None  # everything fixed
    assert _best_splits(multipliers, {3: reach[3], 5: np.zeros((2, 2))}, binary={3}, problems=2)[0] == \
        (3, 1, True, 0.0, 1.0)


def first_relu_layer(radius: float):
    """A tiny ReLU MLP's forward bounds over an Linf ball, its first ReLU node, that ReLU's input node and its
    input's flat bounds (lo, hi)."""
    _, graph, _, x0, label, target, radius = relu_case(3, radius=radius)
    forward = prepare(graph, x0, label, [target]).propagate(np.array([radius]), LINF, 1 << 28)
    relu = next(m for m, node in enumerate(graph.nodes) if isinstance(node.op, ReLU))
    z = graph.nodes[relu].inputs[0]
    return graph, x0, radius, forward, relu, z, tuple(t.numpy().ravel() for t in forward.bounds[z])


def test_clamped_forward_bounds_hold_on_every_sampled_point_of_their_side_and_tighten_later_layers():
    graph, x0, radius, forward, relu, z, (lo, hi) = first_relu_layer(radius=0.2)
    unstable = np.flatnonzero((lo < 0) & (hi > 0))
    assert len(unstable) >= 2
    a, b = (int(i) for i in unstable[:2])
    fixed = [{(relu, a): (0.0, 0.0)}, {(relu, a): (1.0, 1.0)}, {(relu, a): (1.0, 1.0), (relu, b): (0.0, 0.0)}]
    split = _clamped_forward(forward, fixed, {relu: z}, 1 << 28)
    points = x0 + np.random.default_rng(0).uniform(-radius, radius, (20000, 10))
    values = [v.numpy().reshape(len(points), -1) for v in graph.forward_all(tf.constant(points))]
    sides = [values[z][:, a] <= 0, values[z][:, a] >= 0, (values[z][:, a] >= 0) & (values[z][:, b] <= 0)]
    tighter = 0
    for k, side in enumerate(sides):
        assert side.sum() > 100
        for i, bounds in enumerate(split.bounds):
            lo_k, hi_k = bounds.lo.numpy()[k].ravel(), bounds.hi.numpy()[k].ravel()
            assert np.all(values[i][side] >= lo_k - 1e-9) and np.all(values[i][side] <= hi_k + 1e-9)
            outer = forward.bounds[i]
            assert np.all(lo_k >= outer.lo.numpy().ravel() - 1e-12) and np.all(hi_k <= outer.hi.numpy().ravel() + 1e-12)
            tighter += i > z and np.any(hi_k - lo_k < (outer.hi - outer.lo).numpy().ravel() * (1 - 1e-6))
    assert tighter >= 3, tighter
    assert not _crossed(split).any()


def test_a_part_whose_fixings_contradict_the_forward_bounds_is_empty_and_bounds_nothing():
    _, _, _, forward, relu, z, (lo, hi) = first_relu_layer(radius=0.05)
    inactive, unstable = int(np.argmin(hi)), int(np.flatnonzero((lo < 0) & (hi > 0))[0])
    assert hi[inactive] < 0
    split = _clamped_forward(forward, [{(relu, inactive): (1.0, 1.0)}, {(relu, unstable): (1.0, 1.0)}], {relu: z}, 1 << 28)
    assert _crossed(split).tolist() == [True, False]


def smooth_case(activation: str, conv: bool):
    import keras

    keras.utils.set_random_seed(5)
    layers = keras.layers
    if conv:
        stack = [keras.Input((5, 5, 1)), layers.Conv2D(3, 2, activation=activation), layers.Flatten(),
                 layers.Dense(6, activation=activation), layers.Dense(3)]
    else:
        stack = [keras.Input((6,)), layers.Dense(8, activation=activation), layers.Dense(8, activation=activation),
                 layers.Dense(3)]
    return keras.Sequential(stack)


def ascended_norm(graph, x0: np.ndarray, radius: float, label: int, target: int, rng) -> float:
    """The largest L1 gradient norm found by projected sign-gradient ascent from many starts in the Linf ball."""
    x = tf.Variable(np.clip(x0 + rng.uniform(-radius, radius, (256, *x0.shape)), -0.5, 0.5))
    lo, hi = np.maximum(x0 - radius, -0.5), np.minimum(x0 + radius, 0.5)
    best = 0.0
    for _ in range(40):
        with tf.GradientTape() as outer:
            with tf.GradientTape() as inner:
                logits = graph.forward(x)
                m = logits[:, label] - logits[:, target]
            g = inner.gradient(m, x)
            norms = tf.reduce_sum(tf.abs(tf.reshape(g, (g.shape[0], -1))), axis=1)
            total = tf.reduce_sum(norms)
        best = max(best, float(tf.reduce_max(norms)))
        step = outer.gradient(total, x)
        x.assign(np.clip(x.numpy() + 0.1 * radius * np.sign(step.numpy()), lo, hi))
    return best


@pytest.mark.parametrize("activation,conv", [("tanh", False), ("sigmoid", False), ("softplus", True), ("elu", True)])
def test_smooth_networks_are_never_below_what_gradient_ascent_finds(activation, conv):
    model = smooth_case(activation, conv)
    graph = from_keras(model, dtype=tf.float64)
    rng = np.random.default_rng(2)
    x0 = random_input(rng, graph.input_shape)
    label = predicted(model, x0)
    target = (label + 1) % 3
    radius = 0.1
    bound = lipschitz_upper_bounds(graph, x0, label, [target], radius, LINF).for_norm(LINF)[0]
    found = ascended_norm(graph, x0, radius, label, target, rng)
    assert bound >= found * (1 - 1e-9) and bound < np.inf
    # Halving the derivatives' ranges, each part with its own (through convolutions: windowed) multipliers.
    split = lipschitz_upper_bounds(graph, x0, label, [target], radius, LINF, split_seconds=0.5)
    assert found * (1 - 1e-9) <= split.for_norm(LINF)[0] <= bound * (1 + 1e-12) and split.parts > 1


def test_a_max_pooling_network_is_never_below_the_largest_gradient_at_every_vertex_of_the_ball():
    import itertools

    import keras

    keras.utils.set_random_seed(9)
    layers = keras.layers
    # The hidden ReLU after the pooling makes the gradient at the pooling's output uncertain, so passes start
    # at the ReLU before it and meet the pooling's relaxation on windows.
    model = keras.Sequential([keras.Input((4, 4, 1)), layers.Conv2D(2, 2, padding="same", activation="relu"),
                              layers.MaxPooling2D(2), layers.Flatten(), layers.Dense(4, activation="relu"),
                              layers.Dense(3)])
    graph = from_keras(model, dtype=tf.float64)
    rng = np.random.default_rng(4)
    x0 = random_input(rng, graph.input_shape)
    label = predicted(model, x0)
    targets = [j for j in range(3) if j != label]
    radius = 0.05
    corners = np.array(list(itertools.product((-radius, radius), repeat=16))).reshape(-1, 4, 4, 1)  # 2^16 vertices
    points = np.concatenate([np.clip(x0 + corners, -0.5, 0.5), sample_ball(rng, x0, radius, LINF, 4000)])
    result = lipschitz_upper_bounds(graph, x0, label, targets, radius, LINF)
    found = sampled_gradient_norms(graph, points, label, targets)
    assert np.all(result.values >= found * (1 - 1e-9))
    # The split search's parts carry their own multipliers (and windows' candidates) through windowed passes.
    split = lipschitz_upper_bounds(graph, x0, label, targets, radius, LINF, split_seconds=1.0)
    assert split.parts > len(targets)
    assert np.all(split.values >= found * (1 - 1e-9)) and np.all(split.values <= result.values * (1 + 1e-12))
    gp_problem = prepare(graph, x0, label, targets)
    forward = gp_problem.propagate(np.array([radius]), LINF, 1 << 28)
    assert any(float(tf.reduce_max(m.hi - m.lo)) > 0 for m in
               GradientPropagation(forward, gp_problem.spec, 1 << 28).multipliers.values())  # a window switches


def test_the_radius_the_bound_proves_is_never_above_the_exact_minimal_distortion():
    for seed in range(6):
        model, graph, net, x0, label, target, _ = relu_case(seed)
        exact = minimal_distortion(net, x0, label, target, LINF, time_limit=30)
        assert exact.exact
        margin = float(graph.forward(x0[None])[0, label] - graph.forward(x0[None])[0, target])
        for ball in (0.02, 0.1, 0.3):
            bound = lipschitz_upper_bounds(graph, x0, label, [target], ball, LINF).for_norm(LINF)[0]
            assert lipschitz_radius(margin, bound, ball) <= exact.value * (1 + 1e-9), (seed, ball)


def test_bad_arguments_are_one_line_usage_errors():
    from cleverscore.errors import UsageError

    model, graph, _, x0, label, target, radius = relu_case(0)
    with pytest.raises(UsageError, match="unknown Lipschitz bound method"):
        lipschitz_upper_bounds(graph, x0, label, [target], radius, L2, method="exact")
    with pytest.raises(UsageError, match="split_seconds"):
        lipschitz_upper_bounds(graph, x0, label, [target], radius, L1, split_seconds=-1.0)


@pytest.mark.parametrize("name", ["conv_valid", "conv_same_stride2", "maxpool_valid_odd", "maxpool_same", "avgpool_valid",
                                  "batch_norm", "add_residual", "gap"])
def test_windowed_passes_give_the_bounds_of_dense_ones(name):
    graph, _, x0, label, targets = layer_case(name, seed=5)
    problem = prepare(graph, x0, label, targets)
    forward = problem.propagate(np.array([0.1]), LINF, 1 << 28)
    windowed = GradientPropagation(forward, problem.spec, 1 << 28)
    dense = GradientPropagation(forward, problem.spec, 1 << 28, patches=False)
    for k, (a, b) in enumerate(zip(windowed.bounds, dense.bounds)):
        np.testing.assert_allclose(a.lo.numpy(), b.lo.numpy(), rtol=1e-9, atol=1e-12, err_msg=f"node {k}")
        np.testing.assert_allclose(a.hi.numpy(), b.hi.numpy(), rtol=1e-9, atol=1e-12, err_msg=f"node {k}")
    np.testing.assert_allclose(windowed.norm_bounds(), dense.norm_bounds(), rtol=1e-9)


# ---------------------------------------------------------------------------------------------
# The relaxation's own worst case (`multipliers.py`): every choice of multipliers within the forward
# bounds' ranges is a point the bound must cover.


def enumerated_worst_l1(model, forward, c: np.ndarray) -> tuple[float, int]:
    """max over every 0/1 choice of the free ReLU derivatives of ||J(d)^T c||_1, by enumeration (a ReLU MLP)."""
    import itertools

    kernels = [layer.get_weights()[0].astype(np.float64) for layer in model.layers if layer.get_weights()]
    ranges = [(iv.lo.numpy().ravel(), iv.hi.numpy().ravel())
              for _, iv in sorted(jacobian.default_multipliers(forward).items())]
    free = [np.flatnonzero(lo < hi) for lo, hi in ranges]
    best = 0.0
    for bits in itertools.product((0.0, 1.0), repeat=sum(len(f) for f in free)):
        v, used = c, 0
        ds = []
        for (lo, _), f in zip(ranges, free):
            d = lo.copy()
            d[f] = bits[used:used + len(f)]
            used += len(f)
            ds.append(d)
        for kernel, d in zip(kernels[::-1], [None, *ds[::-1]]):
            v = kernel @ (v if d is None else d * v)
        best = max(best, float(np.abs(v).sum()))
    return best, sum(len(f) for f in free)


def test_the_multiplier_search_reaches_the_enumerated_worst_case_which_the_bound_covers():
    """Tiny ReLU MLPs with at most 12 free derivatives: enumeration gives the relaxed problem's exact worst
    case. The bound must cover it (it covers every choice); the search never passes it (its values are
    gradients of choices) and reaches it on most networks (a local search: 24 such cases with 16 starts
    reached it on 23 and 0.98 of it on the last; with 4 starts on 19, at least 0.71 of it)."""
    from cleverscore.certify.multipliers import worst_multipliers

    ratios = []
    for seed in range(8):
        model, graph, _, x0, label, target, _ = relu_case(seed)
        for radius in (0.1, 0.2):
            problem = prepare(graph, x0, label, [target])
            forward = problem.propagate(np.array([radius]), LINF, 1 << 30)
            c = problem.spec[0].numpy()
            exact, free = enumerated_worst_l1(model, forward, c)
            if free > 12 or free == 0:
                continue
            search = worst_multipliers(forward, c, starts=8, seed=seed, duals=(1.0,))
            bound = lipschitz_upper_bounds(graph, x0, label, [target], radius, LINF).for_norm(LINF)[0]
            assert bound >= exact * (1 - 1e-9), (seed, radius)
            ratios.append(search.best[2] / exact)
    assert len(ratios) >= 12, len(ratios)
    assert max(ratios) <= 1 + 1e-9
    assert min(ratios) >= 0.7
    assert np.mean(np.isclose(ratios, 1.0, rtol=1e-9)) >= 0.75, ratios


@pytest.mark.parametrize("name", sorted(LAYER_MODELS))
def test_the_bound_covers_every_multiplier_choice_the_search_finds_and_the_centre_is_the_gradient(name):
    from cleverscore.certify.multipliers import worst_multipliers

    graph, rng, x0, label, targets = layer_case(name, seed=5)
    for norm, radius in zip(NORMS, (0.6, 0.25, 0.08)):
        result = lipschitz_upper_bounds(graph, x0, label, targets, radius, norm)
        problem = prepare(graph, x0, label, targets)
        forward = problem.propagate(np.array([radius]), norm, 1 << 30)
        at_x0 = sampled_gradient_norms(graph, x0[None], label, targets)
        for k in range(len(targets)):
            search = worst_multipliers(forward, problem.spec[k].numpy(), starts=1)
            np.testing.assert_allclose(search.at_centre, at_x0[k], rtol=1e-9, atol=1e-12)
            assert np.all(search.best >= search.at_centre * (1 - 1e-12))
            # values[k] holds the duals of the L1, L2 and Linf perturbation norms: q = inf, 2, 1, as `best`
            assert np.all(result.values[k] >= search.best * (1 - 1e-9)), (name, norm.label, k)
