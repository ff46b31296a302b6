"""Exact MILP answers for small ReLU networks, checked against brute force on tiny seeded networks.

Minimal distortion: the returned point is adversarial and in the region, no grid point closer to
x0 is adversarial, and on affine networks the value is the closed form g(x0) / ||w_true - w_target||_dual.
Local Lipschitz constant: the value is the gradient norm at the returned point, dominates sampled
gradients and equals the maximum over a fine grid on a 2-D input.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from cleverscore.certify.milp import (
    MAX_HIDDEN_RELUS,
    PATTERN_MAX_UNSTABLE,
    local_lipschitz,
    minimal_distortion,
    relu_network_from_keras,
)
from cleverscore.certify.milp import bounds as milp_bounds
from cleverscore.certify.milp import distortion as milp_distortion
from cleverscore.certify.milp import lipschitz as milp_lipschitz
from cleverscore.certify.milp import model as milp_model
from cleverscore.certify.milp.bounds import count_unstable, preactivation_bounds
from cleverscore.certify.milp.network import input_gradient, logits, margin_gradient
from cleverscore.certify.milp.patterns import pattern_norms, patterns_from_bits
from cleverscore.errors import CleverError, UsageError
from cleverscore.norms import L1, L2, LINF


def random_net(sizes: list[int], seed: int, bias: float = 0.1) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [(rng.normal(size=(out, inp)) / np.sqrt(inp), bias * rng.normal(size=out))
            for inp, out in zip(sizes[:-1], sizes[1:])]


def margin(net, x, true_label, target):
    """g = f_true - f_target at one point or a batch of points."""
    z = logits(net, np.reshape(x, (-1, net[0][0].shape[1])))
    return z[:, true_label] - z[:, target]


def grid_2d(center: np.ndarray, half_width: float, steps: int, box=(-0.5, 0.5)) -> np.ndarray:
    axes = [np.clip(np.linspace(c - half_width, c + half_width, steps), *box) for c in center]
    return np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 2)


def distance(x, x0, norm):
    diff = np.abs(np.reshape(x, (-1, np.size(x0))) - np.ravel(x0))
    return diff.max(axis=1) if norm is LINF else diff.sum(axis=1)


NET_2D = random_net([2, 8, 8, 3], seed=3)
X0_2D = np.array([0.1, -0.05])


def labels_2d():
    z = logits(NET_2D, X0_2D)
    true_label = int(np.argmax(z))
    return true_label, int(np.argsort(z)[-2])


# -- minimal distortion ---------------------------------------------------------------------------


@pytest.mark.parametrize("norm", [LINF, L1])
def test_minimal_point_reaches_the_target_inside_the_ball_and_box(norm):
    net = random_net([6, 8, 8, 4], seed=1)
    x0 = np.random.default_rng(1).uniform(-0.3, 0.3, size=(2, 3, 1))
    order = np.argsort(logits(net, x0.ravel()))
    true_label, target = int(order[-1]), int(order[-2])
    res = minimal_distortion(net, x0, true_label, target, norm=norm, eps_max=0.5)
    assert res.status == "optimal" and res.exact
    assert res.x.shape == x0.shape
    assert margin(net, res.x, true_label, target)[0] <= 1e-6
    assert np.all(res.x >= -0.5) and np.all(res.x <= 0.5)
    assert np.abs(res.x - x0).max() <= 0.5 + 1e-9
    assert distance(res.x, x0, norm)[0] == pytest.approx(res.value, abs=1e-9)
    assert res.lower_bound <= res.value + 1e-12 and res.upper_bound == pytest.approx(res.value)


def test_target_wins_makes_the_point_classified_as_the_target():
    net = random_net([6, 8, 8, 4], seed=2)
    x0 = np.random.default_rng(2).uniform(-0.3, 0.3, size=6)
    z0 = logits(net, x0)
    true_label, target = int(np.argmax(z0)), int(np.argmin(z0))
    pairwise = minimal_distortion(net, x0, true_label, target, norm=LINF)
    res = minimal_distortion(net, x0, true_label, target, norm=LINF, target_wins=True)
    z = logits(net, res.x)
    assert z[target] >= z.max() - 1e-6
    # Beating every class is harder than beating the true one.
    assert res.value >= pairwise.value - 1e-9


@pytest.mark.parametrize("norm", [LINF, L1])
def test_minimal_distortion_matches_a_grid_search_on_a_2d_input(norm):
    true_label, target = labels_2d()
    res = minimal_distortion(NET_2D, X0_2D, true_label, target, norm=norm)
    assert res.status == "optimal" and 0.02 < res.value < 0.45
    points = grid_2d(X0_2D, 0.5, 801)
    step = 1.0 / 800
    dist = distance(points, X0_2D, norm)
    adversarial = margin(NET_2D, points, true_label, target) <= 0.0
    # No grid point nearer than the MILP's minimum is adversarial, and the nearest adversarial grid
    # point is within the grid's resolution of it.
    assert not np.any(adversarial & (dist < res.value - 1e-9))
    assert dist[adversarial].min() <= res.value + 2 * step


def test_bound_tightening_keeps_the_answer_and_drops_binaries():
    true_label, target = labels_2d()
    loose = minimal_distortion(NET_2D, X0_2D, true_label, target, tighten="interval")
    tight = minimal_distortion(NET_2D, X0_2D, true_label, target, tighten="lp")
    assert tight.value == pytest.approx(loose.value, abs=1e-8)
    assert tight.num_binaries <= loose.num_binaries


def test_eps_max_keeps_the_answer_or_proves_it_larger():
    true_label, target = labels_2d()
    full = minimal_distortion(NET_2D, X0_2D, true_label, target)
    inside = minimal_distortion(NET_2D, X0_2D, true_label, target, eps_max=1.5 * full.value)
    assert inside.value == pytest.approx(full.value, abs=1e-8)
    outside = minimal_distortion(NET_2D, X0_2D, true_label, target, eps_max=0.5 * full.value)
    assert outside.status == "infeasible" and outside.value is None and outside.x is None
    assert outside.lower_bound == pytest.approx(0.5 * full.value) and outside.upper_bound == np.inf


def test_a_round_stopped_at_its_first_incumbent_shrinks_the_ball_to_it(monkeypatch):
    true_label, target = labels_2d()
    monkeypatch.setattr(milp_distortion, "_SHRINKS", 0)
    single = minimal_distortion(NET_2D, X0_2D, true_label, target)
    monkeypatch.setattr(milp_distortion, "_SHRINKS", 2)
    real_round = milp_distortion._solve_round
    radii = []

    def spy(problem, radius, budget, stop_at_first, bounds, known_point):
        radii.append(radius)
        assert known_point == (len(radii) > 1)
        return real_round(problem, radius, budget, stop_at_first, bounds, known_point)

    monkeypatch.setattr(milp_distortion, "_solve_round", spy)
    res = minimal_distortion(NET_2D, X0_2D, true_label, target)
    assert res.exact and res.value == pytest.approx(single.value, abs=1e-9)
    # Here the first incumbent is far from optimal, so the ball shrinks to it before the last solve.
    assert radii[0] is None and len(radii) >= 2
    assert all(r >= res.value for r in radii[1:]) and radii[1:] == sorted(radii[1:], reverse=True)


def test_a_solve_stopped_at_its_first_incumbent_returns_it():
    # A knapsack HiGHS does not solve at its root: a first incumbent comes before optimality.
    rng = np.random.default_rng(0)
    model = milp_model.Model()
    v = model.add_vars(0.0, 3.0, 40, integer=True)
    model.add_rows([(rng.random((20, 40)), v)], -np.inf, 5.0)
    outcome = model.solve([(-rng.random(40), v)], stop_at_first=True)
    assert outcome.status in ("solution_limit", "optimal") and outcome.x is not None


def test_an_l1_optimum_beyond_eps_max_is_only_bracketed():
    # f_0 - f_1 = 0.15 - x1 - x2: the Linf minimum 0.075 lies inside eps_max = 0.1, the L1 one (0.15) does not.
    net = [(np.array([[0.0, 0.0], [1.0, 1.0]]), np.array([0.15, 0.0]))]
    res = minimal_distortion(net, np.zeros(2), 0, 1, norm=L1, eps_max=0.1)
    assert res.status == "beyond_eps_max" and not res.exact
    assert res.lower_bound == pytest.approx(0.1) and res.upper_bound == pytest.approx(0.15)
    assert minimal_distortion(net, np.zeros(2), 0, 1, norm=LINF, eps_max=0.1).value == pytest.approx(0.075)


@pytest.mark.parametrize("hidden", [False, True])
def test_affine_network_distortion_is_the_closed_form(hidden):
    rng = np.random.default_rng(4)
    w, b = rng.normal(size=(3, 5)), rng.normal(size=3)
    if hidden:
        # A hidden layer whose units stay active over the whole box: the network is affine there.
        w1, b1 = rng.normal(size=(4, 5)), np.full(4, 500.0)
        w2 = rng.normal(size=(3, 4))
        net = [(w1, b1), (w2, b - w2 @ b1)]
        w_eff, b_eff = w2 @ w1, b
    else:
        net = [(w, b)]
        w_eff, b_eff = w, b
    x0 = rng.uniform(-0.1, 0.1, size=5)
    z = w_eff @ x0 + b_eff
    true_label, target = int(np.argmax(z)), int(np.argmin(z))
    gap, direction = z[true_label] - z[target], w_eff[true_label] - w_eff[target]
    box = (-50.0, 50.0)
    for norm in (LINF, L1):
        res = minimal_distortion(net, x0, true_label, target, norm=norm, box=box)
        dual = np.abs(direction).sum() if norm is LINF else np.abs(direction).max()
        assert res.value == pytest.approx(gap / dual, rel=1e-7)
        assert res.num_binaries == 0
    lip = local_lipschitz(net, x0, true_label, target, radius=0.1, box=box)
    assert lip.value == pytest.approx(np.abs(direction).sum()) and lip.exact


# -- local Lipschitz constant ---------------------------------------------------------------------


LIP_NET = random_net([6, 8, 8, 4], seed=5)
LIP_X0 = np.random.default_rng(5).uniform(-0.3, 0.3, size=(6,))
LIP_RADIUS = 0.15


@pytest.fixture(scope="module", params=["patterns", "patterns-milp", "lipmip"])
def lipschitz(request):
    formulation, _, milp_only = request.param.partition("-")
    with pytest.MonkeyPatch.context() as patch:
        if milp_only:
            # No LP checks of the best patterns first: the pattern MILP itself answers.
            patch.setattr(milp_lipschitz, "_PRECHECKS", 0)
        res = local_lipschitz(LIP_NET, LIP_X0, 0, 2, radius=LIP_RADIUS, formulation=formulation)
    assert res.num_binaries > 0 or not milp_only
    return res


def test_lipschitz_value_is_the_gradient_norm_at_the_returned_point(lipschitz):
    res = lipschitz
    assert res.status == "optimal"
    assert np.abs(res.x - LIP_X0).max() <= LIP_RADIUS + 1e-9 and np.all(np.abs(res.x) <= 0.5)
    # The point is inside its activation region, so ReLU'(0) plays no part in its gradient.
    assert res.region_margin > 0.0
    grad = input_gradient(LIP_NET, res.x, 0, 2)
    np.testing.assert_allclose(grad, res.gradient, atol=1e-12)
    assert np.abs(grad).sum() == pytest.approx(res.value, rel=1e-12)
    assert res.lower_bound <= res.value <= res.upper_bound + 1e-12


def test_lipschitz_value_dominates_sampled_gradients(lipschitz):
    rng = np.random.default_rng(6)
    points = np.clip(LIP_X0 + rng.uniform(-LIP_RADIUS, LIP_RADIUS, size=(5000, 6)), -0.5, 0.5)
    norms = np.abs(input_gradient(LIP_NET, points, 0, 2)).sum(axis=1)
    assert norms.max() <= lipschitz.value + 1e-9
    # ... and the sampled maximum is not far below it on so small a network.
    assert norms.max() >= 0.8 * lipschitz.value


@pytest.mark.parametrize("formulation", ["patterns", "lipmip"])
def test_lipschitz_equals_the_maximum_over_the_regions_of_a_2d_grid(formulation):
    true_label, target = labels_2d()
    points = grid_2d(X0_2D, 0.3, 601)
    norms = np.abs(input_gradient(NET_2D, points, true_label, target)).sum(axis=1)
    for tighten in ("interval", "lp"):
        res = local_lipschitz(NET_2D, X0_2D, true_label, target, radius=0.3, tighten=tighten, formulation=formulation)
        assert res.formulation == formulation
        assert res.value == pytest.approx(norms.max(), rel=1e-9), tighten
    # The grid meets several regions, so the answer is not the gradient at x0.
    assert res.value > np.abs(input_gradient(NET_2D, X0_2D, true_label, target)).sum() + 1e-6


@pytest.mark.parametrize("seed", [11, 12, 13])
def test_both_lipschitz_formulations_agree(monkeypatch, seed):
    net = random_net([5, 7, 6, 3], seed=seed)
    x0 = np.random.default_rng(seed).uniform(-0.2, 0.2, size=5)
    answers = [local_lipschitz(net, x0, 1, 0, radius=0.2, formulation=f) for f in ("patterns", "lipmip")]
    monkeypatch.setattr(milp_lipschitz, "_PRECHECKS", 0)
    answers.append(local_lipschitz(net, x0, 1, 0, radius=0.2, formulation="patterns"))
    assert all(r.exact for r in answers)
    assert answers[0].value == pytest.approx(answers[1].value, rel=1e-9)
    assert answers[2].value == pytest.approx(answers[1].value, rel=1e-9)


def test_listed_patterns_carry_their_gradient_norms():
    net = random_net([4, 6, 5, 5, 3], seed=14)
    x0 = np.zeros(4)
    bounds = preactivation_bounds(net, x0 - 0.4, x0 + 0.4, "interval")
    bits, norms = pattern_norms(net, bounds, 0, 1)
    assert bits.shape == (2 ** count_unstable(bounds), count_unstable(bounds))
    assert len({row.tobytes() for row in bits}) == bits.shape[0]
    for row in np.random.default_rng(0).choice(bits.shape[0], size=20, replace=False):
        grad = margin_gradient(net, patterns_from_bits(bounds, bits[row]), 0, 1)
        assert np.abs(grad).sum() == pytest.approx(norms[row], rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("enumerate_max", [0, 64])
def test_gradient_bounds_hold_sampled_gradients(monkeypatch, enumerate_max):
    monkeypatch.setattr(milp_bounds, "ENUMERATE_MAX_UNSTABLE", enumerate_max)
    net = random_net([6, 8, 8, 4], seed=15)
    x0 = np.zeros(6)
    bounds = preactivation_bounds(net, x0 - 0.3, x0 + 0.3, "interval")
    grad_lo, grad_hi = milp_bounds.gradient_bounds(net, bounds, 0, 3)[-1]
    points = np.random.default_rng(1).uniform(-0.3, 0.3, size=(3000, 6))
    grads = input_gradient(net, points, 0, 3)
    assert np.all(grads >= grad_lo - 1e-12) and np.all(grads <= grad_hi + 1e-12)


@pytest.mark.parametrize("formulation", ["lipmip", "patterns"])
def test_a_wrong_solver_answer_is_solved_again_with_another_seed(monkeypatch, formulation):
    monkeypatch.setattr(milp_lipschitz, "_PRECHECKS", 0)
    real_solve = milp_model.Model.solve
    calls = []

    def flaky(self, *args, **kwargs):
        outcome = real_solve(self, *args, **kwargs)
        if not self.num_integers:
            return outcome
        calls.append(kwargs.get("seed"))
        if len(calls) == 1:
            return replace(outcome, status="infeasible", x=None, objective=None)
        return outcome

    monkeypatch.setattr(milp_model.Model, "solve", flaky)
    res = local_lipschitz(LIP_NET, LIP_X0, 0, 2, radius=LIP_RADIUS, formulation=formulation)
    assert res.exact and calls == [None, 7]
    monkeypatch.setattr(milp_model.Model, "solve", lambda self, *a, **k: replace(
        real_solve(self, *a, **k), status="infeasible", x=None) if self.num_integers else real_solve(self, *a, **k))
    with pytest.raises(CleverError, match="inconsistent local Lipschitz answer"):
        local_lipschitz(LIP_NET, LIP_X0, 0, 2, radius=LIP_RADIUS, formulation=formulation)


# -- time limit -----------------------------------------------------------------------------------


def test_time_limit_reports_the_status_and_proven_bounds():
    net = random_net([100, 64, 64, 10], seed=7, bias=0.0)
    x0 = np.random.default_rng(7).uniform(-0.2, 0.2, size=100)
    z = logits(net, x0)
    true_label, target = int(np.argmax(z)), int(np.argmin(z))
    lip = local_lipschitz(net, x0, true_label, target, radius=0.3, time_limit=0.3, tighten="interval")
    assert lip.status == "time_limit" and not lip.exact
    assert 0.0 < lip.lower_bound <= lip.value <= lip.upper_bound < np.inf
    # The reported value is realised: it is the gradient norm at the returned point.
    assert np.abs(input_gradient(net, lip.x, true_label, target)).sum() == pytest.approx(lip.value, rel=1e-9)
    assert lip.lower_bound >= np.abs(input_gradient(net, x0, true_label, target)).sum() - 1e-9
    dist = minimal_distortion(net, x0, true_label, target, norm=L1, time_limit=0.3, tighten="interval")
    assert dist.status == "time_limit"
    assert 0.0 <= dist.lower_bound <= dist.upper_bound


# -- refusals and Keras import --------------------------------------------------------------------


def one_line_usage_error(call, *words):
    with pytest.raises(UsageError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message and all(w in message for w in words), message


def test_refusals_are_one_line_usage_errors():
    net = random_net([4, 6, 3], seed=8)
    x0 = np.zeros(4)
    one_line_usage_error(lambda: minimal_distortion(net, x0, 0, 1, norm=L2), "L1 and Linf")
    one_line_usage_error(lambda: minimal_distortion(net, x0, 1, 1), "differ")
    one_line_usage_error(lambda: minimal_distortion(net, np.full(4, 0.7), 0, 1), "outside the input box")
    one_line_usage_error(lambda: local_lipschitz(net, np.zeros(5), 0, 1, 0.1), "inputs")
    big = random_net([4, MAX_HIDDEN_RELUS // 2 + 1, MAX_HIDDEN_RELUS // 2, 3], seed=9)
    one_line_usage_error(lambda: local_lipschitz(big, x0, 0, 1, 0.1), str(MAX_HIDDEN_RELUS), "hidden ReLUs")
    one_line_usage_error(lambda: minimal_distortion(net, x0, 0, 1, tighten="crown"), "tightening")
    one_line_usage_error(lambda: local_lipschitz(net, x0, 0, 1, 0.1, formulation="sdp"), "formulation")
    wide = random_net([4, 40, 3], seed=9)
    one_line_usage_error(lambda: local_lipschitz(wide, x0, 0, 1, 0.5, tighten="interval", formulation="patterns"),
                         str(PATTERN_MAX_UNSTABLE), "lipmip")


@pytest.fixture(scope="module")
def keras():
    keras = pytest.importorskip("keras")
    keras.utils.set_random_seed(0)
    return keras


def test_keras_relu_mlp_converts_to_the_same_function(keras):
    from keras import layers

    model = keras.Sequential([
        keras.Input((2, 2, 2)), layers.Flatten(), layers.Dense(6, activation="relu"), layers.Dropout(0.5),
        layers.Dense(5), layers.ReLU(), layers.Dense(4, activation="linear"), layers.Dense(3),
    ])
    net = relu_network_from_keras(model)
    assert [w.shape for w, _ in net] == [(6, 8), (5, 6), (3, 5)]
    x = np.random.default_rng(10).uniform(-0.5, 0.5, size=(7, 2, 2, 2)).astype(np.float32)
    expected = np.asarray(model(x, training=False))
    np.testing.assert_allclose(logits(net, x.reshape(7, -1)), expected, atol=1e-5)


def test_keras_models_that_are_not_dense_relu_are_refused(keras):
    from keras import layers

    tanh = keras.Sequential([keras.Input((4,)), layers.Dense(5, activation="tanh"), layers.Dense(2)])
    one_line_usage_error(lambda: relu_network_from_keras(tanh), "piecewise-linear", "Dense+ReLU", "tanh")
    conv = keras.Sequential([keras.Input((6, 6, 1)), layers.Conv2D(2, 3), layers.Flatten(), layers.Dense(2)])
    one_line_usage_error(lambda: relu_network_from_keras(conv), "piecewise-linear", "Conv2D")
    inputs = keras.Input((4,))
    hidden = layers.Dense(4, activation="relu")(inputs)
    residual = keras.Model(inputs, layers.Dense(2)(layers.Add()([inputs, hidden])))
    one_line_usage_error(lambda: relu_network_from_keras(residual), "Sequential")
    wide = keras.Sequential([keras.Input((3,)), layers.Dense(MAX_HIDDEN_RELUS + 1, activation="relu"), layers.Dense(2)])
    one_line_usage_error(lambda: relu_network_from_keras(wide), str(MAX_HIDDEN_RELUS))
