"""95% confidence intervals for the end point of a reverse Weibull (the Lipschitz estimate).

The maxima s_1..s_n are modelled as s = mu - Y with Y ~ Weibull(shape k, scale lam), so mu is the
distribution's right end point (the local Lipschitz constant CLEVER estimates). The interval is
the profile-likelihood set {mu : 2 (L_max - L(mu)) <= chi2_1(0.95)}, where L(mu) is the
log-likelihood maximised over (k, lam) with mu fixed. For fixed mu, lam has a closed form and k
is the root of a monotone equation, so L(mu) is evaluated on a whole grid of mu at once.

Why profile likelihood: a parametric bootstrap of the end point under-covers (its estimator is
biased at these sample sizes), and the nonparametric bootstrap of a maximum is inconsistent. The
profile-likelihood cut-off measured 0.94-0.97 coverage on synthetic maxima (bench/bench_interval.py).

Two choices keep it well defined:
- k >= 1. For k < 1 the likelihood is unbounded as mu approaches max(s) (the density has a pole
  at the end point), so the unconstrained profile has no interior maximum; gradient-norm maxima
  fit shapes of 3 to 40.
- As mu -> inf with k -> inf the reverse Weibull tends to the Gumbel law, so L(inf) is the Gumbel
  maximum likelihood. When the Gumbel fits the maxima nearly as well as any finite end point
  (within the cut-off), the samples do not bound the end point above and the upper end is inf.

The lower end is never below max(s): the true constant is at least every observed norm.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.optimize
import scipy.stats

LEVEL = 0.95
CHI2_CUT = float(scipy.stats.chi2.ppf(LEVEL, 1)) / 2  # 1.9207: log-likelihood drop at the interval's ends
MIN_SHAPE = 1.0  # see the module docstring
MAX_SHAPE = 1e8
GRID_SPAN = (1e-6, 1e4)  # end points searched, as mu - max(s) in units of the maxima's range
GRID_POINTS = 48
NEWTON_STEPS = 60


@dataclass(frozen=True)
class EndPointInterval:
    """A confidence interval [lo, hi] for the end point; hi is inf when the samples do not bound it.

    Attributes:
        lo, hi: the interval (lo >= max of the maxima).
        mle: the end point that maximises the profile likelihood (inf if the Gumbel limit wins).
        bounded: whether hi is finite.
    """

    lo: float
    hi: float
    mle: float

    @property
    def bounded(self) -> bool:
        return math.isfinite(self.hi)

    def score_interval(self, g_x0: float) -> tuple[float, float]:
        """[g/hi, g/lo]: the CLEVER score's interval (0 at the lower end when hi is inf)."""
        g = float(g_x0)
        return (g / self.hi if self.bounded else 0.0), g / self.lo


def _profile_shape(logz: np.ndarray) -> np.ndarray:
    """Per row of log(y / max y), the shape k >= MIN_SHAPE maximising the profile likelihood.

    Solves 1/k + mean(log z) - sum(z^k log z) / sum(z^k) = 0, whose left side decreases in k, by
    Newton steps in log k kept inside a shrinking bracket (a bisection step when Newton leaves it).
    """
    rows = logz.shape[0]
    mean_log = logz.mean(axis=1)
    lo = np.full(rows, math.log(MIN_SHAPE))
    hi = np.full(rows, math.log(MAX_SHAPE))
    spread = logz.std(axis=1)
    t = np.clip(np.log(1.2 / np.maximum(spread, 1e-300)), lo, hi)  # the moment estimate of k
    for _ in range(NEWTON_STEPS):
        k = np.exp(t)
        w = np.exp(k[:, None] * logz)  # z^k in (0, 1], the largest term is 1: no overflow
        s0 = w.sum(axis=1)
        m1 = (w * logz).sum(axis=1) / s0
        m2 = (w * logz * logz).sum(axis=1) / s0
        h = 1.0 / k + mean_log - m1  # decreasing in k
        lo = np.where(h > 0, t, lo)
        hi = np.where(h > 0, hi, t)
        slope = -(1.0 / k + k * (m2 - m1 * m1))  # dh / dlog k < 0
        step = t - h / slope
        inside = (step > lo) & (step < hi)
        new = np.where(inside, step, 0.5 * (lo + hi))
        if np.all(np.abs(new - t) < 1e-10):
            t = new
            break
        t = new
    return np.exp(t)


def profile_loglik(sample: np.ndarray, mus: np.ndarray) -> np.ndarray:
    """L(mu) for each end point in `mus` (all > max(sample)), maximised over shape and scale."""
    y = np.asarray(mus, np.float64)[:, None] - sample[None, :]
    ymax = y.max(axis=1)
    logz = np.log(y / ymax[:, None])
    k = _profile_shape(logz)
    n = sample.size
    mean_zk = np.exp(k[:, None] * logz).mean(axis=1)
    # n log k - n log mean(y^k) + (k - 1) sum log y - n, with y = z * ymax.
    return n * np.log(k) - n * np.log(mean_zk) + (k - 1) * logz.sum(axis=1) - n * np.log(ymax) - n


