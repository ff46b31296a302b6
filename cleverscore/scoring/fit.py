"""Estimating a Lipschitz constant from per-iteration maxima with a reverse Weibull fit.

Pure functions of arrays (spec section 6): shift and rescale the maxima, fit scipy's
`weibull_min` to their negatives by Nelder-Mead maximum likelihood from seven initial shapes,
keep the fit with the best Kolmogorov-Smirnov p-value among those whose support holds every
maximum (the original kept the best of all; `select="original"`), and return its location (the
finite right end point of the reverse Weibull) as the estimate. Ill-conditioned samples fall
back to the largest maximum. Intervals for the estimate live in clever_interval.py.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from functools import partial

import numpy as np
import scipy.optimize
import scipy.special
import scipy.stats
from scipy.stats import weibull_min

# Nelder-Mead can land on a poor optimum when the initial shape is far from the truth, so
# several starts are tried and the best KS p-value wins (the original's list).
C_INIT = (0.1, 1.0, 5.0, 10.0, 20.0, 50.0, 100.0)
MIN_PVALUE = 0.001  # below this the fit is rejected as ill-conditioned
SHAPE_REG = 0.01  # small enough not to bias the fit, large enough to stop divergence
XTOL = FTOL = 1e-4
MIN_SAMPLES = 3
METHODS = ("mle", "mle_reg", "maxsamp")
# How the kept start is chosen: "ks" (default) and "likelihood" consider only starts whose fitted
# support holds every maximum (end point >= max); "original" is the published code's rule.
FIT_SELECT = ("ks", "likelihood", "original")


@dataclass(frozen=True)
class WeibullFit:
    """A fitted reverse Weibull and the Lipschitz estimate it gives.

    Attributes:
        estimate: the Lipschitz estimate (-loc of the fit of -maxima, or the largest maximum).
        shape, loc, scale: weibull_min parameters of the fit to -maxima (-1 when not fitted).
        ks, pval: the KS statistic and p-value of -maxima against the fit (-1 when not fitted).
        c_init: the initial shape that produced the kept fit (-1 when not fitted).
    """

    estimate: float
    shape: float = -1.0
    loc: float = -1.0
    scale: float = -1.0
    ks: float = -1.0
    pval: float = -1.0
    c_init: float = -1.0

    @property
    def fitted(self) -> bool:
        return self.c_init != -1.0


_BAD_POINT_PENALTY = math.log(np.finfo(float).max) * 100  # scipy's penalty per point off the support


def weibull_nnlf(theta, x: np.ndarray) -> float:
    """weibull_min's penalised negative log-likelihood, as scipy's `_penalized_nnlf` computes it.

    theta = (c, loc, scale). Points outside the support, or with a non-finite log-density, are
    dropped and each adds a fixed penalty. Written out for weibull_min because scipy's generic
    version spends most of the fit's time in argument handling (about 4x slower).
    """
    c, loc, scale = theta
    if not c > 0 or not scale > 0:
        return math.inf
    z = (x - loc) / scale
    inside = z >= 0
    n_bad = z.size - int(np.count_nonzero(inside))
    if n_bad:
        z = z[inside]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        logpdf = math.log(c) + scipy.special.xlogy(c - 1.0, z) - np.power(z, c)
    finite = np.isfinite(logpdf)
    n_bad += logpdf.size - int(np.count_nonzero(finite))
    total = -float(np.sum(logpdf[finite] if n_bad else logpdf))
    return total + n_bad * _BAD_POINT_PENALTY + x.size * math.log(scale)


def _penalised_optimizer(func, x0, args=(), disp=0, *, reg: float, index: int):
    """Nelder-Mead on the negative log-likelihood plus reg * theta[index]^2.

    theta is scipy's (c, loc, scale). The original penalised theta[2], the scale in the
    rescaled space, while its comment said "shape"; index=2 reproduces the published
    numbers, index=0 is a true shape penalty. scipy's `func` is replaced by `weibull_nnlf`,
    the same function computed faster.
    """

    def objective(theta, data):
        return weibull_nnlf(theta, data) + reg * theta[index] ** 2

    return scipy.optimize.fmin(objective, x0, args=args, xtol=XTOL, ftol=FTOL, disp=disp)


def _plain_optimizer(func, x0, args=(), disp=0):
    return scipy.optimize.fmin(weibull_nnlf, x0, args=args, xtol=XTOL, ftol=FTOL, disp=disp)


def fit_from_start(rescaled: np.ndarray, sample: np.ndarray, shift: float, spread: float, c0: float,
                   method: str = "mle_reg", reg: float = SHAPE_REG, reg_index: int = 2) -> tuple | None:
    """One start: fit weibull_min to -rescaled from shape c0, map back, KS-test -sample.

    Returns (c, loc, scale, ks, pval, nnlf) in the original units, or None if this start fails.
    `nnlf` is the plain negative log-likelihood of the fit in the rescaled space.
    """
    optimizer = partial(_penalised_optimizer, reg=reg, index=reg_index) if method == "mle_reg" else _plain_optimizer
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            c, loc, scale = weibull_min.fit(-rescaled, c0, optimizer=optimizer)
        except (scipy.stats.FitError, ValueError, RuntimeError, FloatingPointError):
            return None
        nnlf = weibull_nnlf((c, loc, scale), -rescaled)
        loc = -shift + loc * spread
        scale = scale * spread
        ks, pval = scipy.stats.kstest(-sample, "weibull_min", args=(c, loc, scale))
    return float(c), float(loc), float(scale), float(ks), float(pval), float(nnlf)


def check_sample(sample: Sequence[float]) -> np.ndarray:
    """The maxima as a float64 vector; ValueError if too few or not finite."""
    s = np.asarray(sample, dtype=np.float64).ravel()
    if s.size < MIN_SAMPLES:
        raise ValueError(f"only {s.size} maxima; a fit needs at least {MIN_SAMPLES}")
    if not np.all(np.isfinite(s)):
        raise ValueError("maxima contain NaN or Inf")
    return s


def fit_reverse_weibull(sample: Sequence[float], method: str = "mle_reg", reg: float = SHAPE_REG,
                        reg_index: int = 2, executor: Executor | None = None, select: str = "ks") -> WeibullFit:
    """The Lipschitz estimate of a set of maxima by the spec's procedure.

    Args:
        sample: per-iteration maxima of a gradient norm (or slope).
        method: 'mle_reg' (regularised MLE, default), 'mle', or 'maxsamp' (largest maximum).
        reg: the regulariser weight (`--shape_reg`).
        reg_index: which of scipy's (c, loc, scale) is penalised (2: the original's scale).
        executor: runs the seven starts in parallel when given.
        select: which start is kept (FIT_SELECT): "ks", the best KS p-value among starts whose
            support holds every maximum (so the estimate is never below the largest maximum);
            "likelihood", the largest likelihood among those; "original", the best KS p-value
            among all starts, as the published code.
    Raises:
        ValueError: fewer than 3 maxima, or NaN/Inf among them.
    """
    return fit_many([sample], method, reg, reg_index, executor, select)[0]


def fit_many(samples: Sequence[Sequence[float]], method: str = "mle_reg", reg: float = SHAPE_REG,
             reg_index: int = 2, executor: Executor | None = None, select: str = "ks") -> list[WeibullFit]:
    """`fit_reverse_weibull` for several samples, all starts submitted to `executor` at once."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")
    if select not in FIT_SELECT:
        raise ValueError(f"unknown fit selection {select!r}; choose one of {FIT_SELECT}")
    checked = [check_sample(s) for s in samples]
    pending: list = []
    for s in checked:
        largest = float(s.max())
        spread = largest - float(s.min())
        if method == "maxsamp" or spread <= 0 or not np.isfinite(spread):
            pending.append(WeibullFit(largest))
            continue
        job = partial(fit_from_start, (s - largest) / spread, s, largest, spread,
                      method=method, reg=reg, reg_index=reg_index)
        starts = [executor.submit(job, c0) for c0 in C_INIT] if executor else [job(c0) for c0 in C_INIT]
        pending.append((starts, largest))
    fits = []
    for item in pending:
        if isinstance(item, WeibullFit):
            fits.append(item)
        else:
            starts, largest = item
            fits.append(best_fit([f.result() if executor else f for f in starts], largest, select))
    return fits


