"""What is certain about a Lipschitz constant, and the statistical interval made consistent with it.

Two bounds are certain: every gradient norm found in the ball (the largest sampled maximum, or
a larger one found by search) is at most the constant, and a certified bound (linear bound
propagation, certify/) is at least it. The end point's profile-likelihood interval is a
statistical statement about the sampled law; `consistent_interval` makes it respect both
certain bounds and contain the estimate itself, and widens it where the maxima say nothing:

- A plateau, where the largest maximum repeats in at least half the iterations, means the
  sampler kept landing in one activation region, not that the constant is known (on ReLU
  networks the true constant was 2-64% above such a plateau). Its interval runs from the
  largest norm found up to the certified bound, or to infinity without one; it is never of
  zero width unless the certified bound equals the largest norm found.
- An estimate always lies inside its own interval: a fit rejected in favour of the largest
  maximum (`:fallback_max`) keeps the interval's upper side and starts it at that maximum.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from cleverscore.scoring.intervals import EndPointInterval

PLATEAU_SHARE = 0.5  # the largest maximum repeats in at least this share of the iterations
PLATEAU_RTOL = 1e-6  # maxima this close to the largest count as repeats of it


def is_plateau(maxima: np.ndarray) -> bool:
    """Whether the largest maximum repeats in at least PLATEAU_SHARE of the iterations."""
    s = np.asarray(maxima, np.float64)
    top = float(s.max())
    return bool(np.mean(s >= top - PLATEAU_RTOL * abs(top)) >= PLATEAU_SHARE)


@dataclass(frozen=True)
class Bracket:
    """The Lipschitz estimate of one score with its interval and its certain bounds.

    Attributes:
        estimate: the Lipschitz estimate behind the score.
        interval: its 95% interval, consistent with the certain bounds and containing the estimate.
        found: the largest gradient norm found in the ball (certainly <= the constant).
        certified: a certified upper bound of the constant (None when not certified).
        plateau: the maxima repeat one value (see the module docstring).
    """

    estimate: float
    interval: EndPointInterval
    found: float
    certified: float | None
    plateau: bool


def consistent_interval(estimate: float, interval: EndPointInterval, maxima: np.ndarray, found: float,
                        certified: float | None = None) -> Bracket:
    """`interval` made to contain `estimate` and to lie within [found, certified] (see the module docstring).

    `found` is the largest norm seen (sampled or searched); `estimate` is at least `found`. An
    estimate above the certified bound is lowered to it.
    """
    ceiling = math.inf if certified is None else max(float(certified), found)
    estimate = min(float(estimate), ceiling)  # above a proven ceiling, the ceiling is the better estimate
    plateau = is_plateau(maxima)
    lo, hi = float(interval.lo), float(interval.hi)
    if plateau:
        lo, hi = found, ceiling
    lo, hi = min(lo, estimate), max(hi, estimate)
    lo, hi = max(lo, found), min(hi, ceiling)
    return Bracket(estimate, EndPointInterval(lo, hi, interval.mle), found, certified, plateau)


def consistent_rerun(interval: tuple[float, float], bracket: Bracket) -> tuple[float, float]:
    """A plateau's (or any zero-width) rerun interval reaches up to its end-point interval's top
    (infinity, or the proven bound).

    A top maximum that repeats gives a bootstrap interval of zero width, [max, max]: "another seed
    lands in the same region". But repeats say the sampler kept meeting one region; another seed
    may meet a larger one (the validity study's search found up to 54% more), so nothing but a
    proof bounds where its estimate falls.
    """
    if not bracket.plateau and interval[1] > interval[0]:
        return interval
    return min(interval[0], bracket.found), max(interval[1], bracket.interval.hi)
