"""The reverse Weibull fit recovers known locations and falls back as the spec says."""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pytest
from scipy.stats import weibull_min

from cleverscore.scoring.fit import WeibullFit, clever_score, fit_many, fit_reverse_weibull


def reverse_weibull_maxima(location: float, shape: float, scale: float, n: int, seed: int) -> np.ndarray:
    """Maxima whose negatives follow weibull_min(shape, -location, scale): right end point = location."""
    return -weibull_min.rvs(shape, loc=-location, scale=scale, size=n, random_state=seed)


@pytest.mark.parametrize("location,shape,scale", [(10.0, 3.0, 2.0), (2.5, 5.0, 0.3), (120.0, 2.0, 15.0)])
def test_estimate_is_within_2_percent_of_the_true_location(location, shape, scale):
    s = reverse_weibull_maxima(location, shape, scale, 500, seed=int(location))
    fit = fit_reverse_weibull(s)
    assert fit.fitted and fit.pval > 0.001
    assert fit.estimate == pytest.approx(location, rel=0.02)
    assert fit.estimate >= s.max() * 0.999  # the end point is beyond the observed maxima


def test_plain_mle_also_recovers_the_location():
    s = reverse_weibull_maxima(10.0, 3.0, 2.0, 500, seed=3)
    assert fit_reverse_weibull(s, method="mle").estimate == pytest.approx(10.0, rel=0.02)


def test_maxsamp_uses_the_largest_maximum():
    s = np.array([1.0, 3.0, 2.0])
    assert fit_reverse_weibull(s, method="maxsamp") == WeibullFit(3.0)


def test_constant_maxima_fall_back_to_their_value():
    fit = fit_reverse_weibull(np.full(50, 4.2))
    assert not fit.fitted
    assert fit.estimate == 4.2
    assert (fit.shape, fit.loc, fit.scale, fit.ks, fit.pval) == (-1, -1, -1, -1, -1)


def test_samples_the_weibull_cannot_describe_fall_back_to_the_maximum():
    # Two far-apart clusters: every start is rejected by the KS test (p < 0.001).
    s = np.concatenate([np.full(250, 1.0), np.full(250, 100.0)]) + np.linspace(0, 1e-3, 500)
    fit = fit_reverse_weibull(s)
    assert not fit.fitted and fit.estimate == pytest.approx(s.max())


@pytest.mark.parametrize("bad", [[1.0, 2.0], [1.0, np.nan, 2.0, 3.0], [1.0, np.inf, 2.0]])
def test_unusable_samples_are_rejected(bad):
    with pytest.raises(ValueError):
        fit_reverse_weibull(bad)


def test_parallel_fits_equal_serial_fits():
    samples = [reverse_weibull_maxima(5.0 + k, 4.0, 1.0, 200, seed=k) for k in range(3)]
    with ProcessPoolExecutor(2) as pool:
        parallel = fit_many(samples, executor=pool)
    assert parallel == fit_many(samples)


def test_true_shape_penalty_is_an_option():
    s = reverse_weibull_maxima(10.0, 3.0, 2.0, 500, seed=4)
    shape_pen = fit_reverse_weibull(s, reg_index=0)
    assert shape_pen.estimate == pytest.approx(10.0, rel=0.05)


def test_clever_score_divides_margin_by_lipschitz():
    assert clever_score(1.0, 2.0) == 0.5
    assert clever_score(1.0, 0.0) == float("inf")


def test_fast_likelihood_equals_scipys_penalised_likelihood():
    from cleverscore.scoring.fit import weibull_nnlf

    rng = np.random.default_rng(7)
    x = -reverse_weibull_maxima(1.0, 4.0, 0.5, 300, seed=1)
    thetas = [(c, loc, scale) for c in (0.3, 1.0, 4.0, 60.0) for loc in (-2.0, -1.2, -0.9, 0.5)
              for scale in (0.05, 0.5, 3.0)] + [tuple(rng.normal(size=3)) for _ in range(50)]
    for theta in thetas:
        ours, theirs = weibull_nnlf(theta, x), weibull_min._penalized_nnlf(theta, x)
        assert ours == pytest.approx(theirs, rel=1e-12, abs=1e-9) or (np.isinf(ours) and np.isinf(theirs)), theta
