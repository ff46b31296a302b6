"""Pre-activation bounds that set the MILP's big-M constants.

Interval arithmetic is exact for the first layer over a box and loosens with depth; the LP method
then solves, layer by layer, the triangle relaxation of the layers below for the smallest and
largest value of every unit that interval arithmetic leaves unstable. Tighter bounds make fewer
units unstable (fewer binaries) and a tighter relaxation for the rest.
"""

from __future__ import annotations

import time

import numpy as np

from cleverscore.certify.milp.model import Model, add_relu_layer
from cleverscore.certify.milp.network import Layers
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


def preactivation_bounds(layers: Layers, lower: np.ndarray, upper: np.ndarray, tighten: str = "lp",
                         deadline: float | None = None) -> list[Bound]:
    """Bounds on the pre-activations of every hidden layer over the input box, by `tighten` method.

    Past `deadline` (a `time.perf_counter()` value) the LPs stop and the remaining units keep
    their interval bounds, which are looser but just as sound.
    """
    if tighten not in TIGHTENINGS:
        raise UsageError(f"unknown bound tightening {tighten!r}; choose one of {', '.join(TIGHTENINGS)}")
    bounds = interval_bounds(layers, lower, upper)
    if tighten == "interval":
        return bounds
    # The first layer's interval bounds are already exact over a box.
    for k in range(1, len(bounds)):
        bounds[k] = _lp_layer(layers, lower, upper, bounds, k, deadline)
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


def _lp_layer(layers: Layers, lower: np.ndarray, upper: np.ndarray, bounds: list[Bound], k: int,
              deadline: float | None) -> Bound:
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
        if deadline is not None and time.perf_counter() > deadline:
            break
        high = model.solve([(-w[j], a)], constant=-b[j])
        if high.objective is not None:
            new_hi[j] = min(zu[j], -high.objective + _LP_SLACK * (1.0 + abs(high.objective)))
        if new_hi[j] <= 0.0:
            # Proven inactive: its lower bound sets no big-M and bounds nothing downstream.
            continue
        low = model.solve([(w[j], a)], constant=b[j])
        if low.objective is not None:
            new_lo[j] = max(zl[j], low.objective - _LP_SLACK * (1.0 + abs(low.objective)))
    return new_lo, new_hi


# Up to this many unstable units, gradient bounds come from every 0/1 assignment of their
# binaries (2^14 backward passes take about 0.3 s on a 784-64-64-10 MLP).
ENUMERATE_MAX_UNSTABLE = 14
_ENUMERATE_CHUNK = 2048


def gradient_bounds(layers: Layers, bounds: list[Bound], true_label: int, target: int) -> list[Bound]:
    """Bounds on y_k = dg/da_k (k = L-1 .. 0, the last being the input gradient) for g = f_true - f_target.

    With few unstable units the bounds are the exact extremes over all assignments of their
    binaries (whether or not the region realises them); otherwise they come from a linear form.
    """
    if count_unstable(bounds) <= ENUMERATE_MAX_UNSTABLE:
        return _enumerated_gradient_bounds(layers, bounds, true_label, target)
    return _linear_gradient_bounds(layers, bounds, true_label, target)


def _enumerated_gradient_bounds(layers: Layers, bounds: list[Bound], true_label: int, target: int) -> list[Bound]:
    w_last = layers[-1][0]
    c = w_last[true_label] - w_last[target]
    base = [(lo >= 0.0).astype(np.float64) for lo, _ in bounds]
    unstable = [np.flatnonzero((lo < 0.0) & (hi > 0.0)) for lo, hi in bounds]
    m = sum(u.size for u in unstable)
    lows: list[np.ndarray] = []
    highs: list[np.ndarray] = []
    for start in range(0, 2**m, _ENUMERATE_CHUNK):
        codes = np.arange(start, min(2**m, start + _ENUMERATE_CHUNK))
        bits = (codes[:, None] >> np.arange(m)) & 1
        y = np.broadcast_to(c, (codes.size, c.size))
        levels = [y]
        offset = m
        for k in range(len(layers) - 2, -1, -1):
            on = np.repeat(base[k][None, :], codes.size, axis=0)
            offset -= unstable[k].size
            on[:, unstable[k]] = bits[:, offset:offset + unstable[k].size]
            y = (on * y) @ layers[k][0]
            levels.append(y)
        chunk_lo = [level.min(axis=0) for level in levels]
        chunk_hi = [level.max(axis=0) for level in levels]
        lows = chunk_lo if not lows else [np.minimum(a, b) for a, b in zip(lows, chunk_lo)]
        highs = chunk_hi if not highs else [np.maximum(a, b) for a, b in zip(highs, chunk_hi)]
    return list(zip(lows, highs))


def _linear_gradient_bounds(layers: Layers, bounds: list[Bound], true_label: int, target: int) -> list[Bound]:
    """Gradient bounds by a backward pass linear in the last hidden layer's binaries.

    The backward pass is kept linear in the binaries of the last hidden layer while it crosses
    stable units, and falls back to intervals only at unstable units below it. Plain interval
    arithmetic would bound each unit of a layer on its own and lose that the units share the same
    binaries; on MNIST MLPs the linear form settles the sign of most input coordinates, and each
    settled sign saves the L1 objective a binary.
    """
    w_last = layers[-1][0]
    c = w_last[true_label] - w_last[target]
    result: list[Bound] = [(c, c)]
    if len(layers) == 1:
        return result
    lo, hi = bounds[-1]
    unstable = np.flatnonzero((lo < 0.0) & (hi > 0.0))
    # q = const + sym @ d + [rem_lo, rem_hi] with d the last hidden layer's unstable binaries.
    const = np.where(lo >= 0.0, c, 0.0)
    sym = np.zeros((c.size, unstable.size))
    sym[unstable, np.arange(unstable.size)] = c[unstable]
    rem_lo = rem_hi = np.zeros(c.size)
    for k in range(len(layers) - 2, -1, -1):
        w = layers[k][0]
        const, sym = w.T @ const, w.T @ sym
        rem_lo, rem_hi = affine_interval(w.T, np.zeros(w.shape[1]), rem_lo, rem_hi)
        y_lo = const + np.minimum(sym, 0.0).sum(axis=1) + rem_lo
        y_hi = const + np.maximum(sym, 0.0).sum(axis=1) + rem_hi
        result.append((y_lo, y_hi))
        if k == 0:
            break
        pre_lo, pre_hi = bounds[k - 1]
        on, off = pre_lo >= 0.0, pre_hi <= 0.0
        keep = on[:, None]
        mixed = ~on & ~off
        # An unstable unit multiplies y by its own binary: only an interval survives it.
        rem_lo = np.where(on, rem_lo, np.where(mixed, np.minimum(y_lo, 0.0), 0.0))
        rem_hi = np.where(on, rem_hi, np.where(mixed, np.maximum(y_hi, 0.0), 0.0))
        const = np.where(on, const, 0.0)
        sym = np.where(keep, sym, 0.0)
    return result