def best_fit(results: Sequence[tuple | None], largest: float, select: str = "ks") -> WeibullFit:
    """Keep one start by the `select` rule; fall back to the largest maximum.

    A start whose fitted support excludes a maximum (end point below it) is not a fit of these
    maxima: its objective is mostly scipy's out-of-support penalty, and its KS p-value can still be
    the best. Only "original" keeps such starts.
    """
    usable = [r if r is not None and (select == "original" or -r[1] >= largest) else None for r in results]
    pvals = [r[4] if r is not None else np.nan for r in usable]
    if all(np.isnan(p) for p in pvals) or np.nanmax(pvals) < MIN_PVALUE:
        return WeibullFit(largest)
    if select == "likelihood":
        best = min((k for k, r in enumerate(usable) if r is not None and r[4] >= MIN_PVALUE), key=lambda k: usable[k][5])
    else:
        best = int(np.nanargmax(pvals))
    c, loc, scale, ks, pval, _ = usable[best]  # type: ignore[misc]
    estimate = -loc if select == "original" else max(-loc, largest)  # rounding in the back-mapping
    return WeibullFit(estimate, c, loc, scale, ks, pval, C_INIT[best])


def clever_score(g_x0: float, lipschitz: float) -> float:
    """CLEVER = g(x0) / L (inf when the estimate is 0)."""
    return float(g_x0) / lipschitz if lipschitz > 0 else float("inf")


def second_order_bound(g_x0: float, grad_norm: float, curvature: float) -> float:
    """The L2 radius r solving g_x0 - grad_norm * r - curvature * r^2 / 2 = 0 (spec section 6).

    With curvature 0 (a piecewise-linear network) it is the first-order g_x0 / grad_norm.
    """
    g, h = float(g_x0), abs(float(curvature))
    if h == 0:
        return clever_score(g, grad_norm)
    return (-grad_norm + math.sqrt(grad_norm**2 + 2.0 * g * h)) / h
