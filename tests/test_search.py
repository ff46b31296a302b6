"""--search_steps: ascent finds the largest gradient norm where sampling misses it, and caps the score."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import run_cli_in_process
from conftest import run_script
from conftest import reverse_weibull, write_mat

RADIUS = 0.2


def ridge_model(v: np.ndarray):
    """Logits (0.5 (v.x)^2 + 1, 0): grad g = v (v.x), largest in the L2 ball of radius R along v."""
    import keras

    inp = keras.Input((28, 28, 1))
    h = keras.layers.Dense(1, use_bias=False)(keras.layers.Flatten()(inp))
    out = keras.layers.Concatenate()([0.5 * h * h + 1.0, 0.0 * h])
    model = keras.Model(inp, out)
    model.layers[2].set_weights([v.reshape(-1, 1).astype(np.float32)])
    return model


@pytest.fixture(scope="module")
def ridge():
    from cleverscore.sampling.estimator import EstimateLipschitz

    rng = np.random.default_rng(0)
    v = rng.normal(size=784)
    v /= np.linalg.norm(v)
    est = EstimateLipschitz(seed=3, log=None)
    est.load_model(model=ridge_model(v), batch_size=256)
    return est, v


def test_search_reaches_the_exact_largest_norms_that_sampling_misses(ridge):
    est, v = ridge
    x0 = np.zeros((28, 28, 1), np.float32)
    sampled = est.estimate_targets(x0, 0, [1], 256, 5, radius=RADIUS)[0].grad_max.max(0)
    found = est.search_maxima(x0, 0, [1], 40, "l2", RADIUS)[0]
    # max over ||d||_2 <= R of |v.d| ||v||_q is R ||v||_2 ||v||_q.
    exact = RADIUS * np.array([1.0, np.abs(v).sum(), np.abs(v).max()])
    assert np.all(found <= exact * (1 + 1e-4))
    np.testing.assert_allclose(found, exact, rtol=0.01)
    assert np.all(sampled < 0.5 * exact)  # random points of a 784-d ball are nearly orthogonal to v


def test_search_on_an_affine_model_equals_the_constant_gradient_norms():
    from conftest import affine_model
    from cleverscore.sampling.estimator import EstimateLipschitz

    rng = np.random.default_rng(1)
    w, b = rng.normal(size=(784, 3)), rng.normal(size=3)
    est = EstimateLipschitz(seed=1, log=None)
    est.load_model(model=affine_model(w, b), batch_size=128)
    found = est.search_maxima(np.zeros((28, 28, 1), np.float32), 0, [2], 5, "li", 0.05)[0]
    d = w[:, 0] - w[:, 2]
    np.testing.assert_allclose(found, [np.linalg.norm(d), np.abs(d).sum(), np.abs(d).max()], rtol=1e-4)


def test_clever_caps_the_score_at_a_searched_norm_above_the_estimate(tmp_path):
    g2 = reverse_weibull(5, 60, 3, end=1.0, scale=0.2)
    write_mat(tmp_path / "8_60_0_7_2_top2_relu_order1.mat", g2, g_x0=3.0, G2_search=1.5,
              G1_search=float(g2.max() * 20) * 0.5, Gi_search=0.0)
    out = tmp_path / "rows.json"
    res = run_cli_in_process("clever.py", str(tmp_path), "--nthreads", "1", "--json", str(out), "--verbose")
    assert res.returncode == 0, res.stderr
    rows = {r["norm"]: r for r in json.loads(out.read_text())}
    assert rows["L2"]["searched"] == 1.5 and rows["L2"]["lipschitz"] == 1.5
    assert rows["L2"]["score"] == pytest.approx(2.0) and rows["L2"]["score_hi"] <= 2.0 + 1e-12
    assert rows["L2"]["lipschitz_lo"] >= 1.5
    # 1.5 lies above the fitted end point's whole interval: the fit is refuted, its top unknown
    # (no zero-width [1.5, 1.5]), so the score's interval starts at 0.
    assert rows["L2"]["lipschitz_hi"] == float("inf") and rows["L2"]["score_lo"] == 0.0
    # A searched norm below the estimate changes nothing.
    assert rows["L1"]["lipschitz"] > rows["L1"]["searched"]
    assert res.stderr.count("search found a gradient norm") == 1
    assert "1 estimate(s) below a norm found by search: top2/L2 = 1" in res.stderr


@pytest.mark.parametrize("flags,message", [(["--search_steps", "-1"], "--search_steps must be >= 0"),
                                           (["--search_steps", "5", "--sample_norm", "l1"], "--search_steps works"),
                                           (["--search_steps", "5", "--transform", "defend_png"], "no --transform")])
def test_bad_search_flags_are_refused(tmp_path, flags, message):
    res = run_script("collect_gradients.py", *flags, "-s", str(tmp_path))
    assert res.returncode == 2 and message in res.stderr.strip().splitlines()[-1]


def corner_relu_model(s: np.ndarray, u: np.ndarray, radius: float):
    """A 16-input ReLU MLP whose gradient norm jumps near one corner x0 + R s of the Linf ball at 0.

    Hidden unit 0, relu(s.x - 0.85 * 16 R), is active only within 15% of the corner (random points
    of the ball never get there: it needs a sum of 16 uniforms on [-1, 1] above 13.6); unit 1,
    relu(u.x + 10), is active everywhere in the ball. g = f_0 - f_1 = u.x + 5 relu(s.x - b) + 1.
    """
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Flatten(), keras.layers.Dense(2, activation="relu"),
                              keras.layers.Dense(2)])
    model.layers[1].set_weights([np.stack([s, u], axis=1).astype(np.float32),
                                 np.array([-0.85 * 16 * radius, 10.0], np.float32)])
    model.layers[2].set_weights([np.array([[5.0, 0.0], [1.0, 0.0]], np.float32), np.array([-9.0, 0.0], np.float32)])
    return model


def test_relu_search_reaches_the_milp_constant_where_random_samples_miss_the_corner():
    from cleverscore.certify.milp import local_lipschitz, relu_network_from_keras
    from cleverscore.sampling.estimator import EstimateLipschitz

    radius, rng = 0.05, np.random.default_rng(4)
    s, u = rng.choice([-1.0, 1.0], size=16), rng.normal(scale=0.1, size=16)
    model = corner_relu_model(s, u, radius)
    x0 = np.zeros((4, 4, 1), np.float32)
    exact = local_lipschitz(relu_network_from_keras(model), x0, 0, 1, radius, (-0.5, 0.5), 30)
    assert exact.exact
    np.testing.assert_allclose(exact.value, np.abs(u + 5 * s).sum(), rtol=1e-5)  # the corner unit's region
    est = EstimateLipschitz(seed=2, log=None)
    est.load_model(model=model, batch_size=256)
    sampled = est.estimate_targets(x0, 0, [1], 256, 20, sample_norm="li", radius=radius)[0].grad_max[:, 1].max()
    found = est.search_maxima(x0, 0, [1], 25, "li", radius)[0][1]  # column 1: the L1 norm, the Linf ball's dual
    assert sampled < 0.1 * exact.value  # 5,120 random points never met the corner's region
    assert exact.value * (1 - 1e-4) <= found <= exact.value * (1 + 1e-5)  # found: realised, so never above
