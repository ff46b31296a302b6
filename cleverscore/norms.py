"""The one table of norms: sampling ball, dual gradient norm, .mat keys and printed names.

CLEVER bounds a perturbation measured in the Lp norm by g(x0) / L_q, where L_q is the local
Lipschitz constant in the dual norm q (1/p + 1/q = 1). Every module that needs to know which
gradient norm, which `.mat` key or which printed label belongs to a perturbation norm reads it
here, so no caller branches on `p == 2 ... elif p == inf`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class LpNorm:
    """A perturbation norm and everything tied to it.

    Attributes:
        p: the perturbation norm order (1, 2 or np.inf).
        flag: the `--sample_norm` value that draws samples in this norm's ball.
        label: the suffix used in printed scores (`clever_L1`, `clever_L2`, `clever_Li`).
        bnd_norm: the character printed as `bnd_norm` in `[DEBUG][L1]` lines.
        grad_key: the `.mat` key of per-iteration maxima of the dual gradient norm.
        slope_key: the `.mat` key of per-iteration maxima of slopes measured in this norm.
        default_scale: (low, high) of the random factor that scales a unit-ball sample,
            as in the original release (l2: [0, 3], li: 0.1, l1: [0, 30]).
    """

    p: float
    flag: str
    label: str
    bnd_norm: str
    grad_key: str
    slope_key: str
    default_scale: tuple[float, float]

    @property
    def search_key(self) -> str:
        """The `.mat` key of the largest dual gradient norm found by `--search_steps` ascent."""
        return self.grad_key.replace("_max", "_search")

    @property
    def certified_key(self) -> str:
        """The `.mat` key of the certified upper bound of the dual gradient norm over the sampled ball."""
        return self.grad_key.replace("_max", "_certified")

    @property
    def dual(self) -> float:
        """The dual norm order q with 1/p + 1/q = 1."""
        if self.p == 1:
            return np.inf
        if self.p == np.inf:
            return 1.0
        return self.p / (self.p - 1.0)

    def __repr__(self) -> str:
        return f"LpNorm(p={self.p}, dual={self.dual}, grad_key={self.grad_key!r})"


L1 = LpNorm(1.0, "l1", "L1", "1", "Gi_max", "Li_max", (0.0, 30.0))
L2 = LpNorm(2.0, "l2", "L2", "2", "G2_max", "L2_max", (0.0, 3.0))
LINF = LpNorm(np.inf, "li", "Li", "i", "G1_max", "L1_max", (0.1, 0.1))

# Printing and fitting order of the original tool: L1, L2, Linf.
NORMS: tuple[LpNorm, ...] = (L1, L2, LINF)
BY_FLAG: dict[str, LpNorm] = {n.flag: n for n in NORMS}

# Columns of the (.., 3) arrays of gradient-norm maxima produced by the estimator, in the
# original return order G2, G1, Gi; `grad_column` maps a norm to its column.
GRAD_KEYS: tuple[str, ...] = ("G2_max", "G1_max", "Gi_max")


def grad_column(norm: LpNorm) -> int:
    """Index of `norm`'s dual gradient norm in the estimator's (G2, G1, Gi) columns."""
    return GRAD_KEYS.index(norm.grad_key)


def by_flag(flag: str) -> LpNorm:
    """The norm named by a `--sample_norm` flag value (l2, li, l1)."""
    try:
        return BY_FLAG[flag]
    except KeyError:
        raise ValueError(f"unknown sample norm {flag!r}; choose one of {sorted(BY_FLAG)}") from None


def supported_radius(sampled: LpNorm, radius: float, dim: int, score_norm: LpNorm) -> float:
    """The radius of the largest `score_norm` ball inside the sampled `sampled` ball of `radius`.

    In d dimensions, max ||x||_s over ||x||_p <= r is r * d^max(0, 1/s - 1/p), so the p-ball of
    radius R / d^max(0, 1/s - 1/p) is the largest inside the s-ball of radius R. For example an L2
    ball of radius R holds the L1 and L2 balls of radius R and the Linf ball of radius R / sqrt(d).
    """
    exponent = max(0.0, 1.0 / sampled.p - 1.0 / score_norm.p)
    return float(radius) / float(dim) ** exponent
