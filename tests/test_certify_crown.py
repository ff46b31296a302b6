"""Certify end to end: exact on affine models, never looser than intervals, sound against attacks and samples."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

import keras
from keras import layers

from cleverscore.certify import (
    certified_radius,
    from_keras,
    interval_margin_lower_bounds,
    lipschitz_upper_bounds,
    margin_lower_bounds,
)
from cleverscore.certify.crown import prepare, wider_norm_scale
from cleverscore.errors import UsageError
from cleverscore.norms import L1, L2, LINF
from test_certify_ops import NORMS, TOL, reference_min, sample_ball, scale_weights

# ---------------------------------------------------------------------------------------------
# Models


def affine(seed: int = 0, d: int = 16, classes: int = 4):
    """f(x) = W^T flatten(x) + b with margins 0.1, 0.2, 0.3 at x0 = 0: radii g / ||w_c - w_j||_dual."""
    rng = np.random.default_rng(seed)
    model = keras.Sequential([keras.Input((4, 4, 1)), layers.Flatten(), layers.Dense(classes)])
    model.layers[-1].set_weights([rng.normal(size=(d, classes)), np.array([0.3, 0.2, 0.1, 0.0])])
    return model, model.layers[-1].get_weights()[0].astype(np.float64)   # as stored: float32


def relu_mlp(seed: int = 1):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((4, 4, 1)), layers.Flatten(), layers.Dense(16, activation="relu"),
                             layers.Dense(16, activation="relu"), layers.Dense(3)])


def tanh_mlp(seed: int = 2):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((4, 4, 1)), layers.Flatten(), layers.Dense(12, activation="tanh"),
                             layers.Dense(12, activation="sigmoid"), layers.Dense(3)])


def tiny_cnn(seed: int = 3):
    """Conv2D, BatchNormalization, an Add merge, MaxPooling2D and GlobalAveragePooling2D."""
    keras.utils.set_random_seed(seed)
    inp = keras.Input((6, 6, 2))
    x = layers.Conv2D(4, 3, padding="same", activation="relu")(inp)
    x = layers.BatchNormalization()(x)
    y = layers.Conv2D(4, 3, padding="same")(x)
    z = layers.ReLU(name="merge_relu")(layers.Add()([x, y]))
    z = layers.MaxPooling2D(2)(z)
    z = layers.Conv2D(4, 2, activation="tanh")(z)
    out = layers.Dense(3)(layers.GlobalAveragePooling2D()(z))
    model = keras.Model(inp, out)
    scale_weights(model, 1.5, seed)
    return model


def centre(model, seed: int = 0, spread: float = 0.3) -> tuple[np.ndarray, int, list[int]]:
    x0 = np.random.default_rng(seed).uniform(-spread, spread, model.inputs[0].shape[1:])
    label = int(np.argmax(model(x0[None].astype(np.float32)).numpy()))
    return x0, label, [j for j in range(model.outputs[0].shape[-1]) if j != label]


@pytest.fixture(scope="module")
def mlp():
    model = relu_mlp()
    return model, from_keras(model, dtype=tf.float64), *centre(model)


@pytest.fixture(scope="module")
def cnn():
    model = tiny_cnn()
    return model, from_keras(model, dtype=tf.float64), *centre(model, seed=4)


def margins(graph, x: np.ndarray, label: int, targets) -> np.ndarray:
    logits = graph.forward(x).numpy()
    return logits[:, [label]] - logits[:, targets]


# ---------------------------------------------------------------------------------------------
# Affine models: the certified radius is g(x0) / ||w_c - w_j||_dual.


@pytest.mark.parametrize("norm", NORMS, ids=lambda n: n.label)
def test_affine_certified_radius_is_margin_over_dual_norm(norm):
    model, w = affine()
    graph = from_keras(model, dtype=tf.float64)
    x0, targets = np.zeros((4, 4, 1)), [1, 2, 3]
    dual = np.linalg.norm((w[:, [0]] - w[:, targets]).T, ord=norm.dual, axis=1)
    g0 = margins(graph, x0[None], 0, targets)[0]
    np.testing.assert_allclose(g0, [0.1, 0.2, 0.3], rtol=1e-6)
    expected = g0 / dual
    assert expected.max() < 0.4   # the box [-0.5, 0.5] never binds
    result = certified_radius(graph, x0, 0, targets, norm, rel_tol=1e-6)
    np.testing.assert_allclose(result.radii, expected, rtol=1e-4)
    assert np.all(result.radii <= expected * (1 + 1e-12))
    bounds = margin_lower_bounds(graph, x0, 0, targets, 0.01, norm).lower
    np.testing.assert_allclose(bounds, g0 - 0.01 * dual, rtol=1e-10)


@pytest.mark.parametrize("norm", NORMS, ids=lambda n: n.label)
def test_affine_margin_bound_where_the_box_binds_is_the_exact_minimum(norm):
    model, w = affine()
    graph = from_keras(model, dtype=tf.float64)
    x0 = np.random.default_rng(5).uniform(-0.45, 0.45, (4, 4, 1))
    radius = {L1: 4.0, L2: 1.2, LINF: 0.3}[norm]
    lower = margin_lower_bounds(graph, x0, 0, [1, 2, 3], radius, norm).lower
    logits0 = graph.forward(x0[None]).numpy()[0]
    for k, j in enumerate([1, 2, 3]):
        a = w[:, 0] - w[:, j]
        exact = logits0[0] - logits0[j] + reference_min(a, -0.5 - x0.ravel(), 0.5 - x0.ravel(), radius, norm)
        ball_only = logits0[0] - logits0[j] - radius * np.linalg.norm(a, ord=norm.dual)
        assert lower[k] == pytest.approx(exact, abs=1e-9)
        assert lower[k] > ball_only + 1e-3   # the box made it tighter than the dual-norm formula


# ---------------------------------------------------------------------------------------------
# CROWN versus intervals, and monotonicity in the radius.


RADII = (0.0, 0.01, 0.03, 0.08, 0.16)


@pytest.mark.parametrize("which", ["mlp", "cnn"])
def test_crown_is_never_looser_than_intervals_and_a_wider_ball_never_certifies_more(which, request):
    _, graph, x0, label, targets = request.getfixturevalue(which)
    for norm in NORMS:
        scale = {L1: 8.0, L2: 2.0, LINF: 1.0}[norm]
        crown = np.array([margin_lower_bounds(graph, x0, label, targets, r * scale, norm).lower for r in RADII])
        interval = np.array([interval_margin_lower_bounds(graph, x0, label, targets, r * scale, norm).lower
                             for r in RADII])
        assert np.all(crown >= interval - TOL), norm.label
        assert np.any(crown > interval + 1e-3), norm.label   # and CROWN does tighten them
        assert np.all(np.diff(crown, axis=0) <= TOL), norm.label
        assert np.all(np.diff(interval, axis=0) <= TOL), norm.label
        np.testing.assert_allclose(crown[0], margins(graph, x0[None], label, targets)[0], atol=1e-9)


def test_crown_node_bounds_lie_inside_interval_node_bounds(cnn):
    _, graph, x0, label, targets = cnn
    problem = prepare(graph, x0, label, targets)
    with_crown = problem.propagate(np.array([0.05, 0.1]), L2, 1 << 30)
    plain = problem.propagate(np.array([0.05, 0.1]), L2, 1 << 30, crown=False)
    for a, b in zip(with_crown.bounds, plain.bounds):
        assert np.all(a.lo.numpy() >= b.lo.numpy() - TOL) and np.all(a.hi.numpy() <= b.hi.numpy() + TOL)


@pytest.mark.parametrize("norm", NORMS, ids=lambda n: n.label)
def test_bounds_within_a_larger_balls_bounds_hold_on_samples_and_refine_fewer_neurons(cnn, norm):
    _, graph, x0, label, targets = cnn
    problem = prepare(graph, x0, label, targets)
    radius = {L1: 1.0, L2: 0.3, LINF: 0.03}[norm]
    outer = problem.propagate(np.array([1.2 * radius]), norm, 1 << 30)
    plain = problem.propagate(np.array([radius]), norm, 1 << 30)
    warm = problem.propagate(np.array([radius]), norm, 1 << 30, within=outer.bounds)
    samples = sample_ball(np.random.default_rng(5), x0, radius, norm, 1000)
    for i, value in enumerate(graph.forward_all(samples)):
        v, lo, hi = value.numpy(), warm.bounds[i].lo.numpy(), warm.bounds[i].hi.numpy()
        slack = TOL * (1 + np.abs(v))
        assert np.all(lo <= v + slack) and np.all(v <= hi + slack), graph.nodes[i].name
        # Within the larger ball's bounds too, which are sound for this smaller ball.
        assert np.all(lo >= outer.bounds[i].lo.numpy() - TOL) and np.all(hi <= outer.bounds[i].hi.numpy() + TOL)
    # Neurons the larger ball already proved stable are not refined again (the point of it) ...
    refined = [sum(r.refined for r in bp.reports) for bp in (plain, warm)]
    assert refined[1] < refined[0]
    # ... and the margin bound is as good (observed; CROWN is not monotone in its inputs' bounds
    # by construction, so this checks the saving costs nothing here, not a theorem).
    last, spec = len(graph.nodes) - 1, problem.spec[None]
    assert np.all(warm.backward_lower(last, spec).numpy() >= plain.backward_lower(last, spec).numpy() - 1e-6)


# ---------------------------------------------------------------------------------------------
# Soundness against attacks and dense sampling.


def pgd_adversarial(model, x0: np.ndarray, label: int, target: int, eps: float, norm, steps: int = 40,
                    restarts: int = 32, seed: int = 0) -> np.ndarray | None:
    """A point of the eps-ball (in the box) with f_target >= f_label, found by targeted PGD, or None."""
    rng = np.random.default_rng(seed)
    x = tf.Variable(sample_ball(rng, x0, eps, norm, restarts).astype(np.float32))
    x0_t = tf.constant(x0[None].astype(np.float32))

    @tf.function
    def margin_and_grad():
        with tf.GradientTape() as tape:
            logits = model(x)
            m = logits[:, label] - logits[:, target]
        return m, tape.gradient(m, x)

    step = 2.5 * eps / steps
    for _ in range(steps):
        m, g = margin_and_grad()
        hit = np.flatnonzero(m.numpy() <= 0)
        if hit.size:
            return x.numpy()[hit[0]].astype(np.float64)
        if norm is LINF:
            delta = tf.clip_by_value(x - step * tf.sign(g) - x0_t, -eps, eps)
        else:
            g_norm = tf.norm(tf.reshape(g, (restarts, -1)), axis=1)[:, None, None, None] + 1e-12
            delta = x - step * g / g_norm - x0_t
            d_norm = tf.norm(tf.reshape(delta, (restarts, -1)), axis=1)[:, None, None, None]
            delta = delta * tf.minimum(1.0, eps / (d_norm + 1e-12))
        x.assign(tf.clip_by_value(x0_t + delta, -0.5, 0.5))
    return None


def test_certified_radius_is_below_the_distance_of_every_adversarial_point_found(mlp):
    model, graph, x0, label, targets = mlp
    radii = {norm: certified_radius(graph, x0, label, targets, norm).radii for norm in NORMS}
    found = 0
    for k, target in enumerate(targets):
        for attack_norm in (LINF, L2):
            r = radii[attack_norm][k]
            assert 0 < r < np.inf
            assert pgd_adversarial(model, x0, label, target, r, attack_norm) is None
            for factor in (1.25, 1.5, 2.0, 3.0, 5.0, 8.0):
                adv = pgd_adversarial(model, x0, label, target, r * factor, attack_norm)
                if adv is not None:
                    break
            if adv is None:
                continue
            found += 1
            delta = (adv - x0).ravel()
            for norm in NORMS:
                assert radii[norm][k] <= np.linalg.norm(delta, ord=norm.p) * (1 + 1e-6), (norm.label, target)
    assert found >= 3   # the certified radii are within a factor 8 of attacks, not vacuous


@pytest.mark.parametrize("which,norms", [("mlp", NORMS), ("cnn", (L2,))])
def test_no_sample_within_the_certified_radius_is_misclassified(which, norms, request):
    _, graph, x0, label, targets = request.getfixturevalue(which)
    rng = np.random.default_rng(9)
    for norm in norms:
        result = certified_radius(graph, x0, label, targets, norm)
        for k, j in enumerate(targets):
            assert 0 < result.radii[k] < np.inf
            samples = sample_ball(rng, x0, result.radii[k], norm, 3000)
            assert margins(graph, samples, label, [j]).min() >= result.lower[k] - TOL > -TOL


def sampled_gradient_norms(graph, points: np.ndarray, label: int, targets) -> np.ndarray:
    """(T, 3): the largest sampled ||grad g_j||_q for q = inf, 2, 1 (duals of L1, L2, Linf)."""
    x = tf.constant(points, graph.dtype)
    out = []
    for j in targets:
        with tf.GradientTape() as tape:
            tape.watch(x)
            logits = graph.forward(x)
            m = logits[:, label] - logits[:, j]
        g = tape.gradient(m, x).numpy().reshape(len(points), -1)
        out.append([np.linalg.norm(g, ord=q, axis=1).max() for q in (np.inf, 2, 1)])
    return np.array(out)


@pytest.mark.parametrize("which", ["mlp", "tanh", "cnn"])
def test_lipschitz_bound_exceeds_every_sampled_gradient_norm_in_the_ball(which, request):
    if which == "tanh":
        model = tanh_mlp()
        graph, (x0, label, targets) = from_keras(model, dtype=tf.float64), centre(model)
    else:
        _, graph, x0, label, targets = request.getfixturevalue(which)
    rng = np.random.default_rng(13)
    for norm, radius in ((LINF, 0.05), (L2, 0.2), (L1, 0.6)):
        bound = lipschitz_upper_bounds(graph, x0, label, targets, radius, norm).values
        sampled = sampled_gradient_norms(graph, sample_ball(rng, x0, radius, norm, 3000), label, targets)
        assert np.all(bound >= sampled * (1 - 1e-9)), (which, norm.label)
        assert np.all(np.isfinite(bound))
    at_x0 = lipschitz_upper_bounds(graph, x0, label, targets, 0.0, LINF).values
    np.testing.assert_allclose(at_x0, sampled_gradient_norms(graph, x0[None], label, targets), rtol=1e-9)


def test_lipschitz_bound_of_an_affine_model_is_the_weight_norm():
    model, w = affine()
    graph = from_keras(model, dtype=tf.float64)
    result = lipschitz_upper_bounds(graph, np.zeros((4, 4, 1)), 0, [1, 2, 3], 0.3, L2)
    # A split search has nothing to split: the same exact bounds, one part per target.
    split = lipschitz_upper_bounds(graph, np.zeros((4, 4, 1)), 0, [1, 2, 3], 0.3, L2, split_seconds=0.2)
    assert split.parts == 3
    for norm in NORMS:
        expected = np.linalg.norm((w[:, [0]] - w[:, [1, 2, 3]]).T, ord=norm.dual, axis=1)
        np.testing.assert_allclose(result.for_norm(norm), expected, rtol=1e-12)
        np.testing.assert_allclose(split.for_norm(norm), expected, rtol=1e-12)


@pytest.mark.parametrize("norm", NORMS, ids=lambda n: n.label)
def test_cnn_bounds_hold_on_samples(cnn, norm):
    from test_certify_ops import assert_node_bounds_hold

    _, graph, x0, label, targets = cnn
    rng = np.random.default_rng(17)
    radius = {L1: 1.0, L2: 0.3, LINF: 0.06}[norm]
    for crown in (True, False):
        assert_node_bounds_hold(graph, x0, radius, norm, rng, crown, n=1000)
    bound = margin_lower_bounds(graph, x0, label, targets, radius, norm).lower
    assert np.all(bound <= margins(graph, sample_ball(rng, x0, radius, norm, 2000), label, targets).min(0) + TOL)


# ---------------------------------------------------------------------------------------------
# The radius search and the per-layer report.


def test_radius_search_stops_within_its_tolerance(mlp):
    _, graph, x0, label, targets = mlp
    result = certified_radius(graph, x0, label, targets, L2, rel_tol=1e-3)
    for k, j in enumerate(targets):
        r = result.radii[k]
        assert margin_lower_bounds(graph, x0, label, [j], r, L2).lower[0] > 0
        assert margin_lower_bounds(graph, x0, label, [j], r * (1 + 2e-3), L2).lower[0] <= 0
    # Steps to the root of the bound's local power law: a few per target, where bisection from the
    # first-order estimate would take over ten.
    assert result.evaluations <= 6 * len(targets)


@pytest.mark.parametrize("which", ["mlp", "cnn"])
def test_a_search_started_from_a_wider_norms_radii_finds_the_same_radii(which, request):
    _, graph, x0, label, targets = request.getfixturevalue(which)
    rng = np.random.default_rng(21)
    wider, alone_evaluations, chained_evaluations = None, 0, 0
    for norm in (LINF, L2, L1):
        alone = certified_radius(graph, x0, label, targets, norm)
        chained = certified_radius(graph, x0, label, targets, norm, wider=wider)
        if wider is not None:
            # The ball of the wider norm contains this one's: its radii are certified here too.
            assert np.all(chained.radii >= wider[1].radii)
            alone_evaluations += alone.evaluations
            chained_evaluations += chained.evaluations
        np.testing.assert_allclose(chained.radii, alone.radii, rtol=2e-3)
        for k, j in enumerate(targets):
            r = chained.radii[k]
            assert margin_lower_bounds(graph, x0, label, [j], r, norm).lower[0] > 0
            # The margin bound reported at the radius holds on the ball's points.
            sampled = margins(graph, sample_ball(rng, x0, r, norm, 1000), label, [j]).min()
            assert 0 < chained.lower[k] <= sampled + TOL
        wider = (norm, chained)
    assert chained_evaluations <= alone_evaluations


def test_the_first_probe_scale_is_how_much_farther_the_first_layer_reaches():
    model = relu_mlp()
    graph = from_keras(model, dtype=tf.float64)
    x0, label, targets = centre(model)
    w = model.layers[1].get_weights()[0].astype(np.float64)                     # (16 inputs, 16 neurons)
    problem = prepare(graph, x0, label, targets)
    np.testing.assert_allclose(problem.first_layer_rows(), w.T, rtol=1e-12)
    for norm, wider in ((L2, LINF), (L1, L2), (L1, LINF)):
        expected = np.median(np.linalg.norm(w, ord=wider.dual, axis=0) / np.linalg.norm(w, ord=norm.dual, axis=0))
        np.testing.assert_allclose(wider_norm_scale(problem, norm, wider), expected, rtol=1e-12)
        assert expected > 1


def test_radii_of_a_narrower_norm_or_other_targets_do_not_start_a_search(mlp):
    _, graph, x0, label, targets = mlp
    l2 = certified_radius(graph, x0, label, targets, L2)
    with pytest.raises(UsageError, match="do not bound"):
        certified_radius(graph, x0, label, targets, LINF, wider=(L2, l2))
    with pytest.raises(UsageError, match="targets"):
        certified_radius(graph, x0, label, targets[:1], L1, wider=(L2, l2))


def test_radius_is_zero_for_a_target_above_the_label_and_infinite_when_the_box_is_certified():
    model, _ = affine()
    graph = from_keras(model, dtype=tf.float64)
    result = certified_radius(graph, np.zeros((4, 4, 1)), 1, [0, 2], LINF)
    assert result.radii[0] == 0 and result.radii[1] > 0
    model.layers[-1].set_weights([model.layers[-1].get_weights()[0] * 1e-3, np.array([10.0, 0.0, 0.0, 0.0])])
    graph = from_keras(model, dtype=tf.float64)
    assert np.all(certified_radius(graph, np.zeros((4, 4, 1)), 0, [1, 2], L2).radii == np.inf)
    capped = certified_radius(graph, np.zeros((4, 4, 1)), 0, [1, 2], L2, r_max=0.25)
    np.testing.assert_array_equal(capped.radii, [0.25, 0.25])


def test_the_memory_budget_decides_how_many_neurons_get_crown_bounds(cnn):
    _, graph, x0, label, targets = cnn
    full = margin_lower_bounds(graph, x0, label, targets, 0.05, L2)
    starved = margin_lower_bounds(graph, x0, label, targets, 0.05, L2, memory_budget=0)
    plain = interval_margin_lower_bounds(graph, x0, label, targets, 0.05, L2)
    names = [r.layer for r in full.layers]
    assert names == [graph.nodes[i].name for i in range(len(graph.nodes)) if graph.needs_bounds(i)]
    # The ReLU output feeding the max pooling keeps the ReLU of its refined input bounds.
    assert [r.layer for r in full.layers if r.method == "elementwise"] == ["merge_relu"]
    refined = [r for r in full.layers if r.method != "elementwise"]
    assert all(r.method == "crown" and r.refined == r.wanted > 0 for r in refined)
    assert all(r.method == "interval" and r.refined == 0 for r in starved.layers if r.method != "elementwise")
    assert all(r.stop == "input" for r in refined)
    # Just under what the last convolution's pass to the input needs: it stops at an earlier node.
    last = refined[-1]
    budget = last.crown_bytes - 1
    truncated = margin_lower_bounds(graph, x0, label, targets, 0.05, L2, memory_budget=budget)
    report = next(r for r in truncated.layers if r.layer == last.layer)
    assert report.method == "truncated" and report.refined == report.wanted and report.crown_bytes <= budget
    assert report.stop in names[:-1]
    for result in (full, starved, truncated):
        assert np.all(result.lower >= plain.lower - TOL)
    assert np.all(full.lower > starved.lower)


def test_problems_share_a_pass_only_as_far_as_the_budget_allows_with_the_same_bounds(cnn):
    _, graph, x0, label, targets = cnn
    problem = prepare(graph, x0, label, targets)
    radii = np.array([0.05, 0.1])
    together = problem.propagate(radii, L2, 1 << 30)
    single = max(r.crown_bytes for r in together.reports) // 2
    apart = problem.propagate(radii, L2, single)
    assert [r.method for r in apart.reports] == [r.method for r in together.reports]
    for a, b in zip(apart.bounds, together.bounds):
        np.testing.assert_allclose(a.lo.numpy(), b.lo.numpy(), atol=1e-12)
        np.testing.assert_allclose(a.hi.numpy(), b.hi.numpy(), atol=1e-12)


def test_the_default_float32_bounds_hold_on_samples_too():
    model = tiny_cnn()
    graph = from_keras(model)   # float32, as the library runs by default
    x0, label, targets = centre(model, seed=4)
    rng = np.random.default_rng(21)
    for norm, radius in ((LINF, 0.06), (L2, 0.3)):
        samples = sample_ball(rng, x0, radius, norm, 2000)
        observed = margins(graph, samples.astype(np.float32), label, targets).min(0)
        assert np.all(margin_lower_bounds(graph, x0, label, targets, radius, norm).lower <= observed + 1e-4)
        grads = sampled_gradient_norms(from_keras(model, dtype=tf.float64), samples, label, targets)
        bound = lipschitz_upper_bounds(graph, x0, label, targets, radius, norm).values
        assert np.all(bound >= grads * (1 - 1e-4))
