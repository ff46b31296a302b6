"""Property tests (hypothesis): samplers and the fit behave on arbitrary inputs."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cleverscore.scoring.fit import fit_reverse_weibull
from cleverscore.norms import NORMS
from cleverscore.sampling.balls import numpy_perturbations, numpy_unit_ball

norms = st.sampled_from(NORMS)
settings.register_profile("clever", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("clever")


@given(norm=norms, count=st.integers(1, 40), dim=st.integers(1, 300), seed=st.integers(0, 2**32 - 1))
@settings(max_examples=60)
def test_numpy_samples_are_inside_the_unit_ball_with_shape_and_dtype(norm, count, dim, seed):
    x = numpy_unit_ball(np.random.default_rng(seed), norm, count, dim)
    assert x.shape == (count, dim) and x.dtype == np.float32
    assert np.all(np.linalg.norm(x.astype(np.float64), ord=norm.p, axis=1) <= 1 + 1e-5)
    np.testing.assert_array_equal(x, numpy_unit_ball(np.random.default_rng(seed), norm, count, dim))


@given(norm=norms, dim=st.integers(1, 200), radius=st.floats(1e-3, 50.0), seed=st.integers(0, 2**31 - 1))
@settings(max_examples=40)
def test_scaled_samples_stay_inside_the_radius(norm, dim, radius, seed):
    x = numpy_perturbations(np.random.default_rng(seed), norm, 16, dim, (radius, radius))
    assert np.all(np.linalg.norm(x.astype(np.float64), ord=norm.p, axis=1) <= radius * (1 + 1e-5))


@given(norm=norms, dim=st.integers(1, 100), seed=st.integers(0, 2**31 - 1))
@settings(max_examples=25)
def test_graph_samples_are_inside_the_ball_and_repeat_for_a_seed(norm, dim, seed):
    import tensorflow as tf

    from cleverscore.sampling.balls import tf_unit_ball

    s = tf.constant([seed, 3], tf.int64)
    x = tf_unit_ball(s, norm, 8, dim).numpy()
    assert x.shape == (8, dim) and x.dtype == np.float32
    assert np.all(np.linalg.norm(x.astype(np.float64), ord=norm.p, axis=1) <= 1 + 1e-5)
    np.testing.assert_array_equal(x, tf_unit_ball(s, norm, 8, dim).numpy())


positive = st.floats(min_value=1e-30, max_value=1e30, allow_nan=False, allow_infinity=False)


@st.composite
def maxima(draw):
    kind = draw(st.sampled_from(["any", "constant", "two_values", "tiny", "huge", "near_constant"]))
    n = draw(st.integers(3, 60))
    if kind == "constant":
        return np.full(n, draw(positive))
    if kind == "two_values":
        a, b = draw(positive), draw(positive)
        return np.array([a if i % 2 else b for i in range(n)])
    if kind == "tiny":
        return np.array(draw(st.lists(st.floats(1e-30, 1e-25), min_size=n, max_size=n)))
    if kind == "huge":
        return np.array(draw(st.lists(st.floats(1e25, 1e30), min_size=n, max_size=n)))
    if kind == "near_constant":
        base = draw(st.floats(0.1, 100.0))
        return base * (1 + np.array(draw(st.lists(st.floats(0, 1e-6), min_size=n, max_size=n))))
    return np.array(draw(st.lists(positive, min_size=n, max_size=n)))


@given(sample=maxima())
@settings(max_examples=60)
def test_fit_gives_a_finite_estimate_or_the_documented_fallback(sample):
    fit = fit_reverse_weibull(sample)
    assert math.isfinite(fit.estimate) and fit.estimate > 0
    if fit.fitted:
        assert fit.pval >= 0.001 and fit.shape > 0 and fit.scale > 0
        assert fit.estimate == -fit.loc
    else:
        assert fit.estimate == sample.max()
        assert (fit.shape, fit.loc, fit.scale, fit.ks, fit.pval) == (-1, -1, -1, -1, -1)
