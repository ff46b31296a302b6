"""Pre-activation bounds that set the MILP's big-M constants.

Interval arithmetic is exact for the first layer over a box and loosens with depth; the LP method
then solves, layer by layer, the triangle relaxation of the layers below for the smallest and
largest value of every unit that interval arithmetic leaves unstable. Tighter bounds make fewer
units unstable (fewer binaries) and a tighter relaxation for the rest.
"""

from __future__ import annotations

import numpy as np

from cleverscore.certify.milp_model import Model, add_relu_layer
from cleverscore.certify.milp_network import Layers
from cleverscore.errors import UsageError

Bound = tuple[np.ndarray, np.ndarray]
TIGHTENINGS = ("interval", "lp")

# LP optima are feasible only to HiGHS' tolerance (1e-7); widening by more keeps the bounds sound.
_LP_SLACK = 1e-6


def affine_interval(w: np.ndarray, b: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> Bound:
    """Bounds of W v + b over the box lower <= v <= upper."""
    mid = (upper + lower) / 2.0
    rad = (upper - lower) / 2.0
    center = w @ mid + b
    spread = np.abs(w) @ rad
    return center - spread, center + spread


def interval_bounds(layers: Layers, lower: np.ndarray, upper: np.ndarray) -> list[Bound]:
    """Interval bounds on the pre-activations of every hidden layer over the input box."""
    bounds: list[Bound] = []
    lo, hi = lower, upper
    for w, b in layers[:-1]:
        zl, zu = affine_interval(w, b, lo, hi)
        bounds.append((zl, zu))
        lo, hi = np.maximum(zl, 0.0), np.maximum(zu, 0.0)
    return bounds


def preactivation_bounds(layers: Layers, lower: np.ndarray, upper: np.ndarray, tighten: str = "lp") -> list[Bound]:
    """Bounds on the pre-activations of every hidden layer over the input box, by `tighten` method."""
    if tighten not in TIGHTENINGS:
        raise UsageError(f"unknown bound tightening {tighten!r}; choose one of {', '.join(TIGHTENINGS)}")
    bounds = interval_bounds(layers, lower, upper)
    if tighten == "interval":
        return bounds
    # The first layer's interval bounds are already exact over a box.
    for k in range(1, len(bounds)):
        bounds[k] = _lp_layer(layers, lower, upper, bounds, k)
        lo, hi = np.maximum(bounds[k][0], 0.0), np.maximum(bounds[k][1], 0.0)
        for j in range(k + 1, len(bounds)):
            # Re-propagate from the tightened layer so the next LPs start from the better intervals.
            zl, zu = affine_interval(*layers[j], lo, hi)
            bounds[j] = (np.maximum(bounds[j][0], zl), np.minimum(bounds[j][1], zu))
            lo, hi = np.maximum(bounds[j][0], 0.0), np.maximum(bounds[j][1], 0.0)
    return bounds


def count_unstable(bounds: list[Bound]) -> int:
    """How many units can take both signs, i.e. how many binaries the big-M encoding needs."""
    return int(sum(int(np.count_nonzero((lo < 0.0) & (hi > 0.0))) for lo, hi in bounds))


def _lp_layer(layers: Layers, lower: np.ndarray, upper: np.ndarray, bounds: list[Bound], k: int) -> Bound:
    """LP-relaxation bounds for hidden layer k, from the relaxation of layers 0..k-1."""
    zl, zu = bounds[k]
    todo = np.flatnonzero((zl < 0.0) & (zu > 0.0))
    if todo.size == 0:
        return zl, zu
    model = Model()
    a = model.add_vars(lower, upper, lower.size)
    for i in range(k):
        a, _, _ = add_relu_layer(model, *layers[i], a, *bounds[i])
    model.relax()
    w, b = layers[k]
    new_lo, new_hi = zl.copy(), zu.copy()
    for j in todo:
        low = model.solve([(w[j], a)], constant=b[j])
        high = model.solve([(-w[j], a)], constant=-b[j])
        if low.objective is not None:
            new_lo[j] = max(zl[j], low.objective - _LP_SLACK * (1.0 + abs(low.objective)))
        if high.objective is not None:
            new_hi[j] = min(zu[j], -high.objective + _LP_SLACK * (1.0 + abs(high.objective)))
    return new_lo, new_hi
