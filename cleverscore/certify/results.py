"""Result types of the certifier: small frozen records holding numpy arrays."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from cleverscore.norms import L1, L2, LINF, LpNorm

CROWN = "crown"
TRUNCATED = "truncated"
INTERVAL = "interval"
ELEMENTWISE = "elementwise"
MIXED = "mixed"


@dataclass(frozen=True)
class LayerReport:
    """How the bounds of one node that feeds a nonlinear operator were obtained.

    Attributes:
        layer: the node's name (the Keras layer, e.g. `dense_1` for its pre-activation output).
        method: `crown` (backward linear bounds to the input, intersected with interval bounds),
            `truncated` (the budget did not allow a pass to the input: it stopped at the node
            `stop`, whose bounds bound the rest), `interval` (not even that fitted), `elementwise`
            (the output of a monotone activation: the activation of its input's bounds, which
            CROWN cannot tighten), or `mixed` when several evaluations (search steps) differed.
        refined: how many neurons were bounded by CROWN (the most in any evaluation).
        wanted: how many neurons would profit from CROWN (unstable ReLU inputs, candidates of
            undecided max-pooling windows, every input of a smooth activation); the rest keep
            interval bounds, which already make their relaxation exact.
        neurons: the node's size.
        crown_bytes: the memory estimate of one CROWN pass (for one problem when nothing fitted
            the budget; the largest in any evaluation).
        stop: where the CROWN pass stopped: `input`, a node's name, or empty (no pass).
    """

    layer: str
    method: str
    refined: int
    wanted: int
    neurons: int
    crown_bytes: int
    stop: str


def merge_reports(runs: Iterable[tuple[LayerReport, ...]]) -> tuple[LayerReport, ...]:
    """One report per layer over several evaluations: the common method, or `mixed`."""
    merged: dict[str, LayerReport] = {}
    for run in runs:
        for rep in run:
            old = merged.get(rep.layer)
            if old is None:
                merged[rep.layer] = rep
                continue
            method = old.method if old.method == rep.method else MIXED
            stop = old.stop if old.stop == rep.stop else MIXED
            merged[rep.layer] = LayerReport(rep.layer, method, max(old.refined, rep.refined),
                                            max(old.wanted, rep.wanted), rep.neurons,
                                            max(old.crown_bytes, rep.crown_bytes), stop)
    return tuple(merged.values())


@dataclass(frozen=True, eq=False)
class MarginBounds:
    """Lower bounds of f_c(x) - f_j(x) over the ball (intersected with the box), one per target j.

    Attributes:
        targets: the target classes j, shape (T,).
        lower: the certified lower bounds, shape (T,); positive means no x in the ball is classified as j.
        layers: how each nonlinear operator's input bounds were obtained.
    """

    targets: np.ndarray
    lower: np.ndarray
    layers: tuple[LayerReport, ...]


@dataclass(frozen=True, eq=False)
class CertifiedRadii:
    """The largest certified radius per target, found by bisection.

    Attributes:
        targets: the target classes, shape (T,).
        radii: per target the largest radius r found with a positive margin lower bound over the
            ball of radius r; 0 where x0 itself is not classified above the target; inf where the
            whole input box is certified (the search had no `r_max`).
        lower: the margin lower bound at the returned radius (the margin at x0 for radius 0).
        evaluations: how many bound evaluations (one radius, all targets) the search took.
        layers: the per-layer method report, merged over all evaluations.
        unoptimized: with optimised slopes (`optimize_seconds`), the radii CROWN's own slopes
            certified (`radii` / `unoptimized` is the gain); None without.
    """

    targets: np.ndarray
    radii: np.ndarray
    lower: np.ndarray
    evaluations: int
    layers: tuple[LayerReport, ...]
    unoptimized: np.ndarray | None = None


PERTURBATION_NORMS: tuple[LpNorm, ...] = (L1, L2, LINF)


@dataclass(frozen=True, eq=False)
class LipschitzBounds:
    """Certified upper bounds of the local Lipschitz constant of g_j = f_c - f_j over the ball.

    Attributes:
        targets: the target classes, shape (T,).
        values: shape (T, 3); column k bounds max ||grad g_j(x)||_q over the ball for the dual norm
            q of PERTURBATION_NORMS[k] (L1, L2, Linf perturbations: q = inf, 2, 1).
        layers: how the pre-activation bounds were obtained.
        interval: the Fast-Lip (interval) bounds alone, shape (T, 3); `values` is never above them.
        parts: how many parts of the derivatives' ranges were bounded (T without a split search).
        attained: shape (T,); whether the bound in the dual of the sampling norm is attained at a point of
            the ball, and so is the exact constant (the split search of a ReLU MLP ended on a leaf that a
            point of the ball meets, `leaves.py`); None for the interval method.
    """

    targets: np.ndarray
    values: np.ndarray
    layers: tuple[LayerReport, ...]
    interval: np.ndarray | None = None
    parts: int = 0
    attained: np.ndarray | None = None

    def for_norm(self, norm: LpNorm) -> np.ndarray:
        """The bounds (T,) that hold for perturbations measured in `norm` (gradients in its dual norm)."""
        return self.values[:, PERTURBATION_NORMS.index(norm)]
