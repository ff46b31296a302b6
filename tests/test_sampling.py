"""The samplers draw uniformly in their balls, clip, and repeat exactly for a seed (spec section 3)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from cleverscore.norms import L1, L2, LINF, NORMS
from cleverscore.sampling.balls import numpy_unit_ball, tf_unit_ball, tf_perturbations

DIM = 50
COUNT = 4000


def lp_norm(x: np.ndarray, p: float) -> np.ndarray:
    return np.linalg.norm(x, ord=p, axis=1)


def tf_sample(norm, seed=(3, 4), count=COUNT, dim=DIM):
    import tensorflow as tf

    return tf_unit_ball(tf.constant(seed, tf.int64), norm, count, dim).numpy()


@pytest.mark.parametrize("norm", NORMS, ids=lambda n: n.flag)
@pytest.mark.parametrize("backend", ["numpy", "tf"])
def test_unit_samples_lie_inside_the_ball(norm, backend):
    x = numpy_unit_ball(np.random.default_rng(0), norm, COUNT, DIM) if backend == "numpy" else tf_sample(norm)
    assert x.shape == (COUNT, DIM) and x.dtype == np.float32
    assert np.all(lp_norm(x, norm.p) <= 1.0 + 1e-5)


@pytest.mark.parametrize("norm", NORMS, ids=lambda n: n.flag)
@pytest.mark.parametrize("backend", ["numpy", "tf"])
def test_radius_follows_the_uniform_in_ball_law(norm, backend):
    # Uniform in a d-dimensional ball <=> r^d ~ U[0, 1], for every norm's own ball.
    x = numpy_unit_ball(np.random.default_rng(1), norm, COUNT, DIM) if backend == "numpy" else tf_sample(norm)
    r = lp_norm(x.astype(np.float64), norm.p)
    assert stats.kstest(r**DIM, "uniform").pvalue > 1e-3


@pytest.mark.parametrize("norm", NORMS, ids=lambda n: n.flag)
def test_directions_are_symmetric(norm):
    x = tf_sample(norm)
    # Each coordinate is symmetric about 0: its mean is within 5 standard errors of 0.
    se = x.std(0) / np.sqrt(COUNT)
    assert np.all(np.abs(x.mean(0)) < 5 * se + 1e-7)


def test_wrong_radius_law_is_detected():
    # The KS check above can fail: radii uniform on [0, 1] (not in-ball uniform) are rejected.
    r = np.random.default_rng(2).uniform(size=COUNT)
    assert stats.kstest(r**DIM, "uniform").pvalue < 1e-3


@pytest.mark.parametrize("norm", NORMS, ids=lambda n: n.flag)
def test_same_seed_gives_same_samples_and_other_seed_differs(norm):
    a, b, c = tf_sample(norm, (7, 1)), tf_sample(norm, (7, 1)), tf_sample(norm, (7, 2))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    rng_a = numpy_unit_ball(np.random.default_rng(5), norm, 10, DIM)
    rng_b = numpy_unit_ball(np.random.default_rng(5), norm, 10, DIM)
    np.testing.assert_array_equal(rng_a, rng_b)


def test_scale_factors_match_the_original_radii():
    import tensorflow as tf

    seed = tf.constant((1, 1), tf.int64)
    l2 = tf_perturbations(seed, L2, COUNT, DIM, L2.default_scale).numpy()
    li = tf_perturbations(seed, LINF, COUNT, DIM, LINF.default_scale).numpy()
    l1 = tf_perturbations(seed, L1, COUNT, DIM, L1.default_scale).numpy()
    assert lp_norm(l2, 2).max() <= 3.0 + 1e-4 and lp_norm(l2, 2).max() > 2.5
    np.testing.assert_allclose(np.abs(li).max(), 0.1, rtol=1e-3)
    assert lp_norm(l1, 1).max() <= 30.0 + 1e-3 and lp_norm(l1, 1).max() > 25
    fixed = tf_perturbations(seed, L2, COUNT, DIM, (0.2, 0.2)).numpy()
    assert lp_norm(fixed, 2).max() <= 0.2 + 1e-5
    assert stats.kstest((lp_norm(fixed.astype(np.float64), 2) / 0.2) ** DIM, "uniform").pvalue > 1e-3


def test_fast_path_points_are_clipped_to_the_input_range():
    from cleverscore.sampling.estimator import EstimateLipschitz

    est = EstimateLipschitz(log=None)
    est.input_range = (-0.5, 0.5)
    x0 = np.full((6, 6, 1), 0.45, np.float32)
    points = est.sample_points(x0, image_id=0, iteration=0, batch_index=0, count=200, sample_norm="l2")
    assert points.shape == (200, 6, 6, 1)
    assert points.min() >= -0.5 and points.max() <= 0.5
    assert np.mean(points == 0.5) > 0.1  # radius up to 3 around 0.45: many coordinates hit the bound
    again = est.sample_points(x0, image_id=0, iteration=0, batch_index=0, count=200, sample_norm="l2")
    np.testing.assert_array_equal(points, again)
    other = est.sample_points(x0, image_id=0, iteration=1, batch_index=0, count=200, sample_norm="l2")
    assert not np.array_equal(points, other)
