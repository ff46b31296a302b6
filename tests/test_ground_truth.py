"""Known truths: for an affine classifier the gradient of every margin is constant, so the CLEVER
scores equal g(x0) / ||w_c - w_j||_q exactly (spec sections 1 and 11)."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import affine_model
from cleverscore.cli import score as clever  # the command line, as a user runs it
from cleverscore.sampling.estimator import EstimateLipschitz
from cleverscore.mat_files import MatName, save_mat_atomically
from cleverscore.running.saving import mat_contents


def collect_affine(tmp_path, weights, bias, x0, true_label, targets, sample_norm="l2"):
    est = EstimateLipschitz(log=None)
    est.load_model(model=affine_model(weights, bias, x0.shape), batch_size=128)
    results = est.estimate_targets(x0, true_label, targets, 128, 30, sample_norm, image_id=0)
    folder = tmp_path / "mnist_affine"
    for res in results:
        name = MatName(128, 30, 0, true_label, res.target, "least", "relu", 1)
        save_mat_atomically(folder / name.filename, mat_contents(res, 0, true_label, "least", {}, ""))
    return folder, results


@pytest.mark.parametrize("sample_norm", ["l2", "li", "l1"])
def test_affine_scores_match_the_exact_distance_through_mat_and_clever(tmp_path, capsys, sample_norm):
    rng = np.random.default_rng(0)
    weights = rng.normal(size=(784, 10)) * 0.05
    bias = np.zeros(10)
    bias[3] = 5.0  # class 3 wins at x0 = 0 with margin 5 against every other class
    x0 = np.zeros((28, 28, 1), np.float32)
    folder, _ = collect_affine(tmp_path, weights, bias, x0, 3, [7], sample_norm)
    clever.main([str(folder), "--nthreads", "1"])
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if ln.startswith("[STATS][L0] info = least"))
    scores = dict(part.split(" = ") for part in line.split(", ")[1:])
    w = weights[:, 3] - weights[:, 7]
    expected = {"L1": 5.0 / np.abs(w).max(), "L2": 5.0 / np.linalg.norm(w), "Li": 5.0 / np.abs(w).sum()}
    for label, value in expected.items():
        assert float(scores[f"least_clever_{label}"]) == pytest.approx(value, rel=0.01)


def test_identity_classifier_of_the_spec_example():
    # f(x) = x on R^2 at x0 = (1, 0), target 1: CLEVER L1 = 1, L2 = 1/sqrt(2), Linf = 0.5.
    est = EstimateLipschitz(log=None)
    est.load_model(model=affine_model(np.eye(2), np.zeros(2), (2,)), batch_size=64, input_range=(-5.0, 5.0))
    res = est.estimate_targets(np.array([1.0, 0.0], np.float32), 0, [1], 64, 5, "l2")[0]
    g2, g1, gi = res.grad_max.max(0)
    assert res.g_x0 == pytest.approx(1.0)
    assert (res.g_x0 / gi, res.g_x0 / g2, res.g_x0 / g1) == pytest.approx((1.0, 2**-0.5, 0.5), rel=1e-6)


def test_shared_samples_give_each_target_what_a_targeted_run_gives():
    rng = np.random.default_rng(1)
    import keras

    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
                              keras.layers.Dense(16, activation="tanh"), keras.layers.Dense(5)])
    x0 = rng.uniform(-0.5, 0.5, (8, 8, 1)).astype(np.float32)
    est = EstimateLipschitz(log=None, seed=9)
    est.load_model(model=model, batch_size=50, compute_slope=True)
    together = est.estimate_targets(x0, 0, [1, 2, 3, 4], 100, 4, "l2", image_id=5)
    for res in together:
        alone = est.estimate_targets(x0, 0, [res.target], 100, 4, "l2", image_id=5)[0]
        np.testing.assert_allclose(alone.grad_max, res.grad_max, rtol=1e-6)
        np.testing.assert_allclose(alone.slope_max, res.slope_max, rtol=1e-6)


def test_slopes_never_exceed_gradient_norms_on_a_smooth_model():
    import keras

    keras.utils.set_random_seed(3)
    model = keras.Sequential([keras.Input((6, 6, 1)), keras.layers.Flatten(),
                              keras.layers.Dense(32, activation="tanh"), keras.layers.Dense(4)])
    x0 = np.zeros((6, 6, 1), np.float32)
    est = EstimateLipschitz(log=None)
    est.load_model(model=model, batch_size=200, compute_slope=True)
    res = est.estimate_targets(x0, 0, [1], 200, 10, "l2")[0]
    # Mean value theorem: |g(a) - g(b)| <= max ||grad g||_q * ||a - b||_p over the segment.
    assert np.all(res.slope_max > 0)
    assert np.all(res.slope_max.max(0) <= res.grad_max.max(0) * 1.05)