def gumbel_loglik(sample: np.ndarray) -> float:
    """The maximised Gumbel (for maxima) log-likelihood: the profile's limit as mu -> inf."""
    loc, scale = scipy.stats.gumbel_r.fit(sample)
    return float(np.sum(scipy.stats.gumbel_r.logpdf(sample, loc, scale)))


def _crossing(sample: np.ndarray, a: float, b: float, level: float, outer: float) -> float:
    """The end point between a and b where L crosses `level` (L(a) - level, L(b) - level differ in sign).

    If the root cannot be found (a NaN likelihood from samples that differ only in the last bits),
    `outer`, the bracket end farther from the estimate, keeps the interval conservative.
    """
    def f(mu: float) -> float:
        return float(profile_loglik(sample, np.array([mu]))[0]) - level

    try:
        return float(scipy.optimize.brentq(f, a, b, xtol=1e-12 * max(abs(a), 1.0), rtol=1e-10, maxiter=100))
    except (ValueError, RuntimeError):
        return outer


def end_point_interval(sample: Sequence[float]) -> EndPointInterval:
    """The 95% profile-likelihood interval for the end point of the maxima `sample`.

    Samples with no spread (all equal) give the degenerate interval [max, max].
    """
    s = np.asarray(sample, np.float64).ravel()
    top, spread = float(s.max()), float(s.max() - s.min())
    if not spread > 0 or not np.isfinite(spread):
        return EndPointInterval(top, top, top)
    offsets = spread * np.geomspace(*GRID_SPAN, GRID_POINTS)
    mus = top + offsets
    with np.errstate(divide="ignore", over="ignore", under="ignore", invalid="ignore"):
        ll = profile_loglik(s, mus)
        limit = gumbel_loglik(s)
    ll = np.where(np.isfinite(ll), ll, -np.inf)
    best = int(np.argmax(ll))
    peak = max(float(ll[best]), limit)
    level = peak - CHI2_CUT
    mle = float(mus[best]) if ll[best] >= limit else math.inf
    above = np.flatnonzero(ll >= level)
    if above.size == 0:  # only the Gumbel limit is within the cut-off
        return EndPointInterval(float(mus[-1]), math.inf, math.inf)
    first, last = int(above[0]), int(above[-1])
    with np.errstate(divide="ignore", over="ignore", under="ignore", invalid="ignore"):
        lo = top if first == 0 else _crossing(s, float(mus[first - 1]), float(mus[first]), level, top)
        if limit >= level:
            hi = math.inf
        elif last + 1 < mus.size:
            hi = _crossing(s, float(mus[last]), float(mus[last + 1]), level, float(mus[last + 1]))
        else:  # still above the cut-off at the grid's end: search further out
            hi = _far_crossing(s, float(mus[-1]), level, spread)
    return EndPointInterval(max(lo, top), hi, mle)


def _far_crossing(sample: np.ndarray, start: float, level: float, spread: float) -> float:
    a = start
    for _ in range(40):  # bounded: each step multiplies the distance by 10
        b = sample.max() + 10 * (a - sample.max())
        with np.errstate(divide="ignore", over="ignore", under="ignore", invalid="ignore"):
            if profile_loglik(sample, np.array([b]))[0] < level:
                return _crossing(sample, a, b, level, b)
        a = b
    return math.inf


def mean_interval(scores: Sequence[float], los: Sequence[float], his: Sequence[float]) -> tuple[float, float]:
    """An interval for the mean of several scores from their own intervals (independent errors).

    Each score's lower and upper distances to its interval ends are combined like independent
    normal errors (root sum of squares, divided by the count), separately for each side. An
    unbounded score (lower end 0) contributes its whole value to the lower side.
    """
    x = np.asarray(scores, np.float64)
    lo_d = x - np.asarray(los, np.float64)
    hi_d = np.asarray(his, np.float64) - x
    n = x.size
    mean = float(x.mean())
    return max(mean - float(np.sqrt(np.sum(lo_d**2))) / n, 0.0), mean + float(np.sqrt(np.sum(hi_d**2))) / n


# --rel_tol: when sampling may stop (issue "every score with a 95% interval").
BURN_IN = 50  # iterations before the first check: fewer maxima rarely bound the end point
CHECK_EVERY = 10  # iterations between checks; a check costs one fit and one interval (~0.1 s)


def score_rel_half_width(maxima: np.ndarray, g_x0: float) -> float:
    """Half the width of the score's 95% interval over the score (inf when not bounded)."""
    from cleverscore.scoring.fit import clever_score, fit_reverse_weibull

    s = np.asarray(maxima, np.float64)
    score = clever_score(g_x0, fit_reverse_weibull(s).estimate)
    lo, hi = end_point_interval(s).score_interval(g_x0)
    return (hi - lo) / 2 / score if score > 0 else math.inf


def is_check_point(done: int) -> bool:
    """Whether the stopping rule is evaluated after `done` iterations."""
    return done >= BURN_IN and (done - BURN_IN) % CHECK_EVERY == 0
